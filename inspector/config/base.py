"""The one settings base, the one YAML reader and the one way a validation error becomes a line."""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any, TypeVar, get_args

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

from inspector.errors import InspectorError

S = TypeVar("S", bound=BaseModel)


class Settings(BaseModel):
    """Unknown keys are rejected and settings never change once made."""

    model_config = ConfigDict(extra="forbid", frozen=True)


def error_line(e: ValidationError, skip: tuple[str, ...] = (), known: set[str] | None = None, section: str = "") -> str:
    """The first problem of a validation error as `where: what`; a typo explains a missing field, so unknown keys
    come first, with 'did you mean' from `known`. `skip` drops union tags (e.g. 'folder') from the location;
    `section` names where in a file the settings were."""
    errors = sorted(e.errors(), key=lambda x: x["type"] != "extra_forbidden")
    err = errors[0]
    loc = [p for p in ([section] if section else []) + list(err["loc"]) if p not in skip]
    where = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in loc).lstrip(".") or "settings"
    if err["type"] == "extra_forbidden":
        close = difflib.get_close_matches(str(err["loc"][-1]), sorted(known or ()), n=1, cutoff=0.75)
        return f"{where}: unknown key" + (f" (did you mean '{close[0]}'?)" if close else "")
    more = f" (and {e.error_count() - 1} more problems)" if e.error_count() > 1 else ""
    return f"{where}: {err['msg']}{more}"


def fields_of(model: type[BaseModel]) -> set[str]:
    """Every field name of a settings model and of the models nested in it, in lists and unions too
    (for 'did you mean')."""
    out: set[str] = set()
    seen: set[type] = set()

    def walk(tp: Any) -> None:
        if isinstance(tp, type) and issubclass(tp, BaseModel):
            if tp in seen:
                return
            seen.add(tp)
            for name, f in tp.model_fields.items():
                out.add(name)
                walk(f.annotation)
        for arg in get_args(tp):
            walk(arg)

    walk(model)
    return out


def read_yaml(path: Path) -> dict[str, Any]:
    """A settings file's top-level mapping; unreadable, invalid YAML or not a mapping is one InspectorError."""
    try:
        raw = yaml.safe_load(Path(path).read_text())
    except OSError as e:
        raise InspectorError(f"{path}: cannot read config ({e.strerror})") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        raise InspectorError(f"{path}:{where} not valid YAML ({getattr(e, 'problem', e)})") from None
    if not isinstance(raw, dict):
        raise InspectorError(f"{path}: expected a mapping of settings at the top level")
    return raw


def validate(model: type[S], raw: dict[str, Any], where: str, skip: tuple[str, ...] = (), section: str = "") -> S:
    """`model(**raw)`, or one InspectorError `where: section.field: problem`."""
    try:
        return model(**raw)
    except ValidationError as e:
        raise InspectorError(f"{where}: {error_line(e, skip, fields_of(model), section)}") from None
