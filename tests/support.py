"""Helpers for the watcher tests: a deterministic scorer double, image/config writers, service probes.

`BrightnessScorer` implements the `inspector.runtime.Scorer` interface with a transparent rule
(raw score = mean brightness / 128), so a test knows which frames are anomalous. Subprocess watchers
load it through the config's `model.scorer: "tests.support:BrightnessScorer"` hook, with the
repository root on PYTHONPATH. Its "model folder" holds `double.json` (threshold, version, delay per frame);
rewriting that file is a new `current` version for the hot-reload path.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import cv2
import numpy as np
import yaml

from inspector.data.preprocess import overlay
from inspector.types import FrameResult

TESTS = Path(__file__).resolve().parent
ROOT = TESTS.parent
PYTHON = sys.executable


class BrightnessScorer:
    """Scorer double: raw score = mean gray level / 128; anomaly map = gray level / 128 / threshold."""

    latent = None  # no latent map: frames keep no embedding

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._stamp: int | None = None
        self._read()

    def _read(self) -> None:
        f = self.path / "double.json"
        self._stamp = f.stat().st_mtime_ns
        d = json.loads(f.read_text())
        self.threshold = float(d.get("threshold", 1.0))
        self.version = str(d.get("version", "v1"))
        self.delay_s = float(d.get("delay_s", 0.0))
        self.manifest = {"threshold": self.threshold, "version": self.version}

    @classmethod
    def load(cls, path: Path, providers=None) -> BrightnessScorer:
        return cls(path)

    def reload_if_changed(self) -> bool:
        if (self.path / "double.json").stat().st_mtime_ns == self._stamp:
            return False
        old = self.version
        self._read()
        return self.version != old

    def score(self, frame, overlay: bool = False, threshold: float | None = None) -> FrameResult:
        img = cv2.imread(str(frame)) if isinstance(frame, (str, Path)) else frame
        if self.delay_s:
            time.sleep(self.delay_s)
        thr = self.threshold if threshold is None else threshold
        gray = cv2.cvtColor(img, cv2.COLOR_BGR2GRAY).astype(np.float32) / 128.0
        raw = float(gray.mean())
        amap = gray / thr
        ov = _overlay(img, amap) if overlay else None
        return FrameResult(score=raw / thr, raw_score=raw, is_anomaly=raw >= thr, anomaly_map=amap, overlay=ov)

    def score_batch(self, frames, overlay: bool = False, threshold: float | None = None) -> list[FrameResult]:
        return [self.score(f, overlay, threshold) for f in frames]


_overlay = overlay


def write_double(model_dir: Path, threshold: float = 1.0, version: str = "v1", delay_s: float = 0.0) -> Path:
    model_dir.mkdir(parents=True, exist_ok=True)
    (model_dir / "double.json").write_text(json.dumps({"threshold": threshold, "version": version, "delay_s": delay_s}))
    return model_dir


def part_image(seed: int, bright: bool, size: int = 32) -> np.ndarray:
    """A tiny seeded 'part': dark (good, mean ~60) or bright (anomalous, mean ~200)."""
    rng = np.random.default_rng(seed)
    base = 200 if bright else 60
    return np.clip(rng.normal(base, 10, (size, size, 3)), 0, 255).astype(np.uint8)


def drop(folder: Path, name: str, img: np.ndarray) -> Path:
    """Write an image the way a well-behaved producer does: temp name, then rename."""
    folder.mkdir(parents=True, exist_ok=True)
    ext = Path(name).suffix
    tmp = folder / f".{name}.{uuid.uuid4().hex[:6]}.tmp"
    ok, buf = cv2.imencode(ext, img)
    assert ok
    tmp.write_bytes(buf.tobytes())
    os.replace(tmp, folder / name)
    return folder / name


def write_config(path: Path, doc: dict) -> Path:
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def line_config(tmp: Path, model_dir: Path, sources: list[dict], sinks: list[dict] | None = None, **extra) -> dict:
    """A config dict using the scorer double."""
    doc = {
        "line": extra.pop("line", f"t{uuid.uuid4().hex[:8]}"),
        "model": {"path": str(model_dir), "scorer": "tests.support:BrightnessScorer", "reload_check_s": 0.2},
        "sources": sources,
        "sinks": sinks or [],
        "store": {"url": f"sqlite:///{tmp / 'store' / 'store.db'}"},
        "outbox": {"backoff_min_s": 0.2, "backoff_max_s": 1.0},
        "ops": {"port": 0},
    }
    doc.update(extra)
    return doc


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex((host, port)) == 0


def watcher_env() -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return env


def spawn_watcher(config: Path, log_path: Path, **kw) -> subprocess.Popen:
    """`inspector watch --config ...` as a real process, its log appended to log_path."""
    log = open(log_path, "ab")
    return subprocess.Popen(
        [PYTHON, "-m", "inspector.cli.main", "watch", "--config", str(config)],
        cwd=str(ROOT),
        env=watcher_env(),
        stdout=log,
        stderr=subprocess.STDOUT,
        **kw,
    )


def wait_for(cond, timeout: float, step: float = 0.05, what: str = "condition"):
    """Poll `cond()` until truthy; fail with `what` after `timeout` seconds (never asserts speed)."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        v = cond()
        if v:
            return v
        time.sleep(step)
    raise AssertionError(f"timed out waiting for {what}")


