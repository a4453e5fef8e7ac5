"""`inspector watch`: the long-running loop next to the line. Never imports torch.

`run(config)` loads a line config, opens the store, loads the scorer, starts the sinks and the
/health + /metrics server, and scores until SIGTERM/SIGINT.
"""

from __future__ import annotations

import importlib
import logging
import threading
from pathlib import Path
from typing import Any

from inspector.config.line import LineModel, load_config
from inspector.errors import InspectorError
from inspector.watcher.protocols import Scorer

log = logging.getLogger("inspector.watch")
STORE_RETRY_S = 2.0  # a store that is down at start is tried again this often


def load_scorer(cfg: LineModel) -> Scorer:
    """The ONNX runtime's Scorer for `cfg.path`, or a custom/test scorer named 'module:factory'."""
    if cfg.scorer:
        module, _, attr = cfg.scorer.partition(":")
        try:
            obj: Any = importlib.import_module(module)
            for part in attr.split("."):
                obj = getattr(obj, part)
        except (ImportError, AttributeError) as e:
            raise InspectorError(f"model.scorer {cfg.scorer}: cannot import ({e})") from None
        return obj(cfg.path)  # trusted to have the Scorer interface (a test double, a custom model)
    if not cfg.path.exists():
        raise InspectorError(f"model.path {cfg.path}: no such model folder")
    try:
        from inspector.runtime import Scorer
        from inspector.runtime.providers import GpuOptions
    except ImportError as e:
        raise InspectorError(f"the ONNX runtime is not available ({e}); install inspector[runtime]") from None
    gpu = GpuOptions(
        **{**cfg.gpu.model_dump(), "trt_cache_dir": str(cfg.gpu.trt_cache_dir) if cfg.gpu.trt_cache_dir else None}
    )
    return Scorer.load(cfg.path, providers=cfg.providers, threads=cfg.threads, gpu=gpu)


def open_store(url: str, media_dir: Path | None, stop: threading.Event, retry_s: float = STORE_RETRY_S) -> Any:
    """The store, once it answers: a server that is down at start is waited for (one line each way), as when it
    goes down later; a mistake in the URL is one InspectorError line at once. None when stopped meanwhile."""
    from inspector.io.store import Store, StoreUnavailable

    waiting = False
    while True:
        try:
            store = Store.open(url, media_dir)
        except StoreUnavailable as e:
            if not waiting:
                log.error("store unavailable at start (%s); waiting for it, trying again every %.0f s", e, retry_s)
            waiting = True
            if stop.wait(retry_s):
                return None
            continue
        if waiting:
            log.info("store available again")
        return store


def run(config: Path) -> int:
    """Watch the line described by `config` until stopped; returns the exit code."""
    from inspector.io.sinks import build_sink
    from inspector.watcher.loop import Watcher
    from inspector.watcher.ops import Metrics, OpsServer, install_stop_handlers, setup_logging

    cfg = load_config(config)
    setup_logging(cfg.ops.log_format)
    stop = threading.Event()
    install_stop_handlers(stop)
    scorer = load_scorer(cfg.model)  # a wrong model path stops here, before the store is created or migrated
    store = open_store(cfg.store.url, cfg.store.media_dir, stop)
    if store is None:
        return 0  # stopped while waiting for the store
    try:
        sinks = {c.name: build_sink(c, cfg.line) for c in cfg.sinks}
        metrics = Metrics()
        watcher = Watcher(cfg, scorer, store, sinks, metrics)
        ops = None
        if cfg.ops.port:
            try:
                ops = OpsServer(cfg.ops.host, cfg.ops.port, metrics, watcher.health)
            except OSError as e:
                raise InspectorError(
                    f"ops.port {cfg.ops.port}: cannot listen on {cfg.ops.host} ({e.strerror})"
                ) from None
            ops.start()
            log.info("health and metrics on http://%s:%d/health and /metrics", cfg.ops.host, ops.port)
        try:
            watcher.run(stop)
        finally:
            if ops is not None:
                ops.stop()
    finally:
        store.close()
    return 0
