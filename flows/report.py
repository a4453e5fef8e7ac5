"""`report` (daily): what the line did in the last day, as Prefect artifacts.

Per source: frames scored, flagged and the flag rate; reviews and the false-alarm share of reviewed
items; the false alarms per scored frame next to the rate calibration promised; and drift, how far the
scores of good frames moved from the held-out good scores the threshold was calibrated on, in units
of their spread (a lens getting dirty or a new batch of material shows here before alarms pile up).
Reads the store (and the model folder for the calibration reference); changes nothing.
"""

from __future__ import annotations

import statistics
from datetime import datetime, timedelta, timezone
from pathlib import Path

from prefect import flow, get_run_logger, task
from pydantic import BaseModel, Field

from flows.tasks import IO, artifact_key, publish_artifacts, reference_scores
from inspector.config.fit import Settings


class ReportSettings(Settings):
    """The report window and when drift counts as drift."""

    hours: float = Field(24, gt=0, le=24 * 366, description="Report on the last this many hours.")
    drift_limit: float = Field(
        1.0,
        gt=0,
        le=100,
        description="Flag a source whose good-frame mean score moved more than this many reference spreads.",
    )


class SourceReport(BaseModel):
    source: str
    scored: int
    anomalous: int
    flagged: int
    flag_rate: float | None
    confirmed: int
    false_alarms: int
    pending: int
    false_alarm_share: float | None  # of reviewed items
    false_alarms_per_frame: float | None
    good_mean: float | None
    drift: float | None  # (good mean - reference mean) / reference spread
    drifting: bool
    # |mean good embedding - good cloud mean| / cloud spread (docs/latent-space.md); None without embeddings
    latent_drift: float | None = None
    latent_n: int = 0


class Report(BaseModel):
    since: datetime
    until: datetime
    model_version: str | None
    expected_fpr: float | None
    sources: list[SourceReport]
    artifact_key: str


@task(**IO)
def line_activity(store_url: str, media_dir: Path | None, since: datetime) -> dict[str, dict]:
    """Per source in the window: scored/anomalous frames, flagged items, reviews, good-frame score stats."""
    import sqlalchemy as sa

    from inspector.io.latent import window_drift
    from inspector.io.schema import ScoreSample
    from inspector.io.stats import flagged_per_hour, good_score_drift, review_rates
    from inspector.io.store import Store

    store = Store.open(store_url, media_dir)
    try:
        q = (
            sa.select(ScoreSample.source, sa.func.count(), sa.func.sum(sa.case((ScoreSample.is_anomaly, 1), else_=0)))
            .where(ScoreSample.created_at >= since)
            .group_by(ScoreSample.source)
        )
        with store.engine.connect() as c:
            counts = {src: (int(n), int(a or 0)) for src, n, a in c.execute(q)}
        flagged = {src: sum(n for _, n in hours) for src, hours in flagged_per_hour(store.engine, since).items()}
        reviews = {r.source: r for r in review_rates(store.engine, since)}
        drift = good_score_drift(store.engine, since, timezone.utc)
        latent = window_drift(store.engine, since)
    finally:
        store.close()
    out: dict[str, dict] = {}
    for src in sorted(set(counts) | set(flagged) | set(reviews)):
        n_good = sum(d.n for _, d in drift.get(src, []))
        r = reviews.get(src)
        out[src] = {
            "scored": counts.get(src, (0, 0))[0],
            "anomalous": counts.get(src, (0, 0))[1],
            "flagged": flagged.get(src, 0),
            "confirmed": r.confirmed if r else 0,
            "false_alarms": r.false_alarm if r else 0,
            "pending": r.pending if r else 0,
            "good_mean": sum(d.s for _, d in drift.get(src, [])) / n_good if n_good else None,
            "latent_drift": latent.get(src, {}).get("shift"),
            "latent_n": latent.get(src, {}).get("n", 0),
        }
    return out


@task(**IO)
def calibration_reference(model: Path | None) -> dict:
    """The current version, its expected false-alarm rate and held-out good scores (empty without a model)."""
    from inspector.runtime.manifest import read_manifest
    from inspector.runtime.registry import current_version

    if model is None or (version := current_version(Path(model))) is None:
        return {}
    m = read_manifest(Path(model) / version)
    return {
        "version": version,
        "expected_fpr": m.data.get("calibration", {}).get("expected_fpr"),
        "holdout": reference_scores(Path(model), version),
    }


def source_report(src: str, a: dict, ref: list[float] | None, drift_limit: float) -> SourceReport:
    """Rates and drift of one source (pure)."""
    good_ref = [s for s in ref or [] if s < 1.0]  # line "good frames" are the frames under the threshold
    drift = None
    if a["good_mean"] is not None and len(good_ref) >= 2:
        spread = max(statistics.stdev(good_ref), 1e-6)
        drift = (a["good_mean"] - statistics.fmean(good_ref)) / spread
    reviewed = a["confirmed"] + a["false_alarms"]
    return SourceReport(
        source=src,
        scored=a["scored"],
        anomalous=a["anomalous"],
        flagged=a["flagged"],
        flag_rate=a["flagged"] / a["scored"] if a["scored"] else None,
        confirmed=a["confirmed"],
        false_alarms=a["false_alarms"],
        pending=a["pending"],
        false_alarm_share=a["false_alarms"] / reviewed if reviewed else None,
        false_alarms_per_frame=a["false_alarms"] / a["scored"] if a["scored"] else None,
        good_mean=a["good_mean"],
        drift=drift,
        drifting=drift is not None and abs(drift) > drift_limit,
        latent_drift=a.get("latent_drift"),
        latent_n=a.get("latent_n", 0),
    )


