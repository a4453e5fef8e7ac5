"""How `inspector fit` and `inspector calibrate` run: the settings the CLI, the flows and the benchmarks share."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import Field, ValidationError, field_validator, model_validator

from inspector.config.base import Settings, error_line, fields_of
from inspector.config.network import NetworkSettings

MAX_TILES = 32  # tiles per frame at most: each is one network run's worth of compute per frame


def tile_grid(value: str) -> tuple[int, int] | None:
    """`FitSettings.tiles` -> (rows, cols): None for auto, (1, 1) for off; else a one-line ValueError."""
    if value in ("auto", "off"):
        return None if value == "auto" else (1, 1)
    try:
        rows, cols = (int(v) for v in value.lower().split("x"))
    except ValueError:
        raise ValueError(f"tiles must be auto, off or ROWSxCOLS (e.g. 1x8), got {value!r}") from None
    if rows < 1 or cols < 1 or rows * cols > MAX_TILES:
        raise ValueError(f"tiles={value}: rows and cols at least 1, at most {MAX_TILES} tiles in all")
    return rows, cols


class FitSettings(Settings):
    """How `inspector fit` learns what good parts look like."""

    max_pixels: int = Field(
        81920,
        ge=1024,
        le=2**26,
        description="Cap on network input pixels (default 320x256): long "
        "images get a smaller short side (a 1130x460 part -> 160x384); unused when short_side is set.",
    )
    short_side: int | None = Field(
        None, ge=32, le=2048, description="Short image side fed to the network (px); default 256, capped by max_pixels."
    )
    max_long_side: int = Field(4096, ge=32, le=16384, description="Cap on the long side; aspect is kept.")
    keep_aspect: bool = Field(True, description="Keep aspect ratio (False squashes into a square).")
    exposure: str = Field(
        "standardize",
        pattern="^(none|standardize|product)$",
        description="standardize: each image's intensity "
        "mean and spread are set alike before the network (camera gain / lighting drift), to a fixed level; "
        "product: alike too, at the fit images' own typical level (low-contrast products keep their contrast); "
        "none: as captured. With select_exposure, selection tries standardize and product unless one is given.",
    )
    tiles: str = Field(
        "off",
        description="Cut each image into overlapping tiles, each one network input (docs/model.md): off, auto (tiles "
        "when the whole image would be shrunk more than tile_shrink), or ROWSxCOLS (e.g. 1x8). The image "
        f"score is the maximum over its tiles; at most {MAX_TILES} tiles. Unless given, selection tries auto's "
        "tiles beside whole images where auto would tile (whole images otherwise, and with select off).",
    )
    tile_shrink: float = Field(
        2.0,
        ge=1.0,
        le=16.0,
        description="tiles=auto cuts images the network would see shrunk more than this (image pixels per input "
        "pixel, in the axis shrunk most) into tiles shrunk at most this much.",
    )
    tile_overlap: float = Field(
        0.125, ge=0.0, le=0.5, description="Overlap of neighbouring tiles, as a fraction of a tile."
    )
    weights: Path | None = Field(
        None,
        description="Local backbone weights file (default: the packaged weights of Lite0, or of Lite1/Lite2 "
        "where their packages are installed).",
    )
    network: NetworkSettings = Field(
        default_factory=NetworkSettings,
        description="The network (its keys may be given flat too: `latent=128` is `network.latent=128`).",
    )
    select: bool = Field(
        True,
        description="Try the candidate settings (score terms latent kNN and whole-image latent distance, the feature "
        "Gaussian, map maximum or top-cells mean) on held-out good images against synthetic defects and keep the "
        "best (inspector.pipeline.select); a setting given by hand is not searched.",
    )
    select_features: bool = Field(
        True,
        description="Search the feature Gaussian too (gauss_source=features, one covariance per position: PaDiM's "
        "statistic; judged after every latent candidate, so it must gain more than the tie margin). Where it is "
        "chosen a frame costs ~1.7x and the ONNX file is larger (docs/quality.md).",
    )
    select_exposure: bool = Field(
        False,
        description="Fit at the product's own exposure level too (exposure=product: a second whole fit) and keep "
        "whichever level judges better. Off by default: with the feature Gaussian searched it gained nothing on six "
        "sets, leave-one-set-out, and it doubles the fit (docs/quality.md).",
    )
    select_labelled: bool = Field(
        True,
        description="Judge the candidates on DATA/test/<defect> images too, when there are "
        "some (benchmarks turn it off: their test labels must not choose the setting).",
    )
    steps: int = Field(1500, ge=1, le=1_000_000, description="Autoencoder training steps.")
    batch_size: int = Field(2048, ge=16, le=65536, description="Patches per training step.")
    lr: float = Field(2e-3, gt=0, le=1, description="Adam learning rate.")
    holdout_fraction: float = Field(0.2, gt=0, lt=1, description="Good images held out for calibration.")
    crossfit_folds: int = Field(
        5,
        ge=0,
        le=20,
        description="Where the hold-out is too small to promise 1% by rank (fewer than 99 images) and there are at "
        "most 200 fit images, fit the chosen settings again this many times, each without one fold of the fit "
        "images, and calibrate on every fit image's score from the model that did not see it too "
        "(inspector.pipeline.crossfit). 0 or 1: off.",
    )
    holdout: str = Field(
        "last",
        pattern="^(random|last)$",
        description="Which good images are held out: random "
        "(seeded) or last (the last by file name: with timestamped names, the newest parts, so the "
        "threshold is set on images taken after those fitted).",
    )
    max_bad_fraction: float = Field(0.1, ge=0, le=1, description="Abort when more images than this are unreadable.")
    seed: int = Field(0, description="Random seed (split, sampling, init).")
    device: str = Field(
        "auto",
        pattern="^(auto|cpu|cuda)$",
        description="Where to fit: cuda (an NVIDIA GPU), cpu, or "
        "auto (cuda when torch sees a GPU, else cpu). The fitted model is the same file either way.",
    )

    @field_validator("tiles")
    @classmethod
    def _tile_grid(cls, v: str) -> str:
        tile_grid(v)
        return v

    @model_validator(mode="before")
    @classmethod
    def _network_keys_flat(cls, data: Any) -> Any:
        """Network keys given at the top level (as `inspector fit --set latent=128` gives them) go to `network`."""
        if not isinstance(data, dict):
            return data
        flat = {k: data[k] for k in data if k in NetworkSettings.model_fields}
        if not flat:
            return data
        nested = data.get("network") or {}
        nested = nested.model_dump() if isinstance(nested, NetworkSettings) else dict(nested)
        rest = {k: v for k, v in data.items() if k not in flat}
        return {**rest, "network": {**nested, **flat}}


class CalibrateSettings(Settings):
    fpr: float = Field(0.01, gt=0, lt=0.5, description="Target false-alarm rate on good parts.")
    strategy: str = Field("fpr", pattern="^(fpr|f1)$", description="fpr (good images only) or f1 (labelled defects).")
    min_holdout: int = Field(
        5,
        ge=1,
        description="Fewest held-out good images accepted: with n, a threshold can "
        "promise at most 1/(n+1) without assumptions (5 images: 16.7%); calibrate says so.",
    )


def fit_overrides(pairs: list[str]) -> dict[str, str]:
    """KEY=VALUE strings from a command line -> FitSettings overrides, checked; a bad one is a one-line ValueError."""
    bad = [kv for kv in pairs if "=" not in kv]
    if bad:
        raise ValueError(f"expected KEY=VALUE (e.g. latent=96), got {bad[0]!r}")
    # `network.latent=128` and `latent=128` name the same setting
    out = {k.removeprefix("network."): v for k, v in (kv.split("=", 1) for kv in pairs)}
    if "gauss_rank" in out:
        raise ValueError("gauss_rank is set by fit from the number of fit images, not by hand")
    try:
        FitSettings(**out)
    except ValidationError as e:
        raise ValueError(error_line(e, known=fields_of(FitSettings))) from None
    return out
