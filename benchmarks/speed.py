"""Speed benchmark (not a test): the exported model against torch, the bare backbone and anomalib PaDiM.

    .venv/bin/python benchmarks/speed.py [--model models/ballscrew] [--data DATASET] [--work DIR]

At the model's input size (256x256 for the default quick fit), side by side in one run: latency p50/p99
at batch 1 and throughput at batch 8 for
  onnx_cpu       the exported inspector graph in ONNX Runtime (CPU), exactly as the runtime opens it
  torch_eager    the same network in torch eager mode (inference_mode)
  backbone_onnx  the bare backbone stages the model runs, alone in ORT: the floor
  padim_onnx     anomalib PaDiM (same backbone and layers, 100 features), exported by anomalib, in ORT
Timing: all four loaded in one process, timed in short interleaved blocks in rotating order, so other
jobs on this shared 2-core machine slow them alike and the ratios hold. Peak RSS: each variant loaded and
run (batch 1, then batch 8) alone in a fresh process. Writes benchmarks/results/speed.json.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
VARIANTS = ("onnx_cpu", "torch_eager", "backbone_onnx", "padim_onnx")
SETTLE_S = 0.05  # pause before each timed block (see _timed)
SIZE = 256  # the default quick fit squashes to SIZE x SIZE; --model runs at that model's own input size
DEFAULT_DATA = ROOT.parent / "shared" / "datasets" / "bsdata" / "ballscrew"


# ----------------------------------------------------------------------------- children: measure one variant
def _ort_session(path: Path):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.log_severity_level = 3
    sess = ort.InferenceSession(str(path), sess_options=so, providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    return lambda x: sess.run(None, {name: x})


def _runner(variant: str, artifact: Path):
    """A callable scoring one (B, 3, 256, 256) float32 batch with this variant."""
    if variant == "onnx_cpu":
        from inspector.runtime.providers import CPU
        from inspector.runtime.session import load_version

        model = load_version(artifact, [CPU])  # the production session: checked, warmed up
        return lambda x: model.session.run(None, {model.manifest.input_name: x})
    if variant == "torch_eager":
        import torch

        from inspector.pipeline.checkpoint import load_model

        net, _, _ = load_model(artifact)

        def run(x):
            with torch.inference_mode():
                return net(torch.from_numpy(x))

        return run
    return _ort_session(artifact)


def _scorer_runner(artifact: Path, hw: tuple[int, int]):
    """Scorer.score on a BGR frame of the input size: preprocessing, graph, map resize, normalization."""
    from inspector.runtime import Scorer

    scorer = Scorer.load(artifact, providers=["cpu"])
    frame = np.random.default_rng(0).integers(0, 256, (*hw, 3), dtype=np.uint8)
    return lambda _x: scorer.score(frame)


def _inputs(variant: str, hw: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """(batch 1, batch 8). PaDiM's graph includes anomalib's pre-processor: [0, 1] RGB; the others normalized."""
    rng = np.random.default_rng(0)
    if variant == "padim_onnx":
        return rng.random((1, 3, *hw), dtype=np.float32), rng.random((8, 3, *hw), dtype=np.float32)
    return rng.normal(0, 1, (1, 3, *hw)).astype(np.float32), rng.normal(0, 1, (8, 3, *hw)).astype(np.float32)


def peak_rss_mb() -> float:
    """This process's peak resident memory. VmHWM restarts at exec; ru_maxrss would include the
    parent's memory at fork (Linux keeps it across exec), so it is only the fallback."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _timed(run, x, n: int) -> list[float]:
    # The previous variant's worker threads spin for a while after its last run (ORT, OpenMP) and would steal
    # the cores from this one's first runs: let them go idle, then one untimed run wakes this variant's threads.
    time.sleep(SETTLE_S)
    run(x)
    out = []
    for _ in range(n):
        t = time.perf_counter()
        run(x)
        out.append(time.perf_counter() - t)
    return out


