"""The feature Gaussian's low-rank basis against the same Gaussian as full precision matrices (not a test).

Fits DATA with the feature Gaussian alone (`gauss_source=features gauss_cell=1`, selection and cross-fit off, 300
steps): with fewer fit images than its 152 channels `fit` keeps the rank-(n-1) basis (`gauss_rank`). The same
Gaussian is rebuilt as full precision matrices (P = I / ridge - W W^T), both are exported to ONNX, and ORT CPU (one
thread, batch 1, 40 interleaved rounds of 5 frames, CPU time) times them: file size, ms per frame, their ratio, and
the score difference (torch and ORT). Writes OUT/low_rank.json and prints it.

    .venv/bin/python benchmarks/low_rank.py ../shared/datasets/piped/PA_BTN01_RL /tmp/low-rank
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from inspector.config.fit import FitSettings  # noqa: E402
from inspector.model.net import InspectorNet  # noqa: E402
from inspector.pipeline.checkpoint import load_model  # noqa: E402
from inspector.pipeline.export import input_hw, to_onnx  # noqa: E402
from inspector.pipeline.fit import fit  # noqa: E402


def as_full(net: InspectorNet) -> InspectorNet:
    """The same Gaussian as full precision matrices: P = I / ridge - W W^T."""
    w, inv = net.gauss_basis.double(), net.gauss_inv_ridge.double()
    eye = torch.eye(w.shape[1], dtype=torch.float64)[None]
    full = InspectorNet(net.cfg.model_copy(update={"gauss_rank": 0}), net.grid, weights=None).eval()
    state = {k: v for k, v in net.state_dict().items() if k in full.state_dict()}
    state["gauss_prec"] = (eye * inv[:, None, None] - w @ w.transpose(1, 2)).float()
    full.load_state_dict(state)
    return full


def cpu_ms(sessions: dict, x: np.ndarray, rounds: int = 40, per_round: int = 5) -> dict[str, list[float]]:
    """CPU ms per frame of each session, rounds interleaved (the machine is shared: ratios per round)."""
    feeds = {k: {s.get_inputs()[0].name: x} for k, s in sessions.items()}
    for k, s in sessions.items():  # warm-up
        s.run(None, feeds[k])
    times: dict[str, list[float]] = {k: [] for k in sessions}
    for _ in range(rounds):
        for k, s in sessions.items():
            t = time.process_time()
            for _ in range(per_round):
                s.run(None, feeds[k])
            times[k].append((time.process_time() - t) / per_round * 1e3)
    return times


def main() -> None:
    import onnxruntime as ort

    data, out = Path(sys.argv[1]), Path(sys.argv[2])
    s = FitSettings(gauss_source="features", gauss_cell=1, select=False, crossfit_folds=0, steps=300)
    fit(data, out / "m", s, show=False)
    net, pre, _ = load_model(out / "m")
    if not net.cfg.gauss_rank:
        sys.exit(f"{data}: enough fit images for full matrices (gauss_rank 0): nothing to compare")
    full = as_full(net)
    hw = input_hw(pre)
    x = torch.randn(4, 3, *hw, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        a, b = net(x).score, full(x).score
    res: dict = {"data": str(data), "input": list(hw), "rank": net.cfg.gauss_rank, "feature_dim": net.feature_dim}
    res["torch_score_rel_diff"] = float((a - b).abs().max() / b.abs().max())
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    sessions = {}
    for name, model in (("low_rank", net), ("full", full)):
        path = out / f"{name}.onnx"
        to_onnx(model, path, hw)
        res[f"{name}_mb"] = path.stat().st_size / 1e6
        sessions[name] = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    times = cpu_ms(sessions, x[:1].numpy())
    for k, v in times.items():
        res[f"{k}_cpu_ms_p50"] = float(np.median(v))
    res["ratio_full_over_low"] = float(np.median(np.array(times["full"]) / np.array(times["low_rank"])))
    o1, o2 = (s.run(None, {s.get_inputs()[0].name: x.numpy()})[1] for s in sessions.values())
    res["ort_score_rel_diff"] = float(np.abs(o1 - o2).max() / np.abs(o2).max())
    res["method"] = "ORT CPU, 1 thread, batch 1, 40 interleaved rounds of 5 frames; ratio: per-round CPU time, median"
    (out / "low_rank.json").write_text(json.dumps(res, indent=1) + "\n")
    print(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
