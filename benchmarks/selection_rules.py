"""Selection rules side by side, leave-one-set-out (not a test): which candidates `fit` should search.

Reads one `benchmarks/quality.py --methods inspector` result whose fits searched every candidate family (run with
`--fit select_features=true select_exposure=true`): per set, every candidate's held-out judge AUROC (`selection.
tried`) and its test AUROC (`candidates_test_auroc`, the benchmark's probe). It then replays `fit`'s own rule
(`inspector.pipeline.select.decide`: in cost order, a costlier candidate must beat every cheaper one by more than
the tie) on subsets of that list, without refitting:

- exposure levels searched: the fixed level alone, or the fixed level and the product's own (a second whole fit);
- the feature Gaussian searched or not (after every latent candidate);
- the tie margin: fit's 0.005 and larger ones;
- whether the tie also holds between a score term's two reductions (map maximum, top-cells mean), which cost the
  same per frame.

Each rule's pick per set is scored by its test AUROC, and the rule family is judged leave-one-set-out: for each set,
the rule with the best mean over the other sets, scored on that set. Tiled candidates (only where `tiles=auto`
would tile) stay last, as in `fit`. The judge's draw is the stored run's: a replay, not a new fit.

    .venv/bin/python benchmarks/selection_rules.py [--result results/variants_feature_gaussian.json]
                                                   [--out results/selection_rules.json]
"""

from __future__ import annotations

import argparse
import itertools
import json
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from variants import best_on_others  # noqa: E402

from inspector.pipeline.select import TIE, pick  # noqa: E402

RESULTS = Path(__file__).parent / "results"
TIES = (TIE, 0.01, 0.02, 0.03)
EXPOSURE_SETS = {"fixed level": ("standardize",), "fixed and product level": ("standardize", "product")}


def candidates(result: dict) -> dict[str, list[dict]]:
    """Per set: the tried rows in fit's order, each with its test AUROC (`test`)."""
    out = {}
    for name, methods in result["sets"].items():
        ins = methods.get("inspector") or {}
        tests = ins.get("candidates_test_auroc")
        rows = (ins.get("selection") or {}).get("tried")
        if not tests or not rows:
            continue
        missing = [r["name"] for r in rows if r["name"] not in tests]
        if missing:
            raise SystemExit(f"{name}: no test AUROC for candidate {missing[0]!r}: run quality.py with its probe")
        out[name] = [r | {"test": tests[r["name"]]} for r in rows]
    return out


def replay(rows: list[dict], tie: float, tie_within_pair: bool = True) -> dict:
    """fit's rule (`select.pick`) on `rows` (cost order) with margin `tie`. Without `tie_within_pair`, two candidates
    that differ only in the map's reduction (max or top-cells mean: the same cost per frame) are compared without
    the tie."""
    return rows[
        pick(rows, lambda row, best: tie if tie_within_pair or pair(row["name"]) != pair(best["name"]) else 0.0)
    ]


def pair(name: str) -> str:
    """A candidate's name without its reduction: the two reductions of one score term cost the same per frame."""
    return re.sub(r" \((map maximum|top \d+% mean)\)", "", name)


def rule_rows(rows: list[dict], exposures: tuple[str, ...], features: bool) -> list[dict]:
    """The candidates a rule searches, in fit's order: latent ones (per exposure), the feature Gaussian's, tiles."""
    tiled = [r for r in rows if ", tiles " in r["name"]]
    whole = [r for r in rows if r not in tiled and r["exposure"] in exposures]
    latent = [r for r in whole if not r["name"].startswith("feature Gaussian")]
    feats = [r for r in whole if r["name"].startswith("feature Gaussian")] if features else []
    return latent + feats + tiled


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--result", type=Path, default=RESULTS / "variants_feature_gaussian.json")
    ap.add_argument("--out", type=Path, default=RESULTS / "selection_rules.json")
    args = ap.parse_args()
    sets = candidates(json.loads(args.result.read_text()))
    if len(sets) < 2:
        raise SystemExit(f"{args.result}: fewer than two sets with every candidate's test AUROC")
    rules: dict[str, dict] = {}
    for (exp_name, exps), features, tie, within in itertools.product(
        EXPOSURE_SETS.items(), (False, True), TIES, (True, False)
    ):
        key = f"{exp_name}, feature Gaussian {'on' if features else 'off'}, tie {tie}"
        key += "" if within else ", no tie between a term's two reductions"
        picks = {s: replay(rule_rows(rows, exps, features), tie, within) for s, rows in sets.items()}
        rules[key] = {
            "test_auroc": {s: p["test"] for s, p in picks.items()},
            "chosen": {s: p["name"] for s, p in picks.items()},
            "mean": sum(p["test"] for p in picks.values()) / len(picks),
        }
    scores = {k: v["test_auroc"] for k, v in rules.items()}
    folds = {}
    for s in sets:
        pick = best_on_others(scores, s)
        folds[s] = {"rule": pick, "test_auroc": scores[pick][s]}
    oracle = {s: max(r["test"] for r in rows) for s, rows in sets.items()}
    out = {
        "source": str(args.result.relative_to(ROOT) if args.result.is_absolute() else args.result),
        "rules": rules,
        "leave_one_set_out": {"folds": folds, "mean": sum(f["test_auroc"] for f in folds.values()) / len(folds)},
        "oracle": {"per_set": oracle, "mean": sum(oracle.values()) / len(oracle)},
        "note": "replay of fit's selection rule on the stored judge and probe rows: the judge's draw is the stored "
        "run's; test labels only score the picks",
    }
    args.out.write_text(json.dumps(out, indent=1) + "\n")
    short = [s.split("/")[-1][:13] for s in sets]
    print("| rule | " + " | ".join(short) + " | mean |")
    print("|---|" + "---|" * (len(sets) + 1))
    for k, v in rules.items():
        print(f"| {k} | " + " | ".join(f"{x:.3f}" for x in v["test_auroc"].values()) + f" | {v['mean']:.3f} |")
    print(
        "| oracle (best candidate on test) | " + " | ".join(f"{x:.3f}" for x in oracle.values()) + f" | "
        f"{out['oracle']['mean']:.3f} |"
    )
    print("\nleave-one-set-out:")
    for s, f in folds.items():
        print(f"  {s}: {f['rule']} -> {f['test_auroc']:.3f}")
    print(f"  mean {out['leave_one_set_out']['mean']:.3f}")


if __name__ == "__main__":
    main()
