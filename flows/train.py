"""`train`: fit -> calibrate -> evaluate -> export (a new registered version) -> promote only through the gate.

The gate (`inspector.gate.compare`) compares the new version with `current` on the same labelled test
images, both scored by ONNX Runtime as the line scores them, and checks the measured false-alarm rate
against the calibrated target. A version that fails stays in the registry (promote it by hand with
`inspector promote` after a look at the report) and the line keeps its model. The very first version
of a model folder has nothing to replace: `export` makes it `current`.

Run once, no server needed:  python -m flows.train DATA MODEL [--steps N]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from prefect import flow, get_run_logger
from pydantic import BaseModel

from flows.tasks import (
    artifact_key,
    calibrate_model,
    current_version,
    evaluate_model,
    export_version,
    fit_model,
    inspector_logs_to_prefect,
    keep_evaluation,
    measure_version,
    promote_version,
    publish_artifacts,
)
from inspector.config.fit import CalibrateSettings, FitSettings
from inspector.errors import InspectorError
from inspector.scoring.gate import Check, GateResult, GateSettings, compare

TABLE_METRICS = (
    "image_auroc",
    "pixel_auroc",
    "aupro",
    "f1_at_threshold",
    "recall_at_threshold",
    "fpr_at_threshold",
    "false_alarms",
    "good_images",
)


class TrainResult(BaseModel):
    """What a training run did: the version it registered and whether the line now runs it."""

    model: Path
    version: str
    previous: str | None
    promoted: bool
    gate_ok: bool
    checks: list[str]  # every gate check, "pass: ..." or "FAIL: ..."
    reasons: list[str]  # the failed ones
    candidate: dict
    current: dict | None
    overlays: list[Path]
    artifact_key: str


@flow(name="train")
def train(
    data: Path,
    model: Path,
    fit: FitSettings = FitSettings(),
    calibrate: CalibrateSettings = CalibrateSettings(),
    gate: GateSettings = GateSettings(),
) -> TrainResult:
    """Train a new version of `model` on `data`; the line switches to it only if it passes the gate."""
    with inspector_logs_to_prefect():
        return train_and_gate(Path(data), Path(model), fit, calibrate, gate, eval_data=Path(data), why="train")


def train_and_gate(
    data: Path,
    model: Path,
    fit: FitSettings,
    calibrate: CalibrateSettings,
    gate: GateSettings,
    eval_data: Path,
    why: str,
) -> TrainResult:
    """The body shared by `train` and `retrain` (runs inside their flow run)."""
    previous = current_version(model)
    fit_model(data, model, fit)
    cal = calibrate_model(model, calibrate)
    has_test = _has_test_images(eval_data)
    if has_test:
        evaluate_model(model, eval_data)
    version = export_version(model)
    candidate, current, decision = _gate(model, version, previous, eval_data if has_test else None, cal, gate)
    promoted = _decide(model, version, previous, decision, why)
    result = TrainResult(
        model=model,
        version=version,
        previous=previous,
        promoted=promoted,
        gate_ok=decision.ok,
        checks=[f"{'pass' if c.ok else 'FAIL'}: {c.detail}" for c in decision.checks],
        reasons=decision.reasons,
        candidate=candidate,
        current=current,
        overlays=keep_evaluation(model, version),
        artifact_key=artifact_key(why, model.name),
    )
    publish_artifacts(
        result.artifact_key,
        report_markdown(result, cal),
        metrics_table(candidate, current),
        f"{why} of {model}: {version} {'promoted' if promoted else 'not promoted'}",
    )
    get_run_logger().info(
        "%s: %s is %s",
        model,
        version,
        "now current" if promoted else f"registered, not promoted ({'; '.join(decision.reasons)})",
    )
    return result


def _gate(
    model: Path, version: str, previous: str | None, eval_data: Path | None, cal: dict, gate: GateSettings
) -> tuple[dict, dict | None, GateResult]:
    """Measure candidate and current on the evaluation set and compare them."""
    if eval_data is None:
        check = Check("evaluation", False, "the data set has no test/ images: nothing to gate on")
        return {"version": version}, None, GateResult(False, [check])
    candidate = measure_version(model / version, eval_data)
    current = measure_version(model / previous, eval_data) if previous else None
    return candidate, current, compare(candidate, current, float(cal["target_fpr"]), gate)


def _decide(model: Path, version: str, previous: str | None, decision: GateResult, why: str) -> bool:
    log = get_run_logger()
    if previous is None:  # export already made the first version current: there was nothing else to run
        if not decision.ok:
            log.warning(
                "%s is the first version, so the line runs it although the gate failed: %s",
                version,
                "; ".join(decision.reasons),
            )
        return True
    if not decision.ok:
        log.warning("gate failed for %s, `current` stays %s: %s", version, previous, "; ".join(decision.reasons))
        return False
    promote_version(model, version, f"{why}: gate passed against {previous}")
    return True


def _has_test_images(data: Path) -> bool:
    from inspector.data.datasets import discover

    return bool(discover(data).test)


def metrics_table(candidate: dict, current: dict | None) -> list[dict]:
    """Rows of metric, candidate, current, change: the table artifact."""
    rows = []
    for name in TABLE_METRICS:
        if name not in candidate:
            continue
        new, old = candidate[name], (current or {}).get(name)
        change = new - old if isinstance(new, (int, float)) and isinstance(old, (int, float)) else None
        rows.append({"metric": name, "candidate": _fmt(new), "current": _fmt(old), "change": _fmt(change, signed=True)})
    return rows


def report_markdown(r: TrainResult, cal: dict) -> str:
    """The run as people read it: verdict, gate checks, calibration meaning, metrics, heat-map overlays."""
    verdict = (
        f"**{r.version} is now `current`**"
        if r.promoted
        else f"**{r.version} registered, not promoted**: the line keeps `{r.previous}`"
    )
    lines = [f"# {r.model.name}: {r.version}", "", verdict, "", "## Gate", ""]
    lines += [f"- {c}" for c in r.checks]
    lines += [
        "",
        "## Threshold",
        "",
        cal.get("meaning", ""),
        "",
        "## Metrics (ONNX Runtime, labelled test images)",
        "",
        "| metric | candidate | current | change |",
        "|---|---|---|---|",
    ]
    lines += [
        f"| {row['metric']} | {row['candidate']} | {row['current']} | {row['change']} |"
        for row in metrics_table(r.candidate, r.current)
    ]
    if r.overlays:
        lines += [
            "",
            "## Heat-map overlays",
            "",
            "Image and heat map side by side, score as a multiple of the threshold:",
            "",
        ]
        lines += [f"- [{p.stem.replace('_', ' ')}]({p.as_uri()}) `{p}`" for p in r.overlays]
    lines += ["", f"Model folder: `{r.model.resolve()}`; promote by hand: `inspector promote {r.model} {r.version}`"]
    return "\n".join(lines)


def _fmt(v: object, signed: bool = False) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:+.4f}" if signed else f"{v:.4f}"
    return f"{v:+d}" if signed and isinstance(v, int) else str(v)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Run the train flow once (ephemeral Prefect API, no server needed).")
    p.add_argument("data")
    p.add_argument("model")
    p.add_argument("--steps", type=int, help="autoencoder training steps")
    p.add_argument("--short-side", type=int, help="network input short side (px)")
    p.add_argument("--fpr", type=float, help="target false-alarm rate")
    a = p.parse_args(argv)
    fit = FitSettings(**{k: v for k, v in {"steps": a.steps, "short_side": a.short_side}.items() if v is not None})
    cal = CalibrateSettings(**({"fpr": a.fpr} if a.fpr else {}))
    try:
        r = train(Path(a.data), Path(a.model), fit, cal)
    except InspectorError as e:
        print(f"train: error: {e}", file=sys.stderr)
        return 2
    print(f"{r.model}: {r.version} {'promoted' if r.promoted else 'not promoted: ' + '; '.join(r.reasons)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
