"""Benchmark (not a test): dashboard latency with 100,000 flagged rows.

Fills a fresh store with N flagged rows (bulk insert through SQLAlchemy Core: 4 sources over 30 days,
review outcomes mixed in), starts the real `inspector dashboard` as a separate process on 127.0.0.1,
and times sequential keep-alive requests with httpx: the list page (HTML) and the JSON API, each
unfiltered and filtered, on the first page and deep in the keyset pagination. Scenarios alternate in
rounds, so a busy shared machine slows them alike. p50 / p99 per group and per scenario.

Writes benchmarks/results/dashboard.json. Target: p99 < 200 ms.

    .venv/bin/python benchmarks/dashboard.py [--rows 100000] [--rounds 60] [--store postgresql://...]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import httpx
import numpy as np
import sqlalchemy as sa

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from inspector.dashboard.queries import Cursor  # noqa: E402
from inspector.io.schema import Flagged, ScoreSample, SourceCounters  # noqa: E402
from inspector.io.store import Store  # noqa: E402

SOURCES = ["cam1", "cam2", "scan1", "scan2"]
TOKEN = "benchmark-token-0123456789"


def fill(store: Store, rows: int, seed: int = 0) -> list[tuple[datetime, int]]:
    """Insert `rows` flagged items (+ counters and a score sample per item); returns (created_at, id) of a sample."""
    rng = random.Random(seed)
    now = datetime.now(timezone.utc)
    step = timedelta(days=30) / rows
    statuses = ["pending"] * 90 + ["confirmed"] * 7 + ["false_alarm"] * 3
    batch, sample = [], []
    with store.engine.begin() as c:
        for i in range(rows):
            t = now - step * (rows - i)
            src = SOURCES[i % len(SOURCES)]
            score = 1.0 + rng.expovariate(1.2)
            status = rng.choice(statuses)
            key = f"b{i:07d}"
            batch.append(
                dict(
                    source=src,
                    created_at=t,
                    score=score,
                    raw_score=score * 3.0,
                    threshold=3.0,
                    model_version="v12",
                    image_path=f"{src}/{t:%Y-%m-%d}/{key}.png",
                    overlay_path=f"{src}/{t:%Y-%m-%d}/{key}.overlay.jpg",
                    map_path=None,
                    width=2048,
                    height=1024,
                    origin=f"{key}.png",
                    review_status=status,
                    reviewed_by=None if status == "pending" else "qa",
                    reviewed_at=None if status == "pending" else t,
                    review_note=None,
                    frame_key=key,
                )
            )
            if len(batch) == 10_000:
                _flush(c, batch)
        _flush(c, batch)
        c.execute(
            sa.insert(SourceCounters.__table__),
            [
                dict(
                    source=s,
                    scored=rows * 40 // len(SOURCES),
                    flagged=rows // len(SOURCES),
                    dropped=0,
                    errors=0,
                    last_score=0.4,
                    last_seen=now,
                )
                for s in SOURCES
            ],
        )
        for row in c.execute(sa.select(Flagged.created_at, Flagged.id).order_by(sa.func.random()).limit(500)):
            sample.append((row[0], row[1]))
    return sample


def _flush(c: sa.Connection, batch: list[dict]) -> None:
    if batch:
        c.execute(sa.insert(Flagged.__table__), batch)
        c.execute(
            sa.insert(ScoreSample.__table__),
            [dict(source=b["source"], created_at=b["created_at"], score=b["score"], is_anomaly=True) for b in batch],
        )
        batch.clear()


def scenarios(sample: list[tuple[datetime, int]]) -> dict[str, list[str]]:
    """Request paths per scenario; deep cursors come from random existing rows."""
    deep = [Cursor(t, i).encode() for t, i in sample]
    filt = "source=cam2&status=pending&min_score=1.5"
    return {
        "list_first": ["/"],
        "list_filtered": [f"/?{filt}", "/?status=false_alarm&window=7d", "/?source=scan1&min_score=3"],
        "list_deep": [f"/?cursor={c}" for c in deep],
        "list_deep_filtered": [f"/?{filt}&cursor={c}" for c in deep],
        "api_first": ["/api/items"],
        "api_filtered": [
            f"/api/items?{filt}",
            "/api/items?status=false_alarm&count=true",
            "/api/items?source=scan1&min_score=3",
        ],
        "api_deep": [f"/api/items?cursor={c}" for c in deep],
        "api_deep_filtered": [f"/api/items?{filt}&cursor={c}" for c in deep],
    }


def serve(url: str, port: int, media: Path) -> subprocess.Popen:
    """The real CLI entry point in its own process (its own GIL), as an operator would start it."""
    cfg = media.parent / "line.yaml"
    cfg.write_text(f"store:\n  url: {url}\n  media_dir: {media}\n")
    env = {**os.environ, "INSPECTOR_TOKEN": TOKEN, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen(
        [sys.executable, "-m", "inspector.cli.main", "dashboard", "--config", str(cfg), "--port", str(port)],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )


def wait_up(client: httpx.Client, proc: subprocess.Popen, timeout: float = 60) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if proc.poll() is not None:
            raise SystemExit(f"dashboard exited: {proc.stderr.read().decode()[-2000:]}")
        try:
            if client.get("/api/sources").status_code == 200:
                return
        except httpx.TransportError:
            time.sleep(0.2)
    raise SystemExit("dashboard did not start")


def measure(client: httpx.Client, plan: dict[str, list[str]], rounds: int, seed: int = 1) -> dict[str, list[float]]:
    rng = random.Random(seed)
    times: dict[str, list[float]] = {k: [] for k in plan}
    for _ in range(rounds):
        for name, paths in plan.items():
            path = rng.choice(paths)
            t0 = time.perf_counter()
            r = client.get(path)
            dt = (time.perf_counter() - t0) * 1000
            if r.status_code != 200:
                raise SystemExit(f"{path}: HTTP {r.status_code} {r.text[:200]}")
            times[name].append(dt)
    return times


def pct(xs: list[float], q: float) -> float:
    return round(float(np.percentile(xs, q)), 1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=100_000)
    ap.add_argument("--rounds", type=int, default=60, help="requests per scenario")
    ap.add_argument("--store", help="store URL (default: a fresh SQLite file); PostgreSQL: an empty database")
    ap.add_argument("--port", type=int, default=18080)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "dashboard.json"))
    a = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="dash-bench-"))
    url = a.store or f"sqlite:///{work}/store.db"
    store = Store.open(url, work / "media")
    t0 = time.perf_counter()
    sample = fill(store, a.rows)
    print(f"inserted {a.rows} rows in {time.perf_counter() - t0:.1f} s")
    store.close()
    proc = serve(url, a.port, work / "media")
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{a.port}", timeout=30) as client:
            wait_up(client, proc)
            plan = scenarios(sample)
            measure(client, plan, 5)  # warm-up: connections, caches, SQLite pages
            times = measure(client, plan, a.rounds)
    finally:
        proc.terminate()
        proc.wait(10)
        shutil.rmtree(work, ignore_errors=True)
    lst = [x for k, v in times.items() if k.startswith("list") for x in v]
    api = [x for k, v in times.items() if k.startswith("api") for x in v]
    result = {
        "rows": a.rows,
        "list_p50_ms": pct(lst, 50),
        "list_p99_ms": pct(lst, 99),
        "api_p50_ms": pct(api, 50),
        "api_p99_ms": pct(api, 99),
        "backend": sa.engine.make_url(url).get_backend_name(),
        "requests_per_scenario": a.rounds,
        "by_scenario": {
            k: {"p50_ms": pct(v, 50), "p99_ms": pct(v, 99), "max_ms": round(max(v), 1)} for k, v in times.items()
        },
        "machine": f"{platform.machine()}, {os.cpu_count()} cores (shared)",
    }
    print(json.dumps(result, indent=2))
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
