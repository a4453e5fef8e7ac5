"""Launchers: the demo (`python -m launch.demo`) and serving a line's Prefect deployments (`python -m launch.serve`)."""
