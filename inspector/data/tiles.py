"""Tiles: a large or long frame scored as overlapping tiles, each one network input at (near) full resolution.

Why: a model has one fixed network input (a pixel budget, `max_pixels`), so a 4096x256 line-scan strip becomes
64x1024 and a 1250x500 part 384x160: a crack 2 px wide is shrunk below a pixel and lost. Tiled, `prepare`
resizes the frame to a canvas of rows x cols network inputs that overlap by a fraction of a tile (`Preprocess.
frame_size`), `cut` slices the canvas into the tiles (one batch through the fixed-size graph), and `stitch`
puts the tile maps back on the canvas, taking the maximum where tiles overlap, so the map's peak is the image
score (`reduce`: the maximum over tiles). Every tile is a sample for the autoencoder and the per-position
statistics, so a handful of strips give the fit many samples; the threshold's promise still counts images.

`plan` is the `tiles=auto` rule: from the images' geometry only, never from scores. Tile when the whole image
would reach the network shrunk by more than `tile_shrink` (2: less than half its resolution in the axis shrunk
most); then split the longer side of the tile until each tile is shrunk at most that much, up to MAX_TILES.
Images the network already sees near full size are not tiled, however few: tiles of them would add no pixels,
only lose each tile's place on the part (the statistics are per position within a tile).

One implementation for fit, evaluate and the ONNX runtime: numpy only.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from inspector.config.fit import MAX_TILES, tile_grid
from inspector.data.preprocess import Preprocess


def starts(pre: Preprocess) -> list[tuple[int, int]]:
    """Top-left corner (y, x) of each tile on the canvas, row by row; the last ones end at the canvas edge."""
    (sy, sx), (rows, cols) = pre.tile_step(), pre.tiles
    return [(i * sy, j * sx) for i in range(rows) for j in range(cols)]


def cut(x: np.ndarray, pre: Preprocess) -> np.ndarray:
    """(..., CH, CW) canvas (`prepare`'s output) -> (T, ..., h, w) tiles; untiled, x[None] (a view)."""
    if not pre.tiled:
        return x[None]
    h, w = pre.height, pre.width
    return np.stack([x[..., y : y + h, x0 : x0 + w] for y, x0 in starts(pre)])


def stitch(maps: np.ndarray, pre: Preprocess) -> np.ndarray:
    """(T, h, w) tile maps -> (CH, CW) canvas map; where tiles overlap, the highest value (the map's peak is then
    the image score, the maximum over tiles)."""
    if not pre.tiled:
        return maps[0]
    h, w = pre.height, pre.width
    out = np.full(pre.frame_size(h, w), -np.inf, np.float32)
    for m, (y, x) in zip(maps, starts(pre)):
        np.maximum(out[y : y + h, x : x + w], m, out=out[y : y + h, x : x + w])
    return out


def reduce(
    scores: np.ndarray, maps: np.ndarray, embeddings: np.ndarray | None, pre: Preprocess
) -> tuple[float, np.ndarray, np.ndarray | None]:
    """A frame's tile outputs -> (image score, canvas map, embedding): the highest tile score, the stitched map, and
    the embedding of the highest-scoring tile (where the frame looks most anomalous)."""
    k = int(np.argmax(scores))
    return float(scores[k]), stitch(maps, pre), None if embeddings is None else embeddings[k]


@dataclass(frozen=True)
class TilePlan:
    """The preprocessing chosen for a fit's images and why (fit.json `tiling`, the fit's CLI line)."""

    pre: Preprocess
    image: tuple[int, int]  # median image (H, W)
    shrink: float  # image pixels per network input pixel, along the axis shrunk most
    whole_shrink: float  # the same without tiles
    reason: str

    def to_dict(self) -> dict:
        h, w = self.pre.frame_size(self.pre.height, self.pre.width)
        return {
            "tiles": list(self.pre.tiles),
            "overlap": self.pre.tile_overlap,
            "tile_input": [self.pre.height, self.pre.width],
            "canvas": [h, w],
            "image": list(self.image),
            "shrink": round(self.shrink, 3),
            "whole_image_shrink": round(self.whole_shrink, 3),
            "score": "maximum over tiles" if self.pre.tiled else "whole image",
            "reason": self.reason,
        }


def shrink(pre: Preprocess, size: tuple[int, int]) -> float:
    """How much a frame of `size` (H, W) is shrunk on its way into the network, in the axis shrunk most."""
    fh, fw = pre.frame_size(*size)
    return max(size[0] / fh, size[1] / fw)


def tiled(base: Preprocess, size: tuple[int, int], rows: int, cols: int, overlap: float) -> Preprocess:
    """`base` fixed for tiles of images of `size` cut rows x cols (the tile input keeps the tile's aspect)."""
    if rows * cols == 1:
        return base.fixed_for([size])
    th, tw = size[0] / (rows - (rows - 1) * overlap), size[1] / (cols - (cols - 1) * overlap)
    return replace(base.fixed_for([(th, tw)]), tiles=(rows, cols), tile_overlap=overlap)


def plan(sizes: list[tuple[int, int]], base: Preprocess, tiles: str, max_shrink: float, overlap: float) -> TilePlan:
    """The preprocessing for images of these (H, W) sizes: whole, tiled as asked, or by the auto rule (module doc)."""
    size = (int(np.median([s[0] for s in sizes])), int(np.median([s[1] for s in sizes]))) if sizes else (256, 256)
    whole = base.fixed_for(sizes)
    f0 = shrink(whole, size)
    asked = tile_grid(tiles)
    said = f"{size[1]}x{size[0]} images (median)"
    if asked == (1, 1):
        return TilePlan(whole, size, f0, f0, f"tiles=off: {said} shrunk {f0:.1f}x to the {_wh(whole)} input")
    if asked is not None:
        pre = tiled(base, size, *asked, overlap)
        f = shrink(pre, size)
        return TilePlan(pre, size, f, f0, f"tiles={tiles} as set: {said} as {_grid(pre)}, each shrunk {f:.1f}x")
    if f0 <= max_shrink:
        why = f"whole images: {said} shrunk {f0:.1f}x to the {_wh(whole)} input (tiled above {max_shrink:g}x)"
        return TilePlan(whole, size, f0, f0, why)
    rows, cols, pre = 1, 1, whole
    while shrink(pre, size) > max_shrink:
        th, tw = size[0] / (rows - (rows - 1) * overlap), size[1] / (cols - (cols - 1) * overlap)
        nr, nc = (rows + 1, cols) if th > tw else (rows, cols + 1)
        if nr * nc > MAX_TILES:
            break
        rows, cols, pre = nr, nc, tiled(base, size, nr, nc, overlap)
    f = shrink(pre, size)
    capped = f" ({MAX_TILES} tiles at most)" if f > max_shrink else ""
    why = (
        f"tiled: {said} would be shrunk {f0:.1f}x to the {_wh(whole)} input (over {max_shrink:g}x), so "
        f"{_grid(pre)}, each shrunk {f:.1f}x{capped}"
    )
    return TilePlan(pre, size, f, f0, why)


def _wh(pre: Preprocess) -> str:
    return f"{pre.width}x{pre.height}"


def _grid(pre: Preprocess) -> str:
    r, c = pre.tiles
    return f"{r}x{c} tiles (rows x cols) of {_wh(pre)} overlapping {pre.tile_overlap:.0%}"
