"""Shared fixtures: a seeded synthetic product data set and a model fitted + calibrated on it."""

from __future__ import annotations

from pathlib import Path

import pytest

from inspector.config.fit import FitSettings

# Small and fast, but the same code path as a real fit.
FAST_FIT = dict(short_side=96, steps=150, bank_size=512, batch_size=1024)


@pytest.fixture(scope="session")
def synthetic_data(tmp_path_factory) -> Path:
    from inspector.data.synthetic import write_dataset

    return write_dataset(tmp_path_factory.mktemp("data") / "part", n_train=120, n_test_good=20, n_test_defect=8, seed=7)


@pytest.fixture(scope="session")
def fitted_model(synthetic_data, tmp_path_factory) -> Path:
    """A fitted and calibrated model folder (staging only)."""
    from inspector.pipeline.calibrate import calibrate_model
    from inspector.config.fit import CalibrateSettings
    from inspector.pipeline.fit import fit

    out = tmp_path_factory.mktemp("models") / "part"
    fit(synthetic_data, out, FitSettings(**FAST_FIT), show=False)
    calibrate_model(out, CalibrateSettings(fpr=0.05))
    return out


@pytest.fixture(scope="module")
def pg_url():
    """A throw-away database on the local PostgreSQL, dropped after the module."""
    from tests.test_watch_support import temp_database

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
