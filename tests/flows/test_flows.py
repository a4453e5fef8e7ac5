"""Prefect flows under `prefect_test_harness` on the small synthetic product: train, gate, retrain, report,
backfill, watch; and the deployments in `prefect.yaml` and `launch/serve.py`.

One model folder is shared by the training tests (fit runs are the expensive part); each test states
what it expects relative to the `current` it found, so their order does not matter.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path

import cv2
import numpy as np
import pytest
import yaml

from inspector.config.fit import CalibrateSettings, FitSettings
from inspector.runtime.registry import current_version, history
from tests.conftest import FAST_FIT
from tests.support import PYTHON, ROOT, drop, free_port, line_config, part_image, wait_for, watcher_env, write_double

FIT = FitSettings(**FAST_FIT)
CAL = CalibrateSettings(fpr=0.05)


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """Torch was loaded by earlier test modules with spinning OpenMP waiters; on a busy 2-core box two
    spinning threads make a fit 30-40x slower than one thread does, so this module fits on one."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def prefect_api():
    from prefect.settings import PREFECT_API_URL
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=180):
        yield PREFECT_API_URL.value()


@pytest.fixture(scope="session")
def trained(prefect_api, synthetic_data, tmp_path_factory):
    """A model folder after two train runs: v1 (first version) and v2 (through the gate)."""
    from flows.train import train

    model = tmp_path_factory.mktemp("flow-models") / "part"
    first = train(synthetic_data, model, FIT, CAL)
    second = train(synthetic_data, model, FIT, CAL)
    return model, first, second


def artifact(key: str):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey, FlowRunFilter, TaskRunFilter
    from prefect.client.schemas.sorting import ArtifactSort

    with get_client(sync_client=True) as c:  # every field given: this server refuses nulls
        found = c.read_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[key])),
            flow_run_filter=FlowRunFilter(),
            task_run_filter=TaskRunFilter(),
            sort=ArtifactSort.CREATED_DESC,
            limit=1,
            offset=0,
        )
    assert found, f"no artifact {key}"
    return found[0]


def flow_logs(state) -> list[str]:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId
    from prefect.logging.handlers import APILogWorker

    APILogWorker.drain_all(timeout=10)
    run_id = state.state_details.flow_run_id
    with get_client(sync_client=True) as c:
        logs = c.read_logs(log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[run_id])), limit=200, offset=0)
    return [log.message for log in logs]


def test_train_registers_and_promotes_through_the_gate(trained):
    model, first, second = trained
    assert (first.version, first.previous, first.promoted) == ("v1", None, True)
    assert (second.version, second.previous, second.promoted, second.gate_ok) == ("v2", "v1", True, True)
    assert current_version(model) == "v2"
    assert history(model)[-1]["reason"] == "train: gate passed against v1"
    assert second.candidate["image_auroc"] > 0.9 and second.current["version"] == "v1"
    assert {p.name for p in second.overlays} >= {"best_defect.png", "worst_good.png"}
    assert all(p.is_file() for p in second.overlays)
    md = artifact(second.artifact_key).data
    assert "**v2 is now `current`**" in md and "image_auroc" in md and str(second.overlays[0]) in md
    table = artifact(f"{second.artifact_key}-metrics").data
    assert "image_auroc" in table and "candidate" in table


def test_gate_failure_keeps_current(trained, synthetic_data, tmp_path):
    """Real defects wrongly given to training as good parts: the model learns them, the gate refuses it."""
    from flows.train import train

    model, *_ = trained
    before, promotions = current_version(model), len(history(model))
    poisoned = tmp_path / "poisoned"
    shutil.copytree(synthetic_data, poisoned)
    for p in (poisoned / "test").glob("[!g]*/*.png"):  # every defect image, also as a "good" training image,
        shutil.copy(p, poisoned / "train" / "good" / f"{p.stem}-defect-{p.parent.name}.png")  # spread in name order
    r = train(poisoned, model, FIT, CAL)
    assert not r.promoted and not r.gate_ok and (model / r.version).is_dir()
    assert current_version(model) == before and len(history(model)) == promotions
    assert any(reason.startswith("image_auroc") and "is worse than" in reason for reason in r.reasons), r.reasons
    assert "registered, not promoted" in artifact(r.artifact_key).data


