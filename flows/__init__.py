"""Prefect flows over `inspector`: train, retrain, watch, report, backfill; `serve` runs them all locally.

Flows are short compositions of typed tasks that call `inspector` functions; `inspector` never imports
Prefect. Deployment code (schedules, work pools) lives in `launch/serve.py` and `prefect.yaml`, apart
from the flow code. `flows.watch` imports nothing that needs torch, so a line PC with
`inspector[runtime]` and Prefect can run the watcher as a managed deployment.
"""

import os

# OpenMP threads that spin while waiting make torch 30-40x slower when another process holds a core
# (measured here: a fit of 3 s took 110 s on a busy 2-core box); sleeping waiters cost ~nothing when idle.
# Set before torch is first imported by a flow; a value in the environment wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
# Plants are offline more often than not: the ephemeral server's usage telemetry only logs DNS errors there.
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
# The ephemeral server takes 12-17 s to start on a 2-core box (more while a fit runs beside it); Prefect's
# 20 s default made `make demo` fail once here with "Timed out while attempting to connect".
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
