"""Frame sources of the watcher: a hot folder (here) and cameras (`inspector.io.camera`).

A source hands the loop one item at a time through `poll()`, never blocks it, and sets the shared
`wake` event when something new may be ready. The folder source processes the backlog first (oldest
first), then new files from filesystem events (watchdog), with a periodic rescan for missed events.
A file is taken once it is completely written: renamed into the folder or closed after writing
(events), or unchanged for `stable_s`. A file that is unreadable when taken but was never closed after
writing (a slow writer pausing longer than `stable_s`) is deferred, not quarantined: it is offered again
when it changes or is closed, and quarantined only once it has been closed, or unchanged for
`incomplete_wait_s`, and is still unreadable. Files are moved (or left, with the store's ledger) only after
their result is committed, so a crash in between re-finds the file and the ledger says it is done.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import stat
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from itertools import islice
from pathlib import Path

from watchdog.events import FileSystemEvent, FileSystemEventHandler
from watchdog.observers import Observer

from inspector.config.line import FolderSourceConfig
from inspector.data.preprocess import IMAGE_SUFFIXES

log = logging.getLogger("inspector.watch.folder")
TEMP_SUFFIXES = (".tmp", ".part", ".partial", ".crdownload", ".filepart", ".swp", "~")


@dataclass(frozen=True)
class FileItem:
    source: str
    path: Path
    relpath: str  # relative to the watched folder: part of the frame key
    key: str
    size: int
    mtime_ns: int
    maybe_done: bool = False  # found by a scan (e.g. the backlog after a crash): check the ledger first
    complete: bool = True  # closed or renamed in (event), or unchanged for incomplete_wait_s: unreadable = broken


def is_candidate_name(name: str) -> bool:
    """Image names only; hidden and temp names are files still being written (temp-then-rename)."""
    low = name.lower()
    return not low.startswith(".") and not low.endswith(TEMP_SUFFIXES) and low.endswith(IMAGE_SUFFIXES)


def is_complete(mtime: float, now: float, stable_s: float, hinted: bool) -> bool:
    """Done writing: an event said so (renamed in / closed), or unchanged for stable_s."""
    return hinted or now - mtime >= stable_s


def file_key(source: str, relpath: str, size: int, mtime_ns: int) -> str:
    """Idempotency key of a file drop: the same file found again after a crash gets the same key."""
    return hashlib.sha256(f"file|{source}|{relpath}|{size}|{mtime_ns}".encode()).hexdigest()[:40]


def _prompt_rename_events() -> None:
    """watchdog holds every inotify IN_MOVED_FROM for 0.5 s to pair it with its IN_MOVED_TO, and its queue
    is FIFO, so each temp-name-then-rename drop would wait 0.5 s. Both halves of a rename arrive in the
    same read, so a short pairing window keeps them paired without the wait."""
    try:
        from watchdog.observers.inotify_move_event_grouper import InotifyMoveEventGrouper
    except ImportError:  # other platforms / versions: nothing to tune
        return
    InotifyMoveEventGrouper.delay = min(InotifyMoveEventGrouper.delay, 0.05)


class _Events(FileSystemEventHandler):
    def __init__(self, src: FolderSource) -> None:
        self.src = src

    def on_any_event(self, event: FileSystemEvent) -> None:
        if event.is_directory or event.event_type not in ("created", "moved", "closed", "modified"):
            return
        path = event.dest_path if event.event_type == "moved" else event.src_path
        self.src.offer(Path(os.fsdecode(path)), hinted=event.event_type in ("moved", "closed"))


class FolderSource:
    """A hot folder. `poll()` returns the next completely written image file, oldest first."""

    kind = "folder"

    def __init__(self, cfg: FolderSourceConfig) -> None:
        self.cfg = cfg
        self.name = cfg.name
        self.root = cfg.path
        self.processed_dir = cfg.processed_dir or cfg.path / "processed"
        self.quarantine_dir = cfg.quarantine_dir or cfg.path / "quarantine"
        self._pending: OrderedDict[Path, bool] = OrderedDict()  # path -> completion hinted by an event
        self._kept: dict[Path, tuple[int, int]] = {}  # after="keep": finished files and their (size, mtime)
        self._inflight: set[Path] = set()  # handed to the loop, not finished yet: never offered twice
        self._scanned: set[Path] = set()  # found by a scan, not an event: may be in the ledger already
        self._deferred: dict[Path, tuple[int, int]] = {}  # unreadable, maybe still written: (size, mtime) then
        self._lock = threading.Lock()
        self._wake: threading.Event | None = None
        self._observer: Observer | None = None
        self._next_rescan = 0.0

    def start(self, wake: threading.Event) -> None:
        """Create the folders, start filesystem events, queue the backlog."""
        self._wake = wake
        for d in (self.root, self.processed_dir, self.quarantine_dir):
            d.mkdir(parents=True, exist_ok=True)
        try:
            _prompt_rename_events()
            self._observer = Observer()
            self._observer.schedule(_Events(self), str(self.root), recursive=self.cfg.recursive)
            self._observer.start()
        except OSError as e:  # e.g. inotify watch limit: the periodic rescan still finds files
            log.warning(
                "folder %s: no filesystem events (%s); rescanning every %.0f s", self.name, e, self.cfg.rescan_s
            )
            self._observer = None
        self.rescan()

    def stop(self) -> None:
        # watchdog logs a harmless ERROR when its reader thread is stopped mid-read
        logging.getLogger("watchdog.observers.inotify").setLevel(logging.CRITICAL)
        if self._observer is not None:
            self._observer.stop()
            self._observer.join(timeout=5)

    def offer(self, path: Path, hinted: bool = False, scanned: bool = False) -> None:
        """A file may have appeared or finished (called from the event thread and rescans)."""
        if not is_candidate_name(path.name) or self._excluded(path):
            return
        with self._lock:
            if path in self._inflight:
                return
            if scanned and path not in self._pending:  # backlog at start, a missed event, or a retry
                self._scanned.add(path)
            self._pending[path] = self._pending.get(path, False) or hinted
        if self._wake is not None:
            self._wake.set()

    def _excluded(self, path: Path) -> bool:
        """Outside the folder (e.g. moved away), in a sub-folder when not recursive, or in our own folders."""
        inside = path.parent == self.root or (self.cfg.recursive and self.root in path.parents)
        return not inside or any(
            d == path.parent or d in path.parents for d in (self.processed_dir, self.quarantine_dir)
        )

    def rescan(self) -> None:
        """List the folder, oldest files first (the backlog), in case events were missed."""
        pattern = "**/*" if self.cfg.recursive else "*"
        found = []
        try:
            for p in self.root.glob(pattern):
                with contextlib.suppress(OSError):
                    st = p.stat()
                    if stat.S_ISREG(st.st_mode) and self._kept.get(p) != (st.st_size, st.st_mtime_ns):
                        found.append((st.st_mtime_ns, str(p), p))
        except OSError as e:
            log.warning("folder %s: cannot list %s (%s)", self.name, self.root, e.strerror)
            return
        for _, _, p in sorted(found):
            self.offer(p, scanned=True)
        self._next_rescan = time.monotonic() + self.cfg.rescan_s

    def depth(self) -> int:
        """Files waiting (queue depth for /metrics)."""
        return len(self._pending)

    def poll(self, now: float | None = None) -> FileItem | None:
        """Next completely written file, or None. Looks at most at 256 waiting files per call."""
        if time.monotonic() >= self._next_rescan:
            self.rescan()
        now = time.time() if now is None else now
        with self._lock:
            waiting = list(islice(self._pending.items(), 256))
        for path, hinted in waiting:
            try:
                st = path.stat()
            except FileNotFoundError:
                self._forget(path)
                continue
            except OSError:
                st = None
            if st is not None and (self._kept.get(path) == (st.st_size, st.st_mtime_ns)):
                self._forget(path)
                continue
            if st is not None and not hinted and self._still_waiting(path, st, now):
                continue
            if st is None or is_complete(st.st_mtime, now, self.cfg.stable_s, hinted):
                return self._take(path, st, hinted or st is None or now - st.st_mtime >= self.cfg.incomplete_wait_s)
        return None

    def _still_waiting(self, path: Path, st: os.stat_result, now: float) -> bool:
        """A deferred file, unchanged since it was found unreadable, within its incomplete_wait_s."""
        unchanged = self._deferred.get(path) == (st.st_size, st.st_mtime_ns)
        return unchanged and now - st.st_mtime < self.cfg.incomplete_wait_s

    def _take(self, path: Path, st: os.stat_result | None, complete: bool) -> FileItem:
        with self._lock:
            self._pending.pop(path, None)
            self._inflight.add(path)
            scanned = path in self._scanned
            self._scanned.discard(path)
        rel = path.relative_to(self.root).as_posix()
        size, mtime_ns = (st.st_size, st.st_mtime_ns) if st else (0, 0)
        key = file_key(self.name, rel, size, mtime_ns)
        return FileItem(self.name, path, rel, key, size, mtime_ns, maybe_done=scanned, complete=complete)

    def _forget(self, path: Path) -> None:
        with self._lock:
            self._pending.pop(path, None)
            self._scanned.discard(path)
            self._deferred.pop(path, None)

    def defer(self, item: FileItem) -> bool:
        """Unreadable but not known to be complete: wait for it to change or be closed (see the module docstring).
        True the first time for this file (the caller says so once)."""
        with self._lock:
            first = item.path not in self._deferred
            self._deferred[item.path] = (item.size, item.mtime_ns)
            self._inflight.discard(item.path)
            self._pending.setdefault(item.path, False)
        if self._wake is not None:
            self._wake.set()
        return first

    def release(self, item: FileItem) -> None:
        """Not finished (e.g. the store was down): leave the file for a later rescan."""
        with self._lock:
            self._inflight.discard(item.path)

    def finish(self, item: FileItem) -> None:
        """After the result is committed: move to processed/ or remember it (after: keep)."""
        if self.cfg.after == "keep":
            with self._lock:
                self._kept[item.path] = (item.size, item.mtime_ns)
        else:
            _move(item.path, self.processed_dir / item.relpath)
        self._deferred.pop(item.path, None)
        self.release(item)

    def quarantine(self, item: FileItem, reason: str) -> None:
        """Move an unreadable file aside with a .reason.txt saying why."""
        target = _move(item.path, self.quarantine_dir / item.relpath)
        if target is not None:
            target.with_name(target.name + ".reason.txt").write_text(reason + "\n")
        self._deferred.pop(item.path, None)
        self.release(item)


def _move(src: Path, dst: Path) -> Path | None:
    """Rename without overwriting: a second file of the same name gets a numbered suffix."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    target, n = dst, 1
    while target.exists():
        target = dst.with_name(f"{dst.stem}.{n}{dst.suffix}")
        n += 1
    try:
        os.replace(src, target)
    except FileNotFoundError:
        return None
    return target
