"""Feature-based embeddings for defect kinds -> benchmarks/results/latent_features.json (a study, not a test).

The exported embedding weights the autoencoder *latent* by each patch's anomaly; Sohn et al. ("Anomaly
Clustering", WACV 2023) weight the *pretrained patch features* instead. The latent is small and trained to
reconstruct good patches, so it may drop what tells defect kinds apart; 256 latent variants
(benchmarks/latent_variants.py) did not beat both baselines on magnetic tile. The candidates, fixed before any
result was seen (F = the standardized backbone patch features the autoencoder reads, (C, h, w); a = the
exported softmax patch weights, temperature 0.1; halves mixed as now, [sqrt(0.75) unit(a-half), 0.5 unit(b)]):

- `current`: the exported embedding (at the study: the latent one, a-weighted deviation from the good mean and the
  mean latent, 2L floats; since then `feat_rp64`, which the study chose);
- `feat`: a-weighted mean of F, and F's global average (GAP) as the whole-part half; 2C floats (304 for
  EfficientNet-Lite0: over the 256-float cap, a reference for what the projections lose);
- `feat_rp64`: `feat` with F projected to 64 dimensions by a fixed seeded random orthogonal (C, 64) matrix
  (seed 0; no fitted state), 128 floats;
- `feat_pca64`: `feat` with F centred and projected on the top 64 principal axes of the fit's held-out good
  patch features, 128 floats;
- `concat`: [current, feat_rp64] / sqrt(2), 2L + 128 floats.

Scores per set (synthetic, magnetic tile, tire): precision@5 and NMI as benchmarks/latent.py computes them
(VectorIndex, `scoring.kinds.cluster` with as many groups as kinds), beside the two baselines (backbone GAP,
mean latent). Choice rule (as latent_variants.py): a candidate's margin on a set is min(p@5 - best baseline
p@5, NMI - best baseline NMI); leave-one-set-out picks the candidate with the largest smallest margin on two
sets and reports its margin on the third. Adopt only a candidate that beats both baselines on more sets than
`current` without losing a set `current` wins.

    nice -n 5 env PYTHONPATH=$PWD .venv/bin/python benchmarks/latent_features.py --models DIR [--cache DIR]

--models: the fitted models per set (benchmarks/latent.py --models DIR leaves them there).
"""

from __future__ import annotations

import argparse
import json
import pickle
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from latent import SETS, p_at_5  # noqa: E402

from inspector.scoring.neighbours import VectorIndex  # noqa: E402

OUT = ROOT / "benchmarks" / "results" / "latent_features.json"
CANDIDATES = ("current", "feat", "feat_rp64", "feat_pca64", "concat")
BASELINES = ("gap", "mean_latent")
DIM = 64
KEEP, WHOLE = float(np.sqrt(0.75)), 0.5


def unit(v: np.ndarray) -> np.ndarray:
    v = np.asarray(v, np.float32)
    return v / np.maximum(np.sqrt((v * v).sum(-1, keepdims=True)), 1e-12)


def data_of(name: str, cache: Path) -> Path:
    if name != "synthetic":
        return SETS[name]
    from inspector.data.synthetic import write_dataset

    return write_dataset(cache / "synthetic-data", n_train=200, n_test_good=40, n_test_defect=30, seed=3)


