"""Latent space: the embedding of every flagged item and of a sample of good frames, per model version, and each
version's map projection and good cloud (from its manifest), so the dashboard needs no model folder.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-02
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "embeddings",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("model_version", sa.String(length=64), nullable=False),
        sa.Column("source", sa.String(length=64), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("flagged_id", sa.Integer(), nullable=True),
        sa.Column("vector", sa.LargeBinary(), nullable=False),
        sa.Column("x", sa.Float(), nullable=False),
        sa.Column("y", sa.Float(), nullable=False),
        sa.ForeignKeyConstraint(
            ["flagged_id"],
            ["flagged.id"],
        ),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("flagged_id"),
    )
    op.create_index("ix_embeddings_version_id", "embeddings", ["model_version", "id"], unique=False)
    op.create_index(
        "ix_embeddings_version_source_created", "embeddings", ["model_version", "source", "created_at"], unique=False
    )
    op.create_table(
        "latent_spaces",
        sa.Column("model_version", sa.String(length=64), nullable=False),
        sa.Column("dim", sa.Integer(), nullable=False),
        sa.Column("space", sa.Text(), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint("model_version"),
    )


def downgrade() -> None:
    op.drop_table("latent_spaces")
    op.drop_index("ix_embeddings_version_source_created", table_name="embeddings")
    op.drop_index("ix_embeddings_version_id", table_name="embeddings")
    op.drop_table("embeddings")
