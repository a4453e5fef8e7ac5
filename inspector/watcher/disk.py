"""Free space on the media folder's disk: a gauge, /health, and one log line each way across `min_free_mb`.

Measured on its own thread: statvfs on a hung network mount blocks, and the scoring loop must not.
"""

from __future__ import annotations

import logging
import shutil
import threading
from pathlib import Path

from prometheus_client import Gauge

log = logging.getLogger("inspector.watch")


def is_low(free_mb: float | None, min_free_mb: int) -> bool:
    """Below the configured floor; unknown free space (not measured yet) and a floor of 0 are never low."""
    return bool(min_free_mb) and free_mb is not None and free_mb < min_free_mb


class DiskWatch:
    """`free_mb` and `low` as last measured; `start(stop)` measures every `every_s` until `stop` is set."""

    def __init__(self, path: Path, min_free_mb: int, gauge: Gauge, every_s: float) -> None:
        self.path, self.min_free_mb, self.gauge, self.every_s = path, min_free_mb, gauge, every_s
        self.free_mb: float | None = None  # None until measured
        self._unknown = False  # the last measurement failed (warned once)

    @property
    def low(self) -> bool:
        return is_low(self.free_mb, self.min_free_mb)

    def start(self, stop: threading.Event) -> None:
        threading.Thread(target=self._run, args=(stop,), name="disk-watch", daemon=True).start()

    def _run(self, stop: threading.Event) -> None:
        self.check()
        while not stop.wait(self.every_s):
            self.check()

    def check(self) -> None:
        was_low = self.low
        try:
            free = shutil.disk_usage(self.path).free
        except OSError as e:  # e.g. a network mount gone: saving media fails too, and is retried
            if not self._unknown:
                log.warning("cannot measure free space of %s (%s)", self.path, e)
                self._unknown = True
            return
        self._unknown = False
        self.gauge.set(free)
        self.free_mb = free / 2**20
        if self.low and not was_low:
            log.error(
                "only %.0f MB free on the disk of %s (store.min_free_mb %d): flagged images can soon not be "
                "saved; free space or move store.media_dir",
                self.free_mb,
                self.path,
                self.min_free_mb,
            )
        elif was_low and not self.low:
            log.info("%.0f MB free on the disk of %s again", self.free_mb, self.path)
