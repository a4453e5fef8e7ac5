"""Model folders. `<model>/staging/` holds what fit and calibrate produce: `model.pt` (weights + config,
so loading never guesses), `fit.json`, `calibration.json`. Exported versions live beside it (`v<N>/`).

Every write goes to a temporary sibling and is renamed into place, so a crash leaves nothing half-written.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from inspector.errors import InspectorError, refuse_older

# 2: the network's settings (`NetworkSettings`) and patch grid; 1 (older fits) had a config of its own
FORMAT_VERSION = 2
MODEL_FILE = "model.pt"
FIT_FILE = "fit.json"
CALIBRATION_FILE = "calibration.json"
STAGING = "staging"


def staging(model_dir: Path) -> Path:
    return Path(model_dir) / STAGING


def read_json(path: Path, what: str) -> dict:
    if not path.is_file():
        raise InspectorError(f"{path} is missing: {what}")
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise InspectorError(f"{path} is corrupt ({e.__class__.__name__}); {what}") from None


def replace_dir(tmp: Path, final: Path) -> None:
    """Swap a fully written temp folder into place (old contents removed only after)."""
    if final.exists():
        old = final.with_name(f".{final.name}.old")
        shutil.rmtree(old, ignore_errors=True)
        os.replace(final, old)
        os.replace(tmp, final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        final.parent.mkdir(parents=True, exist_ok=True)
        os.replace(tmp, final)


def check_model_dir(model_dir: Path) -> None:
    if not model_dir.exists():
        raise InspectorError(f"model folder {model_dir} does not exist (run `inspector fit` first)")
    if not (staging(model_dir) / MODEL_FILE).is_file():
        raise InspectorError(
            f"{model_dir} has no {STAGING}/{MODEL_FILE}: not a fitted model folder (run `inspector fit`)"
        )


def save_model(path: Path, net, preprocess, extra: dict) -> None:
    import torch

    blob = {
        "format": FORMAT_VERSION,
        "network": net.cfg.model_dump(mode="json"),
        "grid": list(net.grid),
        "preprocess": preprocess.to_dict(),
        "state_dict": net.state_dict(),
        **extra,
    }
    torch.save(blob, path)


def load_model(model_dir: Path):
    """Rebuild the network from its own checkpoint: returns (net, Preprocess, blob)."""
    import torch

    from inspector.config.network import NetworkSettings
    from inspector.data.preprocess import Preprocess
    from inspector.model.net import InspectorNet

    check_model_dir(model_dir)
    try:
        blob = torch.load(staging(model_dir) / MODEL_FILE, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many types for a bad pickle/zip
        raise InspectorError(
            f"{staging(model_dir) / MODEL_FILE} is unreadable ({e.__class__.__name__}); refit the model"
        ) from None
    fmt = blob.get("format") if isinstance(blob, dict) else None
    refuse_older(fmt, FORMAT_VERSION, model_dir, "model", "with `inspector fit`")
    if fmt != FORMAT_VERSION:
        raise InspectorError(
            f"{model_dir} was written by another inspector version (model format {fmt}, this one reads "
            f"{FORMAT_VERSION}); refit it with `inspector fit`"
        )
    try:
        net = InspectorNet(NetworkSettings(**blob["network"]), tuple(blob["grid"]), weights=None)
        net.load_state_dict(blob["state_dict"])
        pre = Preprocess.from_dict(blob["preprocess"])
    except (KeyError, TypeError, ValueError, RuntimeError) as e:  # pydantic's ValidationError is a ValueError
        raise InspectorError(
            f"{staging(model_dir) / MODEL_FILE} does not match this inspector version "
            f"({e.__class__.__name__}: {str(e).splitlines()[0][:120]}); refit it with `inspector fit`"
        ) from None
    net.eval()
    return net, pre, blob
