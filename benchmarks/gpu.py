"""Benchmark (not a test): fitting and scoring on an NVIDIA GPU, under 5 minutes.

1. fit time for 500 good synthetic images (256 px) with `device=cuda` (and `--cpu-fit` also on the CPU);
2. per provider (CPU, CUDA, TensorRT fp32, TensorRT fp16): batch-1 latency (p50/p99 of `Scorer.score` on one
   frame, preprocessing included, as the watcher calls it) and batch-32 throughput (`score_batch` of 32);
3. parity of each GPU provider's scores with the CPU's on 60 labelled test images: worst relative
   difference and whether every good/defect decision is the same.

TensorRT builds its engine at the first load (minutes on a big model; cached in a temporary folder here,
so each run measures a cold build, reported as load_s). On a machine without a usable NVIDIA GPU it exits
with one line and writes nothing.

    .venv/bin/python benchmarks/gpu.py [--images 500] [--cpu-fit]
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

PROVIDERS = {
    "cpu": (["cpu"], False),
    "cuda": (["cuda", "cpu"], False),
    "tensorrt": (["tensorrt", "cuda", "cpu"], False),
    "tensorrt_fp16": (["tensorrt", "cuda", "cpu"], True),
}


def no_gpu() -> str | None:
    """Why this machine cannot run the benchmark, or None."""
    from inspector.runtime.providers import gpu_problem

    problem = gpu_problem()
    if problem:
        return problem
    import torch

    return None if torch.cuda.is_available() else f"torch {torch.__version__} sees no CUDA device"


def fit_seconds(data: Path, out: Path, device: str) -> float:
    from inspector.config.fit import CalibrateSettings, FitSettings
    from inspector.pipeline.calibrate import calibrate_model
    from inspector.pipeline.fit import fit

    t = time.perf_counter()
    fit(data, out, FitSettings(device=device), show=False)
    seconds = time.perf_counter() - t
    calibrate_model(out, CalibrateSettings(fpr=0.05))
    return seconds


def test_frames(data: Path) -> tuple[list[np.ndarray], list[int]]:
    from inspector.data.datasets import discover
    from inspector.data.images import load_image

    samples = discover(data).test
    return [load_image(s.path) for s in samples], [s.label for s in samples]


class Warnings(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


def measure(model: Path, name: str, frames: list[np.ndarray], cache: Path) -> dict:
    from inspector.runtime import Scorer
    from inspector.runtime.providers import GpuOptions

    providers, fp16 = PROVIDERS[name]
    warned = Warnings()
    logging.getLogger("inspector").addHandler(warned)
    t = time.perf_counter()
    s = Scorer.load(model, providers=providers, max_batch=32, gpu=GpuOptions(trt_fp16=fp16, trt_cache_dir=str(cache)))
    load_s = time.perf_counter() - t
    logging.getLogger("inspector").removeHandler(warned)
    if s.providers[0] != {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider"}.get(
        name, "TensorrtExecutionProvider"
    ):
        return {"unavailable": f"running on {s.providers[0]}"}
    one = frames[0]
    for _ in range(10):
        s.score(one)
    lat = []
    for _ in range(200):
        t = time.perf_counter()
        s.score(one)
        lat.append(1000 * (time.perf_counter() - t))
    batch = (frames * 32)[:32]
    s.score_batch(batch)
    t, reps = time.perf_counter(), 10
    for _ in range(reps):
        s.score_batch(batch)
    per_s = 32 * reps / (time.perf_counter() - t)
    scores = [r.score for r in s.score_batch(frames)]
    return {
        "load_s": round(load_s, 1),
        "batch1_p50_ms": round(float(np.percentile(lat, 50)), 2),
        "batch1_p99_ms": round(float(np.percentile(lat, 99)), 2),
        "batch32_per_s": round(per_s, 1),
        "fp16_fell_back": any("fp32" in w for w in warned.lines) if fp16 else None,
        "scores": scores,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=500, help="good images to fit on")
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--cpu-fit", action="store_true", help="also time the same fit on the CPU")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "gpu.json")
    a = ap.parse_args()
    reason = no_gpu()
    if reason:
        raise SystemExit(f"benchmarks/gpu.py: no usable NVIDIA GPU here ({reason}); nothing measured")
    import torch

    from inspector.data.synthetic import write_dataset
    from inspector.pipeline.export import export_model

    with tempfile.TemporaryDirectory(prefix="gpu-bench-") as tmp:
        work = Path(tmp)
        data = write_dataset(
            work / "data", n_train=a.images, n_test_good=40, n_test_defect=20, size=(a.size, a.size), seed=5
        )
        fits = {"cuda": round(fit_seconds(data, work / "m", "cuda"), 1)}
        if a.cpu_fit:
            fits["cpu"] = round(fit_seconds(data, work / "m-cpu", "cpu"), 1)
        export_model(work / "m")
        frames, labels = test_frames(data)
        runs = {name: measure(work / "m", name, frames, work / "trt") for name in PROVIDERS}
    ref = np.array(runs["cpu"]["scores"])
    for r in runs.values():
        if "scores" in r:
            got = np.array(r.pop("scores"))
            r["parity_max_rel"] = float(np.max(np.abs(got - ref) / np.maximum(np.abs(ref), 1e-6)))
            r["same_decisions"] = bool(np.array_equal(got >= 1.0, ref >= 1.0))
    result = {
        "fit_images": a.images,
        "image_size": a.size,
        "fit_seconds": fits,
        "providers": runs,
        "test_images": len(labels),
        "gpu": torch.cuda.get_device_name(0),
        "machine": platform.machine(),
    }
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"fit {a.images} images: " + ", ".join(f"{d} {s} s" for d, s in fits.items()))
    print("| provider | load s | batch-1 p50 / p99 ms | batch-32 img/s | parity (max rel) | same decisions |")
    print("|---|---|---|---|---|---|")
    for name, r in runs.items():
        if "unavailable" in r:
            print(f"| {name} | {r['unavailable']} | | | | |")
            continue
        note = " (fell back to fp32)" if r.get("fp16_fell_back") else ""
        print(
            f"| {name}{note} | {r['load_s']} | {r['batch1_p50_ms']} / {r['batch1_p99_ms']} | {r['batch32_per_s']} "
            f"| {r['parity_max_rel']:.2e} | {r['same_decisions']} |"
        )
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
