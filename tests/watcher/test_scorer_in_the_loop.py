"""The watcher with the real ONNX runtime: fit -> calibrate -> export -> promote, then `inspector watch`.

Uses the shared `fitted_model` fixture (conftest.py) on a copy, so other tests' model folders are untouched.
"""

from __future__ import annotations

import shutil
import signal
import sqlite3

import cv2
import numpy as np

from inspector.data.synthetic import DEFECTS, add_defect, good_part
from tests.support import MqttCollector, spawn_watcher, wait_for, write_config


def test_watch_with_real_scorer_flags_defects_and_follows_current(fitted_model, tmp_path):
    from inspector.pipeline.export import export_model
    from inspector.runtime.registry import promote

    model = tmp_path / "models" / "part"
    shutil.copytree(fitted_model, model, ignore=shutil.ignore_patterns("v[0-9]*", "current", "history.jsonl", ".*"))
    v1 = export_model(model)
    promote(model, v1.name)
    rng = np.random.default_rng(11)
    inbox = tmp_path / "in"
    inbox.mkdir()
    names = {}
    for i in range(8):
        cv2.imwrite(str(inbox / f"good{i}.png"), good_part(rng, (96, 96)))
        img, _ = add_defect(good_part(rng, (96, 96)), DEFECTS[i % len(DEFECTS)], rng)
        cv2.imwrite(str(inbox / f"bad{i}.png"), img)
        names[f"good{i}.png"], names[f"bad{i}.png"] = False, True
    line = f"rt{tmp_path.name[-6:].replace('_', '')}"
    doc = {
        "line": line,
        "model": {"path": str(model), "providers": ["cpu"], "reload_check_s": 0.5},
        "sources": [{"kind": "folder", "name": "scan", "path": str(inbox), "stable_s": 0.2}],
        "sinks": [{"kind": "mqtt", "name": "mq"}],
        "store": {"url": f"sqlite:///{tmp_path}/store/s.db"},
        "ops": {"port": 0},
    }
    config = write_config(tmp_path / "line.yaml", doc)
    col = MqttCollector(f"inspector/{line}/+/alert")
    proc = spawn_watcher(config, tmp_path / "watch.log")
    db = tmp_path / "store" / "s.db"

    def rows(sql):
        try:
            with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=30) as c:
                return c.execute(sql).fetchall()
        except sqlite3.OperationalError:  # the watcher is still creating the store
            return []

    try:
        wait_for(lambda: rows("SELECT scored FROM frames") == [(16,)], 180, step=0.2, what="16 scored")
        shutil.copytree(model / v1.name, model / "v2")  # a new version becomes `current`: hot reload
        promote(model, "v2")
        wait_for(lambda: "model reloaded: v1 -> v2" in (tmp_path / "watch.log").read_text(), 60, what="reload")
        img, _ = add_defect(good_part(rng, (96, 96)), "scratch", rng)
        cv2.imwrite(str(inbox / "late.png"), img)
        wait_for(lambda: rows("SELECT scored FROM frames") == [(17,)], 60, what="late file")
        flagged = rows("SELECT origin, model_version, overlay_path, score FROM flagged")
        wait_for(lambda: rows("SELECT count(*) FROM outbox WHERE delivered_at IS NULL") == [(0,)], 30, what="alerts")
        wait_for(lambda: len(col.keys()) == len(flagged), 30, what="MQTT alerts")
    finally:
        proc.send_signal(signal.SIGTERM)
        rc = proc.wait(60)
        col.close()
    assert rc == 0
    hits = [o for o, *_ in flagged if names.get(o)]
    false_alarms = [o for o, *_ in flagged if names.get(o) is False]
    assert len(hits) >= 5 and len(false_alarms) <= 2, flagged  # the model tells defects from good parts
    assert all(v in ("v1", "v2") and (db.parent / "media" / ov).stat().st_size > 0 for _, v, ov, _ in flagged)
    assert all(s >= 1.0 for *_, s in flagged)
    assert [v for o, v, *_ in flagged if o == "late.png"] == ["v2"]  # scored by the new `current`
