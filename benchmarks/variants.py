"""Whole-fit variants side by side (not a test): backbone, feature layers, input size.

Each variant is a `benchmarks/quality.py --methods inspector --fit KEY=VALUE ...` run (per-product selection on,
as a user gets it). This script reads those result files and answers two questions per variant list, on every set
all variants finished:

- as a fixed default: leave-one-set-out, the variant with the best mean test AUROC on the other sets, scored on the
  left-out one;
- as a fit candidate: what `fit`'s own rule would pick among the variants from the held-out judge alone (each
  variant's chosen candidate's judge AUROC; a later variant, being costlier, must beat every earlier one by more
  than the judge's tie, 0.005), and that pick's test AUROC;
- which candidate list to search, chosen honestly: every list that keeps the first variant (the default), the
  list with the best mean as-candidate AUROC on the other sets, scored on the left-out one (leave-one-set-out).

    .venv/bin/python benchmarks/variants.py --variant lite0=a.json lite1=b.json,c.json [--out results/variants.json]

Variants are given cheapest first. Writes a JSON result and prints a table.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from inspector.pipeline.select import TIE  # noqa: E402  fit's own margin: a costlier choice must win by more

RESULTS = Path(__file__).parent / "results" / "variants.json"


def best_on_others(scores: dict[str, dict[str, float]], left: str) -> str:
    """The key whose mean score over every set but `left` is highest (the first key when no other set)."""
    others = [s for s in next(iter(scores.values())) if s != left]
    if not others:
        return next(iter(scores))
    return max(scores, key=lambda k: sum(scores[k][o] for o in others) / len(others))


def load(spec: str) -> tuple[str, dict]:
    """NAME=FILE[,FILE...] -> (name, {set: inspector row}); later files win per set."""
    if "=" not in spec:
        raise ValueError(f"expected NAME=FILE[,FILE...], got {spec!r}")
    name, files = spec.split("=", 1)
    rows: dict = {}
    for f in files.split(","):
        path = Path(f)
        if not path.is_file():
            raise ValueError(f"{name}: no result file {path}")
        for s, methods in json.loads(path.read_text())["sets"].items():
            if "inspector" in methods:
                rows[s] = methods["inspector"]
    return name, rows


def judge(row: dict) -> float:
    """The held-out judge's AUROC of the candidate this fit chose."""
    return next(t["criterion"] for t in row["selection"]["tried"] if t["chosen"])


def pick(row: dict, names: list[str]) -> str:
    """fit's rule over variants in cost order: a later one must beat every earlier one by more than TIE."""
    best = names[0]
    for v in names[1:]:
        if all(row[v]["judge"] > row[u]["judge"] + TIE for u in names[: names.index(v)]):
            best = v
    return best


def lists_loso(rows: dict[str, dict], names: list[str]) -> dict:
    """Leave-one-set-out over candidate lists (each keeps names[0], order kept): per left-out set, the list whose
    as-candidate AUROC is best on average over the other sets, and what it scores on the left-out set."""
    lists = [
        [names[0], *(v for j, v in enumerate(names[1:]) if mask >> j & 1)] for mask in range(2 ** (len(names) - 1))
    ]
    auc = {"+".join(li): {s: r[pick(r, li)]["auroc"] for s, r in rows.items()} for li in lists}
    out: dict = {"lists": {k: sum(v.values()) / len(v) for k, v in auc.items()}, "sets": {}}
    for s in rows:
        best = best_on_others(auc, s)
        out["sets"][s] = {"list": best, "auroc": auc[best][s]}
    out["mean"] = sum(r["auroc"] for r in out["sets"].values()) / len(rows)
    return out


