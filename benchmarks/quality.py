"""Quality benchmark (not a test): inspector vs anomalib PaDiM and PatchCore on every real data set.

Same backbone weights (EfficientNet-Lite0, ImageNet) and short side 256 for all; the same split of
train/good into fit images and calibration hold-out. Prints one table and writes
benchmarks/results/quality.json: {"sets": {SET: {METHOD: {image_auroc, pixel_auroc, aupro,
fpr_at_threshold, fit_s, ms_per_image, ...}}}}.

    .venv/bin/python benchmarks/quality.py [--sets bsdata] [--methods inspector,padim] [--patchcore-train 100]
                                           [--fit latent=96 pool=3] [--out other.json]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from inspector.config.fit import CalibrateSettings, FitSettings, fit_overrides  # noqa: E402
from inspector.data.datasets import discover  # noqa: E402
from inspector.pipeline.calibrate import calibrate_model  # noqa: E402
from inspector.pipeline.evaluate import evaluate_model  # noqa: E402
from inspector.pipeline.fit import fit, split_holdout  # noqa: E402
from inspector.pipeline.select import pick  # noqa: E402
from inspector.scoring.gate import fpr_check  # noqa: E402
from inspector.scoring.metrics import late_alarm_p  # noqa: E402

DATASETS = Path(os.environ.get("INSPECTOR_DATASETS", ROOT.parent / "shared" / "datasets"))
RESULTS = ROOT / "benchmarks" / "results" / "quality.json"
KEYS = ("image_auroc", "pixel_auroc", "aupro", "fpr_at_threshold", "fit_s", "ms_per_image")


def find_sets(root: Path) -> dict[str, Path]:
    """Every <set>/<category> folder with train/good, named like 'bsdata/ballscrew'."""
    return {f"{p.parents[2].name}/{p.parents[1].name}": p.parents[1] for p in sorted(root.glob("*/*/train/good"))}


def candidate_probe(data: Path, sink: dict):
    """A fit probe scoring the test images under every candidate the selection tries (its own choice never sees
    them): each candidate's test image AUROC, for the leave-one-set-out comparison with a fixed default."""
    from inspector.data.datasets import LoadReport
    from inspector.pipeline import select

    def probe(net, pre, candidates) -> None:
        label = {x.path: x.label for x in discover(data).test}
        comps, labels = [], []
        for path, img in select.iter_images(list(label), LoadReport(), 1.0):
            comps.append(select.components(net, pre, img))
            labels.append(label[path])
        for c in candidates:
            score = select.with_weights(net, c.overrides)
            sc = [score(x) for x in comps]
            sink[c.name] = select.auroc(
                [v for v, lab in zip(sc, labels) if not lab], [v for v, lab in zip(sc, labels) if lab]
            )

    return probe


def run_inspector(data: Path, fpr: float, overrides: dict | None = None) -> dict:
    """Fit (choosing its settings on synthetic defects; test labels never choose), calibrate, evaluate."""
    probed: dict = {}
    with tempfile.TemporaryDirectory() as tmp:
        model = Path(tmp) / "model"
        t0 = time.time()
        r = fit(
            data,
            model,
            FitSettings(**{"select_labelled": False, **(overrides or {})}),
            show=False,
            probe=candidate_probe(data, probed),
        )
        fit_s = time.time() - t0
        cal = calibrate_model(model, CalibrateSettings(fpr=fpr))
        m = evaluate_model(model, show=False)
    extra = {k: m[k] for k in ("fpr_by_image_size", "fpr_by_name_order", "late_alarm_p") if k in m}
    good = m["images"] - m["defects"]
    flagged = round((m.get("fpr_at_threshold") or 0.0) * good)
    kept = fpr_check(flagged, good, cal["expected_fpr"], 0.95)
    promise = {
        "holdout_images": cal["holdout_images"],
        "left_out_images": cal.get("left_out_images", 0),  # fit images scored by refits without them (crossfit)
        "left_out_method": cal.get("left_out_method"),
        "threshold_rule": cal.get("threshold_rule"),
        "promised_fpr": cal["expected_fpr"],
        "test_good": good,
        "flagged": flagged,
        "promise_kept": kept.ok,
        "promise_check": kept.detail,
    }
    sel = r.selection or {}
    return (
        {k: m.get(k) for k in KEYS}
        | {"fit_s": fit_s, "train_images": r.n_fit}
        | extra
        | promise
        | {"chosen": sel.get("chosen"), "selection": sel, "candidates_test_auroc": probed}
    )


def run_set(name: str, data: Path, methods: list[str], fpr: float, patchcore_train: int, overrides: dict) -> dict:
    from baselines import run_baseline

    fs = FitSettings(**overrides)  # the baselines get the same fit/hold-out split as inspector
    fit_paths, holdout = split_holdout(discover(data).train, fs.holdout_fraction, fs.seed, fs.holdout)
    out = {}
    for method in methods:
        print(f"[{name}] {method} ...", file=sys.stderr, flush=True)
        if method == "inspector":
            out[method] = run_inspector(data, fpr, overrides) | ({"settings": overrides} if overrides else {})
        else:
            cap = patchcore_train if method == "patchcore" else None
            out[method] = run_baseline(method, data, holdout, fit_paths, 256, fpr, cap)
    return out


