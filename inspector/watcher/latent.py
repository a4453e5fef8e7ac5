"""Which frames keep their embedding, and where on the map they fall (the loop's side of the latent space).

Every flagged frame keeps its embedding (similar items, defect kinds); of the good frames one in
`store.embed_good_every` per source does (the map's recent good frames, drift). Each point is tagged with the
model version that embedded it: versions are kept apart, never re-embedded or compared with each other.
"""

from __future__ import annotations

import logging
from datetime import datetime

import numpy as np
from sqlalchemy.exc import SQLAlchemyError

from inspector.io.store import LatentPoint, Store
from inspector.scoring.latent import LatentSpace
from inspector.watcher.protocols import Scorer

log = logging.getLogger("inspector.watch")


class LatentKeeper:
    """Per model version: its projection (from the manifest), registered in the store once."""

    def __init__(self, store: Store, good_every: int) -> None:
        self.store, self.good_every = store, good_every
        self._spaces: dict[str, LatentSpace | None] = {}
        self._registered: set[str] = set()
        self._good_seen: dict[str, int] = {}

    def point(
        self, scorer: Scorer, source: str, embedding: np.ndarray | None, flagged: bool, when: datetime
    ) -> LatentPoint | None:
        """The frame's point to keep, or None (not sampled, or a version exported without an embedding)."""
        if embedding is None:
            return None
        if not flagged:
            n = self._good_seen.get(source, 0)
            self._good_seen[source] = n + 1
            if self.good_every <= 0 or n % self.good_every:
                return None
        version = scorer.version
        space = self._space(scorer, version, when)
        if space is None:
            return None
        v = np.ascontiguousarray(embedding, np.float32)
        x, y = space.project(v[None])[0]
        return LatentPoint(version, v.tobytes(), float(x), float(y))

    def _space(self, scorer: Scorer, version: str, when: datetime) -> LatentSpace | None:
        if version not in self._spaces:
            data = scorer.latent
            try:
                self._spaces[version] = LatentSpace.from_dict(data) if data else None
            except (KeyError, TypeError, ValueError) as e:
                log.warning("model %s: its manifest's latent map is unreadable (%s); no embeddings kept", version, e)
                self._spaces[version] = None
        space = self._spaces[version]
        if space is not None and version not in self._registered:
            try:
                self.store.put_latent_space(version, scorer.latent, when)
                self._registered.add(version)
            except SQLAlchemyError as e:  # tried again with the next point; the points themselves are kept
                log.debug("latent space of %s not registered yet (%s)", version, e)
        return space
