"""Line config: validation, one-line errors naming file and field, path resolution, the example file."""

from __future__ import annotations

import subprocess
import typing
from pathlib import Path

import pytest
import yaml

from inspector.config.line import CameraSourceConfig, FolderSourceConfig, WatchConfig, load_config, source_rules
from inspector.errors import InspectorError
from tests.support import PYTHON, ROOT, watcher_env

BASE = {"line": "line1", "model": {"path": "models/part"}, "sources": [{"kind": "folder", "name": "in", "path": "in"}]}


def write(tmp_path: Path, doc) -> Path:
    p = tmp_path / "line1.yaml"
    p.write_text(doc if isinstance(doc, str) else yaml.safe_dump(doc))
    return p


def test_minimal_config_resolves_paths_against_its_folder(tmp_path):
    cfg = load_config(write(tmp_path, BASE))
    assert cfg.model.path == tmp_path / "models/part"
    assert cfg.sources[0].path == tmp_path / "in"
    assert cfg.store.url == f"sqlite:///{tmp_path}/store/store.db"


@pytest.mark.parametrize(
    "doc, message",
    [
        ({**BASE, "sorces": []}, "sorces: unknown key (did you mean 'sources'?)"),
        (
            {**BASE, "sources": [{"kind": "folder", "name": "in", "pth": "x"}]},
            "sources[0].pth: unknown key (did you mean 'path'?)",
        ),
        ({**BASE, "sources": [{"kind": "webcam", "name": "c"}]}, "sources[0]"),
        (
            {**BASE, "rules": {"debounce_n": 5, "debounce_m": 2}},
            "rules: Value error, debounce_n (5) must not exceed debounce_m (2)",
        ),
        ({**BASE, "sinks": [{"kind": "mqtt", "name": "m", "topic": "a/{line}/#"}]}, "sinks[0].topic"),
        ({**BASE, "sources": BASE["sources"] * 2}, "source names must be unique: in"),
        (
            {**BASE, "sources": [{"kind": "camera", "name": "c", "uri": 0, "every_nth": 0}]},
            "sources[0].every_nth: Input should be greater than or equal to 1",
        ),
        ({**BASE, "line": "bad line/name"}, "line: String should match pattern"),
        ("line: [unclosed", "not valid YAML"),
        ("- just\n- a list\n", "expected a mapping"),
    ],
)
def test_errors_are_one_line_naming_file_and_field(tmp_path, doc, message):
    path = write(tmp_path, doc)
    with pytest.raises(InspectorError) as e:
        load_config(path)
    text = str(e.value)
    assert text.startswith(str(path)) and message in text and "\n" not in text


def test_missing_file_is_one_line(tmp_path):
    with pytest.raises(InspectorError, match="cannot read config"):
        load_config(tmp_path / "nope.yaml")


def test_camera_defaults_and_source_overrides(tmp_path):
    doc = {
        **BASE,
        "rules": {"cooldown_s": 5},
        "sources": [
            {"kind": "camera", "name": "cam", "uri": "rtsp://10.0.0.9/s"},
            {"kind": "folder", "name": "f", "path": "f", "rules": {"threshold_scale": 1.2}},
            {"kind": "camera", "name": "vid", "uri": "clips/a.mp4"},
        ],
    }
    cfg = load_config(write(tmp_path, doc))
    cam, folder, vid = cfg.sources
    assert isinstance(cam, CameraSourceConfig) and isinstance(folder, FolderSourceConfig)
    r = source_rules(cfg, cam)
    assert (r.debounce_n, r.debounce_m, r.cooldown_s, r.flag_in_cooldown) == (3, 5, 60.0, False)
    r = source_rules(cfg, folder)
    assert (r.threshold_scale, r.cooldown_s, r.debounce_n) == (1.2, 5.0, 1)
    assert cam.uri == "rtsp://10.0.0.9/s" and vid.uri == str(tmp_path / "clips/a.mp4")


def _models(tp) -> list:
    """Pydantic models inside a (nested, annotated, union) type."""
    if isinstance(tp, type) and hasattr(tp, "model_fields"):
        return [tp]
    return [m for arg in typing.get_args(tp) for m in _models(arg)]


def test_every_field_is_documented():
    seen, todo = set(), [WatchConfig]
    while todo:
        model = todo.pop()
        if model in seen:
            continue
        seen.add(model)
        for name, f in model.model_fields.items():
            assert f.description, f"{model.__name__}.{name} has no description"
            todo += _models(f.annotation)
    assert len(seen) >= 12


def test_example_config_is_valid(tmp_path):
    cfg = load_config(ROOT / "examples" / "line1.yaml")
    assert cfg.line == "line1" and {s.kind for s in cfg.sources} == {"folder", "camera"}
    assert {s.kind for s in cfg.sinks} == {"mqtt", "webhook", "apprise"}


def test_cli_config_typo_stops_with_one_line(tmp_path):
    path = write(tmp_path, {**BASE, "sourcez": []})
    r = subprocess.run(
        [PYTHON, "-m", "inspector.cli.main", "watch", "--config", str(path)],
        cwd=ROOT,
        env=watcher_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 2
    assert r.stderr.strip() == f"inspector: error: {path}: sourcez: unknown key (did you mean 'sources'?)"