def compare(variants: dict[str, dict]) -> dict:
    names = list(variants)
    sets = sorted(set.intersection(*(set(r) for r in variants.values())))
    if not sets:
        raise ValueError("no set that every variant finished")
    auc = {v: {s: variants[v][s]["image_auroc"] for s in sets} for v in names}
    out: dict = {"variants": names, "sets": {}, "mean": {}}
    for s in sets:
        row = {
            v: {
                "auroc": auc[v][s],
                "judge": judge(variants[v][s]),
                "fit_s": variants[v][s]["fit_s"],
                "ms_per_image": variants[v][s]["ms_per_image"],
                "chosen": variants[v][s]["chosen"],
            }
            for v in names
        }
        default = best_on_others(auc, s)  # a fixed default chosen on the other sets
        chosen = pick(row, names)  # fit's rule over the variants, cheapest first
        row["loso_default"] = {"variant": default, "auroc": auc[default][s]}
        row["as_candidate"] = {"variant": chosen, "auroc": auc[chosen][s]}
        row["oracle"] = max(auc[v][s] for v in names)
        out["sets"][s] = row
    n = len(sets)
    out["mean"] = {v: sum(auc[v].values()) / n for v in names}
    out["mean"]["loso_default"] = sum(r["loso_default"]["auroc"] for r in out["sets"].values()) / n
    out["mean"]["as_candidate"] = sum(r["as_candidate"]["auroc"] for r in out["sets"].values()) / n
    out["mean"]["oracle"] = sum(r["oracle"] for r in out["sets"].values()) / n
    out["candidate_lists"] = lists_loso({s: {v: out["sets"][s][v] for v in names} for s in sets}, names)
    return out


def table(res: dict) -> str:
    names = res["variants"]
    head = "| set | " + " | ".join(f"{v} AUROC (judge)" for v in names) + " | default (LOSO) | as candidate | oracle |"
    lines = [head, "|" + "---|" * (len(names) + 4)]
    for s, r in res["sets"].items():
        cells = [f"{r[v]['auroc']:.3f} ({r[v]['judge']:.3f})" for v in names]
        lines.append(
            f"| {s} | " + " | ".join(cells) + f" | {r['loso_default']['variant']} {r['loso_default']['auroc']:.3f} | "
            f"{r['as_candidate']['variant']} {r['as_candidate']['auroc']:.3f} | {r['oracle']:.3f} |"
        )
    m = res["mean"]
    lines.append(
        "| mean | "
        + " | ".join(f"{m[v]:.3f}" for v in names)
        + f" | {m['loso_default']:.3f} | {m['as_candidate']:.3f} | {m['oracle']:.3f} |"
    )
    cl = res["candidate_lists"]
    lines.append("")
    lines.append("| candidate list searched | mean as candidate |")
    lines.append("|---|---|")
    lines += [f"| {k} | {v:.3f} |" for k, v in cl["lists"].items()]
    chosen = ", ".join(f"{s}: {r['list']} {r['auroc']:.3f}" for s, r in cl["sets"].items())
    lines.append(f"| list chosen on the other sets (leave-one-set-out) | {cl['mean']:.3f} ({chosen}) |")
    lines.append("")
    lines.append("| set | " + " | ".join(f"{v} fit s / ms per image" for v in names) + " |")
    lines.append("|" + "---|" * (len(names) + 1))
    for s, r in res["sets"].items():
        lines.append(
            f"| {s} | " + " | ".join(f"{r[v]['fit_s']:.0f} / {r[v]['ms_per_image']:.0f}" for v in names) + " |"
        )
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--variant", nargs="+", required=True, metavar="NAME=FILE[,FILE]", help="cheapest first")
    ap.add_argument("--note", default="", help="how and where the runs were made, stored in the JSON")
    ap.add_argument("--out", type=Path, default=RESULTS)
    a = ap.parse_args()
    try:
        variants = dict(load(v) for v in a.variant)
        res = compare(variants)
    except (ValueError, KeyError) as e:
        sys.exit(f"variants: {e}")
    res["note"] = a.note
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(res, indent=2) + "\n")
    print(table(res))


if __name__ == "__main__":
    main()
