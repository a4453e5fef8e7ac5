"""docs/configuration.md is generated from the settings models: it must list what the code accepts."""

import importlib.util

from tests.support import ROOT


def test_configuration_reference_is_current():
    spec = importlib.util.spec_from_file_location("config_reference", ROOT / "scripts" / "config_reference.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    assert (ROOT / "docs" / "configuration.md").read_text() == mod.reference(), (
        "docs/configuration.md is behind the settings: run `python scripts/config_reference.py`"
    )
