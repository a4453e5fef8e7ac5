"""Cross-fit scores of the fit images: more good scores for calibration when the hold-out is small.

Why: with n held-out good images no threshold promises less than 1/(n+1) without assumptions (7 images: 12.5%),
and on the paper sets the few held-out sheets (the last by name) scored lower than later good sheets. The fit
images are good images too, but the model has seen them: scored in-sample they read low (0.59-0.72 against
0.72-0.88 for the hold-out on PA_BRG03) and would pull the threshold down.

So, where the hold-out cannot promise 1% by rank (`WHEN_HOLDOUT_BELOW`) and a refit costs seconds
(`MAX_FIT_IMAGES`), the chosen settings are fitted again `folds` times, each time without one fold of the fit
images, and each model scores the fold it did not see: every fit image gets a score from a model that never saw
it (K-fold cross-fitting, as in the CV+ conformal method).

The folds follow the hold-out policy. With `last` (the default) each fold is a contiguous run of the fit images in
name order, because neighbouring images of a series are near-duplicates (the same part in consecutive frames, the
same sheet): leaving one image out while its neighbours stayed in scored magnetic tile's fit images low and broke
its promise (8 of 286 good test images flagged against 0.9%; docs/quality.md). With `random`: seeded random folds.

Each refit sets its scales on the same hold-out as the final model, so the scores share its units; fitted on
(K-1)/K of the images, a refit scores new parts slightly higher than the final model would, which errs toward
fewer false alarms. The threshold rule (`scoring.metrics.fpr_threshold`) then counts the hold-out and these
scores together; what it promises assumes they are exchangeable with a new good part's score under the final
model, which the test/good sets measure (docs/quality.md).
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable
from pathlib import Path

log = logging.getLogger(__name__)

WHEN_HOLDOUT_BELOW = 99  # held-out images a 1% target needs to be promised by rank alone (k = 1 of n + 1 = 100)
MAX_FIT_IMAGES = 200  # above this the refits cost minutes; such a set has >= 50 held-out images anyway


def wanted(folds: int, n_fit: int, n_holdout: int) -> bool:
    """Whether `fit` cross-fits: asked for, a hold-out too small to promise 1% by rank, few enough fit images."""
    return folds >= 2 and n_holdout < WHEN_HOLDOUT_BELOW and n_fit <= MAX_FIT_IMAGES and n_fit >= 2 * folds


def fold_of(paths: list[Path], folds: int, contiguous: bool = True, seed: int = 0) -> list[list[Path]]:
    """The fit images in `folds` folds: contiguous runs in the given order (sizes differ by at most one), or seeded
    random ones."""
    order = list(paths)
    if not contiguous:
        random.Random(seed).shuffle(order)
    edges = [round(i * len(order) / folds) for i in range(folds + 1)]
    return [order[a:b] for a, b in zip(edges, edges[1:])]


def left_out_scores(
    fit_paths: list[Path],
    folds: int,
    refit: Callable[[list[Path]], object],
    score: Callable[[object, list[Path]], list],
    contiguous: bool = True,
    seed: int = 0,
) -> list[tuple[str, float]]:
    """(path, score) of every fit image, scored by `refit(the other folds)` with `score(model, fold)`; the order of
    `fit_paths` kept, images the scorer skipped (unreadable) left out."""
    by_path: dict[str, float] = {}
    for i, fold in enumerate(fold_of(fit_paths, folds, contiguous, seed), 1):
        held = set(fold)
        model = refit([p for p in fit_paths if p not in held])
        by_path.update(score(model, fold))
        log.info("cross-fit: fold %d of %d scored (%d images)", i, folds, len(fold))
    return [(str(p), by_path[str(p)]) for p in fit_paths if str(p) in by_path]
