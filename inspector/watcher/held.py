"""Camera frames the writer holds while the store is unreachable, oldest first.

With a spool (`inspector.io.spool`, what the watcher uses) each held frame is a file on disk, so it survives a
kill and is committed, in order and exactly once, after the restart; only its file name stays in memory.
Without one (unit tests), or while the spool cannot be written, frames are held in memory. An entry leaves
only when the writer says its frame was committed (or refused by the store), never when it is taken to be
committed: a failed commit leaves it where it was.
"""

from __future__ import annotations

import logging
from collections import deque
from pathlib import Path
from typing import TYPE_CHECKING

from inspector.io.spool import Spool, SpoolCorrupt, SpooledFrame, SpoolFull

if TYPE_CHECKING:
    from inspector.watcher.writer import Job

log = logging.getLogger("inspector.watch")
MAX_IN_MEMORY = 10_000  # held in memory (no spool, or it cannot be written); flagged ones' images are saved already


class _From:
    """The source of a frame read back from the spool: only its name is needed (logs and metrics)."""

    def __init__(self, name: str) -> None:
        self.name = name


class HeldFrames:
    """A FIFO of held frames: `add` at the end, `take` from the front without removing, `done` once committed."""

    def __init__(self, spool: Spool | None = None, max_in_memory: int = MAX_IN_MEMORY) -> None:
        self.spool, self.max_in_memory = spool, max_in_memory
        self._order: deque[Path | Job] = deque(spool.existing() if spool else ())
        self._in_memory = 0
        self.dropped = 0  # frames not kept because the spool (or memory) was full
        self._full_said = self._spool_failed = False  # each said once per outage
        if self._order:
            log.info(
                "%d camera frames from an earlier run wait in the spool %s; they are recorded first, in order",
                len(self._order),
                spool.dir,
            )  # type: ignore[union-attr]

    def __len__(self) -> int:
        return len(self._order)

    def in_memory(self) -> int:
        """Held frames that a kill would lose (no spool, or it could not be written)."""
        return self._in_memory

    def take(self, n: int) -> list[Job]:
        """The oldest `n` frames as jobs; they stay held until `done`. A spool file that cannot be read back is
        moved to the spool's bad/ folder with one error line (never retried forever)."""
        jobs: list[Job] = []
        i = 0
        while len(jobs) < n and i < len(self._order):
            entry = self._order[i]
            if not isinstance(entry, Path):
                jobs.append(entry)
                i += 1
                continue
            try:
                jobs.append(_job(self.spool.read(entry), entry))  # type: ignore[union-attr]
                i += 1
            except SpoolCorrupt as e:
                log.error("cannot read a held camera frame back (%s); moved to %s", e, self.spool.set_aside(entry))  # type: ignore[union-attr]
                del self._order[i]
        return jobs

    def add(self, jobs: list[Job]) -> None:
        """Hold these frames (already saved: `job.record` set, pixels dropped) after the others."""
        for job in jobs:
            entry = self._to_spool(job) if self.spool is not None and not self._spool_failed else self._to_memory(job)
            if entry is None:
                self.dropped += 1
                continue
            job.held = True
            self._order.append(entry)

    def done(self, job: Job) -> None:
        """The frame was committed (or refused by the store): it is held no longer."""
        entry: Path | Job = job.spooled if job.spooled is not None else job
        if self._order and _same(self._order[0], entry):
            self._order.popleft()
        else:
            for i, e in enumerate(self._order):
                if _same(e, entry):
                    del self._order[i]
                    break
        if isinstance(entry, Path):
            self.spool.remove(entry)  # type: ignore[union-attr]
        else:
            self._in_memory -= 1
        job.held, job.spooled = False, None
        if not self._order:  # the outage is over: say it again next time
            self._full_said = self._spool_failed = False

    def _to_spool(self, job: Job) -> Path | Job | None:
        spool: Spool = self.spool  # type: ignore[assignment]
        try:
            sf = spool.write(SpooledFrame(job.frame, job.record, job.alert, job.origin, job.model_version))
        except SpoolFull:
            if not self._full_said:
                log.error(
                    "the spool %s is full (%d frames, store.spool_max_frames): camera frames scored from now on "
                    "are not kept until the store answers again",
                    spool.dir,
                    spool.max_frames,
                )
                self._full_said = True
            return None
        except OSError as e:
            log.error(
                "cannot write to the spool %s (%s): held camera frames are kept in memory only, and a kill "
                "would lose them",
                spool.dir,
                e,
            )
            self._spool_failed = True
            return self._to_memory(job)
        job.frame, job.spooled = sf.frame, Path(sf.frame.path)  # type: ignore[arg-type]
        return job.spooled

    def _to_memory(self, job: Job) -> Job | None:
        if self._in_memory >= self.max_in_memory:
            if not self._full_said:
                log.error(
                    "%d camera frames held in memory while the store is unreachable: newer ones are not kept",
                    self.max_in_memory,
                )
                self._full_said = True
            return None
        self._in_memory += 1
        return job


def _same(a: Path | Job, b: Path | Job) -> bool:
    return a is b or (isinstance(a, Path) and isinstance(b, Path) and a == b)


def _job(sf: SpooledFrame, path: Path) -> Job:
    from inspector.watcher.writer import Job  # the writer imports this module: its Job only at run time

    return Job(
        _From(sf.frame.source),
        None,
        sf.frame,
        flag=sf.flag is not None,
        alert=sf.alert,
        origin=sf.origin,
        model_version=sf.model_version,
        record=sf.flag,
        held=True,
        spooled=path,
    )  # type: ignore[arg-type]
