"""Writes docs/configuration.md from the settings models themselves: `python scripts/config_reference.py`.
tests/config/test_reference.py fails when the file is behind the code."""

from __future__ import annotations

import sys
import typing
from pathlib import Path

from pydantic import BaseModel
from pydantic_core import PydanticUndefined

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from inspector.config.fit import CalibrateSettings, FitSettings  # noqa: E402
from inspector.config.line import WatchConfig  # noqa: E402

HEADER = """# Configuration reference

Generated from the settings models by `scripts/config_reference.py`; do not edit by hand. Every model rejects
unknown keys. `inspector fit --set KEY=VALUE` takes any fit or network key; the line config
(`inspector watch --config line.yaml`, see `examples/line1.yaml`) is a YAML file of the `WatchConfig` keys.
"""


def _models_in(tp: typing.Any) -> list[type[BaseModel]]:
    if isinstance(tp, type) and issubclass(tp, BaseModel):
        return [tp]
    return [m for arg in typing.get_args(tp) for m in _models_in(arg)]


def _default(f) -> str:
    if f.default is PydanticUndefined and f.default_factory is None:
        return "required"
    if f.default_factory is not None:
        return "(see below)" if _models_in(f.annotation) else "`[]`"
    return f"`{f.default!r}`" if not isinstance(f.default, BaseModel) else "(see below)"


def section(model: type[BaseModel], title: str, seen: set) -> list[str]:
    if model in seen:
        return []
    seen.add(model)
    doc = (model.__doc__ or "").strip().splitlines()[0] if model.__doc__ else ""
    out = [f"## {title}", "", doc, "", "| key | default | meaning |", "|---|---|---|"]
    nested = []
    for name, f in model.model_fields.items():
        text = (f.description or "").replace("|", "\\|")
        out.append(f"| `{name}` | {_default(f)} | {text} |")
        nested += [
            (m, f"{title} / {name}" if len(_models_in(f.annotation)) == 1 else f"{title} / {name}: {m.__name__}")
            for m in _models_in(f.annotation)
        ]
    out.append("")
    for m, t in nested:
        out += section(m, t, seen)
    return out


def reference() -> str:
    seen: set = set()
    lines = [HEADER]
    for model, title in (
        (FitSettings, "inspector fit (FitSettings)"),
        (CalibrateSettings, "inspector calibrate"),
        (WatchConfig, "line config (WatchConfig)"),
    ):
        lines += section(model, title, seen)
    return "\n".join(lines).rstrip() + "\n"


if __name__ == "__main__":
    (ROOT / "docs" / "configuration.md").write_text(reference())
    print("wrote docs/configuration.md")