def seed_false_alarms(store_url: str, media: Path, n: int, seed: int) -> list[int]:
    """n good parts flagged by the line (false alarms), recorded as the watcher records them."""
    from inspector.data.preprocess import overlay
    from inspector.data.synthetic import good_part
    from inspector.io.media import media_paths, save_media
    from inspector.io.store import FlagRecord, ScoredFrame, Store

    rng, ids = np.random.default_rng(seed), []
    store = Store.open(store_url, media)
    try:
        for i in range(n):
            img = good_part(rng, (96, 96))
            key, now = uuid.uuid4().hex, datetime.now(timezone.utc)
            paths = media_paths("scan", key, now, ".png", False)
            png = cv2.imencode(".png", img)[1].tobytes()
            save_media(store.media_dir, paths, png, overlay(img, np.ones((96, 96))), None)
            flag = FlagRecord("v1", paths.image, paths.overlay, None, 96, 96, f"part{i}.png")
            ids.append(store.record_frame(ScoredFrame("scan", key, now, 1.2, 3.0, 2.5, True, None), flag))
    finally:
        store.close()
    return ids


def test_retrain_picks_up_reviewed_false_alarms_then_skips(trained, synthetic_data, tmp_path):
    from flows.retrain import PREFIX, retrain
    from inspector.dashboard.review import review
    from inspector.io.store import Store

    model, *_ = trained
    retrain_dir = tmp_path / "retrain" / "good"
    url = f"sqlite:///{tmp_path / 'store.db'}"
    nothing = retrain(synthetic_data, model, retrain_dir, FIT, CAL, return_state=True)
    assert nothing.result().status == "skipped"
    assert any("retrain skipped: no new reviewed false alarms" in m for m in flow_logs(nothing))
    ids = seed_false_alarms(url, tmp_path / "media", 3, seed=5)
    store = Store.open(url, tmp_path / "media")
    for i in ids:
        review(store, retrain_dir, i, "false_alarm", "tester")
    store.close()
    r = retrain(synthetic_data, model, retrain_dir, FIT, CAL)
    assert r.status == "trained" and len(r.added) == 3 and r.train is not None
    used = sorted(p.name for p in (model / "retrain-data" / "train" / "good").glob(f"{PREFIX}*"))
    assert used == sorted(f"{PREFIX}{n}" for n in r.added)
    training = json.loads((model / r.train.version / "manifest.json").read_text())["training"]
    from inspector.pipeline.fit import split_holdout

    fitted, held = split_holdout(sorted((model / "retrain-data" / "train" / "good").iterdir()), 0.2, 0)
    assert all(p.name.startswith(PREFIX) for p in fitted[:3]) and not any(PREFIX in p.name for p in held)
    n_original = len(list((synthetic_data / "train" / "good").glob("*.png")))
    assert training["fit_images"] + training["holdout_images"] == n_original + 3
    again = retrain(synthetic_data, model, retrain_dir, FIT, CAL, return_state=True)
    assert again.result().status == "skipped"


def record_frames(store, source: str, scores: list[float], flagged: int, rng) -> list[int]:
    """Good frames with the given scores, plus `flagged` flagged good parts (with media) of one source."""
    from inspector.data.synthetic import good_part
    from inspector.io.media import media_paths, save_media
    from inspector.io.store import FlagRecord, ScoredFrame

    now = datetime.now(timezone.utc) - timedelta(hours=1)
    store.record_frames(
        [(ScoredFrame(source, uuid.uuid4().hex, now, s, s * 2, 2.0, False, None), None) for s in scores]
    )
    ids = []
    for _ in range(flagged):
        img, key = good_part(rng, (96, 96)), uuid.uuid4().hex
        paths = media_paths(source, key, now, ".png", False)
        save_media(store.media_dir, paths, cv2.imencode(".png", img)[1].tobytes(), img, None)
        flag = FlagRecord("v1", paths.image, paths.overlay, None, 96, 96, f"{key}.png")
        ids.append(store.record_frame(ScoredFrame(source, key, now, 1.5, 3.0, 2.0, True, None), flag))
    return ids


