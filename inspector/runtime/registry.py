"""Exported model versions in a model folder, and which one is live.

```
models/ballscrew/
  staging/            fit + calibrate output (torch)
  v1/ v2/ ...         model.onnx + manifest.json + calibration.json, never changed once written
  current -> v2       symlink, swapped atomically (a new link renamed over the old one)
  history.jsonl       one line per promotion: time, version, previous, user, host, reason
```

Versions are numbered monotonically (never reusing a number seen in the folder or its history) and
appear whole: export writes a hidden temp folder and renames it into place. Where the filesystem has
no symlinks, `current` is a small text file holding the version name, written the same atomic way.
Torch-free: the edge box uses this to follow `current`.
"""

from __future__ import annotations

import contextlib
import getpass
import json
import os
import re
import socket
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from inspector.errors import InspectorError
from inspector.runtime.manifest import load_verified

CURRENT = "current"
HISTORY = "history.jsonl"
_VERSION = re.compile(r"^v(\d+)$")


def version_number(name: str) -> int | None:
    m = _VERSION.match(name)
    return int(m.group(1)) if m else None


def list_versions(model_dir: Path) -> list[str]:
    """Exported versions present in the folder, oldest first."""
    if not Path(model_dir).is_dir():
        return []
    names = [p.name for p in Path(model_dir).iterdir() if p.is_dir() and not p.is_symlink()]
    return sorted((n for n in names if version_number(n) is not None), key=version_number)


def current_version(model_dir: Path) -> str | None:
    """Name of the version `current` points at, or None before the first promotion."""
    link = Path(model_dir) / CURRENT
    try:
        target = os.readlink(link)
    except FileNotFoundError:
        return None
    except OSError:  # not a symlink: the pointer-file form
        target = link.read_text().strip()
    name = Path(target).name
    if version_number(name) is None:
        raise InspectorError(f"{link} points at {target!r}, not a version folder: run `inspector promote` again")
    return name


def resolve(path: Path) -> tuple[Path, Path | None]:
    """(version folder, model folder or None) for a version folder, `current`, or a model folder."""
    path = Path(path)
    if path.name == CURRENT:
        path = path.parent
    if (path / CURRENT).exists() or (path / CURRENT).is_symlink():
        name = current_version(path)
        if not (path / name).is_dir():
            raise InspectorError(f"{path / CURRENT} points at {name}, which does not exist: promote another version")
        return path / name, path
    if version_number(path.name) is not None and path.is_dir():
        return path, None
    if not path.exists():
        raise InspectorError(f"model folder {path} does not exist")
    hint = "run `inspector promote` to choose one" if list_versions(path) else "run `inspector export` first"
    raise InspectorError(f"{path} has no current model version: {hint}")


def _history_numbers(model_dir: Path) -> list[int]:
    nums = []
    for entry in history(model_dir):
        n = version_number(str(entry.get("version", "")))
        nums.append(n if n is not None else 0)
    return nums


def publish(tmp: Path, model_dir: Path) -> Path:
    """Rename a fully written temp folder to the next free `v<N>`; returns it."""
    model_dir = Path(model_dir)
    _readable(Path(tmp))
    n = max([0, *(version_number(v) for v in list_versions(model_dir)), *_history_numbers(model_dir)])
    for number in range(n + 1, n + 1000):
        final = model_dir / f"v{number}"
        if final.exists():
            continue
        try:
            os.rename(tmp, final)  # fails if another export took this name meanwhile
            return final
        except OSError:
            if not final.exists():
                raise
    raise InspectorError(f"cannot find a free version number in {model_dir}")


def _readable(folder: Path) -> None:
    """Temp files are created private (0600); a version must be readable by the scoring service."""
    os.chmod(folder, 0o755)
    for p in folder.iterdir():
        if p.is_file():
            os.chmod(p, 0o644)


@contextlib.contextmanager
def _locked(model_dir: Path) -> Iterator[None]:
    """Serialize promotions of one model folder (read previous, swap, log) across processes."""
    try:
        import fcntl
    except ImportError:  # Windows: promotions there are rare and manual
        yield
        return
    with open(Path(model_dir) / ".registry.lock", "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _point(model_dir: Path, name: str) -> None:
    """Atomically make `current` name `name`: build the new pointer beside it, rename over."""
    tmp = Path(model_dir) / f".{CURRENT}.{os.getpid()}.tmp"
    with contextlib.suppress(FileNotFoundError):
        os.unlink(tmp)
    try:
        os.symlink(name, tmp, target_is_directory=True)
    except (OSError, NotImplementedError):
        with open(tmp, "w") as f:
            f.write(name + "\n")
            f.flush()
            os.fsync(f.fileno())
    os.replace(tmp, Path(model_dir) / CURRENT)


def promote(model_dir: Path, version: str, reason: str = "promote") -> Path:
    """Point `current` at `version` after checking it loads; records the promotion in the history."""

    model_dir = Path(model_dir)
    name = Path(str(version)).name
    name = name if name.startswith("v") else f"v{name}"
    if version_number(name) is None:
        raise InspectorError(
            f"{version!r} is not a version name: use e.g. v3 (have: {', '.join(list_versions(model_dir)) or 'none'})"
        )
    target = model_dir / name
    if not target.is_dir():
        have = ", ".join(list_versions(model_dir)) or "none; run `inspector export`"
        raise InspectorError(f"{target} does not exist (versions: {have})")
    load_verified(target)  # never point `current` at a damaged artifact
    with _locked(model_dir):
        previous = None
        with contextlib.suppress(InspectorError):  # a broken pointer is what promote repairs
            previous = current_version(model_dir)
        _point(model_dir, name)
        _append_history(model_dir, {"version": name, "previous": previous, "reason": reason})
    return target


def _append_history(model_dir: Path, entry: dict) -> None:
    try:
        user = getpass.getuser()
    except Exception:  # no login name in some containers
        user = str(os.getuid()) if hasattr(os, "getuid") else "unknown"
    line = {"time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), **entry, "user": user, "host": socket.gethostname()}
    with open(Path(model_dir) / HISTORY, "a") as f:
        f.write(json.dumps(line) + "\n")
        f.flush()
        os.fsync(f.fileno())


def history(model_dir: Path) -> list[dict]:
    """Promotions, oldest first. A line torn by a crash mid-write is skipped, not fatal."""
    path = Path(model_dir) / HISTORY
    if not path.is_file():
        return []
    out = []
    for line in path.read_text().splitlines():
        with contextlib.suppress(json.JSONDecodeError):
            entry = json.loads(line)
            if isinstance(entry, dict):
                out.append(entry)
    return out


def new_temp_dir(model_dir: Path) -> Path:
    """A hidden folder inside the model folder (same filesystem, so `publish` can rename it)."""
    Path(model_dir).mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(dir=model_dir, prefix=".export-"))
