"""Latent-space benchmark -> benchmarks/results/latent.json (not a test; run with nice).

Per set with several defect types (and the synthetic product with three kinds): defect-kind retrieval
precision@5 (leave-one-out over the defect test images), clustering NMI / ARI against the defect type
(agglomerative, as many groups as types) and suggested-verdict accuracy in a simulated review (test items
scored at or above the threshold = the 95th percentile of the fit's held-out good scores are "flagged"; good ones
are false alarms; each item's verdict is suggested from its 8 nearest other flagged items with their truths as
reviews). Side by side: the backbone's global-average-pooled features ("gap") and the unweighted mean latent.
Also similar-items query p50/p99 over 100k and 1M stored embeddings (numpy brute force, this machine), and the
embedding's cost per frame against the score alone (ONNX Runtime, batch 1).

    nice -n 5 env PYTHONPATH=$PWD .venv/bin/python benchmarks/latent.py [--sets synthetic,magnetic_tile,tire]
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
import torch
from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from inspector.config.fit import FitSettings  # noqa: E402
from inspector.data.datasets import LoadReport, discover, iter_images  # noqa: E402
from inspector.data.preprocess import prepare  # noqa: E402
from inspector.model.embedding import unit  # noqa: E402
from inspector.pipeline.checkpoint import load_model, read_json, staging  # noqa: E402
from inspector.pipeline.fit import fit  # noqa: E402
from inspector.scoring.kinds import cluster  # noqa: E402
from inspector.scoring.neighbours import VectorIndex, suggest  # noqa: E402

DATASETS = Path(os.environ.get("INSPECTOR_DATASETS", ROOT.parent / "shared" / "datasets"))
SETS = {"magnetic_tile": DATASETS / "magnetic_tile" / "magnetic_tile", "tire": DATASETS / "mvtec3d_rgb" / "tire"}
OUT = Path(os.environ.get("LATENT_OUT", ROOT / "benchmarks" / "results" / "latent.json"))


def embeddings(net, pre, paths):
    """Per image: raw score and the three embeddings (inspector, gap, mean_latent)."""
    rows = {"score": [], "inspector": [], "gap": [], "mean_latent": []}
    net.eval()
    with torch.inference_mode():
        for _, img in iter_images(paths, LoadReport(), 1.0):
            x = torch.from_numpy(prepare(img, pre))[None]
            out = net.forward_embedded(x)
            maps = net.backbone_maps(x)
            lat, recon, gauss, glob, z = net.components_and_latent(x, want_z=True)
            rows["score"].append(float(out.score[0]))
            rows["inspector"].append(out.embedding[0].numpy())
            rows["gap"].append(unit(torch.cat([m.mean((2, 3)) for m in maps], 1))[0].numpy())
            rows["mean_latent"].append(unit(z.mean((2, 3)))[0].numpy())
    return {k: np.asarray(v, np.float32) for k, v in rows.items()}


def p_at_5(x: np.ndarray, labels: np.ndarray) -> float:
    index = VectorIndex(x.shape[1])
    index.add(np.arange(len(x)), x)
    return float(np.mean([np.mean(labels[index.search(x[i], 5, exclude=i)[0]] == labels[i]) for i in range(len(x))]))


def verdict_acc(x: np.ndarray, truth: np.ndarray, k: int = 8) -> float:
    if len(x) < 2:
        return float("nan")
    index = VectorIndex(x.shape[1])
    index.add(np.arange(len(x)), x)
    status = np.where(truth == 1, "confirmed", "false_alarm")
    hits = [suggest(list(status[index.search(x[i], k, exclude=i)[0]]))[0] == status[i] for i in range(len(x))]
    return float(np.mean(hits))


def evaluate_set(name: str, data: Path, work: Path, settings: dict) -> dict:
    t0 = time.time()
    model = work / name
    fit(data, model, FitSettings(**settings), show=False)
    net, pre, _ = load_model(model)
    holdout = [h["score"] for h in read_json(staging(model) / "fit.json", "")["holdout"]]
    threshold = float(np.quantile(holdout, 0.95))
    ds = discover(data)
    test = ds.test
    emb = embeddings(net, pre, [s.path for s in test])
    kinds = np.array([s.defect for s in test])
    is_defect = np.array([s.label for s in test])
    flagged = emb["score"] >= threshold
    types = sorted(set(kinds[is_defect == 1]))
    lab = np.array([types.index(k) if k in types else -1 for k in kinds])
    out = {}
    for method in ("inspector", "gap", "mean_latent"):
        x, d = emb[method], is_defect == 1
        groups = cluster(x[d], n_groups=len(types))
        out[method] = {"p_at_5": round(p_at_5(x[d], lab[d]), 4),
                       "nmi": round(float(normalized_mutual_info_score(lab[d], groups)), 4),
                       "ari": round(float(adjusted_rand_score(lab[d], groups)), 4),
                       "verdict_acc": round(verdict_acc(x[flagged], is_defect[flagged]), 4)}
    out["info"] = {"defect_types": types, "defect_images": int(is_defect.sum()), "flagged": int(flagged.sum()),
                   "flagged_good": int((flagged & (is_defect == 0)).sum()), "seconds": round(time.time() - t0, 1)}
    print(name, json.dumps(out), flush=True)
    return out


def query_times(dim: int, n: int, queries: int = 200) -> dict:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(n, dim)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    index = VectorIndex(dim, n)
    for k in range(0, n, 100_000):
        index.add(np.arange(k, min(n, k + 100_000)), x[k : k + 100_000])
    times = []
    for i in range(queries):
        t = time.perf_counter()
        index.search(x[rng.integers(n)], 8)
        times.append((time.perf_counter() - t) * 1000)
    return {"p50": round(float(np.percentile(times, 50)), 3), "p99": round(float(np.percentile(times, 99)), 3)}


def embed_cost(work: Path, data: Path) -> dict:
    """ORT batch-1 time of the graph with the embedding output vs the same model's score-only graph."""
    import onnxruntime as ort

    from inspector.pipeline.export import EMBEDDING, MAP, SCORE, input_hw, to_onnx

    net, pre, _ = load_model(work / "synthetic")
    hw = input_hw(pre)
    to_onnx(net, work / "plain.onnx", hw, names=(MAP, SCORE))
    to_onnx(net, work / "embedded.onnx", hw, names=(MAP, SCORE, EMBEDDING))
    x = np.random.default_rng(0).normal(size=(1, 3, *hw)).astype(np.float32)
    res = {}
    for name in ("plain", "embedded"):
        so = ort.SessionOptions()
        so.intra_op_num_threads = 2
        sess = ort.InferenceSession(str(work / f"{name}.onnx"), so, providers=["CPUExecutionProvider"])
        for _ in range(20):
            sess.run(None, {"image": x})
        ts = []
        for _ in range(5):  # best of 5 rounds of 50: the machine is shared
            t = time.perf_counter()
            for _ in range(50):
                sess.run(None, {"image": x})
            ts.append((time.perf_counter() - t) / 50 * 1000)
        res[name] = min(ts)
    return {"score_ms": round(res["plain"], 3), "score_and_embedding_ms": round(res["embedded"], 3),
            "ratio": round(res["embedded"] / res["plain"], 4), "input": list(hw)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sets", default="synthetic,magnetic_tile,tire")
    ap.add_argument("--skip-queries", action="store_true")
    args = ap.parse_args()
    result = json.loads(OUT.read_text()) if OUT.exists() else {}
    result.setdefault("sets", {})
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        from inspector.data.synthetic import write_dataset

        synth = write_dataset(work / "synthetic-data", n_train=200, n_test_good=40, n_test_defect=30, seed=3)
        for name in args.sets.split(","):
            if name == "synthetic":
                result["sets"]["synthetic"] = evaluate_set("synthetic", synth, work, dict(short_side=128, steps=300))
            else:
                result["sets"][name] = evaluate_set(name, SETS[name], work, {})
            OUT.write_text(json.dumps(result, indent=2) + "\n")
        if "synthetic" in args.sets.split(","):
            cost = embed_cost(work, synth)
            result["embed_cost_ratio"], result["embed_cost"] = cost["ratio"], cost
    if not args.skip_queries:
        result["query_ms"] = {str(n): query_times(128, n) for n in (100_000, 1_000_000)}
        result["query_ms_64d"] = {str(n): query_times(64, n) for n in (100_000, 1_000_000)}
        result["query_method"] = "numpy brute force (float32 matmul + argpartition), 1 query, k=8"
    result.setdefault("map_first_paint_ms_100k", None)
    OUT.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k != "sets"}, indent=2))


if __name__ == "__main__":
    main()
