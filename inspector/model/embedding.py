"""The embedding output: latent vectors for people (similar items, defect kinds, the map, drift).

Methods of `InspectorNet` (as a mixin), kept apart from the scoring code: the exported graph gains one
output, `embedding`, computed from the latent map the score already needs, so it costs a few small ops.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, NamedTuple

import numpy as np
import torch
from torch import nn

if TYPE_CHECKING:
    from inspector.model.net import InspectorNet


EMBED_TEMPERATURE = 0.1  # softmax temperature of the patch weights, in units of a good image's top patch score
EMBED_WHOLE = 0.5  # share (as a unit-vector length) of the whole-part half; the anomaly-weighted half gets the rest


class EmbeddedOutput(NamedTuple):
    """`Output` plus the item's embedding (stable ONNX output names)."""

    anomaly_map: torch.Tensor  # (B, 1, H, W)
    score: torch.Tensor  # (B,)
    embedding: torch.Tensor  # (B, 2L), unit length


def patch_weights(patch: torch.Tensor) -> torch.Tensor:
    """(B, h*w) patch scores -> (B, h*w) weights summing to one, peaked on the most anomalous patches.

    Sohn et al., "Anomaly Clustering" (WACV 2023): patch embeddings weighted by their anomaly, so a defect
    item is described by its defect, not by the good surface around it. Here the weight is the model's own
    scale-normalized patch distance, softmaxed with a fixed temperature.
    """
    return torch.softmax(patch / EMBED_TEMPERATURE, dim=1)


def unit(v: torch.Tensor) -> torch.Tensor:
    """Rows scaled to unit length (F.normalize without its shape ops in a traced graph)."""
    return v / (v * v).sum(1, keepdim=True).sqrt().clamp_min(1e-12)


class EmbeddingMixin:
    """Methods of `InspectorNet` for the embedding output; kept apart from the scoring code on purpose."""

    def patch_score(self: InspectorNet, lat, recon, gauss) -> torch.Tensor:  # type: ignore[misc]
        """The weighted, scale-normalized patch score (B, h, w) before smoothing, as `combine` sums it."""
        cfg, sc = self.cfg, self.scales
        terms = [(cfg.w_latent, lat, 0), (cfg.w_recon, recon, 1), (cfg.w_gauss, gauss, 2)]
        used = [(w / sc[i]) * t for w, t, i in terms if w > 0]
        patch = used[0]
        for t in used[1:]:
            patch = patch + t
        return patch

    def embedding(self: InspectorNet, z: torch.Tensor, patch: torch.Tensor) -> torch.Tensor:  # type: ignore[misc]
        """(B, L, h, w) latents and (B, h, w) patch scores -> (B, 2L) unit embedding.

        First half: the anomaly-weighted mean of each patch's deviation from the good mean of its position
        (what is wrong, wherever it is); second half: the mean latent (the whole part). Each half is unit
        length before they are mixed, so neither dominates by scale.
        """
        # plain ints (the model's grid): a traced graph holds constant shapes, no per-frame shape arithmetic
        n, l = int(self.grid[0]) * int(self.grid[1]), int(self.cfg.latent)
        if not torch.jit.is_tracing() and z.shape[-2] * z.shape[-1] != n:
            n = int(z.shape[-2] * z.shape[-1])  # a model fitted without a fixed size, scored in torch
        good = self.gauss_mean if self.cfg.w_gauss > 0 else torch.zeros_like(z[:1])  # no Gaussian: no fixed grid
        r = (z - good).reshape(-1, l, n)  # (B, L, h*w): deviation from the good mean per position
        a = patch_weights(patch.reshape(-1, n))  # (B, h*w)
        weighted = (r * a.reshape(-1, 1, n)).sum(2)  # (B, L)
        whole = z.reshape(-1, l, n).mean(2)  # (B, L)
        keep = float(np.sqrt(1.0 - EMBED_WHOLE**2))
        return torch.cat([keep * unit(weighted), EMBED_WHOLE * unit(whole)], dim=1)

    def forward_embedded(self: InspectorNet, x: torch.Tensor) -> EmbeddedOutput:  # type: ignore[misc]
        """Map, score and embedding from one pass (the exported graph with an embedding output)."""
        lat, recon, gauss, glob, z = self.components_and_latent(x, want_z=True)
        out = self.combine(lat, recon, gauss, glob, x.shape[-2:])
        return EmbeddedOutput(out.anomaly_map, out.score, self.embedding(z, self.patch_score(lat, recon, gauss)))

    @property
    def embedding_dim(self: InspectorNet) -> int:  # type: ignore[misc]
        return 2 * self.cfg.latent


class EmbeddedNet(nn.Module):
    """Wraps a net so `forward` is `forward_embedded`: what `torch.onnx.export` traces."""

    def __init__(self, net: InspectorNet):
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> EmbeddedOutput:
        return self.net.forward_embedded(x)
