"""Delivery side of the transactional outbox.

The loop writes a flagged row and its pending alerts in one transaction; this sender, in its own
thread, delivers them. For every (sink, source) only the oldest pending alert is tried, so alerts of a
source arrive in order; a failed attempt is recorded with its next retry time (exponential backoff)
in the store, so retries survive restarts. A sink that is down delays its alerts, never drops them, and
does not hold up other sinks.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Collection
from datetime import datetime, timedelta, timezone

from sqlalchemy.exc import SQLAlchemyError

from inspector.io.sinks import Sink
from inspector.io.store import PendingAlert, Store

log = logging.getLogger("inspector.watch.outbox")


def backoff_delay(attempts: int, lo: float, hi: float) -> float:
    """Retry delay after `attempts` failed attempts: lo, 2lo, 4lo, ... capped at hi."""
    return float(min(hi, lo * 2 ** min(max(attempts - 1, 0), 30)))


def _now() -> datetime:
    return datetime.now(timezone.utc)


class Sender:
    """Background delivery of pending alerts, one thread per sink; `notify()` after a commit.

    `sources`: the watcher's own source names. Lines sharing a store may name their sinks alike; each
    watcher then delivers only its own sources' alerts, through its own connection (None: every source).
    """

    def __init__(
        self,
        store: Store,
        sinks: dict[str, Sink],
        backoff_min_s: float,
        backoff_max_s: float,
        on_result: Callable[[str, bool, PendingAlert], None] | None = None,
        sources: Collection[str] | None = None,
    ) -> None:
        self.store, self.sinks = store, sinks
        self.sources = None if sources is None else tuple(sources)
        self.backoff = (backoff_min_s, backoff_max_s)
        self.on_result = on_result  # metrics hook: (sink, delivered, alert)
        self._wake = {name: threading.Event() for name in sinks}
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._failing: set[tuple[str, str]] = set()  # (sink, source) currently failing, to log once

    def start(self) -> None:
        try:
            self._report_pending()
        except SQLAlchemyError as e:  # the store went away since it was opened: the senders retry on their own
            log.warning("outbox: cannot count pending alerts now (%s)", str(e).splitlines()[0])
        for name in self.sinks:
            t = threading.Thread(target=self._run, args=(name,), name=f"outbox-{name}", daemon=True)
            t.start()
            self._threads.append(t)

    def _report_pending(self) -> None:
        """At start: name what is still pending from before, and whose."""
        for sink, n in self.store.pending_count(self.sources).items():
            if sink not in self.sinks:
                log.warning("outbox: %d alerts are pending for sink %r, which is no longer configured", n, sink)
            else:
                log.info("outbox: %d alerts pending for sink %s from before the restart", n, sink)
        if self.sources is not None:  # left to the watchers that have these sources
            others = {k: n for k, n in self.store.pending_by_source().items() if k not in self.sources}
            if others:
                log.info(
                    "outbox: alerts of sources not on this line are pending, left to their own watchers "
                    "(other lines on this store, or sources renamed since): %s",
                    ", ".join(f"{k} {n}" for k, n in sorted(others.items())),
                )

    def notify(self) -> None:
        for ev in self._wake.values():
            ev.set()

    def stop(self, timeout_s: float = 10.0) -> None:
        """Finish the attempt in progress; what is still pending stays in the store for the next start."""
        self._stop.set()
        self.notify()
        for t in self._threads:
            t.join(timeout=timeout_s)
        for sink in self.sinks.values():
            try:
                sink.close()
            except Exception as e:  # noqa: BLE001 - closing must not stop the shutdown
                log.warning("sink %s: close failed (%s)", sink.name, e)

    def _run(self, name: str) -> None:
        while not self._stop.is_set():
            try:
                wait = self.run_once(name)
            except SQLAlchemyError as e:
                log.error("outbox: store unavailable (%s); retrying", str(e).splitlines()[0])
                wait = 2.0
            self._wake[name].wait(timeout=wait)
            self._wake[name].clear()

    def run_once(self, name: str, now: datetime | None = None) -> float:
        """Deliver every due alert of one sink, oldest first per source; seconds until the next is due (<= 1)."""
        next_due, sink = 1.0, self.sinks[name]
        for head in self.store.pending_heads(name, self.sources):
            alert: PendingAlert | None = head
            while alert is not None and not self._stop.is_set():
                t = now or _now()
                if alert.next_attempt_at > t:
                    next_due = min(next_due, (alert.next_attempt_at - t).total_seconds())
                    break
                alert = self._deliver(sink, alert, t)
        return max(next_due, 0.01)

    def _deliver(self, sink: Sink, alert: PendingAlert, now: datetime) -> PendingAlert | None:
        """One attempt; on success the next alert of the same source, else None."""
        key = (sink.name, alert.source)
        try:
            sink.send(alert)
        except Exception as e:  # noqa: BLE001 - any failure means: retry later
            delay = backoff_delay(alert.attempts + 1, *self.backoff)
            self.store.mark_failed(alert.id, str(e), now + timedelta(seconds=delay))
            if key not in self._failing:
                log.warning(
                    "sink %s: alert %d of %s not delivered (%s); retrying with backoff",
                    sink.name,
                    alert.id,
                    alert.source,
                    e,
                )
                self._failing.add(key)
            if self.on_result:
                self.on_result(sink.name, False, alert)
            return None
        self.store.mark_delivered(alert.id, _now())
        if key in self._failing:
            log.info("sink %s: delivering again for %s", sink.name, alert.source)
            self._failing.discard(key)
        if self.on_result:
            self.on_result(sink.name, True, alert)
        heads = self.store.pending_heads(sink.name, (alert.source,))
        return heads[0] if heads else None
