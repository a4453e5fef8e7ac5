"""GPUs where a plant has them, checked on the CPU: `fit --device`, the CUDA and TensorRT provider options,
the fp16 parity guard and the fallback when no GPU provider can load. (benchmarks/gpu.py runs them on a GPU.)"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from inspector.errors import InspectorError
from inspector.runtime import session as sess_mod
from inspector.runtime.providers import CPU, CUDA, TENSORRT, GpuOptions, gpu_problem, provider_options


@pytest.fixture(scope="module")
def model_dir(fitted_model, tmp_path_factory) -> Path:
    from inspector.pipeline.export import export_model

    out = tmp_path_factory.mktemp("gpu") / "part"
    shutil.copytree(fitted_model / "staging", out / "staging")
    export_model(out)
    return out


# ---- fit --device -------------------------------------------------------------------------------
def test_fit_device_auto_follows_torch_and_cuda_without_a_gpu_is_one_clear_error(monkeypatch):
    from inspector.pipeline.fit import fit_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert fit_device("auto") == torch.device("cpu") and fit_device("cpu") == torch.device("cpu")
    with pytest.raises(InspectorError, match=r"^--device cuda: .+; use --device cpu \(or auto\)$"):
        fit_device("cuda")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda i=0: "a test GPU")
    assert fit_device("auto") == torch.device("cuda") and fit_device("cuda") == torch.device("cuda")


def test_fit_command_with_device_cuda_on_a_cpu_machine_prints_one_line(synthetic_data, tmp_path, capsys, monkeypatch):
    from inspector.cli.main import main

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert main(["fit", str(synthetic_data), "--out", str(tmp_path / "m"), "--device", "cuda", "-q"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("inspector: error: --device cuda:"), err
    assert not (tmp_path / "m").exists()  # nothing half-written


def test_fit_settings_device_is_checked():
    from pydantic import ValidationError

    from inspector.config.fit import FitSettings

    assert FitSettings().device == "auto" and FitSettings(device="cuda").device == "cuda"
    with pytest.raises(ValidationError):
        FitSettings(device="gpu0")


# ---- provider options ---------------------------------------------------------------------------
def test_provider_options_follow_the_onnx_runtime_names(tmp_path):
    gpu = GpuOptions(device_id=1, mem_limit_mb=512, trt_cache_dir=str(tmp_path / "trt"), trt_workspace_mb=1024)
    opts = dict(o if isinstance(o, tuple) else (o, None) for o in provider_options([TENSORRT, CUDA, CPU], gpu))
    assert opts[CPU] is None
    assert opts[CUDA] == {"device_id": 1, "cudnn_conv_algo_search": "EXHAUSTIVE", "gpu_mem_limit": 512 * 2**20}
    trt = opts[TENSORRT]
    assert trt["device_id"] == 1 and trt["trt_fp16_enable"] is False and trt["trt_engine_cache_enable"] is True
    assert trt["trt_engine_cache_path"] == trt["trt_timing_cache_path"] == str(tmp_path / "trt" / "fp32")
    assert trt["trt_max_workspace_size"] == 2**30 and trt["trt_builder_optimization_level"] == 3
    assert (tmp_path / "trt" / "fp32").is_dir()  # created for TensorRT


def test_fp16_engines_have_their_own_cache_and_unset_options_are_left_to_ort(tmp_path, monkeypatch):
    monkeypatch.setenv("INSPECTOR_TRT_CACHE", str(tmp_path / "env"))
    opts = provider_options([CUDA, CPU], GpuOptions(trt_fp16=True))
    assert opts == [(CUDA, {"device_id": 0, "cudnn_conv_algo_search": "EXHAUSTIVE"}), CPU]
    assert not (tmp_path / "env").exists()  # no TensorRT asked for: no cache folder made
    trt = dict(provider_options([TENSORRT], GpuOptions(trt_fp16=True)))[TENSORRT]
    assert trt["trt_fp16_enable"] is True and trt["trt_engine_cache_path"] == str(tmp_path / "env" / "fp16")
    assert "trt_max_workspace_size" not in trt
    with pytest.raises(ValueError, match="cudnn_conv_algo_search"):
        provider_options([CUDA], GpuOptions(cudnn_conv_algo_search="FAST"))


def test_line_config_gpu_block_is_checked_and_reaches_the_scorer(model_dir, tmp_path, monkeypatch):
    from pydantic import ValidationError

    from inspector.config.line import LineModel
    from inspector.watcher import load_scorer

    with pytest.raises(ValidationError):
        LineModel(path=model_dir, gpu={"trt_fp16": True, "trt_builder_level": 9})
    with pytest.raises(ValidationError):
        LineModel(path=model_dir, gpu={"fp16": True})  # misspelt keys are refused, not ignored
    seen = {}
    real = sess_mod.open_session
    monkeypatch.setattr(
        sess_mod,
        "open_session",
        lambda blob, m, providers, threads=0, gpu=None: (
            seen.setdefault("gpu", gpu) and real(blob, m, providers, threads, gpu)
        ),
    )
    cfg = LineModel(path=model_dir, providers=["cpu"], gpu={"device_id": 2, "trt_cache_dir": str(tmp_path / "c")})
    assert load_scorer(cfg).providers == [CPU]
    assert seen["gpu"] == GpuOptions(device_id=2, trt_cache_dir=str(tmp_path / "c"))


@pytest.mark.skipif(gpu_problem() is None, reason="a GPU machine: the GPU providers load there")
def test_gpu_providers_that_cannot_load_fall_back_to_the_cpu_in_one_line(model_dir, tmp_path, caplog):
    from inspector.runtime import Scorer
    from inspector.runtime.providers import _said

    _said.clear()
    caplog.set_level(logging.INFO, logger="inspector")
    s = Scorer.load(
        model_dir,
        providers=["tensorrt", "cuda", "cpu"],
        gpu=GpuOptions(trt_fp16=True, trt_cache_dir=str(tmp_path / "trt")),
    )
    assert s.providers == [CPU] and s.score(np.zeros((96, 96, 3), np.uint8)).score >= 0
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 1 and lines[0].startswith(f"{TENSORRT}, {CUDA} unavailable (") and lines[0].endswith(CPU)
    assert not (tmp_path / "trt").exists()  # TensorRT was never asked for


# ---- fp16 only where parity holds ---------------------------------------------------------------
def test_fp16_parity_is_relative_to_the_cpu_score():
    ref = np.array([1.0, 20.0])
    assert sess_mod.fp16_parity(ref * 1.005, ref) is None
    assert sess_mod.fp16_parity(np.array([1.0, 20.5]), ref) == pytest.approx(0.025)


class _ClaimsTensorRT:
    """A real CPU session that reports TensorRT and returns scores `factor` times the CPU's (fp16 drift)."""

    def __init__(self, inner, factor: float) -> None:
        self.inner, self.factor = inner, factor

    def get_providers(self):
        return [TENSORRT, CPU]

    def run(self, names, feeds):
        return [o * self.factor for o in self.inner.run(names, feeds)]


