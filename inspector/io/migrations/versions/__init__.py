"""Revisions, applied in order by Store.open()."""