def time_all(artifacts: dict[str, Path], hw: tuple[int, int], runs: int, rounds: int) -> dict:
    """All variants in this one process, timed in short interleaved blocks (rotating order), so load from
    other jobs on the machine falls on all of them alike."""
    runners = {v: _runner(v, artifacts[v]) for v in VARIANTS}
    runners["e2e"] = _scorer_runner(artifacts["onnx_cpu"], hw)
    inputs = {v: _inputs(v, hw) for v in VARIANTS} | {"e2e": _inputs("onnx_cpu", hw)}
    lat = {v: [] for v in runners}
    b8 = {v: [] for v in VARIANTS}
    names = list(runners)
    for r in range(rounds):
        for v in names[r % len(names) :] + names[: r % len(names)]:
            lat[v] += _timed(runners[v], inputs[v][0], max(1, runs // rounds))
            if v in b8:
                b8[v] += _timed(runners[v], inputs[v][1], 2)
    out = {
        v: {
            "p50_ms": float(np.percentile(lat[v], 50) * 1e3),
            "p99_ms": float(np.percentile(lat[v], 99) * 1e3),
            "throughput_b8": float(8 / np.median(b8[v])),
        }
        for v in VARIANTS
    }
    out["onnx_cpu"]["e2e_p50_ms"] = float(np.percentile(lat["e2e"], 50) * 1e3)
    return out


def memory(variant: str, artifact: Path, hw: tuple[int, int]) -> dict:
    """Load and run one variant alone (batch 1, then batch 8): its peak RSS."""
    run = _runner(variant, artifact)
    x1, x8 = _inputs(variant, hw)
    for _ in range(3):
        run(x1)
    for _ in range(2):
        run(x8)
    return {"peak_rss_mb": peak_rss_mb(), "torch_imported": "torch" in sys.modules}


# ----------------------------------------------------------------------------- parent: build the four artifacts
def _images(data: Path, n: int) -> list[Path]:
    from inspector.data.datasets import discover

    paths = discover(data).train
    if len(paths) < n:
        raise SystemExit(f"{data}: need {n} good images, found {len(paths)}")
    return paths[:: max(1, len(paths) // n)][:n]


def build_model(work: Path, data: Path, model: Path | None, n_images: int, overrides: dict | None = None) -> Path:
    """The inspector model, exported: an existing calibrated model folder, or a quick fit on `data`."""
    from inspector.config.fit import CalibrateSettings, FitSettings
    from inspector.pipeline.calibrate import calibrate_model
    from inspector.pipeline.export import export_model
    from inspector.pipeline.fit import fit

    out = work / "model"
    if (out / "v1" / "model.onnx").is_file():  # --work from an earlier run
        return out
    if model is not None:
        shutil.copytree(Path(model) / "staging", out / "staging")
    else:
        folder = work / "fit-images"
        folder.mkdir()
        for p in _images(data, n_images):
            os.symlink(p.resolve(), folder / p.name)
        print(
            f"fitting on {n_images} images of {data} (default architecture, {SIZE}x{SIZE}, 300 steps) ...", flush=True
        )
        fit(
            folder,
            out,
            FitSettings(**{"short_side": SIZE, "keep_aspect": False, "steps": 300, **(overrides or {})}),
            show=False,
        )
        calibrate_model(out, CalibrateSettings(min_holdout=5))
    export_model(out)
    return out


def build_backbone(model_dir: Path, path: Path, hw: tuple[int, int]) -> Path:
    """The backbone stages the model runs (up to stride 16), alone: ORT's floor for this network."""
    from inspector.pipeline.checkpoint import load_model
    from inspector.pipeline.export import to_onnx

    if path.is_file():
        return path
    net, _, _ = load_model(model_dir)
    to_onnx(net.backbone, path, hw, names=tuple(f"features_{s}" for s in net.backbone.strides))
    return path


def build_padim(work: Path, data: Path, n_images: int, hw: tuple[int, int]) -> Path:
    """anomalib PaDiM, EfficientNet-Lite0 blocks 2+4 (as the model), 100 features, fitted and exported by anomalib."""
    done = work / "padim" / "weights" / "onnx" / "model.onnx"
    if done.is_file():
        return done
    import cv2
    import timm
    import torch
    from anomalib.models import Padim

    from inspector.model.backbone import default_weights_path, load_weights

    model = Padim(
        backbone="efficientnet_lite0",
        layers=["blocks.2", "blocks.4"],
        pre_trained=False,
        n_features=100,
        evaluator=False,
        visualizer=False,
    )
    extractor = model.model.feature_extractor.feature_extractor
    full = timm.create_model("efficientnet_lite0", pretrained=False)
    load_weights(full, default_weights_path())  # the same ImageNet weights as ours; nothing downloaded
    extractor.load_state_dict({k: v for k, v in full.state_dict().items() if k in extractor.state_dict()})
    imgs = [
        cv2.resize(cv2.imread(str(p)), hw[::-1], interpolation=cv2.INTER_AREA)[:, :, ::-1]
        for p in _images(data, n_images)
    ]
    x = torch.from_numpy(np.stack(imgs).copy()).permute(0, 3, 1, 2).float() / 255  # (N, 3, H, W) RGB in [0, 1]
    model.model.train()
    with torch.no_grad():
        for i in range(0, len(x), 10):
            model.model(model.pre_processor(x[i : i + 10]))  # training step: collect embeddings
    model.fit()  # the Gaussian per patch
    model.eval()
    print("exporting PaDiM with anomalib's to_onnx ...", flush=True)
    return model.to_onnx(work / "padim", input_size=hw, opset_version=18)


def artifact_mb(variant: str, artifact: Path) -> float:
    files = {
        "onnx_cpu": [artifact / "model.onnx"],
        "torch_eager": [artifact / "staging" / "model.pt"],
        "backbone_onnx": [artifact],
        "padim_onnx": [artifact, artifact.with_name(artifact.name + ".data")],
    }[variant]
    return sum(f.stat().st_size for f in files if f.exists()) / 2**20


def run_child(args: list[str]) -> dict:
    proc = subprocess.run([sys.executable, __file__, *args], capture_output=True, text=True, cwd=ROOT)
    if proc.returncode != 0:
        raise SystemExit(f"benchmark child {args[:2]} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def measure(artifacts: dict[str, Path], hw: tuple[int, int], runs: int, rounds: int) -> dict[str, dict]:
    hw_args = ["--hw", str(hw[0]), str(hw[1])]
    arts = [f"{v}={artifacts[v]}" for v in VARIANTS]
    res = run_child(["--child", "time", *hw_args, "--runs", str(runs), "--rounds", str(rounds), "--artifact", *arts])
    for v in VARIANTS:
        mem = run_child(["--child", v, *hw_args, "--artifact", f"{v}={artifacts[v]}"])
        if mem.pop("torch_imported") and v != "torch_eager":
            raise SystemExit(f"{v} imported torch: its memory figure would be wrong")
        res[v].update(mem, artifact_mb=artifact_mb(v, artifacts[v]))
    return res


def report(res: dict[str, dict]) -> str:
    rows = [f"{'variant':14s} {'p50 ms':>8s} {'p99 ms':>8s} {'b8 fps':>8s} {'RSS MB':>8s} {'size MB':>8s}"]
    for v in VARIANTS:
        r = res[v]
        rows.append(
            f"{v:14s} {r['p50_ms']:8.2f} {r['p99_ms']:8.2f} {r['throughput_b8']:8.2f} "
            f"{r['peak_rss_mb']:8.1f} {r['artifact_mb']:8.2f}"
        )
    a, b, c, d = (res[v] for v in VARIANTS)
    checks = [
        ("onnx p50 <= 0.5x torch p50", a["p50_ms"] / b["p50_ms"], 0.5),
        ("onnx p50 <= 1.2x backbone p50", a["p50_ms"] / c["p50_ms"], 1.2),
        ("onnx per frame at b8 <= 1.2x backbone", c["throughput_b8"] / a["throughput_b8"], 1.2),
        ("onnx b8 throughput >= padim", d["throughput_b8"] / a["throughput_b8"], 1.0),
    ]
    rows.append("")
    rows += [
        f"{'PASS' if ratio <= limit else 'MISS'}  {name}: ratio {ratio:.2f} (limit {limit})"
        for name, ratio, limit in checks
    ]
    rows.append(f"onnx_cpu end to end (Scorer.score on a BGR frame of the input size): p50 {a['e2e_p50_ms']:.2f} ms")
    return "\n".join(rows)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", type=Path, help="calibrated model folder to export (default: quick fit on --data)")
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA, help="dataset root or folder of good images")
    ap.add_argument(
        "--images",
        type=int,
        default=490,
        help="good images for the quick fit (the latent is capped at a "
        "third of the fit images: 490 -> 392 fit images -> the default latent 64)",
    )
    ap.add_argument("--runs", type=int, default=120, help="timed batch-1 runs per variant (over all rounds)")
    ap.add_argument("--rounds", type=int, default=12, help="interleaved blocks per variant")
    ap.add_argument("--work", type=Path, help="keep the built artifacts here and reuse them on the next run")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "speed.json")
    ap.add_argument("--child", choices=("time", *VARIANTS), help=argparse.SUPPRESS)
    ap.add_argument("--artifact", nargs="+", help=argparse.SUPPRESS)
    ap.add_argument("--hw", type=int, nargs=2, help=argparse.SUPPRESS)
    ap.add_argument("--fit", nargs="*", default=[], metavar="KEY=VALUE", help="fit settings other than the defaults")
    a = ap.parse_args()
    from inspector.config.fit import fit_overrides  # pydantic only: the torch-free children may import it

    try:
        overrides = fit_overrides(a.fit)
    except ValueError as e:
        ap.error(f"--fit: {e}")
    if a.child:
        arts = {k: Path(v) for k, v in (item.split("=", 1) for item in a.artifact)}
        hw = tuple(a.hw)
        out = time_all(arts, hw, a.runs, a.rounds) if a.child == "time" else memory(a.child, arts[a.child], hw)
        print(json.dumps(out))
        return 0
    with tempfile.TemporaryDirectory(prefix="inspector-bench-") as tmp:
        work = a.work or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        model = build_model(work, a.data, a.model, a.images, overrides)
        hw = tuple(json.loads((model / "v1" / "manifest.json").read_text())["input"]["size"] or (SIZE, SIZE))
        artifacts = {
            "onnx_cpu": model / "v1",
            "torch_eager": model,
            "backbone_onnx": build_backbone(model, work / "backbone.onnx", hw),
            "padim_onnx": build_padim(work, a.data, 50, hw),
        }
        print(f"measuring at {hw[0]}x{hw[1]}, {os.cpu_count()} CPU cores ...", flush=True)
        res = measure(artifacts, hw, a.runs, a.rounds)
    print(report(res))
    if overrides:
        res["fit_settings"] = overrides
    a.out.parent.mkdir(parents=True, exist_ok=True)
    tmp_out = a.out.with_suffix(".json.tmp")
    tmp_out.write_text(json.dumps(res, indent=2) + "\n")
    os.replace(tmp_out, a.out)
    print(f"wrote {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