def _fmt(v, f: str) -> str:
    return "-" if v is None else format(v, f)


def table(results: dict) -> str:
    head = (
        "| set | method | train imgs | image AUROC | pixel AUROC | AUPRO | FPR@thr (1% target) | promised (held out) "
        "| fit s | ms/img | chosen |"
    )
    lines = [head, "|" + "---|" * 11]
    for name, methods in results["sets"].items():
        for method, m in methods.items():
            promised = (
                f"{m['promised_fpr']:.3f} ({m['holdout_images']}"
                + (f"+{m['left_out_images']} cross-fit" if m.get("left_out_images") else "")
                + f"){'' if m.get('promise_kept', True) else ' missed'}"
                if "promised_fpr" in m
                else "-"
            )
            lines.append(
                f"| {name} | {method} | {m.get('train_images', '-')} | {_fmt(m.get('image_auroc'), '.3f')} | "
                f"{_fmt(m.get('pixel_auroc'), '.3f')} | {_fmt(m.get('aupro'), '.3f')} | "
                f"{_fmt(m.get('fpr_at_threshold'), '.3f')} | "
                f"{promised} | {_fmt(m.get('fit_s'), '.0f')} | {_fmt(m.get('ms_per_image'), '.0f')} | "
                f"{m.get('chosen') or '-'} |"
            )
    for method in ("inspector", "padim", "patchcore"):  # over the sets where every method has a value
        common = [m for m in results["sets"].values() if all(x.get("image_auroc") is not None for x in m.values())]
        vals = [m[method]["image_auroc"] for m in common if method in m]
        if vals:
            lines.append(f"| mean ({len(vals)} sets) | {method} | | {sum(vals) / len(vals):.3f} | | | | | | | |")
    lines += loso_lines(results)
    lines += list_lines(results)
    for name, methods in results["sets"].items():  # where test/good mixes camera formats, FPR per format
        for method, m in methods.items():
            parts = [
                f"{size}{'' if g.get('fitted', True) else ' (never fitted)'} "
                f"{round(g['fpr'] * g['images'])}/{g['images']}"
                for size, g in m.get("fpr_by_image_size", {}).items()
            ]
            if parts:
                lines.append(f"{name} {method}: false alarms by format: " + ", ".join(parts))
    for name, methods in results["sets"].items():  # alarms piling up late in name order: the parts drifted
        for method, m in methods.items():
            runs = [
                f"{g['flagged']}/{g['images']} (median {g['median_score']:.2f}x)"
                for g in m.get("fpr_by_name_order", [])
            ]
            if runs:
                p = late_alarm_p(m["fpr_by_name_order"])
                lines.append(
                    f"{name} {method}: false alarms by name-order quarter, first to last: "
                    + ", ".join(runs)
                    + f"; last vs the rest, one-sided Fisher p = {p:.1g}"
                )
    return "\n".join(lines)


def loso(results: dict) -> dict | None:
    """Leave-one-set-out: per left-out set, the candidate with the best mean test AUROC on the other sets (the best a
    fixed default chosen on labelled sets could be), against what per-product selection chose from the set's own good
    images (no labels), and the best candidate in hindsight (an oracle, not achievable)."""
    probed = {
        n: m["inspector"]["candidates_test_auroc"]
        for n, m in results["sets"].items()
        if m.get("inspector", {}).get("candidates_test_auroc")
    }
    # candidates every set tried (tiles are tried only on sets whose images the auto rule would tile)
    names = sorted(set.intersection(*(set(v) for v in probed.values()))) if probed else []
    if len(probed) < 2 or not names:
        return None
    rows = {}
    for left, cand in probed.items():
        others = [v for n, v in probed.items() if n != left]
        default = max(names, key=lambda c: np.mean([v[c] for v in others]))
        rows[left] = {
            "default_from_other_sets": default,
            "default_auroc": cand[default],
            "selected": results["sets"][left]["inspector"]["chosen"],
            "selected_auroc": results["sets"][left]["inspector"]["image_auroc"],
            "oracle_auroc": max(cand.values()),
        }
    mean = {
        k: float(np.mean([r[k] for r in rows.values()])) for k in ("default_auroc", "selected_auroc", "oracle_auroc")
    }
    return {"sets": rows, "mean": mean}


LISTS = {  # candidate lists the selection could have searched: which rows of `tried` each one holds
    "latent score terms only (fixed exposure, map maximum)": lambda r: (
        r["exposure"] == "standardize" and not r["settings"].get("score_top") and _whole_latent(r)
    ),
    "+ top-cells mean": lambda r: r["exposure"] == "standardize" and _whole_latent(r),
    "+ feature Gaussian": lambda r: r["exposure"] == "standardize" and ", tiles " not in r["name"],
    "+ product exposure level (where select_exposure searched it)": lambda r: ", tiles " not in r["name"],
    "+ tiles where the auto rule would tile (what fit searched)": lambda r: True,
}


