"""ONNX Runtime session options the runtime sets (issue 18: the pool's threads must not spin on a shared box)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from inspector.runtime import registry
from inspector.runtime.providers import CPU
from inspector.runtime.session import SPIN_VAR, load_version

SPIN_KEYS = ("session.intra_op.allow_spinning", "session.inter_op.allow_spinning")


@pytest.fixture(scope="module")
def version_dir(fitted_model, tmp_path_factory) -> Path:
    from inspector.pipeline.export import export_model

    out = tmp_path_factory.mktemp("session") / "part"
    shutil.copytree(fitted_model / "staging", out / "staging")
    export_model(out)
    return registry.resolve(out)[0]


def spin_entries(version_dir: Path) -> list[str]:
    options = load_version(version_dir, [CPU]).session.get_session_options()
    out = []
    for key in SPIN_KEYS:
        try:
            out.append(options.get_session_config_entry(key))
        except RuntimeError:  # ORT's way of saying the key was never set (its default: spin)
            out.append("unset")
    return out


def test_pool_threads_sleep_between_operators_unless_asked(version_dir, monkeypatch):
    """Spinning pool threads took the CPU the watcher's decoding and writer need (docs/watcher.md measures it)."""
    monkeypatch.delenv(SPIN_VAR, raising=False)
    assert spin_entries(version_dir) == ["0", "0"]
    monkeypatch.setenv(SPIN_VAR, "1")  # ORT's own default, for a box that does nothing else
    assert spin_entries(version_dir) == ["unset", "unset"]
