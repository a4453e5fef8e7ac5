"""Initial store: flagged items, per-source counters, score samples, file ledger, alert outbox.

Revision ID: 0001
Revises:
Create Date: 2026-11-21
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "flagged",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("source", sa.String(length=64), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("score", sa.Float(), nullable=False),
        sa.Column("raw_score", sa.Float(), nullable=False),
        sa.Column("threshold", sa.Float(), nullable=False),
        sa.Column("model_version", sa.String(length=64), nullable=False),
        sa.Column("image_path", sa.String(length=512), nullable=False),
        sa.Column("overlay_path", sa.String(length=512), nullable=False),
        sa.Column("map_path", sa.String(length=512), nullable=True),
        sa.Column("width", sa.Integer(), nullable=False),
        sa.Column("height", sa.Integer(), nullable=False),
        sa.Column("origin", sa.String(length=1024), nullable=True),
        sa.Column("review_status", sa.String(length=16), nullable=False),
        sa.Column("reviewed_by", sa.String(length=128), nullable=True),
        sa.Column("reviewed_at", sa.DateTime(), nullable=True),
        sa.Column("review_note", sa.Text(), nullable=True),
        sa.Column("frame_key", sa.String(length=64), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("frame_key"),
    )
    with op.batch_alter_table("flagged", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_flagged_created_at"), ["created_at"], unique=False)
        batch_op.create_index("ix_flagged_review_created", ["review_status", "created_at"], unique=False)
        batch_op.create_index(batch_op.f("ix_flagged_review_status"), ["review_status"], unique=False)
        batch_op.create_index(batch_op.f("ix_flagged_source"), ["source"], unique=False)
        batch_op.create_index("ix_flagged_source_created", ["source", "created_at"], unique=False)

    op.create_table(
        "frames",
        sa.Column("source", sa.String(length=64), nullable=False),
        sa.Column("scored", sa.Integer(), nullable=False),
        sa.Column("flagged", sa.Integer(), nullable=False),
        sa.Column("dropped", sa.Integer(), nullable=False),
        sa.Column("errors", sa.Integer(), nullable=False),
        sa.Column("last_score", sa.Float(), nullable=True),
        sa.Column("last_seen", sa.DateTime(), nullable=True),
        sa.PrimaryKeyConstraint("source"),
    )
    op.create_table(
        "scores",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("source", sa.String(length=64), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("score", sa.Float(), nullable=False),
        sa.Column("is_anomaly", sa.Boolean(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("scores", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_scores_created_at"), ["created_at"], unique=False)
        batch_op.create_index("ix_scores_source_created", ["source", "created_at"], unique=False)

    op.create_table(
        "outbox",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("flagged_id", sa.Integer(), nullable=False),
        sa.Column("source", sa.String(length=64), nullable=False),
        sa.Column("sink", sa.String(length=64), nullable=False),
        sa.Column("payload", sa.Text(), nullable=False),
        sa.Column("idempotency_key", sa.String(length=64), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("next_attempt_at", sa.DateTime(), nullable=False),
        sa.Column("delivered_at", sa.DateTime(), nullable=True),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.ForeignKeyConstraint(
            ["flagged_id"],
            ["flagged.id"],
        ),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("sink", "idempotency_key", name="uq_outbox_sink_key"),
    )
    with op.batch_alter_table("outbox", schema=None) as batch_op:
        batch_op.create_index("ix_outbox_pending", ["sink", "delivered_at", "source", "id"], unique=False)

    op.create_table(
        "processed",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("frame_key", sa.String(length=64), nullable=False),
        sa.Column("source", sa.String(length=64), nullable=False),
        sa.Column("path", sa.String(length=1024), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("flagged_id", sa.Integer(), nullable=True),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.ForeignKeyConstraint(
            ["flagged_id"],
            ["flagged.id"],
        ),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("frame_key"),
    )
    with op.batch_alter_table("processed", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_processed_source"), ["source"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("processed", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_processed_source"))

    op.drop_table("processed")
    with op.batch_alter_table("outbox", schema=None) as batch_op:
        batch_op.drop_index("ix_outbox_pending")

    op.drop_table("outbox")
    with op.batch_alter_table("scores", schema=None) as batch_op:
        batch_op.drop_index("ix_scores_source_created")
        batch_op.drop_index(batch_op.f("ix_scores_created_at"))

    op.drop_table("scores")
    op.drop_table("frames")
    with op.batch_alter_table("flagged", schema=None) as batch_op:
        batch_op.drop_index("ix_flagged_source_created")
        batch_op.drop_index(batch_op.f("ix_flagged_source"))
        batch_op.drop_index(batch_op.f("ix_flagged_review_status"))
        batch_op.drop_index("ix_flagged_review_created")
        batch_op.drop_index(batch_op.f("ix_flagged_created_at"))

    op.drop_table("flagged")
