"""Operations around the loop: Prometheus metrics, /health, structured logs, stop signals."""

from __future__ import annotations

import json
import logging
import signal
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

log = logging.getLogger("inspector.watch")


class Metrics:
    """The watcher's Prometheus metrics, in their own registry (several watchers may share a process in tests)."""

    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.scored = Counter("inspector_frames_scored", "Frames scored", ["source"], registry=r)
        self.flagged = Counter("inspector_frames_flagged", "Frames stored as flagged items", ["source"], registry=r)
        self.dropped = Counter(
            "inspector_frames_dropped", "Camera frames skipped because scoring was busy", ["source"], registry=r
        )
        self.errors = Counter("inspector_frame_errors", "Unreadable or unscorable inputs", ["source"], registry=r)
        self.alerts = Counter("inspector_alerts", "Alert delivery attempts", ["sink", "result"], registry=r)
        self.queue = Gauge("inspector_queue_depth", "Inputs waiting to be scored", ["source"], registry=r)
        self.outbox = Gauge("inspector_outbox_pending", "Alerts not yet acknowledged", ["sink"], registry=r)
        self.latency = Histogram(
            "inspector_frame_seconds",
            "Time from reading a frame to its committed result",
            ["source"],
            registry=r,
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
        )
        self.model = Gauge("inspector_model_info", "Model version in use (value 1)", ["version"], registry=r)
        self.media_unsaved = Counter(
            "inspector_media_unsaved",
            "Flagged camera frames recorded without their images (the media folder could not be written)",
            ["source"],
            registry=r,
        )
        self.media_free = Gauge(
            "inspector_media_free_bytes", "Free space on the media folder's file system", registry=r
        )

    def set_model(self, version: str) -> None:
        self.model.clear()
        self.model.labels(version=version).set(1)


class OpsServer:
    """`/health` (JSON from `health()`, HTTP 503 when not ok) and `/metrics` on a small HTTP server."""

    def __init__(self, host: str, port: int, metrics: Metrics, health: Callable[[], dict]) -> None:
        ops = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - http.server API
                if self.path.startswith("/metrics"):
                    body, ctype, code = generate_latest(metrics.registry), CONTENT_TYPE_LATEST, 200
                elif self.path.startswith("/health"):
                    h = ops.health()
                    body, ctype, code = (
                        json.dumps(h, default=str).encode(),
                        "application/json",
                        200 if h.get("ok") else 503,
                    )
                else:
                    body, ctype, code = b"not found\n", "text/plain", 404
                self.send_response(code)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, fmt: str, *args) -> None:
                pass  # scrapes every few seconds would drown the log

        self.health = health
        self.server = ThreadingHTTPServer((host, port), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self._thread = threading.Thread(target=self.server.serve_forever, name="ops-http", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class JsonFormatter(logging.Formatter):
    """One JSON object per line, with any `extra=` fields, for log shippers."""

    _skip = set(vars(logging.makeLogRecord({}))) | {"message", "asctime"}

    def format(self, record: logging.LogRecord) -> str:
        doc = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        doc.update({k: v for k, v in vars(record).items() if k not in self._skip})
        if record.exc_info:
            doc["exc"] = self.formatException(record.exc_info)
        return json.dumps(doc, default=str)


def setup_logging(fmt: str) -> None:
    """Text logs as the CLI set them up, or JSON lines on the same handlers."""
    root = logging.getLogger()
    if not root.handlers:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if fmt == "json":
        for h in root.handlers:
            h.setFormatter(JsonFormatter())


def install_stop_handlers(stop: threading.Event) -> None:
    """SIGTERM/SIGINT ask the loop to finish its frame and stop; a second signal stops at once."""

    def handler(signum: int, _frame) -> None:
        if stop.is_set():
            raise SystemExit(128 + signum)
        log.info("received %s: finishing the current frame, then stopping", signal.Signals(signum).name)
        stop.set()

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, handler)
        signal.signal(signal.SIGINT, handler)
