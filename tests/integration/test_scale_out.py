"""Scale-out as it runs here: two watchers (two lines, separate processes) on one PostgreSQL store, one MQTT
broker and one model folder on shared storage.

They start together on a new store (both migrate it), score their own hot folders at the same time, deliver
their alerts, and both follow `current` when a new version is promoted in the shared registry; nothing is
lost, duplicated or mixed up between the lines.
Lines may also give their sinks the same name: each watcher delivers only its own sources' alerts.
"""

from __future__ import annotations

import signal
import subprocess
import time
from pathlib import Path

import sqlalchemy as sa

from tests.support import (
    PYTHON,
    ROOT,
    MqttCollector,
    drop,
    free_port,
    line_config,
    part_image,
    spawn_watcher,
    temp_database,
    wait_for,
    watcher_env,
    write_config,
    write_double,
)

N = 10
BRIGHT = {1: {2, 5}, 2: {0, 3, 7}}  # per line: which of its N parts are anomalous


def count(engine: sa.Engine, sql: str) -> list[tuple]:
    with engine.connect() as c:
        return [tuple(r) for r in c.execute(sa.text(sql))]


def two_lines(tmp_path: Path, url: str, sinks: dict[int, dict]) -> list[tuple[str, Path]]:
    """Line configs 1 and 2 on one store and one shared model and media folder; their parts dropped."""
    configs = []
    for line in (1, 2):
        doc = line_config(
            tmp_path / f"l{line}",
            write_double(tmp_path / "models" / "shared"),
            [{"kind": "folder", "name": f"l{line}-scan", "path": str(tmp_path / f"in{line}")}],
            [sinks[line]],
            line=f"scale{line}{tmp_path.name[-6:]}",
        )
        doc["store"] = {"url": url, "media_dir": str(tmp_path / "shared-media")}
        configs.append((doc["line"], write_config(tmp_path / f"line{line}.yaml", doc)))
        for i in range(N):
            drop(tmp_path / f"in{line}", f"p{i:02d}.png", part_image(100 * line + i, i in BRIGHT[line]))
    return configs


def stop_all(procs: list[subprocess.Popen]) -> list[int]:
    for p in procs:
        p.send_signal(signal.SIGTERM)
    return [p.wait(60) for p in procs]


def test_two_watchers_share_one_postgres_store_without_conflicts(tmp_path):
    with temp_database() as url:
        engine = sa.create_engine(url.replace("postgresql://", "postgresql+psycopg://"))
        configs = two_lines(tmp_path, url, {n: {"kind": "mqtt", "name": f"l{n}-mqtt"} for n in (1, 2)})
        cols = [MqttCollector(f"inspector/{name}/+/alert") for name, _ in configs]  # only our lines' alerts
        alerts = lambda: [m for c in cols for m in c.messages]  # noqa: E731
        procs = [spawn_watcher(cfg, tmp_path / f"{name}.log") for name, cfg in configs]  # same moment, new store
        try:

            def scored() -> list[tuple]:  # the watchers are still creating the store at first
                if not sa.inspect(engine).has_table("frames"):
                    return []
                return sorted(count(engine, "SELECT source, scored FROM frames"))

            wait_for(lambda: scored() == [("l1-scan", N), ("l2-scan", N)], 120, step=0.3, what="both lines scored")
            wait_for(lambda: len(alerts()) == 5, 60, what="5 alerts")
            write_double(tmp_path / "models" / "shared", version="v2")  # promoted in the shared registry
            wait_for(
                lambda: all(
                    "now scoring with model v2" in (tmp_path / f"{name}.log").read_text() for name, _ in configs
                ),
                60,
                what="both watchers on v2",
            )
            for line in (1, 2):
                drop(tmp_path / f"in{line}", "late.png", part_image(900 + line, bright=True))
            wait_for(
                lambda: len(count(engine, "SELECT id FROM flagged WHERE model_version = 'v2'")) == 2,
                60,
                what="both lines scoring with v2",
            )
            wait_for(lambda: len(alerts()) == 7, 60, what="7 alerts")
            time.sleep(1.0)  # a duplicate delivery would arrive now
        finally:
            codes = stop_all(procs)
            for c in cols:
                c.close()
        flagged = count(engine, "SELECT source, origin, frame_key FROM flagged ORDER BY id")
        assert codes == [0, 0], [(tmp_path / f"{name}.log").read_text()[-2000:] for name, _ in configs]
        for line, c in zip((1, 2), cols):  # each line's items, alerted once each, under its own line
            mine = sorted(o for s, o, _ in flagged if s == f"l{line}-scan")
            assert mine == sorted([f"p{i:02d}.png" for i in BRIGHT[line]] + ["late.png"])
            assert sorted(p["origin"] for _, p in c.messages) == mine
            assert {t.split("/")[2] for t, _ in c.messages} == {f"l{line}-scan"}
        assert len({k for _, _, k in flagged}) == len(flagged) == 7
        assert sorted(p["idempotency_key"] for _, p in alerts()) == sorted(k for _, _, k in flagged)
        assert count(engine, "SELECT count(*), count(DISTINCT frame_key) FROM processed") == [(2 * N + 2, 2 * N + 2)]
        assert count(engine, "SELECT count(*) FROM outbox WHERE delivered_at IS NULL") == [(0,)]
        for source, _, key in flagged:  # images and heat maps of each line in its own part of the shared folder
            assert any((tmp_path / "shared-media" / source).rglob(f"{key[:24]}*.overlay.jpg"))
        engine.dispose()


