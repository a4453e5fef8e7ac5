"""The io layer's hot folder and camera as `FrameSource`s, so the loop treats every source alike.

The adapters only translate: reading, moving and capturing stay in `inspector.io.sources` / `io.camera`.
`open_source` is the one place that maps a source config to its kind.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import replace

import numpy as np

from inspector.config.line import CameraSourceConfig, FolderSourceConfig
from inspector.data.images import read_image
from inspector.io.camera import CameraSource
from inspector.io.sources import FileItem, FolderSource
from inspector.watcher.protocols import FrameSource, Input

log = logging.getLogger("inspector.watch")


class HotFolder:
    """A hot folder: files are replayable (a file not recorded stays in the folder and is scored again)."""

    kind = "folder"
    replayable = True

    def __init__(self, cfg: FolderSourceConfig) -> None:
        self.folder = FolderSource(cfg)
        self.name = cfg.name
        self._limits = (cfg.max_pixels, int(cfg.max_file_mb * 2**20))

    def start(self, wake: threading.Event) -> None:
        self.folder.start(wake)

    def stop(self) -> None:
        self.folder.stop()

    def poll(self) -> Input | None:
        item = self.folder.poll()
        if item is None:
            return None
        return Input(item.key, item.relpath, item.path.suffix.lower() or ".png", str(item.path), item.maybe_done, item)

    def read(self, inp: Input) -> tuple[np.ndarray, bytes]:
        item: FileItem = inp.handle
        return read_image(item.path, *self._limits)

    def recorded(self, inp: Input, status: str, reason: str | None) -> Input | None:
        if status != "quarantined":
            log.info("folder %s: %s was already recorded (%s); finishing it", self.name, inp.origin, status)
            self.finish(inp)
            return None
        # read again: it came back from quarantine (fixed), or its move was cut short; with the same key it was
        # complete when judged, so no wait for its writer this time
        return replace(inp, handle=replace(inp.handle, complete=True))

    def defer(self, inp: Input, error: Exception) -> bool:
        item: FileItem = inp.handle
        if item.complete:
            return False
        # maybe still being written: never quarantine a file its writer still holds
        if self.folder.defer(item):
            log.info(
                "folder %s: %s is not readable yet (%s); waiting until it is closed or unchanged for %.0f s",
                self.name,
                inp.origin,
                error,
                self.folder.cfg.incomplete_wait_s,
                extra={"source": self.name},
            )
        return True

    def depth(self) -> int:
        return self.folder.depth()

    def take_dropped(self) -> int:
        return 0  # a folder keeps every file until it is scored

    def health(self) -> dict:
        return {"kind": self.kind, "waiting": self.depth()}

    def finish(self, inp: Input) -> None:
        self.folder.finish(inp.handle)

    def release(self, inp: Input) -> None:
        self.folder.release(inp.handle)

    def quarantine(self, inp: Input, reason: str) -> None:
        log.warning("folder %s: quarantined %s: %s", self.name, inp.origin, reason, extra={"source": self.name})
        self.folder.quarantine(inp.handle, reason)


class Camera:
    """A camera or video file: frames exist only in memory, so they are not replayable."""

    kind = "camera"
    replayable = False

    def __init__(self, cfg: CameraSourceConfig) -> None:
        self.camera = CameraSource(cfg)
        self.name = cfg.name
        self._origin, self._ext = str(cfg.uri), "." + cfg.image_format

    def start(self, wake: threading.Event) -> None:
        self.camera.start(wake)

    def stop(self) -> None:
        self.camera.stop()

    def poll(self) -> Input | None:
        item = self.camera.poll()
        return None if item is None else Input(item.key, self._origin, self._ext, None, False, item)

    def read(self, inp: Input) -> tuple[np.ndarray, np.ndarray]:
        return inp.handle.frame, inp.handle.frame

    def recorded(self, inp: Input, status: str, reason: str | None) -> Input | None:
        return None  # camera frames are never in the ledger

    def defer(self, inp: Input, error: Exception) -> bool:
        return False  # a frame is complete when it arrives

    def depth(self) -> int:
        return self.camera.depth()

    def take_dropped(self) -> int:
        return self.camera.take_dropped()

    def health(self) -> dict:
        return {
            "kind": self.kind,
            "waiting": self.depth(),
            "connected": self.camera.connected,
            "finished": self.camera.finished,
        }

    def finish(self, inp: Input) -> None:
        pass  # nothing to move: the frame is recorded

    def release(self, inp: Input) -> None:
        pass  # never offered again: the writer holds unrecorded frames in memory

    def quarantine(self, inp: Input, reason: str) -> None:
        log.error("camera %s: frame %d: %s", self.name, inp.handle.index, reason)


def open_source(cfg: FolderSourceConfig | CameraSourceConfig) -> FrameSource:
    """The source a config describes (not started)."""
    return Camera(cfg) if isinstance(cfg, CameraSourceConfig) else HotFolder(cfg)
