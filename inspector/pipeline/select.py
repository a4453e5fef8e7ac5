"""Per-product setting selection inside `fit`: try a small fixed list of candidates, keep the best on this
product's own held-out good images.

Why: defaults tuned on two data sets lost to PaDiM on unseen ones (issue 16); which settings help depends on
the product (a latent kNN helped thin cracks on long parts, a whole-image latent distance a cast part, PaDiM's
per-position Gaussian of the backbone features paper with few images). So `fit` fits once, with every searched
score term switched on, and judges each candidate (score terms x map reduction) on its hold-out against synthetic
defects made on those same images (`inspector.data.defects`), plus labelled defects when the user has some
(DATA/test/<defect>). The candidates share one backbone pass, one autoencoder and one set of reference statistics:
judging them costs one forward pass per damaged image. With `select_exposure` the same is done at the product's
own exposure level too (a second fit; `EXPOSURES`), judged on the same defects.

With `select_features` (on by default; docs/quality.md measures it), a variant of each fit is judged after all
of those: the per-position Gaussian read from the standardized backbone features instead of the latent, one
covariance per position (`feature_plan`; PaDiM's statistic: with few fit images a near-singular covariance that
measures how far a patch leaves the span of the good patches at its position). It reuses the fit's backbone pass,
feature statistics and autoencoder; its Gaussian is fitted from the same features, so it costs one more pass over
the hold-out and the synthetic defects.

The rule, fixed before any benchmark: the highest AUROC wins; a costlier candidate (later in the list: the fixed
exposure level's candidates first) must beat every cheaper one by more than `TIE`, else the cheaper one is kept.
A setting given by hand (`--set w_latent=...`, `--exposure ...`) is not searched.
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
TOP = 0.02  # the top-cells candidate: the image score is the mean of the map's highest 2% (fixed before measuring)
KNN = ("w_latent",)
GLOBAL = ("w_global", "global_bank")  # one dimension: the image-level latent distance needs its bank
REDUCE = ("score_top",)
# The feature Gaussian: one covariance per position of the standardized backbone features (PaDiM's statistic), alone
# in the map; a fit variant of its own (the latent fit's features and autoencoder, its own Gaussian and scales).
FEATURES = ("gauss_source", "gauss_cell", "w_gauss")
REDUCE_CANDIDATES = (("map maximum", 0.0), (f"top {TOP:.0%} mean", TOP))
ON_FEATURES = {"gauss_source": "features", "gauss_cell": 1, "w_latent": 0.0, "w_global": 0.0, "global_bank": 0}
EXPOSURES = ("standardize", "product")  # with select_exposure, in order: the fixed level first


@dataclass(frozen=True)
class Candidate:
    """One setting tried: network overrides, in order of cost (earlier = cheaper per frame)."""

    name: str
    overrides: dict = field(default_factory=dict)


@dataclass
class Fitted:
    """One fit of the network (one exposure policy): every searched term on, scales set on the hold-out."""

    settings: FitSettings
    net: InspectorNet
    pre: Preprocess
    holdout_scores: list[tuple[str, float]]
    comps: list[tuple]  # the hold-out's score components
    extra: tuple = ()  # what fit needs to write it (loss, formats, load report)
    feature_gauss: tuple | None = None  # the standardized features' Gaussian, one per position (fit.set_gaussian)


@dataclass
class Selection:
    chosen: Candidate
    fit: int  # which of the fits (exposure policies) the chosen candidate belongs to
    tried: list[dict]  # per candidate: name, exposure, overrides, synthetic_auroc, labelled_auroc, criterion
    reason: str
    synthetic_defects: int
    labelled_defects: int

    def to_dict(self) -> dict:
        return {
            "chosen": self.tried_row["name"],
            "exposure": self.tried_row["exposure"],
            "settings": self.chosen.overrides,
            "reason": self.reason,
            "synthetic_defects": self.synthetic_defects,
            "labelled_defects": self.labelled_defects,
            "tried": self.tried,
            "rule": f"highest AUROC; a costlier candidate must gain more than {TIE}",
        }

    @property
    def tried_row(self) -> dict:
        return next(r for r in self.tried if r["chosen"])


def exposures(s: FitSettings) -> list[str]:
    """The exposure policies to fit: both levels where `select_exposure` asks for them and none was given by hand."""
    if s.select and s.select_exposure and "exposure" not in s.model_fields_set:
        return list(EXPOSURES)
    return [s.exposure]


def plan(s: FitSettings, n_fit: int) -> tuple[FitSettings, list[Candidate]]:
    """(settings to fit with: every searched term on, candidates to judge on each fit). One candidate when nothing
    is searched: selection off, or every searched setting given by hand."""
    fixed = s.network.model_fields_set  # flat keys (`--set w_latent=0`) land in the network's settings too
    knn = s.select and not fixed & set(KNN)
    glob = s.select and not fixed & set(GLOBAL)
    top = s.select and not fixed & set(REDUCE)
    on_knn, on_glob = {"w_latent": 1.0}, {"w_global": 1.0, "global_bank": max(n_fit, 1)}
    off_knn, off_glob = {"w_latent": 0.0}, {"w_global": 0.0, "global_bank": 0}
    terms = [("patch Gaussian", (off_knn if knn else {}) | (off_glob if glob else {}))]
    if glob:
        terms.append(("+ whole-image latent distance", (off_knn if knn else {}) | on_glob))
    if knn:
        terms.append(("+ latent kNN", on_knn | (off_glob if glob else {})))
    if knn and glob:
        terms.append(("+ latent kNN + whole-image latent distance", on_knn | on_glob))
    reduce = [(r, {"score_top": v}) for r, v in REDUCE_CANDIDATES] if top else [("map maximum", {})]
    cands = [Candidate(f"{t} ({r})", to | ro) for t, to in terms for r, ro in reduce]
    on = (on_knn if knn else {}) | (on_glob if glob else {})
    search = s.model_copy(update={"network": s.network.model_copy(update=on)})
    return search, cands


def feature_plan(s: FitSettings) -> list[Candidate]:
    """The feature Gaussian's candidates (map maximum, and the top-cells mean where the reduction is searched), to
    judge on a variant of each exposure's fit, where `select_features` asks for them; none when selection is off
    or the Gaussian or another term was set by hand (a kNN or whole-image term given by hand is not this variant's
    map alone)."""
    fixed = s.network.model_fields_set
    if not (s.select and s.select_features) or fixed & set(FEATURES + KNN + GLOBAL) or s.network.w_gauss <= 0:
        return []
    if fixed & set(REDUCE):
        return [Candidate("feature Gaussian", dict(ON_FEATURES))]
    return [Candidate(f"feature Gaussian ({r})", ON_FEATURES | {"score_top": v}) for r, v in REDUCE_CANDIDATES]


def auroc(good: Sequence[float], bad: Sequence[float]) -> float:
    """P(a defect scores above a good image), ties counted half (Mann-Whitney)."""
    g, b = np.asarray(good, np.float64), np.asarray(bad, np.float64)
    if not len(g) or not len(b):
        return float("nan")
    return float(((b[:, None] > g[None]).sum() + 0.5 * (b[:, None] == g[None]).sum()) / (len(g) * len(b)))


def with_weights(net: InspectorNet, overrides: dict) -> Callable[[tuple], float]:
    """A scorer of component tuples under a candidate's term weights and reduction (scales stay as fitted)."""
    keys = {k: v for k, v in overrides.items() if k in ("w_latent", "w_global", "score_top")}

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


