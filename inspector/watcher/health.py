"""The /health document, from what the loop gathered (pure: no store, no clock)."""

from __future__ import annotations

LOOP_STALE_S = 60.0  # a loop that has not turned for this long is stuck


def is_ok(store_ok: bool, loop_age_s: float, disk_low: bool) -> bool:
    """Healthy while the loop turns, the store answers and the media disk has room."""
    return store_ok and loop_age_s < LOOP_STALE_S and not disk_low


def report(
    *,
    line: str,
    model_version: str,
    loop_age_s: float,
    pending: dict[str, int] | None,
    media_free_mb: float | None,
    disk_low: bool,
    writer_queue: int,
    held: int,
    sources: dict[str, dict],
) -> dict:
    """`pending`: undelivered alerts per sink, or None when the store did not answer."""
    store_ok = pending is not None
    return {
        "ok": is_ok(store_ok, loop_age_s, disk_low),
        "line": line,
        "model_version": model_version,
        "loop_age_s": round(loop_age_s, 2),
        "store_ok": store_ok,
        "media_free_mb": None if media_free_mb is None else round(media_free_mb),
        "disk_low": disk_low,
        "writer_queue": writer_queue,
        "camera_frames_held": held,
        "outbox_pending": pending or {},
        "sources": sources,
    }
