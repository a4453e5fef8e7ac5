"""Prefect flows over `inspector`: train, retrain, watch, report, backfill; `serve` runs them all locally.

Flows are short compositions of typed tasks that call `inspector` functions; `inspector` never imports
Prefect. Deployment code (schedules, work pools) lives in `flows/serve.py` and `prefect.yaml`, apart
from the flow code. `flows.watch` imports nothing that needs torch, so a line PC with
`inspector[runtime]` and Prefect can run the watcher as a managed deployment.
"""
