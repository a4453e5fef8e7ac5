"""Flagged items without media: a camera frame whose images could not be saved (disk full, media folder
unwritable) is still recorded and alerted, with no image paths.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-02
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("flagged") as batch:  # SQLite rebuilds the table; PostgreSQL alters in place
        batch.alter_column("image_path", existing_type=sa.String(length=512), nullable=True)
        batch.alter_column("overlay_path", existing_type=sa.String(length=512), nullable=True)


def downgrade() -> None:
    with op.batch_alter_table("flagged") as batch:
        batch.alter_column("overlay_path", existing_type=sa.String(length=512), nullable=False)
        batch.alter_column("image_path", existing_type=sa.String(length=512), nullable=False)
