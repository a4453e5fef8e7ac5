"""Which ONNX Runtime execution providers can really run here: TensorRT -> CUDA -> CPU.

onnxruntime-gpu lists TensorRT and CUDA as available on any machine, GPU or not. Asking for them where
their libraries cannot load makes ONNX Runtime print a screen of errors and retry. So we probe first,
silently, with ctypes: an NVIDIA driver that reports a device, then the provider library itself (which
pulls in cuBLAS, cuDNN or TensorRT). Only providers that pass are requested, and what was dropped is
said in one log line.
"""

from __future__ import annotations

import contextlib
import ctypes
import io
import logging
import os
import sys
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import onnxruntime as ort

log = logging.getLogger(__name__)

TENSORRT, CUDA, CPU = "TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"
DEFAULT_PROVIDERS = (TENSORRT, CUDA, CPU)
ALIASES = {"tensorrt": TENSORRT, "trt": TENSORRT, "cuda": CUDA, "cpu": CPU}
ENV_VAR = "INSPECTOR_PROVIDERS"  # e.g. "cuda,cpu": overrides the default order
TRT_CACHE_VAR = "INSPECTOR_TRT_CACHE"  # the engine cache folder when the line config names none
CONV_SEARCH = ("EXHAUSTIVE", "HEURISTIC", "DEFAULT")
_WINDOWS = sys.platform == "win32"


def _lib_name(stem: str) -> str:
    return f"{stem}.dll" if _WINDOWS else f"lib{stem}.so"


def _try_load(path: str, mode: int = ctypes.DEFAULT_MODE) -> str | None:
    """dlopen a library; None when it loads, else the loader's reason."""
    try:
        ctypes.CDLL(path, mode=mode)
        return None
    except OSError as e:
        return str(e).split(": ")[-1] if ": " in str(e) else str(e)


@lru_cache(maxsize=1)
def gpu_problem() -> str | None:
    """None when an NVIDIA driver loads and reports at least one device, else why not."""
    name = "nvcuda.dll" if _WINDOWS else "libcuda.so.1"
    try:
        drv = ctypes.CDLL(name)
    except OSError:
        return f"no NVIDIA driver, {name} not found"
    count = ctypes.c_int(0)
    if drv.cuInit(0) != 0 or drv.cuDeviceGetCount(ctypes.byref(count)) != 0 or count.value < 1:
        return "the NVIDIA driver reports no usable GPU"
    return None


@lru_cache(maxsize=4)
def provider_problem(provider: str) -> str | None:
    """None when `provider` can run on this machine, else a short reason."""
    if provider == CPU:
        return None
    if provider not in ort.get_available_providers():
        return "not built into this onnxruntime package"
    if provider not in (CUDA, TENSORRT):
        return None  # other providers (DirectML, OpenVINO, ...) are trusted as listed
    reason = gpu_problem()
    if reason:
        return reason
    with contextlib.redirect_stdout(io.StringIO()):  # preload_dlls prints its warnings
        with contextlib.suppress(Exception):
            ort.preload_dlls()  # CUDA/cuDNN from the nvidia-* pip packages, when installed
    capi = Path(ort.__file__).parent / "capi"
    shared = _try_load(str(capi / _lib_name("onnxruntime_providers_shared")), getattr(os, "RTLD_GLOBAL", 0))
    stem = "onnxruntime_providers_tensorrt" if provider == TENSORRT else "onnxruntime_providers_cuda"
    missing = shared or _try_load(str(capi / _lib_name(stem)))
    if missing is None and provider == CUDA and not _WINDOWS:
        missing = _try_load("libcudnn.so.9")  # loaded lazily by the CUDA provider, so check it here
    return f"its libraries do not load ({missing})" if missing else None