def report_table(r: Report) -> list[dict]:
    pct = lambda v: "-" if v is None else f"{v:.2%}"  # noqa: E731
    num = lambda v: "-" if v is None else f"{v:+.2f}"  # noqa: E731
    return [
        {
            "source": s.source,
            "scored": s.scored,
            "flagged": s.flagged,
            "flag rate": pct(s.flag_rate),
            "confirmed": s.confirmed,
            "false alarms": s.false_alarms,
            "pending review": s.pending,
            "false-alarm share": pct(s.false_alarm_share),
            "false alarms / frame": pct(s.false_alarms_per_frame),
            "good mean": "-" if s.good_mean is None else f"{s.good_mean:.3f}",
            "drift (spreads)": num(s.drift),
            "drifting": "yes" if s.drifting else "no",
            "latent drift (spreads)": num(s.latent_drift),
        }
        for s in r.sources
    ]


def report_markdown(r: Report, drift_limit: float) -> str:
    lines = [f"# Line report {r.since:%Y-%m-%d %H:%M} to {r.until:%Y-%m-%d %H:%M} UTC", ""]
    if r.model_version:
        exp = f"; calibration expects {r.expected_fpr:.2%} of good parts flagged" if r.expected_fpr is not None else ""
        lines += [f"Model `current`: {r.model_version}{exp}.", ""]
    if not r.sources:
        return "\n".join(lines + ["No frames were scored in this window."])
    for s in r.sources:
        text = f"- **{s.source}**: {s.scored} frames scored, {s.flagged} flagged"
        text += f" ({s.flag_rate:.2%})" if s.flag_rate is not None else ""
        text += (
            f"; reviewed {s.confirmed + s.false_alarms} ({s.false_alarms} false alarms), {s.pending} waiting for review"
        )
        if s.latent_drift is not None:
            text += (
                f"; good frames' embeddings sit {s.latent_drift:.2f} cloud spreads from the good cloud (n={s.latent_n})"
            )
        if s.drift is not None:
            text += f"; good-frame scores moved {s.drift:+.2f} spreads from calibration"
            if s.drifting:
                text += f" **above the {drift_limit:g} limit: check the camera, lighting and material**"
        lines.append(text)
    lines += ["", "| " + " | ".join(report_table(r)[0]) + " |", "|" + "---|" * len(report_table(r)[0])]
    lines += ["| " + " | ".join(str(v) for v in row.values()) + " |" for row in report_table(r)]
    return "\n".join(lines)


@flow(name="report")
def report(
    config: Path | None = None,
    store: str | None = None,
    model: Path | None = None,
    settings: ReportSettings = ReportSettings(),
) -> Report:
    """Report on the store of a line config (or `store` URL) and the model it runs (or `model`)."""
    from inspector.config.access import resolve

    dash = resolve(store, Path(config) if config else None)
    line = None
    if config is not None:
        from inspector.config.line import load_config

        cfg = load_config(Path(config))
        line, model = cfg.line, model or cfg.model.path
    until = datetime.now(timezone.utc)
    since = until - timedelta(hours=settings.hours)
    activity = line_activity(dash.store_url, dash.media_dir, since)
    ref = calibration_reference(model)
    sources = [source_report(src, a, ref.get("holdout"), settings.drift_limit) for src, a in activity.items()]
    r = Report(
        since=since,
        until=until,
        model_version=ref.get("version"),
        expected_fpr=ref.get("expected_fpr"),
        sources=sources,
        artifact_key=artifact_key("report", line or "store"),
    )
    publish_artifacts(
        r.artifact_key,
        report_markdown(r, settings.drift_limit),
        report_table(r) or [{"source": "-"}],
        f"line report, last {settings.hours:g} h",
    )
    for s in sources:
        if s.drifting:
            get_run_logger().warning("%s: good-frame scores drifted %+.2f spreads from calibration", s.source, s.drift)
    return r


if __name__ == "__main__":
    import argparse
    import sys

    ap = argparse.ArgumentParser(description="Run the report flow once (ephemeral Prefect API, no server needed).")
    ap.add_argument("--config", type=Path, help="line config YAML (store and model)")
    ap.add_argument("--store", help="store URL instead of the config's")
    ap.add_argument("--model", type=Path, help="model folder instead of the config's")
    ap.add_argument("--hours", type=float, default=24)
    a = ap.parse_args()
    r = report(a.config, a.store, a.model, ReportSettings(hours=a.hours))
    print(report_markdown(r, ReportSettings().drift_limit))
    sys.exit(0)
