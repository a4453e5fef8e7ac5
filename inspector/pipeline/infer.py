"""Torch inference over image files (fit hold-out, evaluation, `score` before export). A tiled model's frame is
cut, scored and stitched by `inspector.data.tiles`, as the ONNX runtime does."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from inspector.data.datasets import LoadReport, iter_images
from inspector.data.preprocess import Preprocess, prepare
from inspector.data.tiles import cut, reduce
from inspector.model.net import InspectorNet


@dataclass
class Scored:
    path: Path
    image: np.ndarray  # BGR as loaded
    score: float  # raw
    amap: np.ndarray  # (H, W) raw map at the network input size (tiled: the stitched canvas, `tiles.stitch`)
    components: tuple[torch.Tensor, ...] | None = None  # (lat, recon, gauss, glob), batched over tiles, when asked


def score_paths(
    net: InspectorNet,
    pre: Preprocess,
    paths: Sequence[Path],
    report: LoadReport,
    max_bad_fraction: float = 0.1,
    keep_components: bool = False,
) -> Iterator[Scored]:
    net.eval()
    with torch.inference_mode():
        for path, img in iter_images(paths, report, max_bad_fraction):
            x = torch.from_numpy(cut(prepare(img, pre), pre))  # (T, 3, H, W): the tiles (untiled T = 1)
            comps = net.components(x)
            out = net.combine(*comps, x.shape[-2:])
            score, amap, _ = reduce(out.score.numpy(), out.anomaly_map[:, 0].numpy(), None, pre)
            yield Scored(path, img, score, amap, comps if keep_components else None)
