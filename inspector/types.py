"""Small result types shared by the runtime, the watcher and the dashboard (numpy only)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class FrameResult:
    """One scored frame. Scores are normalized so that 1.0 is the calibrated threshold."""

    score: float  # image score / threshold ("1.7x the threshold")
    raw_score: float  # image score in model units
    is_anomaly: bool  # verdict: score >= 1.0 (or a per-source override threshold)
    anomaly_map: np.ndarray  # (H, W) float32 at the frame's size, normalized like `score`
    overlay: np.ndarray | None = None  # (H, W, 3) uint8 BGR heat map over the frame, on request
    embedding: np.ndarray | None = None  # (D,) float32 unit vector in the model's latent space; None: older graph
