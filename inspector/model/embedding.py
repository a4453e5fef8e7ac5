"""The embedding output: an item's vector for people (similar items, defect kinds, the map, drift).

Methods of `InspectorNet` (as a mixin), kept apart from the scoring code: the exported graph gains one
output, `embedding`, computed from the backbone features and patch scores the score already needs, so it
costs a few small ops.
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING, NamedTuple

import numpy as np
import torch
from torch import nn

if TYPE_CHECKING:
    from inspector.model.net import InspectorNet


EMBED_TEMPERATURE = 0.1  # softmax temperature of the patch weights, in units of a good image's top patch score
EMBED_WHOLE = 0.5  # share (as a unit-vector length) of the whole-part half; the anomaly-weighted half gets the rest
EMBED_DIM = 64  # backbone features projected to this many dimensions per half (a fixed random orthogonal matrix)


class EmbeddedOutput(NamedTuple):
    """`Output` plus the item's embedding (stable ONNX output names)."""

    anomaly_map: torch.Tensor  # (B, 1, H, W)
    score: torch.Tensor  # (B,)
    embedding: torch.Tensor  # (B, 2 * min(C, EMBED_DIM)), unit length


def patch_weights(patch: torch.Tensor) -> torch.Tensor:
    """(B, h*w) patch scores -> (B, h*w) weights summing to one, peaked on the most anomalous patches.

    Sohn et al., "Anomaly Clustering" (WACV 2023): patch embeddings weighted by their anomaly, so a defect
    item is described by its defect, not by the good surface around it. Here the weight is the model's own
    scale-normalized patch distance, softmaxed with a fixed temperature.
    """
    return torch.softmax(patch / EMBED_TEMPERATURE, dim=1)


@functools.cache
def projection(c: int, dim: int = EMBED_DIM) -> torch.Tensor:
    """(c, min(c, dim)) orthonormal columns, the same for every model with c feature channels.

    Random (seed 0), not fitted: no state to store or migrate, and orthonormal columns keep the features'
    distances on average (Johnson-Lindenstrauss). The QR signs are fixed (R's diagonal positive), so any LAPACK
    gives this matrix. Built with numpy: a traced graph holds it as a constant.
    """
    q, r = np.linalg.qr(np.random.default_rng(0).standard_normal((c, min(c, dim))))
    return torch.from_numpy((q * np.sign(np.diag(r))).astype(np.float32))


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

    def embedding(self: InspectorNet, maps: list[torch.Tensor], patch: torch.Tensor) -> torch.Tensor:  # type: ignore[misc]
        """Backbone maps and (B, h, w) patch scores -> (B, 2 * min(C, EMBED_DIM)) unit embedding.

        First half: the anomaly-weighted mean of the standardized backbone patch features (the autoencoder's
        input, as Sohn et al. weight pretrained features: the small latent, trained to rebuild good patches,
        drops what tells defect kinds apart; benchmarks/latent_features.py); second half: their global average
        (the whole part). Both projected by `projection`; each half unit length before they are mixed.
        """
        f = self.standardize(self.concat(maps))  # (B, C, h, w)
        # plain ints (the model's grid): a traced graph holds constant shapes, no per-frame shape arithmetic
        n, c = int(self.grid[0]) * int(self.grid[1]), int(self.feature_dim)
        if not torch.jit.is_tracing() and f.shape[-2] * f.shape[-1] != n:
            n = int(f.shape[-2] * f.shape[-1])  # a model fitted without a fixed size, scored in torch
        f = f.reshape(-1, c, n)  # (B, C, h*w)
        a = patch_weights(patch.reshape(-1, n))  # (B, h*w)
        p = projection(c).to(f.device)  # (C, D)
        weighted = (f * a.reshape(-1, 1, n)).sum(2) @ p  # (B, D)
        whole = f.mean(2) @ p  # (B, D)
        keep = float(np.sqrt(1.0 - EMBED_WHOLE**2))
        return torch.cat([keep * unit(weighted), EMBED_WHOLE * unit(whole)], dim=1)

    def forward_embedded(self: InspectorNet, x: torch.Tensor) -> EmbeddedOutput:  # type: ignore[misc]
        """Map, score and embedding from one pass (the exported graph with an embedding output)."""
        maps = self.backbone_maps(x)
        lat, recon, gauss, glob, _ = self.components_and_latent(x, maps=maps)
        out = self.combine(lat, recon, gauss, glob, x.shape[-2:])
        return EmbeddedOutput(out.anomaly_map, out.score, self.embedding(maps, self.patch_score(lat, recon, gauss)))

    @property
    def embedding_dim(self: InspectorNet) -> int:  # type: ignore[misc]
        return 2 * min(int(self.feature_dim), EMBED_DIM)


class EmbeddedNet(nn.Module):
    """Wraps a net so `forward` is `forward_embedded`: what `torch.onnx.export` traces."""

    def __init__(self, net: InspectorNet):
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> EmbeddedOutput:
        return self.net.forward_embedded(x)
