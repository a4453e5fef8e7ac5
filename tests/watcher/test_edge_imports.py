"""The edge box runs without torch: the watcher, io and runtime packages must never import it."""

from __future__ import annotations

import subprocess

from tests.support import PYTHON, ROOT, watcher_env

MODULES = [
    "inspector.watcher",
    "inspector.watcher.loop",
    "inspector.watcher.ops",
    "inspector.watcher.decisions",
    "inspector.watcher.protocols",
    "inspector.watcher.sources",
    "inspector.watcher.writer",
    "inspector.watcher.disk",
    "inspector.watcher.outage",
    "inspector.watcher.health",
    "inspector.io.store",
    "inspector.io.sources",
    "inspector.io.camera",
    "inspector.io.sinks",
    "inspector.io.outbox",
    "inspector.data.images",
    "inspector.io.media",
    "inspector.config.line",
    "inspector.runtime",
    "inspector.cli.main",
]


def test_watcher_never_imports_torch():
    code = (
        "import sys\n"
        + "".join(f"import {m}\n" for m in MODULES)
        + "from inspector.watcher import load_scorer\n"
        + "bad = sorted(m for m in sys.modules if m == 'torch' or m.startswith(('torch.', 'torchvision', 'prefect')))\n"
        + "assert not bad, bad\nprint('ok')"
    )
    r = subprocess.run([PYTHON, "-c", code], cwd=ROOT, env=watcher_env(), capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr
