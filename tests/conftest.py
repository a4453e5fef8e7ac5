"""Shared fixtures: a seeded synthetic product data set and a model fitted + calibrated on it."""

from __future__ import annotations

import os
import shutil
import socket
from pathlib import Path

import pytest

from inspector.config.fit import FitSettings

# Small and fast, but the same code path as a real fit.
FAST_FIT = dict(short_side=96, steps=150, bank_size=512, batch_size=1024, crossfit_folds=0)  # cross-fit: its own tests


@pytest.fixture(scope="session")
def synthetic_data(tmp_path_factory) -> Path:
    from inspector.data.synthetic import write_dataset

    return write_dataset(tmp_path_factory.mktemp("data") / "part", n_train=120, n_test_good=20, n_test_defect=8, seed=7)


@pytest.fixture(scope="session")
def fitted_model(synthetic_data, tmp_path_factory) -> Path:
    """A fitted and calibrated model folder (staging only)."""
    from inspector.config.fit import CalibrateSettings
    from inspector.pipeline.calibrate import calibrate_model
    from inspector.pipeline.fit import fit

    out = tmp_path_factory.mktemp("models") / "part"
    fit(synthetic_data, out, FitSettings(**FAST_FIT), show=False)
    calibrate_model(out, CalibrateSettings(fpr=0.05))
    return out


@pytest.fixture(scope="module")
def pg_url():
    """A throw-away database on the local PostgreSQL, dropped after the module."""
    from tests.support import temp_database

    with temp_database() as url:
        yield url


@pytest.fixture(params=["sqlite", "postgresql"])
def store(request, tmp_path):
    """An empty store on SQLite and on the real PostgreSQL (its schema kept between tests, rows deleted)."""
    from inspector.io.schema import Base
    from inspector.io.store import Store

    if request.param == "sqlite":
        s = Store.open(f"sqlite:///{tmp_path}/line/store.db")
    else:
        s = Store.open(request.getfixturevalue("pg_url"), tmp_path / "media")
        with s.engine.begin() as c:
            for t in reversed(Base.metadata.sorted_tables):
                c.execute(t.delete())
    yield s
    s.close()


# ---- markers: what a test needs, and a clear skip where a local machine lacks it ----------------------
# CI starts PostgreSQL and Mosquitto (.ci/run) and installs Chromium (scripts/setup.sh): there a missing
# service fails the test instead of skipping it.
SERVICE_MODULES = {  # test modules whose every test talks to a service
    "mqtt": ("io/test_sinks.py", "integration/test_watch_reliability.py", "integration/test_scale_out.py"),
    "pg": ("integration/test_scale_out.py",),
    "browser": ("dashboard/test_browser.py",),
    "prefect": ("flows/test_flows.py",),
    "slow": (
        "flows/test_flows.py",
        "integration/test_watch_reliability.py",
        "integration/test_scale_out.py",
        "pipeline/test_export.py",
    ),
}


def _listening(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


def _missing(marker: str) -> str | None:
    """Why a service is not there, or None."""
    if marker == "pg" and not _listening(5432):
        return "PostgreSQL is not running on 127.0.0.1:5432 (.ci/run starts it)"
    if marker == "mqtt" and not _listening(1883):
        return "Mosquitto is not running on 127.0.0.1:1883 (.ci/run starts it)"
    if marker == "browser" and not Path("/usr/bin/chromium").exists():
        return "needs Debian's Chromium at /usr/bin/chromium (apt-get install chromium; scripts/setup.sh does it)"
    return None


def pytest_collection_modifyitems(config, items):
    tests = Path(__file__).resolve().parent
    for item in items:
        rel = Path(item.fspath).resolve().relative_to(tests).as_posix()
        for marker, modules in SERVICE_MODULES.items():
            if rel in modules:
                item.add_marker(getattr(pytest.mark, marker))
        callspec = getattr(item, "callspec", None)
        if "pg_url" in item.fixturenames or (callspec is not None and callspec.params.get("store") == "postgresql"):
            item.add_marker(pytest.mark.pg)
    if os.environ.get("CI"):
        return
    reasons = {m: _missing(m) for m in ("pg", "mqtt", "browser")}
    for item in items:
        for marker, why in reasons.items():
            if why and item.get_closest_marker(marker):
                item.add_marker(pytest.mark.skip(reason=why))


def pytest_report_header(config):
    return f"services: pg={_listening(5432)} mqtt={_listening(1883)} chromium={shutil.which('chromium') is not None}"
