"""The inspection model: frozen CNN patch features -> autoencoder latent space -> anomaly map + score.

Pure nn.Modules; their settings are `inspector.config.network.NetworkSettings`, training glue lives in
`inspector.pipeline.fit`. All reference statistics
(feature normalization, latent memory bank, global embeddings, score scales) are buffers, so the
state dict is the whole model and ONNX export bakes them in as graph constants.
"""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from inspector.config.network import NetworkSettings
from inspector.model.backbone import Backbone
from inspector.model.embedding import EmbeddingMixin


class Output(NamedTuple):
    """Stable output names for ONNX: raw (un-normalized) anomaly map and image score."""

    anomaly_map: torch.Tensor  # (B, 1, H, W) at the input resolution
    score: torch.Tensor  # (B,)


class PatchAutoencoder(nn.Module):
    """Per-patch MLP autoencoder (1x1 convolutions); its bottleneck is the latent space."""

    def __init__(self, dim: int, hidden: int, latent: int):
        super().__init__()
        self.encoder = nn.Sequential(nn.Conv2d(dim, hidden, 1), nn.GELU(), nn.Conv2d(hidden, latent, 1))
        self.decoder = nn.Sequential(nn.Conv2d(latent, hidden, 1), nn.GELU(), nn.Conv2d(hidden, dim, 1))

    def forward(self, f: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        z = self.encoder(f)  # (B, L, h, w)
        return z, self.decoder(z)  # (B, C, h, w)

    def flat(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """`forward` on patch rows (N, C) -> (N, L), (N, C): the same weights as matrix products. Training reads
        patches as rows; a 1x1 convolution over (N, C, 1, 1) took twice as long a step on 2 cores (29 vs 14 ms)."""
        z = self.encode_rows(x)
        return z, _rows(self.decoder, z)

    def encode_rows(self, x: torch.Tensor) -> torch.Tensor:
        """The latent of patch rows (N, C) -> (N, L)."""
        return _rows(self.encoder, x)


def _rows(seq: nn.Sequential, x: torch.Tensor) -> torch.Tensor:
    """conv 1x1 -> GELU -> conv 1x1 applied to rows (N, C_in): the convolutions' weights viewed as matrices."""
    a, act, b = seq
    h = act(F.linear(x, a.weight.flatten(1), a.bias))
    return F.linear(h, b.weight.flatten(1), b.bias)


def cell_count(grid: tuple[int, int], cell: int) -> int:
    """Number of gauss_cell x gauss_cell cells covering the patch grid (the last row/column may be partial)."""
    return ((grid[0] + cell - 1) // cell) * ((grid[1] + cell - 1) // cell)


def to_cells(d: torch.Tensor, cell: int, dims: tuple[int, int, int] | None = None) -> torch.Tensor:
    """(B, L, h, w) -> (cells, B*cell*cell, L): the grid cut into cell x cell blocks, zero-padded to whole cells.

    The positions of one block share one covariance: one batched matmul against (cells, L, L) reads
    cell^2 times less reference data than one matrix per position (the memory-bound part of a frame).
    `dims` = (L, h, w) as plain ints: a traced graph then holds constant shapes instead of shape arithmetic.
    """
    l, h, w = dims if dims is not None else d.shape[1:]
    # Non-negative integer arithmetic only: traced into ONNX, Div/Mod of a negative size truncate, not floor.
    ph, pw = (cell - h % cell) % cell, (cell - w % cell) % cell
    if ph or pw:
        d = F.pad(d, (0, pw, 0, ph))
    gh, gw = (h + ph) // cell, (w + pw) // cell
    # Channels last first, then cells to the front moving whole rows of c*L values: in ORT, at batch 8 and
    # 2x2 cells, four times faster than one six-axis permute of single floats (docs/model.md).
    d = d.permute(0, 2, 3, 1).reshape(-1, gh, cell, gw, cell * l).permute(1, 3, 0, 2, 4)  # (gh, gw, B, c, c*L)
    return d.reshape(gh * gw, -1, l)


def from_cells(m: torch.Tensor, h: int, w: int, cell: int) -> torch.Tensor:
    """(cells, B*cell*cell) per-position values -> (B, h, w); inverse of `to_cells`."""
    gh, gw = (h + cell - 1) // cell, (w + cell - 1) // cell
    m = m.reshape(gh, gw, -1, cell, cell).permute(2, 0, 3, 1, 4).reshape(-1, gh * cell, gw * cell)
    return m if (h % cell, w % cell) == (0, 0) else m[:, :h, :w]


def interp_matrix(n_out: int, n_in: int) -> torch.Tensor:
    """(n_out, n_in) weights of bilinear resampling along one axis, each cell where the backbone responds.

    A cell of stride s sits at pixel s*j - (s-1)/2 on either grid (docs/model.md: measured on the ImageNet
    weights, an impulse moves stride-8 cells ~3.3 px and stride-16 cells ~6.3 px past s*j), so with
    r = n_out / n_in output i reads input (i + (r - 1) / 2) / r. Beyond the last cell: its value.
    """
    # numpy, not torch: built while a graph is being traced, the matrix must be a constant, not traced ops
    pos = np.arange(n_out, dtype=np.float64)
    r = n_out / n_in
    src = np.clip((pos + (r - 1) / 2) / r, 0.0, n_in - 1)
    i0 = np.minimum(np.floor(src).astype(np.int64), n_in - 1)
    i1 = np.minimum(i0 + 1, n_in - 1)
    lam = src - i0
    m = np.zeros((n_out, n_in))
    rows = np.arange(n_out)
    np.add.at(m, (rows, i0), 1 - lam)
    np.add.at(m, (rows, i1), lam)
    return torch.from_numpy(m.astype(np.float32))


def gaussian_kernel(size: int) -> torch.Tensor:
    sigma = max(size / 4.0, 0.5)
    x = torch.arange(size, dtype=torch.float32) - (size - 1) / 2
    g = torch.exp(-(x**2) / (2 * sigma**2))
    g = g / g.sum()
    return (g[:, None] * g[None, :])[None, None]  # (1, 1, k, k)


def nearest_distance(z: torch.Tensor, bank: torch.Tensor, bank_sq: torch.Tensor) -> torch.Tensor:
    """Euclidean distance of each row of z (N, L) to its nearest row of bank (M, L).

    |z - b|^2 = |z|^2 + (|b|^2 - 2 z.b): one matmul with the constant -2 bank plus the constant |b|^2, then
    the row minimum (in ONNX: MatMul, Add, ReduceMin, with no per-frame shape ops).
    """
    zb = z @ (-2.0 * bank).T + bank_sq  # (N, M); the bank terms are constant-folded at export
    return ((z * z).sum(1) + zb.min(dim=1).values).clamp_min(0.0).sqrt()


class InspectorNet(EmbeddingMixin, nn.Module):
    """The network for one input size: `grid` is its patch grid (input H/8, W/8); per-position statistics
    live on it."""

    def __init__(self, cfg: NetworkSettings, grid: tuple[int, int], weights: Path | None = None):
        super().__init__()
        self.backbone = Backbone(cfg.backbone, cfg.layers, weights)
        self.cfg, self.grid = cfg, (int(grid[0]), int(grid[1]))
        self.feature_dim = sum(self.backbone.channels)
        self.ae = PatchAutoencoder(self.feature_dim, cfg.hidden, cfg.latent)
        c, l = self.feature_dim, cfg.latent
        self.register_buffer("feat_mean", torch.zeros(1, c, 1, 1))
        self.register_buffer("feat_std", torch.ones(1, c, 1, 1))
        bank = cfg.bank_size if cfg.w_latent > 0 else 1  # no kNN term: no memory bank in the graph
        self.register_buffer("bank", torch.zeros(bank, l + 2))
        self.register_buffer("bank_sq", torch.zeros(bank))
        # Latent units per unit of position (set at fit from the latent spread).
        self.register_buffer("pos_scale", torch.zeros(()))
        self.register_buffer("global_bank", torch.zeros(max(cfg.global_bank, 1), l))
        self.register_buffer("global_sq", torch.zeros(max(cfg.global_bank, 1)))
        # Per-position Gaussian of good latents (or of the standardized features: `gauss_source`) on the patch grid:
        # mean and precision matrices.
        gh, gw = self.grid
        d = c if cfg.gauss_source == "features" else l
        self.register_buffer("gauss_mean", torch.zeros(1, d, gh, gw))
        cells = cell_count(self.grid, cfg.gauss_cell)
        full = cfg.w_gauss > 0 and cfg.gauss_rank == 0
        self.register_buffer("gauss_prec", torch.eye(d).repeat(cells, 1, 1) if full else torch.zeros(1, 1, 1))
        if cfg.w_gauss > 0 and cfg.gauss_rank > 0:  # low-rank plus ridge (`mahalanobis_low_rank`)
            self.register_buffer("gauss_basis", torch.zeros(cells, d, cfg.gauss_rank))
            self.register_buffer("gauss_inv_ridge", torch.ones(cells))
        # Typical size of each score component on held-out good images (set at fit).
        self.register_buffer("scales", torch.ones(4))
        self.register_buffer("kernel", gaussian_kernel(cfg.smooth))
        # Bilinear resampling (stride 16 -> 8, patch grid -> input) as two small constant matmuls, built once per
        # size: exact, and faster in ORT than its Resize op (docs/model.md). Traced, they are graph constants.
        self._matrices: dict[tuple[int, int, int, int], tuple[torch.Tensor, torch.Tensor]] = {}
        self._whitening: tuple | None = None
        self._cell_means: tuple | None = None

    def resize(self, x: torch.Tensor, size) -> torch.Tensor:
        """Bilinear resampling of (B, C, h, w) to `size`, cells placed where the backbone responds (`interp_matrix`)."""
        key = (int(x.shape[-2]), int(x.shape[-1]), int(size[0]), int(size[1]))
        if key not in self._matrices:
            self._matrices[key] = (interp_matrix(key[2], key[0]), interp_matrix(key[3], key[1]).T.contiguous())
        rh, rwt = (t.to(x.device) for t in self._matrices[key])
        return torch.matmul(rh, torch.matmul(x, rwt))

    def backbone_maps(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The backbone's feature maps (stride 8, 16, ...), locally pooled if configured."""
        maps = self.backbone(x)
        if self.cfg.pool > 1:
            maps = [F.avg_pool2d(m, self.cfg.pool, 1, self.cfg.pool // 2) for m in maps]
        return maps

    def concat(self, maps: list[torch.Tensor]) -> torch.Tensor:
        """Maps upsampled to the finest grid and stacked: (B, C, h, w)."""
        size = maps[0].shape[-2:]
        return torch.cat([maps[0]] + [self.resize(m, size) for m in maps[1:]], 1)

    def raw_features(self, x: torch.Tensor) -> torch.Tensor:
        """Multi-scale patch features on the stride-8 grid, not yet standardized: (B, C, H/8, W/8)."""
        return self.concat(self.backbone_maps(x))

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Standardized multi-scale patch features on the stride-8 grid: (B, C, H/8, W/8)."""
        return self.standardize(self.raw_features(x))

    def standardize(self, f: torch.Tensor) -> torch.Tensor:
        return (f - self.feat_mean) / self.feat_std

    def hidden_maps(self, maps: list[torch.Tensor]) -> torch.Tensor:
        """The autoencoder's hidden layer (B, H, h, w) straight from the backbone maps; equal to
        `ae.encoder[:2](features)`.

        The feature standardization is folded into the encoder's first 1x1 convolution, and since that
        convolution and bilinear upsampling are both linear, they commute: each map meets its slice of the
        weights at its own resolution (a quarter of the work for the stride-16 map) and only the sum is
        upsampled. No concatenated feature tensor, no per-pixel Sub/Div: a lighter graph.
        """
        conv = self.ae.encoder[0]
        w = conv.weight / self.feat_std.view(1, -1, 1, 1)  # (hidden, C, 1, 1)
        b = conv.bias - (w * self.feat_mean.view(1, -1, 1, 1)).sum((1, 2, 3))
        size = maps[0].shape[-2:]
        # channel counts as plain ints: traced, each slice of the weights is a constant, not a per-frame Slice
        ends = np.cumsum([0, *self.backbone.channels]).tolist()
        h = F.conv2d(maps[0], w[:, ends[0] : ends[1]], b)
        for m, start, end in zip(maps[1:], ends[1:], ends[2:]):
            h = h + self.resize(F.conv2d(m, w[:, start:end]), size)
        return self.ae.encoder[1](h)

    @property
    def gauss_reads_hidden(self) -> bool:
        """Whether the Mahalanobis term reads the hidden layer (no wider than the latent) instead of the latent."""
        return self.cfg.gauss_source == "latent" and self.cfg.hidden <= self.cfg.latent

    def whitening(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Each block's whitening: K (cells, D, L) and offsets (cells, 1, c*c, L) with |x K + offset|^2 =
        (z - mean)^T P (z - mean), P = C C^T, for x the input of the Mahalanobis term.

        x = the hidden layer g where it is no wider than the latent (`gauss_reads_hidden`): the encoder's last
        1x1 convolution z = W2 g + b2 is folded in (K = W2^T C), so no latent map is computed for it; else
        x = z, or the standardized features f where the Gaussian reads them (`gauss_source`) (K = C). Built with
        numpy (a traced graph gets constants) and kept until a weight or buffer it comes from changes.
        """
        conv = self.ae.encoder[2]
        sources = (self.gauss_prec, self.gauss_mean, conv.weight, conv.bias)
        key = tuple((t.data_ptr(), t._version) for t in sources)
        if self._whitening is None or self._whitening[0] != key:
            with torch.no_grad():
                chol = np.linalg.cholesky(self.gauss_prec.cpu().double().numpy())  # (cells, L, L)
                w2 = conv.weight.cpu().double().numpy()[:, :, 0, 0]  # (L, H)
                mean = to_cells(self.gauss_mean.cpu().double(), self.cfg.gauss_cell).numpy()  # (cells, c*c, L)
                bias = conv.bias.cpu().double().numpy()
            if self.gauss_reads_hidden:
                k, offset = np.einsum("lh,clm->chm", w2, chol), (bias - mean) @ chol
            else:
                k, offset = chol, -mean @ chol
            self._whitening = (
                key,
                torch.from_numpy(k.astype(np.float32)),
                torch.from_numpy(offset.astype(np.float32))[:, None],
            )
        return self._whitening[1].to(conv.weight.device), self._whitening[2].to(conv.weight.device)

    def mahalanobis(self, x: torch.Tensor) -> torch.Tensor:
        """Distance (B, h, w) of each patch's latent (or features) to the good Gaussian of its position; x is the
        hidden layer, the latent map or the standardized features, as `gauss_reads_hidden` and `gauss_source` say."""
        c, (h, w) = self.cfg.gauss_cell, self.grid  # plain ints (the Gaussian's grid is the model's)
        if not torch.jit.is_tracing() and tuple(x.shape[-2:]) != (h, w):  # else the batch axis would absorb it
            raise ValueError(
                f"patch grid {tuple(x.shape[-2:])} is not the model's {(h, w)}: score at the fitted input size"
            )
        if self.cfg.gauss_rank > 0:
            return self.mahalanobis_low_rank(x)
        k, offset = self.whitening()
        cells, d, l = (int(n) for n in k.shape)
        u = torch.bmm(to_cells(x, c, (d, h, w)), k)  # (cells, B*c*c, L): whitened latents
        u = u.reshape(cells, -1, c * c, l) + offset  # (cells, B, c*c, L) minus the whitened means
        m = (u * u).sum(-1).reshape(cells, -1)  # (cells, B*c*c): squared Mahalanobis distances
        return from_cells(m.sqrt(), h, w, c)

    def mahalanobis_low_rank(self, x: torch.Tensor) -> torch.Tensor:
        """`mahalanobis` where each covariance is C = Q S Q^T + ridge I with rank r below its dimension d (fewer
        samples than dimensions: the feature Gaussian on few images). Exactly, with y = x - mean,

            y^T C^-1 y = |y|^2 / ridge - sum_i s_i / (ridge (s_i + ridge)) (q_i . y)^2,

        so the model keeps W = Q diag(sqrt(s / (ridge (s + ridge)))) (cells, d, r) and 1 / ridge per block: d x r
        floats read per position instead of d x d (fit: `fit_gaussian_low_rank`)."""
        c, (h, w) = self.cfg.gauss_cell, self.grid
        basis = self.gauss_basis
        cells, d, r = (int(n) for n in basis.shape)
        y = to_cells(x, c, (d, h, w)).reshape(cells, -1, c * c, d) - self.cell_means()  # (cells, B, c*c, d)
        y = y.reshape(cells, -1, d)
        p = torch.bmm(y, basis)  # (cells, B*c*c, r)
        m = (y * y).sum(-1) * self.gauss_inv_ridge[:, None] - (p * p).sum(-1)  # (cells, B*c*c)
        return from_cells(m.clamp_min(0.0).sqrt(), h, w, c)

    def cell_means(self) -> torch.Tensor:
        """The per-position means cut as `to_cells` cuts a map: (cells, 1, c*c, d), built with numpy (a traced graph
        gets a constant) and kept until the mean changes."""
        key = (self.gauss_mean.data_ptr(), self.gauss_mean._version)
        if self._cell_means is None or self._cell_means[0] != key:
            with torch.no_grad():
                mean = to_cells(self.gauss_mean.detach().cpu().double(), self.cfg.gauss_cell).numpy()
            self._cell_means = (key, torch.from_numpy(mean.astype(np.float32))[:, None])
        return self._cell_means[1].to(self.gauss_mean.device)

    def with_position(self, z: torch.Tensor) -> torch.Tensor:
        """Append each patch's (y, x) position, as a fraction of the image, scaled: (B, L+2, h, w).

        Makes the kNN position-aware: a dark blob in the middle does not match a dark border.
        Built with cumsum so the grid follows dynamic input sizes in ONNX.
        """
        ones = torch.ones_like(z[:, :1])  # (B, 1, h, w)
        ys = (ones.cumsum(2) - 0.5) / ones.sum(2, keepdim=True)
        xs = (ones.cumsum(3) - 0.5) / ones.sum(3, keepdim=True)
        return torch.cat([z, self.pos_scale * ys, self.pos_scale * xs], dim=1)

    def components(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Per-patch latent kNN distance, reconstruction error, latent Mahalanobis (each (B, h, w))
        and the image-level latent distance (B,)."""
        return self.components_and_latent(x)[:4]

    def components_and_latent(
        self, x: torch.Tensor, want_z: bool = False, maps: list[torch.Tensor] | None = None
    ) -> tuple[torch.Tensor, ...]:
        """`components` plus the latent map (B, L, h, w) when `want_z` (else whatever the score needed, or None);
        `maps`: x's backbone maps when the caller already has them (the embedding reads them too)."""
        maps = self.backbone_maps(x) if maps is None else maps
        b = maps[0].shape[0]
        # The latent map is needed by the other terms; the Gaussian reads g where it is no wider (`whitening`), or
        # the standardized features (`gauss_source`): then neither g nor z unless another term needs them.
        feats = self.cfg.gauss_source == "features"
        gauss_x = self.cfg.w_gauss > 0 and not feats and not self.gauss_reads_hidden
        needs_z = want_z or self.cfg.w_latent > 0 or self.cfg.w_recon > 0 or self.cfg.global_bank > 0 or gauss_x
        g = self.hidden_maps(maps) if needs_z or (self.cfg.w_gauss > 0 and not feats) else None  # (B, H, h, w)
        z = self.ae.encoder[2](g) if needs_z else None  # (B, L, h, w)
        # Each term is computed only when it is part of the score (the graph holds just those).
        if self.cfg.w_latent > 0:
            gh, gw = self.grid  # plain ints: a traced graph reshapes by constants
            if self.cfg.pos_weight > 0:
                zf, bank = self.with_position(z), self.bank  # (B, L+2, h, w)
            else:  # the bank's position columns are zero: leave them out
                zf, bank = z, self.bank[:, : self.cfg.latent]
            zf = zf.permute(0, 2, 3, 1).reshape(-1, int(bank.shape[1]))  # (B*h*w, L or L+2)
            lat = nearest_distance(zf, bank, self.bank_sq).reshape(-1, gh, gw)
        else:
            lat = torch.zeros_like(maps[0][:, 0])  # (B, h, w)
        f = self.standardize(self.concat(maps)) if self.cfg.w_recon > 0 or (feats and self.cfg.w_gauss > 0) else None
        if self.cfg.w_recon > 0:
            recon = (f - self.ae.decoder(z)).pow(2).mean(1)
        else:
            recon = torch.zeros_like(lat)
        if self.cfg.w_gauss > 0:
            gauss = self.mahalanobis(f if feats else z if gauss_x else g)
        else:
            gauss = torch.zeros_like(recon)
        if self.cfg.global_bank > 0:
            glob = nearest_distance(z.mean((2, 3)), self.global_bank, self.global_sq)  # (B,)
        else:
            glob = torch.zeros(b, device=x.device)
        return lat, recon, gauss, glob, z

    def combine(self, lat: torch.Tensor, recon: torch.Tensor, gauss: torch.Tensor, glob: torch.Tensor, size) -> Output:
        """Weighted, scale-normalized components -> smoothed map at `size` and image score."""
        cfg, sc = self.cfg, self.scales
        terms = [(cfg.w_latent, lat, 0), (cfg.w_recon, recon, 1), (cfg.w_gauss, gauss, 2)]
        used = [(w / sc[i]) * t for w, t, i in terms if w > 0]  # only the terms in use enter the graph
        if not used:
            raise ValueError("no patch score term has a weight > 0 (w_latent, w_recon, w_gauss)")
        patch = used[0]
        for t in used[1:]:
            patch = patch + t
        patch = patch.unsqueeze(1)  # (B, 1, h, w)
        if cfg.smooth > 1:
            patch = F.conv2d(patch, self.kernel, padding=cfg.smooth // 2)  # (B, 1, h, w)
        score = self.reduce(patch.flatten(1))  # (B,)
        if cfg.w_global > 0:  # else no zeros-times-weight ops in the graph
            score = score + cfg.w_global * glob / sc[3]
        amap = self.resize(patch, size)  # (B, 1, H, W)
        return Output(amap, score)

    def reduce(self, flat: torch.Tensor) -> torch.Tensor:
        """(B, cells) map -> (B,) image score: its maximum, or the mean of its `score_top` highest cells.

        Why a mean: on a texture every good image has a few scattered high cells somewhere, so the maximum of a
        good image is noisy; a defect lifts a cluster of cells. Which one works is a per-product choice
        (`inspector.pipeline.select`). k counts cells of the model's grid (a plain int: a constant in ONNX TopK).
        """
        k = int(round(self.cfg.score_top * self.grid[0] * self.grid[1]))
        if k <= 1:
            return flat.max(1).values
        return flat.topk(k, dim=1).values.mean(1)

    def forward(self, x: torch.Tensor) -> Output:
        return self.combine(*self.components(x), x.shape[-2:])
