"""Camera source: OpenCV capture of a USB index, an RTSP/HTTP URL or a video file.

A reader thread keeps only the newest sampled frame. When scoring is slower than the camera, the loop
always gets the latest frame and the frames it never saw are counted as dropped, instead of a queue
growing and the verdicts falling further and further behind the line. A stream that drops or never
answers is reopened with exponential backoff; the watcher keeps running meanwhile, with one warning when a
camera goes away and one line when it is back (FFmpeg's and OpenCV's own lines on each retry are silenced).
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import cv2
import numpy as np

import inspector.data.preprocess  # noqa: F401 - sets OpenCV's decoder limits before cv2 is used
from inspector.config.line import CameraSourceConfig

log = logging.getLogger("inspector.watch.camera")


@dataclass(frozen=True)
class FrameItem:
    source: str
    frame: np.ndarray  # (H, W, 3) uint8 BGR
    key: str
    index: int  # frame counter since the source started
    t: float  # wall-clock capture time (s)


def sample_frame(index: int, t: float, last_t: float | None, every_nth: int, max_fps: float | None) -> bool:
    """Frame sampling: keep every Nth frame, and at most max_fps frames per second."""
    if index % every_nth:
        return False
    return max_fps is None or last_t is None or t - last_t >= 1.0 / max_fps - 1e-6


def camera_key(source: str, session: str, index: int) -> str:
    """Camera frames cannot be replayed, so the key only has to be unique (session = start time)."""
    return hashlib.sha256(f"cam|{source}|{session}|{index}".encode()).hexdigest()[:40]


def quiet_capture_logs() -> None:
    """FFmpeg and OpenCV print a raw line of their own on every failed open ("[tcp @ 0x...] Connection refused"):
    the camera's one line per outage says it instead. FFmpeg's level is read when the first capture opens (and set
    in `inspector/__init__` already); variables set by the user win."""
    os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "8")  # AV_LOG_FATAL
    if "OPENCV_LOG_LEVEL" not in os.environ:
        cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_ERROR)


def open_capture(uri: int | str, timeout_s: float) -> cv2.VideoCapture | None:
    """Open a capture or return None; open/read timeouts keep a dead RTSP host from hanging us."""
    if isinstance(uri, int):
        cap = cv2.VideoCapture(uri)
    else:
        ms = int(timeout_s * 1000)
        cap = cv2.VideoCapture(
            uri, cv2.CAP_FFMPEG, [cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, ms, cv2.CAP_PROP_READ_TIMEOUT_MSEC, ms]
        )
    if not cap.isOpened():
        cap.release()
        return None
    return cap


class CameraSource:
    """`poll()` returns the newest sampled frame not yet scored; `take_dropped()` counts skipped ones."""

    kind = "camera"

    def __init__(self, cfg: CameraSourceConfig) -> None:
        self.cfg = cfg
        self.name = cfg.name
        self.is_file = isinstance(cfg.uri, str) and "://" not in cfg.uri
        self.finished = False  # a video file reached its end (loop: false)
        self.connected = False
        self._down_since: float | None = None  # monotonic start of the current outage (None: reading, or not yet)
        self._retries = 0
        self._session = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S.%f")
        self._slot: FrameItem | None = None
        self._dropped = 0
        self._index = 0
        self._last_t: float | None = None
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._taken = threading.Event()
        self._wake: threading.Event | None = None
        self._thread: threading.Thread | None = None

    def start(self, wake: threading.Event) -> None:
        self._wake = wake
        quiet_capture_logs()
        self._thread = threading.Thread(target=self._run, name=f"camera-{self.name}", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=self.cfg.open_timeout_s + 2)

    def poll(self, now: float | None = None) -> FrameItem | None:
        with self._lock:
            item, self._slot = self._slot, None
        if item is not None:
            self._taken.set()
        return item

    def take_dropped(self) -> int:
        """Frames replaced by a newer one before the loop took them, since the last call."""
        with self._lock:
            n, self._dropped = self._dropped, 0
        return n

    def depth(self) -> int:
        return int(self._slot is not None)

    def _describe(self) -> str:
        return Path(self.cfg.uri).name if self.is_file else str(self.cfg.uri)

    def _run(self) -> None:
        delay = self.cfg.reconnect_min_s
        while not self._stop.is_set():
            cap = open_capture(self.cfg.uri, self.cfg.open_timeout_s)
            if cap is None:
                self._down(f"cannot open {self._describe()}", delay)
            else:
                got_any = self._read(cap)
                cap.release()
                self.connected = False
                if got_any:
                    delay = self.cfg.reconnect_min_s
                if self.is_file and not self.cfg.loop and got_any:
                    log.info("camera %s: end of video file %s", self.name, self._describe())
                    self.finished = True
                    if self._wake is not None:
                        self._wake.set()
                    return
                if self.is_file and self.cfg.loop and got_any:
                    continue
                self._down(
                    f"stream {self._describe()} dropped" if got_any else f"no frames from {self._describe()}", delay
                )
            self._stop.wait(delay)
            delay = min(delay * 2, self.cfg.reconnect_max_s)

    def _down(self, what: str, delay: float) -> None:
        """One warning per outage; the retries after it are debug lines."""
        if self._down_since is None:
            self._down_since, self._retries = time.monotonic(), 0
            log.warning(
                "camera %s: %s; retrying with backoff up to %g s (one line when it is back)",
                self.name,
                what,
                self.cfg.reconnect_max_s,
            )
        else:
            self._retries += 1
            log.debug("camera %s: %s; next try in %.1f s", self.name, what, delay)

    def _up(self) -> None:
        """The first frame after a start or an outage."""
        self.connected = True
        if self._down_since is None:
            log.info("camera %s: reading %s", self.name, self._describe())
        else:
            log.info(
                "camera %s: reading %s again after %.0f s (%d retries)",
                self.name,
                self._describe(),
                time.monotonic() - self._down_since,
                self._retries,
            )
        self._down_since = None

    def _read(self, cap: cv2.VideoCapture) -> bool:
        """Read until the stream ends or fails; True when at least one frame was read."""
        fps = cap.get(cv2.CAP_PROP_FPS) if self.is_file and self.cfg.realtime else 0.0
        t0, n = time.monotonic(), 0
        while not self._stop.is_set():
            ok, frame = cap.read()
            if not ok or frame is None:
                return n > 0
            n += 1
            if n == 1:
                self._up()
            if fps and fps > 0:  # a video file played like a camera
                self._stop.wait(max(0.0, t0 + n / fps - time.monotonic()))
            elif self.is_file:  # as fast as scoring allows: wait for the slot instead of dropping
                while self._slot is not None and not self._stop.is_set():
                    self._taken.wait(0.05)
                    self._taken.clear()
            self._offer(frame)
        return n > 0

    def _offer(self, frame: np.ndarray) -> None:
        index, self._index = self._index, self._index + 1
        t = time.time()
        if not sample_frame(index, t, self._last_t, self.cfg.every_nth, self.cfg.max_fps):
            return
        self._last_t = t
        if frame.ndim == 2:
            frame = cv2.cvtColor(frame, cv2.COLOR_GRAY2BGR)
        item = FrameItem(self.name, frame, camera_key(self.name, self._session, index), index, t)
        with self._lock:
            if self._slot is not None:
                self._dropped += 1
            self._slot = item
        if self._wake is not None:
            self._wake.set()
