"""Shared fixtures: a seeded synthetic product data set and a model fitted + calibrated on it."""

from __future__ import annotations

from pathlib import Path

import pytest

from inspector.config import FitSettings

# Small and fast, but the same code path as a real fit.
FAST_FIT = dict(short_side=96, steps=150, bank_size=512, batch_size=1024)


@pytest.fixture(scope="session")
def synthetic_data(tmp_path_factory) -> Path:
    from inspector.synthetic import write_dataset

    return write_dataset(tmp_path_factory.mktemp("data") / "part", n_train=120, n_test_good=20, n_test_defect=8, seed=7)


@pytest.fixture(scope="session")
def fitted_model(synthetic_data, tmp_path_factory) -> Path:
    """A fitted and calibrated model folder (staging only)."""
    from inspector.calibrate import calibrate_model
    from inspector.config import CalibrateSettings
    from inspector.train import fit

    out = tmp_path_factory.mktemp("models") / "part"
    fit(synthetic_data, out, FitSettings(**FAST_FIT), show=False)
    calibrate_model(out, CalibrateSettings(fpr=0.05))
    return out
