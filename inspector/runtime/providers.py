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
from functools import lru_cache
from pathlib import Path

import onnxruntime as ort

log = logging.getLogger(__name__)

TENSORRT, CUDA, CPU = "TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"
DEFAULT_PROVIDERS = (TENSORRT, CUDA, CPU)
ALIASES = {"tensorrt": TENSORRT, "trt": TENSORRT, "cuda": CUDA, "cpu": CPU}
ENV_VAR = "INSPECTOR_PROVIDERS"  # e.g. "cuda,cpu": overrides the default order
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
