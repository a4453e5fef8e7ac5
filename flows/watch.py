"""`watch`: the line's watcher as a long-running Prefect flow run.

It calls the same `inspector.watcher.run` as `inspector watch --config line.yaml`; Prefect adds what a
plant's operations team wants from a managed service: the run's state and logs in the UI, restarts
(flow retries when the watcher fails to start, e.g. the store is not reachable yet; a deployment
trigger in `prefect.yaml` / `launch/serve.py` starts it again when the process crashes), and
cancellation from the UI, which arrives as SIGTERM: the watcher commits every frame it scored and
exits cleanly. Torch-free: a line PC needs `inspector[runtime]` and `prefect` only.

Run once, no server needed:  python -m flows.watch --config examples/line1.yaml
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from prefect import flow, get_run_logger

from flows.tasks import inspector_logs_to_prefect

RESTART_DELAY_S = 60


@flow(name="watch", retries=3, retry_delay_seconds=RESTART_DELAY_S)
def watch(config: Path) -> int:
    """Watch the line described by `config` until the run is cancelled or the process gets SIGTERM/SIGINT."""
    from inspector.watcher import run

    get_run_logger().info("starting the watcher for %s", config)
    with inspector_logs_to_prefect():
        code = run(Path(config))
    if code != 0:
        raise RuntimeError(f"the watcher for {config} exited with code {code}")
    get_run_logger().info("the watcher for %s stopped cleanly", config)
    return code


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Run the watcher as a Prefect flow (Ctrl-C or SIGTERM stops it).")
    p.add_argument("--config", required=True, help="line config YAML, as for `inspector watch`")
    a = p.parse_args(argv)
    from inspector.config.line import load_config
    from inspector.errors import InspectorError

    try:
        load_config(Path(a.config))  # a typo is one line now, not three restarts later
    except InspectorError as e:
        print(f"watch: error: {e}", file=sys.stderr)
        return 2
    return watch(Path(a.config))


if __name__ == "__main__":
    sys.exit(main())