def judge(f: Fitted, cands: list[Candidate], holdout: list[Path], labelled: list[Path], seed: int) -> list[dict]:
    """Every candidate on one fit: its held-out good images against synthetic defects made on them (the same
    defects for every fit: same seed) and labelled defect images, when given."""
    synth = damaged(f.net, f.pre, holdout, seed)
    real = [components(f.net, f.pre, img) for _, img in iter_images(labelled, LoadReport(), 1.0)]
    rows = []
    for c in cands:
        score = with_weights(f.net, c.overrides)
        g = [score(x) for x in f.comps]
        row = {"name": c.name, "exposure": f.settings.exposure, "settings": c.overrides}
        row["synthetic_auroc"] = auroc(g, [score(x) for x in synth])
        row["labelled_auroc"] = auroc(g, [score(x) for x in real]) if real else None
        parts = [row["synthetic_auroc"]] + ([row["labelled_auroc"]] if real else [])
        rows.append(row | {"criterion": float(np.mean(parts)), "synthetic": len(synth), "labelled": len(real)})
    return rows


def label(name: str, exposure: str, n_fits: int) -> str:
    """A candidate's name, with its exposure policy when more than one was fitted."""
    return f"{name}, exposure {exposure}" if n_fits > 1 else name


def choose(
    fits: list[Fitted], cands: list[Candidate], holdout: list[Path], labelled: list[Path], seed: int
) -> Selection:
    """Judge every candidate on every fit (exposure policy) and `decide`."""
    return decide(fits, [cands] * len(fits), [judge(f, cands, holdout, labelled, seed) for f in fits])


def pick(rows: Sequence[dict], margin: Callable[[dict, dict], float] = lambda row, best: TIE) -> int:
    """The rule on judged rows in cost order: the index of the cheapest whose criterion no later row beats by more
    than `margin(later, current pick)` (TIE; benchmarks replay other margins)."""
    best = 0
    for i, row in enumerate(rows[1:], 1):
        if row["criterion"] > rows[best]["criterion"] + margin(row, rows[best]):
            best = i
    return best


def decide(fits: list[Fitted], cands: list[list[Candidate]], judged: list[list[dict]]) -> Selection:
    """The choice among judged candidates (`judge`'s rows, per fit, with each fit's own candidates): in cost order
    (the first fit's candidates first), the cheapest within TIE of the best wins. Rows judged once may be decided
    again with a later fit added (fit: a tiled variant after the whole-image ones)."""
    tried = [row | {"fit": i} for i, rows in enumerate(judged) for row in rows]
    for row in tried:
        row["name"] = label(row["name"], row["exposure"], len(fits))
    best = pick(tried)
    for i, row in enumerate(tried):
        row["chosen"] = i == best
    top = tried[best]
    on = "synthetic defects" + (" and labelled defects" if top["labelled"] else "")
    others = ", ".join(f"{r['name']} {r['criterion']:.3f}" for i, r in enumerate(tried) if i != best)
    reason = (
        f"{top['name']}: AUROC {top['criterion']:.3f} on {len(fits[0].comps)} held-out good images "
        f"against {top['synthetic']} {on}" + (f" (others: {others})" if others else "")
    )
    chosen = [c for cs in cands for c in cs][best]
    return Selection(chosen, top["fit"], tried, reason, top["synthetic"], top["labelled"])


def prune(net: InspectorNet, cfg: NetworkSettings) -> InspectorNet:
    """The fitted net rebuilt for the chosen config: buffers of terms not chosen shrink to their placeholders."""
    small = InspectorNet(cfg, net.grid, weights=None)
    target, have = small.state_dict(), net.state_dict()  # buffers the config adds (a low-rank basis) start fresh
    small.load_state_dict({k: have[k] if k in have and have[k].shape == v.shape else v for k, v in target.items()})
    return small.eval()
