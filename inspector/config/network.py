"""The network's settings: one model, nested in `FitSettings.network` and stored in every checkpoint and
manifest, so the network is rebuilt from exactly what it was fitted with (docs/model.md says why each
default is what it is)."""

from __future__ import annotations

from pydantic import Field, field_validator, model_validator

from inspector.config.base import Settings

DEFAULT_BACKBONE = "efficientnet_lite0"


class NetworkSettings(Settings):
    """Backbone features -> patch autoencoder -> score terms. Fields that weigh a score term at 0 keep that term
    out of the exported graph."""

    backbone: str = Field(DEFAULT_BACKBONE, description="timm backbone name.")
    layers: tuple[int, ...] = Field((2, 3), description="timm feature indices used as patch features (stride 8, 16).")
    pool: int = Field(1, ge=1, le=9, description="Local average pooling of patch features (odd, 1 = none).")
    hidden: int = Field(128, ge=4, le=4096, description="Autoencoder hidden width.")
    latent: int = Field(
        64,
        ge=2,
        le=512,
        description="Autoencoder latent size per patch (the Gaussian reads a "
        "latent x latent matrix per block of positions each frame).",
    )
    bank_size: int = Field(4096, ge=16, le=65536, description="Latent memory bank size (kNN reference).")
    global_bank: int = Field(0, ge=0, le=100000, description="Image-level embeddings kept (0 = off).")
    pos_weight: float = Field(0.0, ge=0, le=100, description="Position awareness of the kNN (0 = none).")
    w_latent: float = Field(0.0, ge=0, description="Weight of the latent kNN distance (memory bank) in the map.")
    w_recon: float = Field(0.0, ge=0, description="Weight of the reconstruction error in the map.")
    w_gauss: float = Field(1.0, ge=0, description="Weight of the per-position latent Mahalanobis distance.")
    gauss_cell: int = Field(
        2,
        ge=1,
        le=64,
        description="Patch positions per side sharing one latent covariance "
        "(means stay per position): cell^2 times less reference data read per frame.",
    )
    gauss_source: str = Field(
        "latent",
        pattern="^(latent|features)$",
        description="What the per-position Gaussian reads: the autoencoder's latent (small, cheap per frame) or the "
        "standardized backbone features themselves (one feature_dim x feature_dim matrix per block: more reference "
        "data per frame; with few fit images a near-singular covariance that measures how far a patch leaves the span "
        "of the good patches at its position, as PaDiM does). With select_features, selection tries features with one "
        "covariance per position.",
    )
    gauss_rank: int = Field(
        0,
        ge=0,
        le=65536,
        description="Set by fit, not by hand: where each covariance has fewer samples than dimensions (the feature "
        "Gaussian on few images) it is low-rank plus a ridge, and the model keeps its rank-r basis per block instead "
        "of the full precision matrix (the same distance, d x r instead of d x d floats read per position); 0 = full "
        "matrices.",
    )
    w_global: float = Field(0.0, ge=0, description="Weight of the image-level latent distance.")
    smooth: int = Field(1, ge=1, le=31, description="Gaussian kernel (patch grid cells) for the map; 1 = none.")
    score_top: float = Field(
        0.0,
        ge=0,
        lt=1,
        description="Image score = mean of this fraction of the map's highest cells (0 = the map maximum): "
        "steadier where good images have scattered single high cells (textures).",
    )

    @field_validator("layers", mode="before")
    @classmethod
    def _layers_from_text(cls, v: object) -> object:
        # `--set layers=2,3,4` on the command line arrives as the text "2,3,4"
        if isinstance(v, str):
            try:
                return tuple(int(p) for p in v.replace("(", "").replace(")", "").split(",") if p.strip())
            except ValueError:
                raise ValueError(f"layers: expected comma-separated feature indices like 2,3, got {v!r}") from None
        return v

    @field_validator("layers")
    @classmethod
    def _layers_ordered(cls, v: tuple[int, ...]) -> tuple[int, ...]:
        if not v or list(v) != sorted(set(v)) or v[0] < 0:
            raise ValueError(f"layers: expected distinct feature indices in increasing order (finest first), got {v}")
        return v

    @model_validator(mode="after")
    def _some_patch_term(self) -> NetworkSettings:
        if not (self.w_latent > 0 or self.w_recon > 0 or self.w_gauss > 0):
            raise ValueError("at least one of w_latent, w_recon, w_gauss must be > 0: the anomaly map is their sum")
        if self.smooth % 2 == 0:
            raise ValueError("smooth must be odd (a kernel centred on its cell)")
        return self
