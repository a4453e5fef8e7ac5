"""Model registry: monotonic versions, atomic `current` switch, promotion history (no torch needed)."""

from __future__ import annotations

import hashlib
import json
import os
import threading
from pathlib import Path

import pytest

from inspector.data.preprocess import Preprocess
from inspector.errors import InspectorError
from inspector.runtime import registry
from inspector.runtime.manifest import FORMAT_VERSION


def make_version_files(folder: Path, payload: bytes = b"graph bytes", threshold: float = 2.0) -> Path:
    """A version folder whose manifest vouches for `payload` (the registry never parses the graph)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "model.onnx").write_bytes(payload)
    manifest = {
        "format_version": FORMAT_VERSION,
        "model": {"file": "model.onnx", "sha256": hashlib.sha256(payload).hexdigest(), "size_bytes": len(payload)},
        "input": {"name": "image"},
        "outputs": {"anomaly_map": {"name": "anomaly_map"}, "score": {"name": "score"}},
        "preprocess": Preprocess().to_dict(),
        "threshold": threshold,
    }
    (folder / "manifest.json").write_text(json.dumps(manifest))
    return folder


def publish_one(model_dir: Path, payload: bytes = b"graph bytes") -> Path:
    return registry.publish(make_version_files(registry.new_temp_dir(model_dir), payload), model_dir)


def test_publish_numbers_versions_monotonically(tmp_path):
    model = tmp_path / "m"
    assert publish_one(model).name == "v1"
    assert publish_one(model).name == "v2"
    (model / "v7").mkdir()
    assert publish_one(model).name == "v8"
    registry.promote(model, "v8")
    for name in ("v7", "v8"):
        for p in (model / name).iterdir():
            p.unlink()
        (model / name).rmdir()
    os.unlink(model / "current")
    # v8 is gone from disk but was promoted once: its number is never handed out again.
    assert publish_one(model).name == "v9"
    assert registry.list_versions(model) == ["v1", "v2", "v9"]
    assert not [p for p in model.iterdir() if p.name.startswith(".export-")]


def test_published_version_is_readable_by_other_users(tmp_path):
    v = publish_one(tmp_path / "m")
    assert (v.stat().st_mode & 0o777) == 0o755
    assert all((p.stat().st_mode & 0o777) == 0o644 for p in v.iterdir())


def test_promote_switches_current_and_records_history(tmp_path):
    model = tmp_path / "m"
    v1, v2 = publish_one(model, b"one"), publish_one(model, b"two")
    assert registry.current_version(model) is None
    assert registry.promote(model, "v1") == v1
    assert registry.promote(model, "2") == v2  # "2" and "v2" both name v2
    assert os.readlink(model / "current") == "v2"
    assert registry.resolve(model) == (v2, model)
    hist = registry.history(model)
    assert [(h["version"], h["previous"]) for h in hist] == [("v1", None), ("v2", "v1")]
    assert all(h["user"] and h["time"] and h["host"] for h in hist)


def test_promote_refuses_missing_or_damaged_versions(tmp_path):
    model = tmp_path / "m"
    publish_one(model)
    registry.promote(model, "v1")
    with pytest.raises(InspectorError, match=r"v5 does not exist \(versions: v1\)"):
        registry.promote(model, "v5")
    with pytest.raises(InspectorError, match="not a version name"):
        registry.promote(model, "latest")
    v2 = publish_one(model)
    (v2 / "model.onnx").write_bytes(b"graph bytez")  # same size, other bytes
    with pytest.raises(InspectorError, match="does not match its manifest"):
        registry.promote(model, "v2")
    assert registry.current_version(model) == "v1"
    assert len(registry.history(model)) == 1


def test_current_is_never_missing_while_promotions_swap_it(tmp_path):
    model = tmp_path / "m"
    publish_one(model, b"a"), publish_one(model, b"b")
    registry.promote(model, "v1")
    seen, errors, stop = set(), [], threading.Event()

    def reader() -> None:
        while not stop.is_set():
            try:
                seen.add(registry.resolve(model)[0].name)
            except Exception as e:  # any gap in `current` shows up here
                errors.append(e)

    t = threading.Thread(target=reader)
    t.start()
    for i in range(150):
        registry.promote(model, "v2" if i % 2 == 0 else "v1")
    stop.set()
    t.join()
    assert errors == []
    assert seen == {"v1", "v2"}
    assert len(registry.history(model)) == 151
    assert not [p for p in model.iterdir() if p.name.startswith(".current")]


def test_pointer_file_when_symlinks_are_unavailable(tmp_path, monkeypatch):
    model = tmp_path / "m"
    v1 = publish_one(model)

    def no_symlink(*a, **k):
        raise OSError("symlinks not supported")

    monkeypatch.setattr(os, "symlink", no_symlink)
    registry.promote(model, "v1")
    assert (model / "current").is_file() and not (model / "current").is_symlink()
    assert (model / "current").read_text().strip() == "v1"
    assert registry.resolve(model / "current") == (v1, model)


def test_resolve_explains_what_to_do(tmp_path):
    model = tmp_path / "m"
    with pytest.raises(InspectorError, match="does not exist"):
        registry.resolve(model)
    model.mkdir()
    with pytest.raises(InspectorError, match="inspector export"):
        registry.resolve(model)
    v1 = publish_one(model)
    with pytest.raises(InspectorError, match="inspector promote"):
        registry.resolve(model)
    assert registry.resolve(v1) == (v1, None)
    registry.promote(model, "v1")
    os.rename(v1, model / "gone")
    with pytest.raises(InspectorError, match="points at v1, which does not exist"):
        registry.resolve(model)


def test_history_skips_a_line_torn_by_a_crash(tmp_path):
    model = tmp_path / "m"
    publish_one(model)
    registry.promote(model, "v1")
    with open(model / "history.jsonl", "a") as f:
        f.write('{"time": "2026-')  # power cut mid-append
    registry.promote(model, "v1")
    assert [h["version"] for h in registry.history(model)] == ["v1"]  # torn line and its successor merged
    (model / "history.jsonl").write_text('{"version": "v1"}\nnot json\n{"version": "v1"}\n')
    assert len(registry.history(model)) == 2


def test_cli_promote(tmp_path, capsys):
    from inspector.cli.main import main

    model = tmp_path / "m"
    publish_one(model)
    assert main(["promote", str(model), "v1"]) == 0
    assert f"current -> {model / 'v1'}" in capsys.readouterr().out
    assert main(["promote", str(model), "v3"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("inspector: error:") and "v3 does not exist" in err and "\n" not in err
