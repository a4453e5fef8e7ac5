"""Per-product setting selection inside `fit`: try a small fixed list of candidates, keep the best on this
product's own held-out good images.

Why: defaults tuned on two data sets lost to PaDiM on unseen ones (issue 16); which score terms help depends
on the product (a latent kNN helped thin cracks on long parts, a whole-image latent distance a cast part).
So `fit` trains once with every searched score term switched on, and then judges each candidate weighting
on the hold-out against synthetic defects made on those same images (`inspector.data.defects`), plus
labelled defects when the user has some (DATA/test/<defect>). The candidates share one backbone pass, one
autoencoder and one set of reference statistics: judging them costs one forward pass per damaged image.

The rule, fixed before any benchmark: the highest AUROC wins; a costlier candidate must beat every cheaper
one by more than `TIE` (noise on a few dozen images), else the cheaper one is kept. A setting given by hand
(`--set w_latent=...`) is not searched.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from inspector.config.fit import FitSettings
from inspector.config.network import NetworkSettings
from inspector.data.datasets import LoadReport, iter_images
from inspector.data.defects import KINDS, make_defect
from inspector.data.preprocess import Preprocess, prepare
from inspector.data.tiles import cut
from inspector.model.net import InspectorNet

TIE = 0.005  # AUROC a costlier candidate must gain over a cheaper one
MIN_DEFECTS = 60  # synthetic defects at least (several per image on a small hold-out)
MAX_DEFECTS = 240  # and at most (fit time)
KNN = ("w_latent",)
GLOBAL = ("w_global", "global_bank")  # one dimension: the image-level latent distance needs its bank


@dataclass(frozen=True)
class Candidate:
    """One setting tried: FitSettings overrides, in order of cost (earlier = cheaper per frame)."""

    name: str
    overrides: dict = field(default_factory=dict)


@dataclass
class Selection:
    chosen: Candidate
    tried: list[dict]  # per candidate: name, overrides, synthetic_auroc, labelled_auroc, criterion
    reason: str
    synthetic_defects: int
    labelled_defects: int

    def to_dict(self) -> dict:
        return {
            "chosen": self.chosen.name,
            "settings": self.chosen.overrides,
            "reason": self.reason,
            "synthetic_defects": self.synthetic_defects,
            "labelled_defects": self.labelled_defects,
            "tried": self.tried,
            "rule": f"highest AUROC; a costlier candidate must gain more than {TIE}",
        }


def plan(s: FitSettings, n_fit: int) -> tuple[FitSettings, list[Candidate]]:
    """(settings to fit with: every searched term on, candidates to judge). One candidate when nothing is searched:
    selection off, or every searched setting given by hand."""
    fixed = s.network.model_fields_set  # flat keys (`--set w_latent=0`) land in the network's settings too
    knn = s.select and not fixed & set(KNN)
    glob = s.select and not fixed & set(GLOBAL)
    on_knn, on_glob = {"w_latent": 1.0}, {"w_global": 1.0, "global_bank": max(n_fit, 1)}
    off_knn, off_glob = {"w_latent": 0.0}, {"w_global": 0.0, "global_bank": 0}
    cands = [Candidate("patch Gaussian (map maximum)", (off_knn if knn else {}) | (off_glob if glob else {}))]
    if glob:
        cands.append(Candidate("+ whole-image latent distance", (off_knn if knn else {}) | on_glob))
    if knn:
        cands.append(Candidate("+ latent kNN", on_knn | (off_glob if glob else {})))
    if knn and glob:
        cands.append(Candidate("+ latent kNN + whole-image latent distance", on_knn | on_glob))
    on = (on_knn if knn else {}) | (on_glob if glob else {})
    search = s.model_copy(update={"network": s.network.model_copy(update=on)})
    return search, cands


def auroc(good: Sequence[float], bad: Sequence[float]) -> float:
    """P(a defect scores above a good image), ties counted half (Mann-Whitney)."""
    g, b = np.asarray(good, np.float64), np.asarray(bad, np.float64)
    if not len(g) or not len(b):
        return float("nan")
    return float(((b[:, None] > g[None]).sum() + 0.5 * (b[:, None] == g[None]).sum()) / (len(g) * len(b)))


def with_weights(net: InspectorNet, overrides: dict) -> Callable[[tuple], float]:
    """A scorer of component tuples under a candidate's term weights (the net's scales stay as fitted)."""
    keys = {k: v for k, v in overrides.items() if k in ("w_latent", "w_global")}

    def score(comps: tuple) -> float:
        cfg = net.cfg
        net.cfg = cfg.model_copy(update=keys)
        try:
            with torch.inference_mode():
                return float(net.combine(*comps, comps[0].shape[-2:]).score.max())  # tiled: the highest tile
        finally:
            net.cfg = cfg

    return score


def components(net: InspectorNet, pre: Preprocess, img: np.ndarray) -> tuple:
    """Score components of one image, batched over its tiles (one for an untiled model)."""
    with torch.inference_mode():
        return net.components(torch.from_numpy(cut(prepare(img, pre), pre)))


def damaged(net: InspectorNet, pre: Preprocess, holdout: list[Path], seed: int) -> list[tuple]:
    """Score components of synthetic defects made on the held-out good images (kinds in turn)."""
    rng = np.random.default_rng(seed)
    per_image = max(1, math.ceil(MIN_DEFECTS / max(len(holdout), 1)))
    out: list[tuple] = []
    for i, (_, img) in enumerate(iter_images(holdout, LoadReport(), 1.0)):
        for j in range(per_image):
            if len(out) >= MAX_DEFECTS:
                return out
            out.append(components(net, pre, make_defect(img, KINDS[(i * per_image + j) % len(KINDS)], rng)[0]))
    return out


def choose(
    net: InspectorNet,
    pre: Preprocess,
    cands: list[Candidate],
    good: list[tuple],
    holdout: list[Path],
    labelled: list[Path],
    seed: int,
) -> Selection:
    """Judge every candidate on the held-out good images' components `good` against synthetic defects on them
    (and labelled defect images, when given); the cheapest within TIE of the best wins."""
    synth = damaged(net, pre, holdout, seed)
    real = [components(net, pre, img) for _, img in iter_images(labelled, LoadReport(), 1.0)]
    tried = []
    for c in cands:
        score = with_weights(net, c.overrides)
        g = [score(x) for x in good]
        row = {"name": c.name, "settings": c.overrides, "synthetic_auroc": auroc(g, [score(x) for x in synth])}
        row["labelled_auroc"] = auroc(g, [score(x) for x in real]) if real else None
        parts = [row["synthetic_auroc"]] + ([row["labelled_auroc"]] if real else [])
        row["criterion"] = float(np.mean(parts))
        tried.append(row)
    best = 0
    for i, row in enumerate(tried[1:], 1):  # in cost order: a costlier one must gain more than TIE
        if row["criterion"] > tried[best]["criterion"] + TIE:
            best = i
    on = "synthetic defects" + (" and labelled defects" if real else "")
    others = ", ".join(f"{r['name']} {r['criterion']:.3f}" for i, r in enumerate(tried) if i != best)
    reason = (
        f"{tried[best]['name']}: AUROC {tried[best]['criterion']:.3f} on {len(good)} held-out good images "
        f"against {len(synth)} {on}" + (f" (others: {others})" if others else "")
    )
    return Selection(cands[best], tried, reason, len(synth), len(real))


def prune(net: InspectorNet, cfg: NetworkSettings) -> InspectorNet:
    """The fitted net rebuilt for the chosen config: buffers of terms not chosen shrink to their placeholders."""
    small = InspectorNet(cfg, net.grid, weights=None)
    target = small.state_dict()
    small.load_state_dict({k: v if v.shape == target[k].shape else target[k] for k, v in net.state_dict().items()})
    return small.eval()