def _whole_latent(row: dict) -> bool:
    """A whole-image candidate scored from the latent (not the feature Gaussian)."""
    return ", tiles " not in row["name"] and row["settings"].get("gauss_source", "latent") == "latent"


def candidate_lists(results: dict) -> dict:
    """What the selection rule would have chosen from smaller candidate lists, and that choice's test AUROC (the
    probe's): whether a candidate dimension earns its place across sets. No test label chooses anything."""
    out: dict = {}
    for name, m in results["sets"].items():
        ins = m.get("inspector", {})
        tried, probed = ins.get("selection", {}).get("tried"), ins.get("candidates_test_auroc", {})
        if not tried or "exposure" not in tried[0]:
            continue
        for label, keep in LISTS.items():
            rows = [r for r in tried if keep(r)]  # in cost order, as the selection judged them
            best = rows[pick(rows)]
            out.setdefault(label, {})[name] = {"chosen": best["name"], "test_auroc": probed.get(best["name"])}
    return out


def list_lines(results: dict) -> list[str]:
    lists = candidate_lists(results)
    if not lists:
        return []
    names = list(next(iter(lists.values())))
    out = ["", "| candidate list | " + " | ".join(names) + " | mean |", "|---|" + "---|" * (len(names) + 1)]
    for label, per_set in lists.items():
        vals = [per_set.get(n, {}).get("test_auroc") for n in names]
        mean = np.mean(vals) if all(v is not None for v in vals) else None
        out.append(f"| {label} | " + " | ".join(_fmt(v, ".3f") for v in vals) + f" | {_fmt(mean, '.3f')} |")
    return out


def loso_lines(results: dict) -> list[str]:
    lo = results.get("loso")
    if not lo:
        return []
    out = [
        "",
        "| left-out set | default chosen on the other sets | its AUROC | per-product choice | its AUROC "
        "| best in hindsight |",
        "|---|---|---|---|---|---|",
    ]
    for n, r in lo["sets"].items():
        out.append(
            f"| {n} | {r['default_from_other_sets']} | {r['default_auroc']:.3f} | {r['selected']} | "
            f"{r['selected_auroc']:.3f} | {r['oracle_auroc']:.3f} |"
        )
    m = lo["mean"]
    out.append(f"| mean | | {m['default_auroc']:.3f} | | {m['selected_auroc']:.3f} | {m['oracle_auroc']:.3f} |")
    return out


def merge(out: Path, parts: list[Path]) -> None:
    """Rows of `parts` (later files win) over those of `out`; the leave-one-set-out table recomputed."""
    results = json.loads(out.read_text()) if out.exists() else {"sets": {}}
    for part in parts:
        for name, methods in json.loads(part.read_text())["sets"].items():
            results["sets"].setdefault(name, {}).update(methods)
    results["loso"] = loso(results)
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(table(results))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sets", default="", help="comma-separated substrings of set names (default: all)")
    ap.add_argument("--methods", default="inspector,padim,patchcore")
    ap.add_argument("--fpr", type=float, default=0.01)
    ap.add_argument(
        "--patchcore-train", type=int, default=100, help="PatchCore fits on a subsample (its coreset is slow)"
    )
    ap.add_argument(
        "--fit",
        nargs="*",
        default=[],
        metavar="KEY=VALUE",
        help="inspector fit settings other than the defaults (e.g. latent=96), recorded in the JSON",
    )
    ap.add_argument("--out", type=Path, default=RESULTS)
    ap.add_argument(
        "--merge",
        nargs="+",
        type=Path,
        metavar="JSON",
        help="no run: rows (per set and method) of these result files replace those in --out, then the table "
        "(runs split over several processes, or inspector re-run beside kept baseline rows)",
    )
    a = ap.parse_args()
    if a.merge:
        merge(a.out, a.merge)
        return
    try:
        overrides = fit_overrides(a.fit)  # a bad key or value: one clear error before any work
    except ValueError as e:
        ap.error(f"--fit: {e}")
    sets = {k: v for k, v in find_sets(DATASETS).items() if not a.sets or any(s in k for s in a.sets.split(","))}
    if not sets:
        sys.exit(f"no data sets with train/good under {DATASETS}")
    results = json.loads(a.out.read_text()) if a.out.exists() else {"sets": {}}
    for name, data in sets.items():
        results["sets"].setdefault(name, {}).update(
            run_set(name, data, a.methods.split(","), a.fpr, a.patchcore_train, overrides)
        )
        a.out.parent.mkdir(parents=True, exist_ok=True)
        a.out.write_text(json.dumps(results, indent=2) + "\n")
    results["loso"] = loso(results)
    results["note"] = (
        f"PaDiM and PatchCore at 256x256, inspector at its own input size (aspect kept, at most "
        f"320x256 pixels); PatchCore fitted on {a.patchcore_train} random fit images; "
        "FPR measured on test/good at the threshold calibrated on held-out train/good"
    )
    a.out.write_text(json.dumps(results, indent=2) + "\n")
    print(table(results))


if __name__ == "__main__":
    main()
