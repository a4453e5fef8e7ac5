"""Judge study (not a test): which synthetic-defect judge makes per-product selection choose well (issue 16).

Per set, `fit`'s own internals fit once per exposure policy with every searched term on (as `fit` does), and the
fitted nets, the hold-out's score components, the test images' components (labels: to score, never to choose) and
a pool of damaged hold-out images per defect maker are cached under /tmp/judge-cache/<set>/. Judge variants are
then scored from the cache: each picks a candidate from the hold-out and its damaged copies only; the table gives
that candidate's test AUROC. Which variant to adopt is chosen leave-one-set-out.

The variant list, fixed before any result was seen (2 x 5 x 4 x 2 = 80 variants, plus the current judge):
- makers: "now" {cutpaste, blob, scratch}; "draem" {cutpaste, draem, scratch}; "all" {cutpaste, blob, scratch,
  draem, spot}; "foreign" {draem, spot, scratch}; "all+large" (all and draem_large);
- defects per maker: 21 or 64 (the pool; the hold-out's images in turn, each several times on a small hold-out);
- criterion: pooled AUROC; mean of per-maker AUROCs; worst maker's AUROC; partial AUROC at FPR <= 0.3
  (normalized to [0, 1]: 0.5 = chance);
- tie rule: in cost order a costlier candidate must gain more than TIE = 0.005 (as now), or plainly the best.
"The current judge" is makers "now", 21 per maker (63 in all, as `select.damaged` makes on a small hold-out),
pooled AUROC, TIE 0.005, on this study's pool (its defects are not the very same images `fit` makes).

Result (docs/quality.md, "The judge"): leave-one-set-out 0.920 over the 80 (64 per maker: ~23% of a fit's CPU
for judging), 0.915 over the 40 within the cost budget (21 per maker, mean of three disjoint draws), against the
current judge's 0.919 (mean of three draws; 0.902-0.935): not adopted.

    INSPECTOR_DATASETS=/work/shared/datasets .venv/bin/python benchmarks/judge.py [--sets piped] [--cache-only]
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from inspector.config.fit import FitSettings  # noqa: E402
from inspector.data.datasets import LoadReport, discover, iter_images  # noqa: E402
from inspector.data.defects import make_defect  # noqa: E402
from inspector.pipeline import fit as F  # noqa: E402
from inspector.pipeline import select  # noqa: E402

DATASETS = Path(os.environ.get("INSPECTOR_DATASETS", ROOT.parent / "shared" / "datasets"))
CACHE = Path(os.environ.get("JUDGE_CACHE", "/tmp/judge-cache"))
RESULTS = ROOT / "benchmarks" / "results" / "judge.json"
POOL = 64  # damaged images per maker and fit
POOL_KINDS = ("cutpaste", "blob", "scratch", "draem", "draem_large", "spot")
MAKER_SETS = {
    "now": ("cutpaste", "blob", "scratch"),
    "draem": ("cutpaste", "draem", "scratch"),
    "all": ("cutpaste", "blob", "scratch", "draem", "spot"),
    "foreign": ("draem", "spot", "scratch"),
    "all+large": ("cutpaste", "blob", "scratch", "draem", "spot", "draem_large"),
}
COUNTS = (21, 64)
CRITERIA = ("auroc", "mean_kind", "worst_kind", "pauroc30")
TIES = (0.005, 0.0)
CURRENT = ("now", 21, "auroc", 0.005)


def find_sets(root: Path) -> dict[str, Path]:
    return {f"{p.parents[2].name}/{p.parents[1].name}": p.parents[1] for p in sorted(root.glob("*/*/train/good"))}


# ---------------------------------------------------------------- cache: fits, test components, damaged pools


def _cached(path: Path, make):
    if path.exists():
        return torch.load(path, weights_only=False)
    t0 = time.process_time()
    value = make()
    if isinstance(value, dict):
        value["cpu_s"] = time.process_time() - t0
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(value, path.with_suffix(".tmp"))
    path.with_suffix(".tmp").rename(path)
    return value


def split(data: Path, s: FitSettings):
    ds = discover(data)
    tiling = F.preprocess_for(s, ds.train)
    at_least = F.TILED_MIN_HOLDOUT if tiling.pre.tiled else 0
    fit_paths, holdout = F.split_holdout(ds.train, s.holdout_fraction, s.seed, s.holdout, at_least)
    return ds, tiling, fit_paths, holdout


def cache_set(name: str, data: Path) -> None:
    """Fit per exposure (every term on), then the test and damaged hold-out components of each fit."""
    s = FitSettings(select_labelled=False)
    ds, tiling, fit_paths, holdout = split(data, s)
    search, cands = select.plan(s, len(fit_paths) * tiling.pre.n_tiles)
    d = CACHE / name.replace("/", "__")
    for e in select.exposures(s):

        def one(e=e):
            f = F._fit_one(search.model_copy(update={"exposure": e}), tiling.pre, fit_paths, holdout, False)
            return {"net": f.net, "pre": f.pre, "comps": f.comps, "cands": [(c.name, c.overrides) for c in cands]}

        t0 = time.time()
        f = _cached(d / f"fit-{e}.pt", one)
        print(f"[{name}] fit {e}: {time.time() - t0:.0f} s", file=sys.stderr, flush=True)
        _cached(d / f"test-{e}.pt", lambda f=f: test_components(f, ds))
        for kind in POOL_KINDS:
            _cached(d / f"pool-{e}-{kind}.pt", lambda f=f, kind=kind: pool(f, holdout, kind, s.seed))
        print(f"[{name}] {e} cached: {time.time() - t0:.0f} s", file=sys.stderr, flush=True)


def test_components(f: dict, ds) -> dict:
    label = {x.path: x.label for x in ds.test}
    comps, labels = [], []
    for path, img in iter_images(list(label), LoadReport(), 1.0):
        comps.append(select.components(f["net"], f["pre"], img))
        labels.append(bool(label[path]))
    return {"comps": comps, "labels": labels}


def pool(f: dict, holdout: list[Path], kind: str, seed: int) -> dict:
    """POOL damaged hold-out images of one kind, round by round over the images (a prefix spreads over them);
    seeded per (kind, round, image): the same defects for every fit."""
    imgs = [img for _, img in iter_images(holdout, LoadReport(), 1.0)]
    k = POOL_KINDS.index(kind)
    comps = []
    for j in itertools.count():
        for i, img in enumerate(imgs):
            if len(comps) >= POOL:
                return {"comps": comps}
            out = make_defect(img, kind, np.random.default_rng([seed, k, j, i]))[0]
            comps.append(select.components(f["net"], f["pre"], out))
    return {"comps": comps}


# ---------------------------------------------------------------- scores from the cache


def scores(name: str) -> dict:
    """Per exposure and candidate: hold-out scores, damaged scores per kind, test AUROC (cached)."""
    d = CACHE / name.replace("/", "__")
    return _cached(d / "scores.pt", lambda: {"per": _scores(d)})["per"]


def _scores(d: Path) -> dict:
    out = {}
    for e in select.EXPOSURES:
        f = torch.load(d / f"fit-{e}.pt", weights_only=False)
        t = torch.load(d / f"test-{e}.pt", weights_only=False)
        pools = {k: torch.load(d / f"pool-{e}-{k}.pt", weights_only=False)["comps"] for k in POOL_KINDS}
        for cname, over in f["cands"]:
            sc = select.with_weights(f["net"], over)
            ts = [sc(x) for x in t["comps"]]
            lab = t["labels"]
            out[select.label(cname, e, 2)] = {
                "good": [sc(x) for x in f["comps"]],
                "bad": {k: [sc(x) for x in v] for k, v in pools.items()},
                "test": select.auroc([v for v, b in zip(ts, lab) if not b], [v for v, b in zip(ts, lab) if b]),
                "cpu_s": f["cpu_s"],
                "judge_cpu_s": {k: torch.load(d / f"pool-{e}-{k}.pt", weights_only=False)["cpu_s"] for k in POOL_KINDS},
            }
    return out


def pauroc(good: list[float], bad: list[float], fpr: float) -> float:
    """Partial AUROC over FPR in [0, fpr], normalized so that chance is 0.5 and perfect 1 (McClish)."""
    g = np.sort(np.asarray(good))[::-1]
    b = np.asarray(bad)
    n = len(g)
    area, prev = 0.0, 0.0
    for i in range(n):  # thresholds at each good score, highest first: FPR steps of 1/n
        step = min(1 / n, max(fpr - prev, 0))
        tpr = float((b > g[i]).mean() + 0.5 * (b == g[i]).mean())
        area += step * tpr
        prev += 1 / n
    lo, hi = fpr * fpr / 2, fpr
    return 0.5 * (1 + (area - lo) / (hi - lo))


def criterion(c: dict, makers: tuple, count: int, how: str) -> float:
    g = c["good"]
    per = {k: c["bad"][k][:count] for k in makers}
    if how == "auroc":
        return select.auroc(g, [v for k in makers for v in per[k]])
    if how == "pauroc30":
        return pauroc(g, [v for k in makers for v in per[k]], 0.3)
    each = [select.auroc(g, per[k]) for k in makers]
    return float(np.mean(each)) if how == "mean_kind" else float(min(each))


def pick(cands: dict, variant: tuple) -> str:
    """The selection rule: in cost order, a costlier candidate must beat the best so far by more than the tie."""
    makers, count, how, tie = variant
    names = list(cands)  # cost order: standardize's candidates first, as select.choose
    crit = {n: criterion(cands[n], MAKER_SETS[makers], count, how) for n in names}
    best = names[0]
    for n in names[1:]:
        if crit[n] > crit[best] + tie:
            best = n
    return best


def redrawn(cands: dict, draw: int, count: int = 21) -> dict:
    """The candidates' damaged scores cut to the draw-th disjoint block of `count` per kind: the same judge on
    other defects (how much a choice owes to the draw)."""
    return {
        c: v | {"bad": {k: b[draw * count : (draw + 1) * count] for k, b in v["bad"].items()}} for c, v in cands.items()
    }


def draws(per: dict, sets: list[str]) -> dict:
    """Variants with 21 defects per kind on the three disjoint draws of the pool: each variant's mean per draw, and
    leave-one-set-out over these cheap variants per draw (all 64-per-kind variants see one draw only)."""
    cheap = [v for v in variants() if v[1] == 21]
    out: dict = {"variants": {}, "loso": []}
    tables = []
    for d in range(POOL // 21):
        t = {vname(v): {n: per[n][pick(redrawn(per[n], d), v)]["test"] for n in sets} for v in cheap}
        tables.append(t)
        picks = {}
        for left in sets:
            others = [n for n in sets if n != left]
            best = max(t, key=lambda v: np.mean([t[v][n] for n in others]))
            picks[left] = {"variant": best, "test_auroc": t[best][left]}
        out["loso"].append({"mean": float(np.mean([r["test_auroc"] for r in picks.values()])), "sets": picks})
    for v in tables[0]:
        out["variants"][v] = [float(np.mean(list(t[v].values()))) for t in tables]
    return out


def variants() -> list[tuple]:
    return list(itertools.product(MAKER_SETS, COUNTS, CRITERIA, TIES))


def vname(v: tuple) -> str:
    return f"{v[0]}/{v[1]}/{v[2]}/tie{v[3]}"


def study(sets: list[str]) -> dict:
    per = {n: scores(n) for n in sets}
    table = {vname(v): {n: per[n][pick(per[n], v)]["test"] for n in sets} for v in variants()}
    chosen = {vname(v): {n: pick(per[n], v) for n in sets} for v in variants()}
    loso = {}
    for left in sets:
        others = [n for n in sets if n != left]
        best = max(table, key=lambda v: np.mean([table[v][n] for n in others]))  # first wins a tie: list order
        loso[left] = {"variant": best, "chosen": chosen[best][left], "test_auroc": table[best][left]}
    cur = vname(CURRENT)
    redraws = draws(per, sets)
    oracle = {n: max(c["test"] for c in per[n].values()) for n in sets}
    return {
        "sets": sets,
        "candidates_test_auroc": {n: {c: v["test"] for c, v in per[n].items()} for n in sets},
        "variants": {
            v: {"test_auroc": table[v], "chosen": chosen[v], "mean": float(np.mean(list(table[v].values())))}
            for v in table
        },
        "loso": loso,
        "draws": redraws,
        "summary": {
            "loso_mean": float(np.mean([r["test_auroc"] for r in loso.values()])),
            "current_mean": float(np.mean(list(table[cur].values()))),
            "oracle_mean": float(np.mean(list(oracle.values()))),
            "current": cur,
            "current_mean_per_draw": redraws["variants"][cur],
            "loso_cheap_mean_per_draw": [r["mean"] for r in redraws["loso"]],
        },
        "cpu_s": {
            n: {c: {"fit": v["cpu_s"], "pool": v["judge_cpu_s"]} for c, v in list(per[n].items())[::8]} for n in sets
        },
    }


def print_table(r: dict) -> None:
    sets = r["sets"]
    short = [n.split("/")[-1] for n in sets]
    print("| judge variant | " + " | ".join(short) + " | mean |")
    print("|---|" + "---|" * (len(sets) + 1))
    rows = sorted(r["variants"].items(), key=lambda kv: -kv[1]["mean"])
    cur = r["summary"]["current"]
    for v, x in rows:
        mark = " (current)" if v == cur else ""
        print(f"| {v}{mark} | " + " | ".join(f"{x['test_auroc'][n]:.3f}" for n in sets) + f" | {x['mean']:.3f} |")
    print("\n| left-out set | variant chosen on the other sets | chosen candidate | test AUROC |")
    print("|---|---|---|---|")
    for n, lo in r["loso"].items():
        print(f"| {n} | {lo['variant']} | {lo['chosen']} | {lo['test_auroc']:.3f} |")
    s = r["summary"]
    print(f"\nLOSO mean {s['loso_mean']:.3f}; current judge {s['current_mean']:.3f}; oracle {s['oracle_mean']:.3f}")
    print("\n21 defects per kind, on three disjoint draws of the pool (mean over the six sets per draw):")
    print("| judge variant | draw 1 | draw 2 | draw 3 | mean |\n|---|---|---|---|---|")
    for v, m in sorted(r["draws"]["variants"].items(), key=lambda kv: -np.mean(kv[1]))[:12] + [(s["current"], None)]:
        m = m or r["draws"]["variants"][v]
        print(f"| {v} | " + " | ".join(f"{x:.3f}" for x in m) + f" | {np.mean(m):.3f} |")
    lo = s["loso_cheap_mean_per_draw"]
    print("| LOSO over these variants | " + " | ".join(f"{x:.3f}" for x in lo) + f" | {np.mean(lo):.3f} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sets", default="")
    ap.add_argument("--cache-only", action="store_true")
    ap.add_argument("--out", type=Path, default=RESULTS)
    a = ap.parse_args()
    sets = {k: v for k, v in find_sets(DATASETS).items() if not a.sets or any(s in k for s in a.sets.split(","))}
    for name, data in sets.items():
        cache_set(name, data)
    if a.cache_only:
        return
    r = study(list(sets))
    a.out.write_text(json.dumps(r, indent=2) + "\n")
    print_table(r)


if __name__ == "__main__":
    main()