class MqttCollector:
    """Subscribes (QoS 1) and records every message payload per topic, in arrival order."""

    def __init__(self, topic: str, port: int = 1883, client_id: str | None = None, clean: bool = True) -> None:
        import paho.mqtt.client as mqtt

        self.messages: list[tuple[str, dict]] = []
        self.subscribed = False
        self.topic = topic
        self.c = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2, client_id=client_id or f"col-{uuid.uuid4().hex[:8]}", clean_session=clean
        )
        self.c.on_connect = lambda c, u, f, rc, p: c.subscribe(topic, qos=1)
        self.c.on_subscribe = lambda *a: setattr(self, "subscribed", True)
        self.c.on_message = lambda c, u, m: self.messages.append((m.topic, json.loads(m.payload)))
        self.c.reconnect_delay_set(0.2, 1)
        self.c.connect_async("127.0.0.1", port)
        self.c.loop_start()
        wait_for(lambda: self.subscribed, 10, what=f"subscription to {topic}")

    def keys(self) -> set[str]:
        return {p["idempotency_key"] for _, p in self.messages}

    def close(self) -> None:
        self.c.disconnect()
        self.c.loop_stop()


class HookServer:
    """A local HTTP receiver: records POSTs; answers `status` (set it to 500 to play a broken endpoint)."""

    def __init__(self) -> None:
        import threading
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        hook = self
        self.status = 200
        self.requests: list[tuple[dict, bytes]] = []
        self.attempts = 0

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                hook.attempts += 1
                if hook.status == 200:
                    hook.requests.append((dict(self.headers), body))
                self.send_response(hook.status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *a) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def payloads(self) -> list[dict]:
        return [json.loads(b) for _, b in self.requests]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def big_png(path: Path, w: int = 20000, h: int = 20000) -> Path:
    """A valid, all-black w x h grayscale PNG written without ever holding the pixels (a few hundred KB)."""
    import struct
    import zlib

    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)

    co, row = zlib.compressobj(1), b"\x00" * (w + 1)
    idat = b"".join([co.compress(row * 500) for _ in range(h // 500)] + [co.compress(row * (h % 500)), co.flush()])
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 0, 0, 0, 0))
        + chunk(b"IDAT", idat)
        + chunk(b"IEND", b"")
    )
    return path


def write_video(path: Path, frames: list[np.ndarray], fps: float = 30.0) -> Path:
    """An MJPG .avi written with OpenCV (what a test camera source reads)."""
    h, w = frames[0].shape[:2]
    vw = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), fps, (w, h))
    assert vw.isOpened()
    for f in frames:
        vw.write(f)
    vw.release()
    return path


@contextlib.contextmanager
def temp_database(admin_url: str = "postgresql+psycopg://postgres@127.0.0.1:5432/test"):
    """A fresh PostgreSQL database on the local server, dropped afterwards (never leaves junk)."""
    import sqlalchemy as sa

    name = f"inspector_test_{uuid.uuid4().hex[:10]}"
    admin = sa.create_engine(admin_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as c:
        c.execute(sa.text(f'CREATE DATABASE "{name}"'))
    try:
        yield f"postgresql://postgres@127.0.0.1:5432/{name}"
    finally:
        with admin.connect() as c:
            c.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()