def test_lines_with_the_same_sink_name_deliver_only_their_own_alerts(tmp_path):
    """Line 1's broker is down: its alerts must wait for it, not leave through line 2's connection."""
    with temp_database() as url:
        dead = {"kind": "mqtt", "name": "plant-mqtt", "port": free_port()}
        configs = two_lines(tmp_path, url, {1: dead, 2: {"kind": "mqtt", "name": "plant-mqtt"}})
        col = MqttCollector(f"inspector/{configs[1][0]}/+/alert")
        procs = [spawn_watcher(cfg, tmp_path / f"{name}.log") for name, cfg in configs]
        try:
            wait_for(
                lambda: {p["origin"] for _, p in col.messages} >= {f"p{i:02d}.png" for i in BRIGHT[2]},
                120,
                what="line 2's alerts",
            )
            time.sleep(5)  # long enough for line 2's sender to poll the shared outbox several times
        finally:
            stop_all(procs)
            col.close()
        assert {t.split("/")[2] for t, _ in col.messages} == {"l2-scan"}
        engine = sa.create_engine(url.replace("postgresql://", "postgresql+psycopg://"))
        pending = count(engine, "SELECT source, count(*) FROM outbox WHERE delivered_at IS NULL GROUP BY source")
        engine.dispose()
        assert pending == [("l1-scan", len(BRIGHT[1]))]  # kept for line 1's broker, not lost


OPEN_TOGETHER = """
import sys, time
from pathlib import Path
from inspector.io.store import Store
barrier = Path(sys.argv[2])
(barrier / sys.argv[3]).touch()
while len(list(barrier.iterdir())) < 2:  # both processes have imported: open at the same instant
    time.sleep(0.001)
Store.open(sys.argv[1], barrier.parent / "media").close()
"""


def test_stores_opened_together_on_a_new_database(tmp_path):
    """Ten rounds of two processes opening one new store at the same instant: all must succeed."""
    failures = []
    for round_ in range(10):
        barrier = tmp_path / f"round{round_}"
        barrier.mkdir()
        with temp_database() as url:
            procs = [
                subprocess.Popen(
                    [PYTHON, "-c", OPEN_TOGETHER, url, str(barrier), str(i)],
                    cwd=ROOT,
                    env=watcher_env(),
                    stderr=subprocess.PIPE,
                    text=True,
                )
                for i in range(2)
            ]
            failures += [
                err.strip().splitlines()[-1] for p in procs if (err := p.communicate(timeout=120)[1]) and p.returncode
            ]
    assert not failures, failures