def test_report_rates_reviews_and_drift(trained, tmp_path):
    from flows.report import ReportSettings, report
    from flows.tasks import reference_scores
    from inspector.dashboard.review import review
    from inspector.io.store import Store

    model, *_ = trained
    ref = np.array([s for s in reference_scores(model, current_version(model)) if s < 1.0])
    rng = np.random.default_rng(0)
    url = f"sqlite:///{tmp_path / 'store.db'}"
    store = Store.open(url)
    steady_ids = record_frames(store, "steady", list(rng.choice(ref, 40)), 2, rng)
    record_frames(store, "dirty-lens", list(np.minimum(rng.choice(ref, 30) + 3 * ref.std(), 0.99)), 1, rng)
    review(store, tmp_path / "retrain", steady_ids[0], "false_alarm", "tester")
    review(store, tmp_path / "retrain", steady_ids[1], "confirmed", "tester")
    store.close()
    r = report(store=url, model=model, settings=ReportSettings(hours=24, drift_limit=1.0))
    by = {s.source: s for s in r.sources}
    steady = by["steady"]
    assert (steady.scored, steady.flagged, steady.confirmed, steady.false_alarms) == (42, 2, 1, 1)
    assert by["steady"].false_alarm_share == 0.5 and by["steady"].flag_rate == pytest.approx(2 / 42)
    assert not by["steady"].drifting and abs(by["steady"].drift) < 1
    assert by["dirty-lens"].drifting and by["dirty-lens"].drift > 1.5 and by["dirty-lens"].pending == 1
    assert r.model_version == current_version(model) and r.expected_fpr is not None
    md = artifact("report-store").data
    assert "**dirty-lens**" in md and "check the camera" in md and "**steady**" in md
    assert "dirty-lens" in artifact("report-store-metrics").data


def test_backfill_scores_a_date_range_once(trained, tmp_path):
    from flows.backfill import BackfillSettings, backfill
    from inspector.data.synthetic import add_defect, good_part
    from inspector.io.store import Store

    model, *_ = trained
    rng, folder = np.random.default_rng(3), tmp_path / "archive"
    old = datetime(2020, 6, 1, tzinfo=timezone.utc).timestamp()
    for i in range(6):
        img = good_part(rng, (96, 96))
        if i % 2:
            img, _ = add_defect(img, "blob", rng)
        path = drop(folder / ("a" if i < 3 else "b"), f"p{i}.png", img)
        if i < 2:
            os.utime(path, (old, old))
    doc = {
        "line": "bf",
        "model": {"path": str(model), "providers": ["cpu"]},
        "sources": [{"kind": "folder", "name": "scan", "path": str(tmp_path / "in")}],
        "store": {"url": f"sqlite:///{tmp_path / 's.db'}"},
    }
    config = tmp_path / "line.yaml"
    config.write_text(yaml.safe_dump(doc))
    recent = BackfillSettings(folder=folder, since=datetime(2021, 1, 1, tzinfo=timezone.utc), batch_size=3)
    first = backfill(config, recent)
    assert (first.scored, first.already, first.unreadable) == (4, 0, 0) and first.flagged >= 1
    assert backfill(config, recent).model_dump() == {"scored": 0, "flagged": 0, "already": 4, "unreadable": 0}
    everything = backfill(config, BackfillSettings(folder=folder))
    assert (everything.scored, everything.already) == (2, 4)
    store = Store.open(doc["store"]["url"])
    assert store.counters()["backfill"]["scored"] == 6
    store.close()


@pytest.mark.pg
@pytest.mark.parametrize("processes", [True, False], ids=["worker-processes", "worker-threads"])
def test_backfill_on_a_local_dask_cluster_records_each_image_once(prefect_api, tmp_path, processes):
    """Two Dask worker processes score 7 batches into one PostgreSQL store concurrently: every image once,
    a second run finds them all recorded, and the progress artifact reaches 100%."""
    import sqlalchemy as sa

    from flows.backfill import BackfillSettings, backfill
    from tests.support import temp_database

    folder, n = tmp_path / "archive", 20
    for i in range(n):
        drop(folder / f"d{i % 3}", f"p{i:02d}.png", part_image(i, i % 4 == 0))
    with temp_database() as url:
        doc = line_config(
            tmp_path,
            write_double(tmp_path / "model"),
            [{"kind": "folder", "name": "scan", "path": str(tmp_path / "in")}],
        )
        doc["store"] = {"url": url, "media_dir": str(tmp_path / "media")}
        config = tmp_path / "line.yaml"
        config.write_text(yaml.safe_dump(doc))
        s = BackfillSettings(folder=folder, batch_size=3, engine="dask", workers=2, processes=processes)
        first = backfill(config, s)
        assert first.model_dump() == {"scored": n, "flagged": 5, "already": 0, "unreadable": 0}
        assert backfill(config, s).model_dump() == {"scored": 0, "flagged": 0, "already": n, "unreadable": 0}
        engine = sa.create_engine(url.replace("postgresql://", "postgresql+psycopg://"))
        with engine.connect() as c:
            keys = c.execute(sa.text("SELECT count(*), count(DISTINCT frame_key) FROM processed")).one()
            flagged = c.execute(sa.text("SELECT count(*) FROM flagged")).scalar()
            scored = c.execute(sa.text("SELECT scored FROM frames WHERE source = 'backfill'")).scalar()
        engine.dispose()
        assert tuple(keys) == (n, n) and flagged == 5 and scored == n
    assert progress_artifact(prefect_api, "backfill-progress")["data"] == 100.0


