"""Whether the store answers, as the loop and the writer find out: one error line when it goes away, one info
line when it is back, and how long replayable inputs (files) wait before they are offered again.

Camera frames never wait: the writer holds them (its spool). Called from the loop and the writer threads at
once when the store goes away: a lock makes the change of state, and so its one line, happen once.
"""

from __future__ import annotations

import logging
import threading
import time

log = logging.getLogger("inspector.watch")


def replayable_wait(now: float, wait_until: float) -> bool:
    """Files are skipped until the retry time after the last store failure."""
    return now < wait_until


class StoreOutage:
    def __init__(self, retry_s: float) -> None:
        self.retry_s = retry_s
        self.ok = True  # False from a failed store call until the next one that works
        self._wait_until = 0.0
        self._lock = threading.Lock()

    def failed(self, e: Exception) -> None:
        with self._lock:
            went, self.ok = self.ok, False
            self._wait_until = time.monotonic() + self.retry_s
        if went:
            log.error(
                "store unavailable (%s); folder inputs wait in their folder and camera frames in the spool "
                "until it is back",
                str(e).splitlines()[0],
            )

    def answered(self) -> None:
        with self._lock:
            back, self.ok = not self.ok, True
        if back:
            log.info("store available again")

    def replayable_wait(self) -> bool:
        return replayable_wait(time.monotonic(), self._wait_until)
