"""Reviews: a person marks a flagged item a confirmed defect or a false alarm (or undoes that).

A false alarm is a good part the model did not know yet, so its original image (where one was saved) is copied
into the retrain folder of good images, and a `retrain_copies` row records which file came from which item.
Undoing the review (or confirming a defect instead) removes exactly that copy again, so a real defect
never trains the model as "good".
"""

from __future__ import annotations

import logging
from datetime import datetime, timezone
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.orm import Session

from inspector.dashboard.files import Refused, safe_path
from inspector.dashboard.queries import Item, Status, get_item
from inspector.files import atomic_write
from inspector.io.schema import Flagged, RetrainCopy
from inspector.io.store import Store

log = logging.getLogger("inspector.dashboard")


class NotFound(Exception):
    """No flagged item with this id."""


class ReviewConflict(Exception):
    """The review cannot be recorded as asked (e.g. the original image to copy is gone)."""


def review(
    store: Store,
    retrain_dir: Path,
    item_id: int,
    status: Status,
    reviewer: str,
    note: str | None = None,
    now: datetime | None = None,
) -> Item:
    """Record a review and keep the retrain folder in step with it; returns the updated item."""
    review_many(store, retrain_dir, [item_id], status, reviewer, note, now)
    item = get_item(store.engine, item_id)
    assert item is not None
    return item


def review_many(
    store: Store,
    retrain_dir: Path,
    item_ids: list[int],
    status: Status,
    reviewer: str,
    note: str | None = None,
    now: datetime | None = None,
) -> list[int]:
    """Review several items in ONE transaction (all or none), each row exactly as a single review records it
    (its own status, reviewer, time and retrain copy), so each can be undone on its own. Returns the ids."""
    now = now or datetime.now(timezone.utc)
    new_copies: list[Path] = []
    stale: list[Path] = []
    ids = list(dict.fromkeys(item_ids))
    try:
        with Session(store.engine) as s, s.begin():
            for item_id in ids:
                _apply(s, store.media_dir, retrain_dir, item_id, status, reviewer, note, now, new_copies, stale)
    except BaseException:
        for p in new_copies:  # the rows were not committed: leave no orphan file behind
            p.unlink(missing_ok=True)
        raise
    for p in stale:
        p.unlink(missing_ok=True)
    log.info("%d item(s) reviewed as %s by %s: %s", len(ids), status, reviewer, ", ".join(map(str, ids[:20])))
    return ids


def _apply(
    s: Session,
    media_dir: Path,
    retrain_dir: Path,
    item_id: int,
    status: Status,
    reviewer: str,
    note: str | None,
    now: datetime,
    new_copies: list[Path],
    stale: list[Path],
) -> None:
    """One item's review inside the caller's transaction; files copied are appended to `new_copies`, copies to
    remove after the commit to `stale`."""
    row = s.get(Flagged, item_id, with_for_update=True)
    if row is None:
        raise NotFound(item_id)
    copy = s.scalar(sa.select(RetrainCopy).where(RetrainCopy.flagged_id == item_id))
    if status == "false_alarm" and copy is None and row.image_path is not None:  # None: never saved
        new_copies.append(_copy_original(media_dir, retrain_dir, row))
        s.add(RetrainCopy(flagged_id=item_id, path=str(new_copies[-1]), created_at=now))
    elif status != "false_alarm" and copy is not None:
        s.delete(copy)
        stale.append(Path(copy.path))
    row.review_status, row.reviewed_by, row.review_note = status, reviewer, note or None
    row.reviewed_at = now if status != "pending" else None


def _copy_original(media_dir: Path, retrain_dir: Path, row: Flagged) -> Path:
    """Copy the original (as received) under a name that says where it came from; atomic rename."""
    try:
        src = safe_path(media_dir, row.image_path)
    except Refused:
        raise ReviewConflict(
            f"item {row.id}: its original image is missing from the media folder, "
            "so it cannot be copied to the retrain folder"
        ) from None
    retrain_dir.mkdir(parents=True, exist_ok=True)
    target = retrain_dir / f"{row.source}_{row.created_at:%Y%m%dT%H%M%S}_{row.id}{src.suffix.lower()}"
    return atomic_write(target, src.read_bytes())
