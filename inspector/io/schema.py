"""ORM tables of the watcher's store (SQLAlchemy 2.x). The dashboard reads the same tables.

Changing a table needs a new alembic revision in `migrations/versions/`; `tests/test_store.py` fails
when these models and the migrations disagree.
"""

from __future__ import annotations

from datetime import datetime, timezone

from sqlalchemy import Boolean, DateTime, Float, ForeignKey, Index, Integer, LargeBinary, String, Text, UniqueConstraint
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import TypeDecorator

REVIEW_STATUSES = ("pending", "confirmed", "false_alarm")


class UTCDateTime(TypeDecorator):
    """Timezone-aware UTC datetimes on every backend (SQLite stores no zone; we add it back)."""

    impl = DateTime
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to the store; use UTC-aware datetimes")
        return value.astimezone(timezone.utc).replace(tzinfo=None)

    def process_result_value(self, value: datetime | None, dialect) -> datetime | None:
        return None if value is None else value.replace(tzinfo=timezone.utc)


class Base(DeclarativeBase):
    pass


class Flagged(Base):
    """One flagged item: a frame the rules raised, with its image and heat map kept for review."""

    __tablename__ = "flagged"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    source: Mapped[str] = mapped_column(String(64), index=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, index=True)
    score: Mapped[float] = mapped_column(Float)  # normalized: 1.0 = threshold
    raw_score: Mapped[float] = mapped_column(Float)
    threshold: Mapped[float] = mapped_column(Float)  # raw, as applied
    model_version: Mapped[str] = mapped_column(String(64))
    # relative to the media folder; None: a camera frame whose images could not be saved (recorded all the same)
    image_path: Mapped[str | None] = mapped_column(String(512), nullable=True)
    overlay_path: Mapped[str | None] = mapped_column(String(512), nullable=True)
    map_path: Mapped[str | None] = mapped_column(String(512), nullable=True)
    width: Mapped[int] = mapped_column(Integer)
    height: Mapped[int] = mapped_column(Integer)
    origin: Mapped[str | None] = mapped_column(String(1024), nullable=True)  # original file name or camera URI
    review_status: Mapped[str] = mapped_column(String(16), default="pending", index=True)
    reviewed_by: Mapped[str | None] = mapped_column(String(128), nullable=True)
    reviewed_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    review_note: Mapped[str | None] = mapped_column(Text, nullable=True)
    frame_key: Mapped[str] = mapped_column(String(64), unique=True)
    __table_args__ = (
        Index("ix_flagged_source_created", "source", "created_at"),
        Index("ix_flagged_review_created", "review_status", "created_at"),
    )


class SourceCounters(Base):
    """Running totals per source, updated in the same transaction as each frame."""

    __tablename__ = "frames"
    source: Mapped[str] = mapped_column(String(64), primary_key=True)
    scored: Mapped[int] = mapped_column(Integer, default=0)
    flagged: Mapped[int] = mapped_column(Integer, default=0)
    dropped: Mapped[int] = mapped_column(Integer, default=0)
    errors: Mapped[int] = mapped_column(Integer, default=0)
    last_score: Mapped[float | None] = mapped_column(Float, nullable=True)
    last_seen: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)


class ScoreSample(Base):
    """Recent scores for histograms and drift; pruned by age and row count."""

    __tablename__ = "scores"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    source: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, index=True)
    score: Mapped[float] = mapped_column(Float)
    is_anomaly: Mapped[bool] = mapped_column(Boolean)
    __table_args__ = (Index("ix_scores_source_created", "source", "created_at"),)


class Processed(Base):
    """Ledger of input files: a key present here is never scored again (exactly-once)."""

    __tablename__ = "processed"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    frame_key: Mapped[str] = mapped_column(String(64), unique=True)
    source: Mapped[str] = mapped_column(String(64), index=True)
    path: Mapped[str] = mapped_column(String(1024))
    status: Mapped[str] = mapped_column(String(16))  # scored | quarantined
    reason: Mapped[str | None] = mapped_column(Text, nullable=True)  # why it was quarantined
    flagged_id: Mapped[int | None] = mapped_column(ForeignKey("flagged.id"), nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)


class RetrainCopy(Base):
    """A false alarm copied into the retrain folder of good images; the scheduled retrain reads that folder.

    The row says which file came from which item, so undoing the review removes exactly that copy.
    """

    __tablename__ = "retrain_copies"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    flagged_id: Mapped[int] = mapped_column(ForeignKey("flagged.id"), unique=True)
    path: Mapped[str] = mapped_column(String(1024))  # the copy, absolute
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)


class Outbox(Base):
    """Alerts waiting for (or acknowledged by) a sink; written with their flagged row."""

    __tablename__ = "outbox"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    flagged_id: Mapped[int] = mapped_column(ForeignKey("flagged.id"))
    source: Mapped[str] = mapped_column(String(64))
    sink: Mapped[str] = mapped_column(String(64))
    payload: Mapped[str] = mapped_column(Text)  # JSON
    idempotency_key: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime] = mapped_column(UTCDateTime)
    delivered_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    last_error: Mapped[str | None] = mapped_column(Text, nullable=True)
    __table_args__ = (
        UniqueConstraint("sink", "idempotency_key", name="uq_outbox_sink_key"),
        Index("ix_outbox_pending", "sink", "delivered_at", "source", "id"),
    )


class Embedding(Base):
    """An item's point in its model version's latent space: every flagged item, and a sample of good frames
    (flagged_id None). Versions are never compared with each other: each keeps its own embeddings."""

    __tablename__ = "embeddings"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    model_version: Mapped[str] = mapped_column(String(64))
    source: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    flagged_id: Mapped[int | None] = mapped_column(ForeignKey("flagged.id"), nullable=True, unique=True)
    vector: Mapped[bytes] = mapped_column(LargeBinary)  # float32, unit length
    x: Mapped[float] = mapped_column(Float)  # map coordinates (the version's projection)
    y: Mapped[float] = mapped_column(Float)
    __table_args__ = (
        Index("ix_embeddings_version_id", "model_version", "id"),
        Index("ix_embeddings_version_source_created", "model_version", "source", "created_at"),
    )


class LatentSpaceRow(Base):
    """A model version's map projection and good reference cloud, copied from its manifest by the watcher."""

    __tablename__ = "latent_spaces"
    model_version: Mapped[str] = mapped_column(String(64), primary_key=True)
    dim: Mapped[int] = mapped_column(Integer)
    space: Mapped[str] = mapped_column(Text)  # JSON: inspector.scoring.latent.LatentSpace.to_dict()
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
