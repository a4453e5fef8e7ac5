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

from inspector.errors import InspectorError
from inspector.config.line import LineModel, load_config

log = logging.getLogger("inspector.watch")


def load_scorer(cfg: LineModel) -> Any:
    """The ONNX runtime's Scorer for `cfg.path`, or a custom/test scorer named 'module:factory'."""
    if cfg.scorer:
        module, _, attr = cfg.scorer.partition(":")
        try:
            obj: Any = importlib.import_module(module)
            for part in attr.split("."):
                obj = getattr(obj, part)
        except (ImportError, AttributeError) as e:
            raise InspectorError(f"model.scorer {cfg.scorer}: cannot import ({e})") from None
        return obj(cfg.path)
    if not cfg.path.exists():
        raise InspectorError(f"model.path {cfg.path}: no such model folder")
    try:
        from inspector.runtime import Scorer
        from inspector.runtime.providers import GpuOptions
    except ImportError as e:
        raise InspectorError(f"the ONNX runtime is not available ({e}); install inspector[runtime]") from None
    gpu = GpuOptions(**{**cfg.gpu.model_dump(), "trt_cache_dir": str(cfg.gpu.trt_cache_dir) if cfg.gpu.trt_cache_dir else None})
    return Scorer.load(cfg.path, providers=cfg.providers, threads=cfg.threads, gpu=gpu)


def run(config: Path) -> int:
    """Watch the line described by `config` until stopped; returns the exit code."""
    from inspector.io.sinks import build_sink
    from inspector.io.store import Store
    from inspector.watcher.loop import Watcher
    from inspector.watcher.ops import Metrics, OpsServer, install_stop_handlers, setup_logging

    cfg = load_config(config)
    setup_logging(cfg.ops.log_format)
    stop = threading.Event()
    install_stop_handlers(stop)
    store = Store.open(cfg.store.url, cfg.store.media_dir)
    try:
        scorer = load_scorer(cfg.model)
        sinks = {c.name: build_sink(c, cfg.line) for c in cfg.sinks}
        metrics = Metrics()
        watcher = Watcher(cfg, scorer, store, sinks, metrics)
        ops = None
        if cfg.ops.port:
            try:
                ops = OpsServer(cfg.ops.host, cfg.ops.port, metrics, watcher.health)
            except OSError as e:
                raise InspectorError(f"ops.port {cfg.ops.port}: cannot listen on {cfg.ops.host} ({e.strerror})") from None
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
