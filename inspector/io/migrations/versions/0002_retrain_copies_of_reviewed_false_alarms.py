"""Retrain copies: one row per reviewed false alarm copied into the retrain folder of good images.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-21
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "retrain_copies",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("flagged_id", sa.Integer(), nullable=False),
        sa.Column("path", sa.String(length=1024), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.ForeignKeyConstraint(
            ["flagged_id"],
            ["flagged.id"],
        ),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("flagged_id"),
    )


def downgrade() -> None:
    op.drop_table("retrain_copies")