def per_image(net, pre, paths) -> dict[str, np.ndarray]:
    """Per image: the a-weighted mean and GAP of F, the exported embedding and the two baselines."""
    import torch

    from inspector.data.datasets import LoadReport, iter_images
    from inspector.data.preprocess import prepare
    from inspector.model.embedding import patch_weights
    from inspector.model.embedding import unit as tunit

    rows: dict[str, list] = {k: [] for k in ("aw", "gapf", "current", "gap", "mean_latent")}
    with torch.inference_mode():
        for _, img in iter_images(list(paths), LoadReport(), 1.0):
            x = torch.from_numpy(prepare(img, pre))[None]
            maps = net.backbone_maps(x)
            lat, recon, gauss, _, z = net.components_and_latent(x, want_z=True)
            patch = net.patch_score(lat, recon, gauss)
            f = net.standardize(net.concat(maps))[0].flatten(1)  # (C, h*w)
            a = patch_weights(patch.reshape(1, -1))[0]  # (h*w,)
            rows["aw"].append((f * a).sum(1).numpy())
            rows["gapf"].append(f.mean(1).numpy())
            rows["current"].append(net.embedding(maps, patch)[0].numpy())
            rows["gap"].append(tunit(torch.cat([m.mean((2, 3)) for m in maps], 1))[0].numpy())
            rows["mean_latent"].append(tunit(z.mean((2, 3)))[0].numpy())
    return {k: np.asarray(v, np.float32) for k, v in rows.items()}


def good_pca(net, pre, paths) -> tuple[np.ndarray, np.ndarray]:
    """Mean (C,) and top-DIM principal axes (C, DIM) of the held-out good images' patch features."""
    import torch

    from inspector.data.datasets import LoadReport, iter_images
    from inspector.data.preprocess import prepare

    feats = []
    with torch.inference_mode():
        for _, img in iter_images(list(paths), LoadReport(), 1.0):
            f = net.features(torch.from_numpy(prepare(img, pre))[None])[0]
            feats.append(f.flatten(1).T.numpy().astype(np.float64))  # (h*w, C)
    x = np.concatenate(feats)
    mean = x.mean(0)
    _, vecs = np.linalg.eigh(np.cov(x - mean, rowvar=False))
    return mean.astype(np.float32), vecs[:, ::-1][:, :DIM].astype(np.float32)


def collect(name: str, models: Path, cache: Path) -> dict:
    path = cache / f"features-{name}.pkl"
    if path.exists():
        return pickle.loads(path.read_bytes())
    from inspector.data.datasets import discover
    from inspector.pipeline.checkpoint import load_model, read_json, staging

    data = data_of(name, cache)
    net, pre, _ = load_model(models / name)
    net.eval()
    info = read_json(staging(models / name) / "fit.json", "")
    old = Path(str(info["data"]))
    holdout = [Path(h["path"]) for h in info["holdout"]]
    holdout = [p if p.is_file() else data / p.relative_to(old) for p in holdout]  # synthetic: regenerated
    test = [s for s in discover(data).test if s.label == 1]
    out = per_image(net, pre, [s.path for s in test])
    out["kinds"] = np.array([s.defect for s in test])
    out["pca_mean"], out["pca_axes"] = good_pca(net, pre, holdout)
    out["rp"] = np.linalg.qr(np.random.default_rng(0).standard_normal((out["aw"].shape[1], DIM)))[0]
    path.write_bytes(pickle.dumps(out))
    return out


def candidates(d: dict) -> dict[str, np.ndarray]:
    def halves(aw: np.ndarray, whole: np.ndarray) -> np.ndarray:
        return np.concatenate([KEEP * unit(aw), WHOLE * unit(whole)], 1)

    rp, mu, pca = d["rp"], d["pca_mean"], d["pca_axes"]
    out = {
        "current": d["current"],
        "feat": halves(d["aw"], d["gapf"]),
        "feat_rp64": halves(d["aw"] @ rp, d["gapf"] @ rp),
        "feat_pca64": halves((d["aw"] - mu) @ pca, (d["gapf"] - mu) @ pca),
    }
    out["concat"] = np.concatenate([out["current"], out["feat_rp64"]], 1) / np.sqrt(2)
    return out | {b: d[b] for b in BASELINES}


def score(x: np.ndarray, lab: np.ndarray) -> list[float]:
    from sklearn.metrics import normalized_mutual_info_score

    from inspector.scoring.kinds import cluster

    groups = cluster(x, n_groups=len(set(lab)))
    return [round(p_at_5(x, lab), 4), round(float(normalized_mutual_info_score(lab, groups)), 4)]


