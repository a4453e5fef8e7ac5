"""A local, crash-safe spool for camera frames scored while the store is unreachable.

A camera frame exists nowhere else, so while the store is down each scored frame (its row, and for a
flagged one the paths of its already saved images and its alert payloads) is written here, one small JSON
file per frame: written under a temp name, fsync'd, renamed into place, the folder fsync'd. A kill at any
moment leaves a frame either whole in the spool or not there at all. File names are sequence numbers, so a
restart commits them in the order they were scored.

A frame leaves the spool only after its commit. Its ledger path is its spool file, so a kill between the
commit and the removal commits it again after the restart, the store's ledger refuses it as a duplicate,
and the file is removed: exactly once. The spool holds at most `max_frames` frames (a file is 0.4-2 KB,
one 4 KB block on ext4); when it is full, newer frames are refused (`SpoolFull`) and the caller says so.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
from dataclasses import asdict, dataclass, replace
from datetime import datetime
from pathlib import Path

from inspector.config.line import WatchConfig
from inspector.errors import InspectorError
from inspector.io.store import FlagRecord, LatentPoint, ScoredFrame

SUFFIX = ".frame.json"
FORMAT = 1  # the version of a spool file's layout, written in every file


class SpoolFull(Exception):
    """The spool already holds its `max_frames` frames."""


class SpoolCorrupt(Exception):
    """A spool file that cannot be read back (moved to bad/ by `set_aside`)."""


@dataclass(frozen=True)
class SpooledFrame:
    """What committing a held camera frame needs, and nothing of its pixels (they are in the media folder)."""

    frame: ScoredFrame  # frame.path: the spool file, once written (its ledger path)
    flag: FlagRecord | None
    alert: bool
    origin: str
    model_version: str


class Spool:
    """One folder of frame files, oldest first; `max_frames` bounds it."""

    def __init__(self, directory: Path, max_frames: int) -> None:
        self.dir, self.max_frames = Path(directory), max_frames
        self.dir.mkdir(parents=True, exist_ok=True)
        for tmp in self.dir.glob(f".*{SUFFIX}.tmp"):  # a kill while writing it: that frame never reached the spool
            tmp.unlink(missing_ok=True)
        self._existing = sorted(self.dir.glob(f"*{SUFFIX}"))
        self.count = len(self._existing)
        self._next = max((_seq(p) for p in self._existing), default=-1) + 1

    def existing(self) -> list[Path]:
        """The frames found at open (an earlier run's), oldest first."""
        return list(self._existing)

    def write(self, sf: SpooledFrame) -> SpooledFrame:
        """Durably add a frame at the end; returns it with frame.path set to its file. SpoolFull when full."""
        if self.count >= self.max_frames:
            raise SpoolFull(f"{self.count} frames")
        path = self.dir / f"{self._next:012d}{SUFFIX}"
        sf = replace(sf, frame=replace(sf.frame, path=str(path)))
        tmp = self.dir / f".{path.name}.tmp"
        try:
            with open(tmp, "wb") as f:
                f.write(json.dumps(_to_json(sf), separators=(",", ":")).encode())
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except OSError:
            tmp.unlink(missing_ok=True)
            raise
        _fsync_dir(self.dir)
        self._next += 1
        self.count += 1
        return sf

    def read(self, path: Path) -> SpooledFrame:
        try:
            sf = _from_json(json.loads(path.read_bytes()))
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise SpoolCorrupt(f"{path}: {e}") from None
        return replace(sf, frame=replace(sf.frame, path=str(path)))  # where it is now, should the folder have moved

    def remove(self, path: Path) -> None:
        """After its commit (not fsync'd: a removal lost in a crash is refused as a duplicate on replay)."""
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
            self.count -= 1

    def set_aside(self, path: Path) -> Path:
        """A file that cannot be read back goes to bad/, kept for a person to look at, out of the way."""
        bad = self.dir / "bad"
        bad.mkdir(exist_ok=True)
        target = bad / path.name
        with contextlib.suppress(FileNotFoundError):
            os.replace(path, target)
            self.count -= 1
        return target


def open_spool(cfg: WatchConfig, media_dir: Path) -> Spool:
    """The line's spool: `store.spool_dir`, by default spool/<line>/ beside the media folder (lines that share a
    media folder still get one spool each: a spool is one line's, in order)."""
    d = cfg.store.spool_dir or media_dir.parent / "spool" / cfg.line
    try:
        return Spool(d, cfg.store.spool_max_frames)
    except OSError as e:
        raise InspectorError(f"store.spool_dir {d}: cannot use it ({e.strerror or e})") from None


def _seq(path: Path) -> int:
    try:
        return int(path.name[: -len(SUFFIX)])
    except ValueError:
        return -1


def _fsync_dir(d: Path) -> None:
    fd = os.open(d, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _to_json(sf: SpooledFrame) -> dict:
    frame = {**asdict(sf.frame), "created_at": sf.frame.created_at.isoformat()}
    if sf.frame.latent is not None:  # the embedding's float32 bytes as base64 text
        frame["latent"] = {**frame["latent"], "vector": base64.b64encode(sf.frame.latent.vector).decode()}
    return {
        "format": FORMAT,
        "frame": frame,
        "flag": asdict(sf.flag) if sf.flag else None,
        "alert": sf.alert,
        "origin": sf.origin,
        "model_version": sf.model_version,
    }


def _from_json(d: dict) -> SpooledFrame:
    if d.get("format") != FORMAT:
        raise ValueError(f"spool format {d.get('format')!r}, expected {FORMAT}")
    lat = d["frame"].get("latent")
    point = LatentPoint(**{**lat, "vector": base64.b64decode(lat["vector"])}) if lat else None
    frame = ScoredFrame(
        **{**d["frame"], "created_at": datetime.fromisoformat(d["frame"]["created_at"]), "latent": point}
    )
    flag = FlagRecord(**d["flag"]) if d["flag"] is not None else None
    return SpooledFrame(frame, flag, bool(d["alert"]), str(d["origin"]), str(d["model_version"]))
