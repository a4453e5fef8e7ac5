"""Alembic environment of the store. The Store runs it programmatically with an open connection."""

from alembic import context

from inspector.io.schema import Base

connection = context.config.attributes["connection"]
context.configure(connection=connection, target_metadata=Base.metadata, render_as_batch=True)
with context.begin_transaction():
    context.run_migrations()
