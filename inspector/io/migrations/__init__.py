"""Alembic migrations of the watcher store (a package so wheels ship them)."""
