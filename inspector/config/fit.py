"""Settings shared by the CLI, the flows and the watcher: pydantic, unknown keys rejected, bounded."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator


class Settings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class FitSettings(Settings):
    """How `inspector fit` learns what good parts look like."""

    max_pixels: int = Field(81920, ge=1024, le=2**26, description="Cap on network input pixels (default 320x256): long "
                            "images get a smaller short side (a 1130x460 part -> 160x384); unused when short_side is set.")
    short_side: int | None = Field(None, ge=32, le=2048, description="Short image side fed to the network (px); default 256, capped by max_pixels.")
    max_long_side: int = Field(4096, ge=32, le=16384, description="Cap on the long side; aspect is kept.")
    keep_aspect: bool = Field(True, description="Keep aspect ratio (False squashes into a square).")
    exposure: str = Field("standardize", pattern="^(none|standardize)$", description="standardize: each image's intensity "
                          "mean and spread are set alike before the network (camera gain / lighting drift).")
    backbone: str = Field("efficientnet_lite0", description="timm backbone name.")
    weights: Path | None = Field(None, description="Local backbone weights file (default: bundled Lite0).")
    layers: tuple[int, ...] = Field((2, 3), description="timm feature indices used as patch features.")
    pool: int = Field(1, ge=1, le=9, description="Local average pooling of patch features (odd, 1 = none).")
    latent: int = Field(64, ge=2, le=512, description="Autoencoder latent size per patch (the Gaussian reads a "
                        "latent x latent matrix per block of positions each frame).")
    hidden: int = Field(128, ge=4, le=4096, description="Autoencoder hidden width.")
    bank_size: int = Field(4096, ge=16, le=65536, description="Latent memory bank size (kNN reference).")
    global_bank: int = Field(0, ge=0, le=100000, description="Image-level embeddings kept (0 = off).")
    pos_weight: float = Field(0.0, ge=0, le=100, description="Position awareness of the kNN (0 = none).")
    w_latent: float = Field(0.0, ge=0, description="Weight of the latent kNN distance (memory bank) in the map.")
    w_recon: float = Field(0.0, ge=0, description="Weight of the reconstruction error in the map.")
    w_gauss: float = Field(1.0, ge=0, description="Weight of the per-position latent Mahalanobis distance.")
    gauss_cell: int = Field(2, ge=1, le=64, description="Patch positions per side sharing one latent covariance "
                            "(means stay per position): cell^2 times less reference data read per frame.")
    w_global: float = Field(0.0, ge=0, description="Weight of the image-level latent distance.")
    smooth: int = Field(1, ge=1, le=31, description="Gaussian kernel (patch grid cells) for the map; 1 = none.")
    steps: int = Field(1500, ge=1, le=1_000_000, description="Autoencoder training steps.")
    batch_size: int = Field(2048, ge=16, le=65536, description="Patches per training step.")
    lr: float = Field(2e-3, gt=0, le=1, description="Adam learning rate.")
    holdout_fraction: float = Field(0.2, gt=0, lt=1, description="Good images held out for calibration.")
    holdout: str = Field("last", pattern="^(random|last)$", description="Which good images are held out: random "
                         "(seeded) or last (the last by file name: with timestamped names, the newest parts, so the "
                         "threshold is set on images taken after those fitted).")
    max_bad_fraction: float = Field(0.1, ge=0, le=1, description="Abort when more images than this are unreadable.")
    seed: int = Field(0, description="Random seed (split, sampling, init).")
    device: str = Field("auto", pattern="^(auto|cpu|cuda)$", description="Where to fit: cuda (an NVIDIA GPU), cpu, or "
                        "auto (cuda when torch sees a GPU, else cpu). The fitted model is the same file either way.")

    @model_validator(mode="after")
    def _some_patch_term(self) -> "FitSettings":
        if not (self.w_latent > 0 or self.w_recon > 0 or self.w_gauss > 0):
            raise ValueError("at least one of w_latent, w_recon, w_gauss must be > 0: the anomaly map is their sum")
        return self


class CalibrateSettings(Settings):
    fpr: float = Field(0.01, gt=0, lt=0.5, description="Target false-alarm rate on good parts.")
    strategy: str = Field("fpr", pattern="^(fpr|f1)$", description="fpr (good images only) or f1 (labelled defects).")
    min_holdout: int = Field(20, ge=1, description="Fewest held-out good images accepted.")


def fit_overrides(pairs: list[str]) -> dict[str, str]:
    """KEY=VALUE strings from a command line -> FitSettings overrides, checked; a bad one is a one-line ValueError."""
    bad = [kv for kv in pairs if "=" not in kv]
    if bad:
        raise ValueError(f"expected KEY=VALUE (e.g. latent=96), got {bad[0]!r}")
    out = dict(kv.split("=", 1) for kv in pairs)
    try:
        FitSettings(**out)
    except ValidationError as e:
        err = e.errors()[0]
        raise ValueError(f"{'.'.join(map(str, err['loc'])) or 'settings'}: {err['msg']}") from None
    return out