@pytest.mark.parametrize("factor, fp16_kept", [(1.002, True), (1.05, False)])
def test_tensorrt_fp16_is_kept_only_where_its_scores_match_the_cpus(model_dir, monkeypatch, caplog, factor, fp16_kept):
    from inspector.runtime.registry import resolve

    real, calls = sess_mod.open_session, []

    def fake(blob, m, providers, threads=0, gpu=None):
        calls.append((providers, gpu.trt_fp16 if gpu else None))
        inner = real(blob, m, [CPU], threads)
        return _ClaimsTensorRT(inner, factor) if providers[0] == TENSORRT and gpu and gpu.trt_fp16 else inner

    monkeypatch.setattr(sess_mod, "open_session", fake)
    caplog.set_level(logging.WARNING, logger="inspector")
    version_dir, _ = resolve(model_dir)
    model = sess_mod.load_version(version_dir, [TENSORRT, CPU], 1, GpuOptions(trt_fp16=True))
    assert calls[:2] == [([TENSORRT, CPU], True), ([CPU], None)]  # the fp16 session, then the CPU reference
    if fp16_kept:
        assert len(calls) == 2 and isinstance(model.session, _ClaimsTensorRT) and not caplog.records
    else:
        assert calls[2] == ([TENSORRT, CPU], False) and not isinstance(model.session, _ClaimsTensorRT)
        assert len(caplog.records) == 1 and "running TensorRT in fp32" in caplog.records[0].getMessage()
