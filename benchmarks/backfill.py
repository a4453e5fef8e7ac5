"""Benchmark (not a test): the backfill flow in process against a local Dask cluster on the same cores.

A model is fitted on synthetic parts (in a child process: torch must not share this process with ORT),
N small synthetic images are written, and each engine backfills all of them into its own throw-away
PostgreSQL database under a temporary Prefect server. Rounds alternate the engines so both see the same
load on a shared machine; the best round of each is reported. images/s is N over the whole flow run,
the Dask cluster's start included (that is the engine's cost as a user sees it).

In process: one batch after another, ONNX Runtime on all cores. Dask: the flow's default local cluster, one
worker thread per core with one ORT thread each; dask_processes: one worker process per core instead. Also
reported per run: the time to the first finished batch (flow start, cluster start, first batch) and the rate
after it (the engine's steady rate). After every run the store must hold each image exactly once (ledger rows, distinct
keys and the source's counter all equal N), else the benchmark fails.

    .venv/bin/python benchmarks/backfill.py [--n 5000] [--size 64] [--rounds 2]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.watch import make_images  # noqa: E402


def exactly_once(url: str, n: int) -> dict:
    import sqlalchemy as sa

    engine = sa.create_engine(url.replace("postgresql://", "postgresql+psycopg://"))
    with engine.connect() as c:
        rows, keys = c.execute(sa.text("SELECT count(*), count(DISTINCT frame_key) FROM processed")).one()
        scored = c.execute(sa.text("SELECT scored FROM frames WHERE source = 'backfill'")).scalar()
    engine.dispose()
    counts = {"ledger_rows": rows, "distinct_keys": keys, "counter": scored}
    if set(counts.values()) != {n}:
        raise SystemExit(f"not exactly once: {counts} for {n} images")
    return counts


def run_once(work: Path, model: Path, folder: Path, n: int, engine: str, batch: int) -> dict:
    """engine: in_process, dask (local cluster, the flow's default: workers as threads) or dask_processes."""
    import flows.backfill as fb
    from flows.backfill import BackfillSettings, backfill
    from tests.support import temp_database

    with temp_database() as url:
        doc = {
            "line": "bench",
            "model": {"path": str(model), "providers": ["cpu"]},
            "sources": [{"kind": "folder", "name": "scan", "path": str(work / "in")}],
            "store": {"url": url, "media_dir": str(work / f"media-{engine}")},
        }
        config = work / f"{engine}.yaml"
        config.write_text(yaml.safe_dump(doc))
        done_at: list[tuple[float, int]] = []  # (time, images seen so far) at every finished batch
        step = fb.Progress.step

        def timed_step(self, total, failed):
            done_at.append((time.perf_counter(), total.scored + total.already + total.unreadable))
            step(self, total, failed)

        fb.Progress.step = timed_step
        t = time.perf_counter()
        s = BackfillSettings(
            folder=folder,
            engine="in_process" if engine == "in_process" else "dask",
            processes=engine == "dask_processes",
            batch_size=batch,
        )
        try:
            r = backfill(config, s)
        finally:
            fb.Progress.step = step
        seconds = time.perf_counter() - t
        (t1, n1), (t2, n2) = done_at[0], done_at[-1]
        if r.scored != n:
            raise SystemExit(f"{engine}: scored {r.scored} of {n}")
        return {
            "seconds": round(seconds, 2),
            "per_s": round(n / seconds, 1),
            "first_batch_s": round(t1 - t, 2),  # flow start, file listing, (cluster start,) the first batch
            "after_first_per_s": round((n2 - n1) / max(t2 - t1, 1e-9), 1),  # the rest: the engine's steady rate
            "flagged": r.flagged,
            "load_avg_1m": round(os.getloadavg()[0], 2),  # the box's run queue: other work on a shared machine
            **exactly_once(url, n),
        }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=5000, help="images to backfill")
    ap.add_argument("--size", type=int, default=64, help="image side in pixels")
    ap.add_argument("--batch", type=int, default=256, help="images per batch (task)")
    ap.add_argument("--rounds", type=int, default=2, help="alternating in-process/Dask rounds")
    ap.add_argument(
        "--engines", default="in_process,dask,dask_processes", help="in_process, dask (worker threads), dask_processes"
    )
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "backfill.json")
    a = ap.parse_args()
    from prefect.testing.utilities import prefect_test_harness

    logging.getLogger("distributed").setLevel(logging.WARNING)
    runs: dict[str, list[dict]] = {e: [] for e in a.engines.split(",")}
    with tempfile.TemporaryDirectory(prefix="backfill-bench-") as tmp:
        work = Path(tmp)
        model = work / "models" / "part"
        subprocess.run(
            [sys.executable, str(ROOT / "benchmarks" / "watch.py"), "--build-model", str(model), "--size", str(a.size)],
            check=True,
        )
        make_images(work / "archive", a.n, a.size, defect_every=50)
        with prefect_test_harness(server_startup_timeout=180):
            for k in range(a.rounds):
                for engine in runs:
                    runs[engine].append(run_once(work, model, work / "archive", a.n, engine, a.batch))
                    print(f"round {k + 1} {engine}: {runs[engine][-1]}", flush=True)
    best = {e: max(rs, key=lambda r: r["per_s"]) for e, rs in runs.items()}
    result = {
        "images": a.n,
        "in_process_per_s": best["in_process"]["per_s"],
        "dask_per_s": best["dask"]["per_s"],
        "ratio": round(best["dask"]["per_s"] / best["in_process"]["per_s"], 3),
        "after_first_batch_ratio": round(
            best["dask"]["after_first_per_s"] / best["in_process"]["after_first_per_s"], 3
        ),
        "target_ratio": 0.9,
        **({"dask_processes_per_s": best["dask_processes"]["per_s"]} if "dask_processes" in best else {}),
        "image_size": a.size,
        "batch_size": a.batch,
        "cpu_count": os.cpu_count(),
        "dask_workers": os.cpu_count(),
        "rounds": runs,
        "exactly_once": True,
    }
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(result, indent=2) + "\n")
    print(
        f"\n| engine | images/s (best of {a.rounds}) | seconds | to the first batch | images/s after it |"
        "\n|---|---|---|---|---|"
    )
    for e, r in best.items():
        print(f"| {e} | {r['per_s']} | {r['seconds']} | {r['first_batch_s']} s | {r['after_first_per_s']} |")
    print(
        f"\nDask / in process: {result['ratio']} over the whole run (target >= 0.9), "
        f"{result['after_first_batch_ratio']} after the first batch; every image exactly once in the store: yes"
    )
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