def requested(providers: list[str] | tuple[str, ...] | None) -> list[str]:
    """Full provider names in order of preference; CPU is always the last resort."""
    if providers is None:
        env = os.environ.get(ENV_VAR, "").strip()
        providers = [p for p in env.split(",") if p.strip()] if env else list(DEFAULT_PROVIDERS)
    names = [ALIASES.get(p.strip().lower(), p.strip()) for p in providers]
    names = list(dict.fromkeys(names))  # keep order, drop repeats
    return names if CPU in names else [*names, CPU]


def choose(providers: list[str] | tuple[str, ...] | None = None) -> list[str]:
    """The requested providers that can run here; logs one line when some are dropped."""
    wanted = requested(providers)
    problems = {p: provider_problem(p) for p in wanted}
    usable = [p for p in wanted if problems[p] is None]
    dropped = [p for p in wanted if problems[p] is not None]
    if dropped:
        reasons = "; ".join(dict.fromkeys(problems[p] for p in dropped))
        _say_once(f"{', '.join(dropped)} unavailable ({reasons}): running on {usable[0]}")
    return usable


_said: set[str] = set()


def _say_once(message: str) -> None:
    """A reload must not repeat the same line every time the model changes."""
    if message not in _said:
        _said.add(message)
        log.info(message)


@dataclass(frozen=True)
class GpuOptions:
    """What the CUDA and TensorRT providers are given (the line config's `model.gpu`).

    fp16 is off by default: the session turns it on only after its scores matched the CPU's on this
    model (see `session.fp16_parity`), since an anomaly score is compared with a threshold at 1.0 and
    a half-precision kNN or Mahalanobis sum can move it across.
    """

    device_id: int = 0
    mem_limit_mb: int = 0  # CUDA arena cap; 0: no cap
    cudnn_conv_algo_search: str = "EXHAUSTIVE"  # ORT's default: best kernels once per input shape
    trt_cache_dir: str | None = None  # engines are built for minutes: cached here across restarts
    trt_fp16: bool = False
    trt_workspace_mb: int = 0  # TensorRT builder workspace; 0: ORT's default
    trt_builder_level: int = 3  # TensorRT builder optimization level 0-5 (higher: longer builds)

    def trt_cache(self) -> Path:
        """fp16 and fp32 engines in separate folders: a cached fp16 engine never answers an fp32 request."""
        root = Path(self.trt_cache_dir or os.environ.get(TRT_CACHE_VAR) or Path.home() / ".cache" / "inspector" / "trt")
        return root / ("fp16" if self.trt_fp16 else "fp32")


def provider_options(providers: list[str], gpu: GpuOptions | None = None) -> list[str | tuple[str, dict]]:
    """ONNX Runtime's `providers=` argument: each GPU provider with its options (names as in the ORT docs
    for the CUDA and TensorRT execution providers), others by name. Creates the TensorRT cache folder."""
    gpu = gpu or GpuOptions()
    if gpu.cudnn_conv_algo_search not in CONV_SEARCH:
        raise ValueError(f"cudnn_conv_algo_search must be one of {CONV_SEARCH}")
    cuda: dict = {"device_id": gpu.device_id, "cudnn_conv_algo_search": gpu.cudnn_conv_algo_search}
    if gpu.mem_limit_mb:
        cuda["gpu_mem_limit"] = gpu.mem_limit_mb * 2**20
    cache = gpu.trt_cache()
    trt: dict = {
        "device_id": gpu.device_id,
        "trt_fp16_enable": gpu.trt_fp16,
        "trt_engine_cache_enable": True,
        "trt_engine_cache_path": str(cache),
        "trt_timing_cache_enable": True,
        "trt_timing_cache_path": str(cache),
        "trt_builder_optimization_level": gpu.trt_builder_level,
    }
    if gpu.trt_workspace_mb:
        trt["trt_max_workspace_size"] = gpu.trt_workspace_mb * 2**20
    if TENSORRT in providers:
        cache.mkdir(parents=True, exist_ok=True)
    return [(p, trt) if p == TENSORRT else (p, cuda) if p == CUDA else p for p in providers]
