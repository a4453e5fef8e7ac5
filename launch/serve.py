"""Serve every deployment of one line from this machine, with its schedules: `python -m launch.serve ...`.

The deployments (what runs, when, with which parameters) are defined here, apart from the flow code;
`prefect.yaml` holds the same deployments for a Prefect server with work pools. Schedules need a
server's scheduler (the ephemeral API used for one-off runs has none), so without `PREFECT_API_URL`
this starts a local `prefect server start` (UI on http://127.0.0.1:4200) and serves against it.

    python -m launch.serve --line examples/line1.yaml --data ../shared/datasets/bsdata/ballscrew \\
        --model models/ballscrew --retrain-dir line1/store/retrain/good
"""

from __future__ import annotations

import argparse
import contextlib
import os
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import yaml
from prefect import serve
from prefect.client.schemas.objects import ConcurrencyLimitConfig, ConcurrencyLimitStrategy
from prefect.events import DeploymentEventTrigger
from prefect.schedules import Cron

from flows.backfill import backfill
from flows.report import report
from flows.retrain import retrain
from flows.train import train
from flows.watch import watch

SERVER_PORT = 4200
PREFECT_YAML = Path(__file__).resolve().parent.parent / "prefect.yaml"


def cron(name: str) -> str:
    """A schedule's cron string from prefect.yaml's `definitions.schedules`, the one place they are written."""
    return yaml.safe_load(PREFECT_YAML.read_text())["definitions"]["schedules"][name]["cron"]


def restart_on_crash(deployment: str) -> DeploymentEventTrigger:
    """Run the deployment again when one of its runs crashes (process killed, machine rebooted)."""
    return DeploymentEventTrigger(
        name=f"restart {deployment} after a crash",
        expect={"prefect.flow-run.Crashed"},
        match_related={"prefect.resource.role": "deployment", "prefect.resource.name": deployment},
    )


def deployments(
    line_config: Path, data: Path, model: Path, retrain_dir: Path, timezone: str = "UTC", watch_line: bool = True
) -> list:
    """The line's deployments: train on demand, nightly retrain, daily report, backfill on demand, the watcher.
    Cron schedules run in the plant's `timezone`, not the server's."""
    line = line_config.stem
    common = {"data": str(data), "model": str(model)}
    out = [
        train.to_deployment(f"{line}-train", parameters=common, tags=[line, "gpu"]),
        retrain.to_deployment(
            f"{line}-retrain",
            schedule=Cron(cron("retrain"), timezone=timezone),
            tags=[line, "gpu"],
            parameters={**common, "retrain_dir": str(retrain_dir)},
        ),
        report.to_deployment(
            f"{line}-report",
            schedule=Cron(cron("report"), timezone=timezone),
            tags=[line],
            parameters={"config": str(line_config)},
        ),
        backfill.to_deployment(f"{line}-backfill", parameters={"config": str(line_config)}, tags=[line]),
    ]
    if watch_line:  # one watcher per line: a second run is refused while one is running
        out.append(
            watch.to_deployment(
                f"{line}-watch",
                parameters={"config": str(line_config)},
                tags=[line, "watcher"],
                concurrency_limit=ConcurrencyLimitConfig(
                    limit=1, collision_strategy=ConcurrencyLimitStrategy.CANCEL_NEW
                ),
                triggers=[restart_on_crash(f"{line}-watch")],
            )
        )
    return out


def _healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/health", timeout=2) as r:
            return r.status == 200
    except OSError:
        return False


@contextlib.contextmanager
def local_server(port: int = SERVER_PORT) -> Iterator[str | None]:
    """A `prefect server start` child process, unless PREFECT_API_URL names a server already."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    if PREFECT_API_URL.value():
        yield None
        return
    url = f"http://127.0.0.1:{port}/api"
    env = {**os.environ, "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1", "--port", str(port)], env=env
    )
    try:
        deadline = time.monotonic() + 120
        while not _healthy(url):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"serve: the local Prefect server did not start on port {port}")
            time.sleep(0.5)
        with temporary_settings(updates={PREFECT_API_URL: url}):
            yield url
    finally:
        proc.terminate()
        proc.wait(30)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Serve a line's deployments (schedules included) from this machine.")
    p.add_argument("--line", required=True, type=Path, help="line config YAML (watcher, store)")
    p.add_argument("--data", required=True, type=Path, help="training data set (train/good, test/...)")
    p.add_argument("--model", required=True, type=Path, help="model folder (the registry)")
    p.add_argument("--retrain-dir", type=Path, help="reviewed false alarms (default: retrain/good beside the store)")
    p.add_argument("--timezone", default=os.environ.get("TZ", "UTC"), help="time zone of the cron schedules")
    p.add_argument("--no-watch", action="store_true", help="do not serve the watcher (it runs elsewhere)")
    p.add_argument("--port", type=int, default=SERVER_PORT, help="port of the local Prefect server")
    a = p.parse_args(argv)
    retrain_dir = a.retrain_dir or default_retrain_dir(a.line)
    with local_server(a.port) as url:
        if url:
            print(f"Prefect UI: {url.removesuffix('/api')}")
        serve(
            *deployments(
                a.line.resolve(),
                a.data.resolve(),
                a.model.resolve(),
                retrain_dir.resolve(),
                a.timezone,
                watch_line=not a.no_watch,
            )
        )
    return 0


def default_retrain_dir(line_config: Path) -> Path:
    """Where the dashboard copies reviewed false alarms for this line's store (its own default)."""
    from inspector.config.access import default_retrain_dir, resolve

    s = resolve(None, line_config)
    folder = s.retrain_dir or default_retrain_dir(s.store_url, s.media_dir)
    if folder is None:
        raise SystemExit("serve: pass --retrain-dir (the store is not SQLite and has no media_dir)")
    return folder


if __name__ == "__main__":
    sys.exit(main())