def per_query(x: np.ndarray, lab: np.ndarray) -> np.ndarray:
    """(N,) each defect image's share of its 5 nearest others of its own kind (p@5 is their mean)."""
    index = VectorIndex(x.shape[1])
    index.add(np.arange(len(x)), x)
    return np.array([np.mean(lab[index.search(x[i], 5, exclude=i)[0]] == lab[i]) for i in range(len(x))])


def spread(xs: dict[str, np.ndarray], lab: np.ndarray, reps: int = 200) -> dict:
    """How much of each candidate's lead (or gap) over the best baseline is sampling noise: 90% intervals of
    the p@5 difference (paired bootstrap over the query images, the index fixed) and of the NMI difference
    (clusterings of random 80% subsets of the images, the same subset for both)."""
    from sklearn.metrics import normalized_mutual_info_score

    from inspector.scoring.kinds import cluster

    rng = np.random.default_rng(0)
    q = {c: per_query(x, lab) for c, x in xs.items()}
    boots = rng.integers(0, len(lab), (reps, len(lab)))
    subsets = [rng.permutation(len(lab))[: int(0.8 * len(lab))] for _ in range(reps // 4)]

    def nmis(c: str) -> np.ndarray:
        return np.array([normalized_mutual_info_score(lab[s], cluster(xs[c][s], len(set(lab)))) for s in subsets])

    n = {c: nmis(c) for c in xs}
    best_p = np.max([q[b][boots].mean(1) for b in BASELINES], 0)
    best_n = np.max([n[b] for b in BASELINES], 0)
    ci = lambda v: [round(float(np.percentile(v, 5)), 4), round(float(np.percentile(v, 95)), 4)]  # noqa: E731
    return {
        c: {"p_at_5_lead_90": ci(q[c][boots].mean(1) - best_p), "nmi_lead_90": ci(n[c] - best_n)} for c in CANDIDATES
    }


def choose(res: dict) -> dict:
    sets = list(res)

    def margin(c: str, s: str) -> float:
        p, n = res[s][c]
        return min(p - max(res[s][b][0] for b in BASELINES), n - max(res[s][b][1] for b in BASELINES))

    loso = {}
    for held in sets:
        train = [s for s in sets if s != held]
        pick = max(CANDIDATES, key=lambda c: min(margin(c, s) for s in train))
        loso[held] = {"pick": pick, "held_out": res[held][pick], "held_out_margin": round(margin(pick, held), 4)}
    margins = {c: {s: round(margin(c, s), 4) for s in sets} for c in CANDIDATES}
    wins = {c: [s for s in sets if margins[c][s] > 0] for c in CANDIDATES}
    adoptable = [c for c in CANDIDATES if len(wins[c]) > len(wins["current"]) and set(wins["current"]) <= set(wins[c])]
    return {"leave_one_set_out": loso, "margins": margins, "sets_won": wins, "adoptable": adoptable}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", type=Path, required=True)
    ap.add_argument("--cache", type=Path, default=Path("/tmp/latent-features"))
    ap.add_argument("--sets", default="synthetic,magnetic_tile,tire")
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args()
    args.cache.mkdir(parents=True, exist_ok=True)
    res, dims, noise = {}, {}, {}
    for name in args.sets.split(","):
        d = collect(name, args.models, args.cache)
        lab = np.unique(d["kinds"], return_inverse=True)[1]
        xs = candidates(d)
        res[name] = {c: score(x, lab) for c, x in xs.items()}
        noise[name] = spread(xs, lab)
        dims[name] = {c: int(x.shape[1]) for c, x in xs.items()}
        print(name, json.dumps(res[name]), flush=True)
    out = {
        "scores_p_at_5_nmi": res,
        "dims": dims,
        "lead_over_best_baseline": noise,
        **(choose(res) if len(res) > 2 else {}),
    }
    args.out.write_text(json.dumps(out, indent=1) + "\n")
    print(json.dumps({k: v for k, v in out.items() if k != "scores_p_at_5_nmi"}, indent=1))


if __name__ == "__main__":
    main()