def progress_artifact(api: str, key: str) -> dict:
    """The latest artifact under `key`, also one a flow made itself (`artifact` above finds those of tasks only:
    the client always sends a task-run filter, which leaves out artifacts without a task run)."""
    import httpx

    body = {"artifacts": {"key": {"any_": [key]}}, "sort": "CREATED_DESC", "limit": 1, "offset": 0}
    found = httpx.post(f"{api}/artifacts/filter", json=body, timeout=30).raise_for_status().json()
    assert found, f"no artifact {key}"
    return found[0]


def test_watch_flow_starts_observes_and_stops(prefect_api, tmp_path):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowFilter, FlowFilterName
    from prefect.client.schemas.sorting import FlowRunSort

    doc = line_config(
        tmp_path, write_double(tmp_path / "model"), [{"kind": "folder", "name": "scan", "path": str(tmp_path / "in")}]
    )
    config = tmp_path / "line.yaml"
    config.write_text(yaml.safe_dump(doc))
    for i in range(5):
        drop(tmp_path / "in", f"p{i}.png", part_image(i, bright=i == 2))
    env = {**watcher_env(), "PREFECT_API_URL": prefect_api, "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
    log = tmp_path / "flow.log"
    proc = subprocess.Popen(
        [PYTHON, "-m", "flows.watch", "--config", str(config)],
        cwd=ROOT,
        env=env,
        stdout=open(log, "wb"),
        stderr=subprocess.STDOUT,
    )
    try:
        wait_for(lambda: len(list((tmp_path / "in" / "processed").glob("*.png"))) == 5, 180, step=0.3, what="5 scored")
    finally:
        proc.send_signal(signal.SIGTERM)
        rc = proc.wait(60)
    assert rc == 0, log.read_text()[-3000:]
    with get_client(sync_client=True) as c:
        runs = c.read_flow_runs(
            flow_filter=FlowFilter(name=FlowFilterName(any_=["watch"])), sort=FlowRunSort.START_TIME_DESC, limit=1
        )
        messages = [m.message for m in c.read_logs(log_filter=_run_logs(runs[0].id), limit=200, offset=0)]
    assert runs[0].state.is_completed() and runs[0].parameters["config"] == str(config)
    assert any("watching line" in m for m in messages), messages  # the watcher's own log, in the Prefect UI


def _run_logs(run_id):
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId

    return LogFilter(flow_run_id=LogFilterFlowRunId(any_=[run_id]))


def test_watch_flow_runs_on_a_line_pc_without_torch():
    """A line PC has inspector[runtime] and Prefect, no torch: the watch flow and its deployment must load."""
    code = (
        "import importlib.abc, sys\n"
        "class Block(importlib.abc.MetaPathFinder):\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] in ('torch', 'torchvision', 'timm', 'anomalib'):\n"
        "            raise ModuleNotFoundError(name, name=name)\n"
        "sys.meta_path.insert(0, Block())\n"
        "from flows.watch import watch\n"
        "from prefect.flows import load_flow_from_entrypoint\n"
        "assert load_flow_from_entrypoint('flows/watch.py:watch', use_placeholder_flow=False).name == 'watch'\n"
        "print('ok')"
    )
    r = subprocess.run([PYTHON, "-c", code], cwd=ROOT, env=watcher_env(), capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and r.stdout.strip().endswith("ok"), r.stderr[-2000:]


# ---- deployments --------------------------------------------------------------------------------
def test_prefect_yaml_deployments_load_and_validate():
    from prefect.cli.deploy._triggers import DeploymentTriggerAdapter
    from prefect.client.schemas.schedules import CronSchedule
    from prefect.flows import load_flow_from_entrypoint

    doc = yaml.safe_load((ROOT / "prefect.yaml").read_text())
    names = [d["name"] for d in doc["deployments"]]
    assert len(names) == len(set(names)) and {"train", "retrain", "watch", "report", "backfill"} <= {
        d["entrypoint"].split(":")[1] for d in doc["deployments"]
    }
    cwd = os.getcwd()
    os.chdir(ROOT)
    try:
        for d in doc["deployments"]:
            flow = load_flow_from_entrypoint(d["entrypoint"], use_placeholder_flow=False)
            flow.validate_parameters(d.get("parameters", {}))  # raises on unknown or ill-typed parameters
            for s in d.get("schedules") or []:
                CronSchedule(cron=s["cron"], timezone=s.get("timezone"))
            for t in d.get("triggers") or []:
                DeploymentTriggerAdapter.validate_python(t)
            assert d["work_pool"]["name"] in ("gpu", "cpu", "line1")  # the process pools the README creates
    finally:
        os.chdir(cwd)


def test_serve_builds_every_deployment_with_schedules(tmp_path):
    from flows.backfill import backfill
    from flows.report import report
    from flows.retrain import retrain
    from flows.train import train
    from flows.watch import watch
    from launch.serve import deployments

    ds = deployments(
        ROOT / "examples" / "line1.yaml", tmp_path / "data", tmp_path / "models" / "m", tmp_path / "r", "Europe/Berlin"
    )
    by = {d.name: d for d in ds}
    assert set(by) == {"line1-train", "line1-retrain", "line1-report", "line1-backfill", "line1-watch"}
    assert by["line1-retrain"].schedules[0].schedule.cron == "0 2 * * *"
    assert by["line1-report"].schedules[0].schedule.timezone == "Europe/Berlin"
    assert by["line1-watch"].triggers and by["line1-watch"].concurrency_limit == 1
    flows = {f.name: f for f in (train, retrain, report, backfill, watch)}
    for d in ds:  # the parameters each deployment passes are valid for its flow (backfill gets its folder per run)
        given = d.parameters if d.flow_name != "backfill" else {**d.parameters, "settings": {"folder": str(tmp_path)}}
        flows[d.flow_name].validate_parameters(given)


def _sqlalchemy_2_1() -> bool:
    import sqlalchemy

    return tuple(int(x) for x in sqlalchemy.__version__.split(".")[:2]) >= (2, 1)


@pytest.mark.xfail(
    _sqlalchemy_2_1(),
    strict=True,
    reason="Prefect 3.8's scheduler service fails on SQLAlchemy 2.1 "
    "(InvalidRequestError: Can't evaluate bulk DML statement, in _insert_scheduled_flow_runs), so a "
    "server from this venv never creates scheduled runs; pin sqlalchemy<2.1 (verified with 2.0.58)",
)
def test_local_server_schedules_the_nightly_retrain(tmp_path, monkeypatch):
    """`launch.serve` without PREFECT_API_URL: its own server must turn the cron schedule into runs."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId
    from prefect.client.schemas.sorting import FlowRunSort
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from launch.serve import deployments, local_server

    monkeypatch.setenv("PREFECT_HOME", str(tmp_path / "prefect"))  # the child server's database
    monkeypatch.setenv("PREFECT_SERVER_SERVICES_SCHEDULER_LOOP_SECONDS", "1")
    retrain = deployments(
        ROOT / "examples" / "line1.yaml", tmp_path, tmp_path / "m", tmp_path / "r", "Europe/Berlin", watch_line=False
    )[1]
    with temporary_settings(restore_defaults={PREFECT_API_URL}), local_server(free_port()) as url:
        assert url is not None
        deployment_id = retrain.apply()

        def scheduled():
            with get_client(sync_client=True) as c:
                return c.read_flow_runs(
                    deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[deployment_id])),
                    sort=FlowRunSort.EXPECTED_START_TIME_ASC,
                    limit=10,
                    offset=0,
                )

        runs = wait_for(scheduled, 30, step=0.5, what="scheduled retrain runs")
    berlin = runs[0].expected_start_time.astimezone(__import__("zoneinfo").ZoneInfo("Europe/Berlin"))
    assert (berlin.hour, berlin.minute) == (2, 0) and runs[0].state.is_scheduled()


def test_demo_line_config_is_a_valid_watcher_config(tmp_path):
    from inspector.config.line import load_config
    from launch.demo import line_config as demo_config

    cfg = load_config(demo_config(tmp_path, tmp_path / "models" / "part", "http://127.0.0.1:9/alerts", True, 0))
    assert cfg.sources[0].path == tmp_path / "incoming" and [s.kind for s in cfg.sinks] == ["webhook", "mqtt"]
    assert cfg.store.save_map and cfg.store.url == f"sqlite:///{tmp_path}/store/store.db"
