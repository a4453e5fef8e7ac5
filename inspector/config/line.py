"""The watcher's line config (`inspector watch --config line1.yaml`): pydantic, unknown keys rejected.

One file names the model, the sources, the decision rules, the sinks and the store. Relative paths are
resolved against the config file's folder, so a line folder can be moved as a whole. A mistake stops the
watcher at start with one line naming the file and the field.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator

from inspector.config.base import Settings, error_line, read_yaml, validate
from inspector.errors import InspectorError

NAME = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"  # safe in MQTT topics, file names and URLs


class GpuConfig(Settings):
    """Options of the CUDA and TensorRT providers (used only when one of them runs)."""

    device_id: int = Field(0, ge=0, le=63, description="Which GPU (CUDA device index).")
    mem_limit_mb: int = Field(0, ge=0, le=2**20, description="Cap on ONNX Runtime's CUDA memory arena, MiB (0: none).")
    cudnn_conv_algo_search: str = Field(
        "EXHAUSTIVE",
        pattern="^(EXHAUSTIVE|HEURISTIC|DEFAULT)$",
        description="How cuDNN picks convolution kernels (EXHAUSTIVE: the best, once per input size).",
    )
    trt_cache_dir: Path | None = Field(
        None,
        description="TensorRT engine and timing cache folder (default "
        "$INSPECTOR_TRT_CACHE or ~/.cache/inspector/trt): engines take minutes to "
        "build.",
    )
    trt_fp16: bool = Field(
        False,
        description="Let TensorRT run in half precision where its scores match the CPU's "
        "within 1% on this model (checked at each load; fp32 otherwise, with one warning).",
    )
    trt_workspace_mb: int = Field(
        0, ge=0, le=2**20, description="TensorRT builder workspace, MiB (0: ONNX Runtime's default)."
    )
    trt_builder_level: int = Field(
        3, ge=0, le=5, description="TensorRT builder optimization level (higher: faster engines, longer builds)."
    )


class LineModel(Settings):
    """Which model scores the frames."""

    path: Path = Field(..., description="Model folder (models/<name>, uses its `current` version) or a version folder.")
    providers: list[str] | None = Field(
        None, description="ONNX Runtime providers in order of preference (default: best available)."
    )
    threads: int = Field(
        0,
        ge=0,
        le=256,
        description="ONNX Runtime CPU threads per frame (0: one per core; 1 leaves cores to the rest of a busy box).",
    )
    gpu: GpuConfig = Field(default_factory=GpuConfig, description="CUDA and TensorRT provider options.")
    reload_check_s: float = Field(
        5.0,
        ge=0.1,
        le=3600,
        description="How often to check whether `current` moved to a new version (hot reload).",
    )
    scorer: str | None = Field(
        None,
        pattern=r"^[\w.]+:[\w.]+$",
        description="For tests and custom scorers only: 'module:factory' called with `path`, returning an object "
        "with the Scorer interface.",
    )


class Rules(Settings):
    """When a scored frame becomes a flagged item and when a flagged item becomes an alert."""

    threshold: float | None = Field(
        None,
        gt=0,
        description="Absolute threshold in raw model units (default: the manifest's calibrated one).",
    )
    threshold_scale: float = Field(
        1.0,
        gt=0,
        le=100,
        description="Multiplies the manifest threshold: 1.2 = 20% less sensitive. Ignored when `threshold` is set.",
    )
    debounce_n: int = Field(1, ge=1, le=1000, description="A defect is raised when at least N ...")
    debounce_m: int = Field(
        1, ge=1, le=1000, description="... of the last M scored frames are anomalous (cameras: e.g. 3 of 5)."
    )
    cooldown_s: float = Field(
        0.0,
        ge=0,
        le=86400,
        description="After an alert, further defects of this source within this many seconds raise no new alert.",
    )
    flag_in_cooldown: bool = Field(
        True,
        description="Still store anomalous frames as flagged items during the cooldown (parts in a folder: yes; "
        "a camera staring at one defect: no).",
    )

    @model_validator(mode="after")
    def _n_le_m(self) -> Rules:
        if self.debounce_n > self.debounce_m:
            raise ValueError(f"debounce_n ({self.debounce_n}) must not exceed debounce_m ({self.debounce_m})")
        return self


class RuleOverrides(Settings):
    """Per-source changes to the line's `rules`; unset fields keep the line value."""

    threshold: float | None = Field(None, gt=0, description="See rules.threshold.")
    threshold_scale: float | None = Field(None, gt=0, le=100, description="See rules.threshold_scale.")
    debounce_n: int | None = Field(None, ge=1, le=1000, description="See rules.debounce_n.")
    debounce_m: int | None = Field(None, ge=1, le=1000, description="See rules.debounce_m.")
    cooldown_s: float | None = Field(None, ge=0, le=86400, description="See rules.cooldown_s.")
    flag_in_cooldown: bool | None = Field(None, description="See rules.flag_in_cooldown.")


class FolderSourceConfig(Settings):
    """A hot folder another program (a line-scan camera, a PLC) writes image files into."""

    kind: Literal["folder"] = Field(..., description="Source type.")
    name: str = Field(..., pattern=NAME, description="Source name used in the store, metrics and alert topics.")
    path: Path = Field(..., description="Folder to watch.")
    recursive: bool = Field(
        False, description="Also watch sub-folders (processed/ and quarantine/ are always skipped)."
    )
    after: Literal["move", "keep"] = Field(
        "move",
        description="move: move scored files to processed/; keep: leave them (the store's ledger remembers them).",
    )
    processed_dir: Path | None = Field(None, description="Where scored files go (default: <path>/processed).")
    quarantine_dir: Path | None = Field(
        None,
        description="Where unreadable files go, each with a .reason.txt (default: <path>/quarantine).",
    )
    stable_s: float = Field(
        1.0,
        ge=0,
        le=3600,
        description="A file counts as completely written when unchanged this long (files renamed into the folder "
        "or closed after writing count at once).",
    )
    incomplete_wait_s: float = Field(
        30.0,
        ge=0,
        le=86400,
        description="A file that is unreadable (e.g. truncated) but was never closed after writing is offered again "
        "when it changes or is closed, and quarantined only when still unreadable after being unchanged this long.",
    )
    rescan_s: float = Field(
        5.0,
        ge=0.1,
        le=3600,
        description="Periodic full rescan, in case a filesystem event was missed (network shares).",
    )
    max_pixels: int = Field(
        100_000_000,
        ge=1,
        le=1 << 31,
        description="Images with more pixels are quarantined without being decoded.",
    )
    max_file_mb: float = Field(512, gt=0, le=65536, description="Larger files are quarantined without being read.")
    rules: RuleOverrides = Field(default_factory=RuleOverrides, description="Per-source rule overrides.")


class CameraSourceConfig(Settings):
    """A live camera or a video file read with OpenCV."""

    kind: Literal["camera"] = Field(..., description="Source type.")
    name: str = Field(..., pattern=NAME, description="Source name used in the store, metrics and alert topics.")
    uri: int | str = Field(..., description="USB camera index (0), RTSP/HTTP URL or a video file path.")
    every_nth: int = Field(1, ge=1, le=100000, description="Score only every Nth frame.")
    max_fps: float | None = Field(None, gt=0, le=1000, description="Score at most this many frames per second.")
    realtime: bool = Field(
        True,
        description="Video files: read at the file's frame rate like a camera (False: as fast as scoring allows, "
        "no drops).",
    )
    loop: bool = Field(False, description="Video files: start again at the end instead of finishing.")
    open_timeout_s: float = Field(
        5.0, gt=0, le=300, description="Give up opening or reading the stream after this long and retry."
    )
    reconnect_min_s: float = Field(
        0.5,
        gt=0,
        le=3600,
        description="First wait before reconnecting a dropped stream; doubles each failure ...",
    )
    reconnect_max_s: float = Field(30.0, gt=0, le=3600, description="... up to this.")
    image_format: Literal["jpg", "png"] = Field(
        "jpg", description="How flagged frames are saved in the store's media folder."
    )
    rules: RuleOverrides = Field(
        default_factory=lambda: RuleOverrides(debounce_n=3, debounce_m=5, cooldown_s=60.0, flag_in_cooldown=False),
        description="Per-source rule overrides (cameras default to 3 of 5 frames, 60 s cooldown).",
    )


SourceConfig = Annotated[FolderSourceConfig | CameraSourceConfig, Field(discriminator="kind")]


class MqttSinkConfig(Settings):
    """Publish alerts to an MQTT broker with QoS 1 (delivered when the broker acknowledges)."""

    kind: Literal["mqtt"] = Field(..., description="Sink type.")
    name: str = Field(..., pattern=NAME, description="Sink name (outbox rows are kept per sink).")
    host: str = Field("127.0.0.1", description="Broker host.")
    port: int = Field(1883, ge=1, le=65535, description="Broker port.")
    topic: str = Field(
        "inspector/{line}/{source}/alert", description="Topic template; {line} and {source} are filled in."
    )
    client_id: str | None = Field(None, description="MQTT client id (default: inspector-<line>-<sink>).")
    username: str | None = Field(None, description="Broker user name.")
    password_env: str | None = Field(None, description="Environment variable holding the broker password.")
    tls: bool = Field(False, description="Connect with TLS (system CA certificates).")
    ack_timeout_s: float = Field(
        5.0, gt=0, le=300, description="Wait this long for the broker's PUBACK before retrying."
    )

    @field_validator("topic")
    @classmethod
    def _topic(cls, v: str) -> str:
        bad = set(re.findall(r"{(\w*)}", v)) - {"line", "source"}
        if bad or "#" in v or "+" in v:
            raise ValueError("topic may use only {line} and {source} placeholders and no MQTT wildcards")
        return v


class WebhookSinkConfig(Settings):
    """HTTP POST of the JSON alert, signed with HMAC-SHA256; any 2xx answer acknowledges it."""

    kind: Literal["webhook"] = Field(..., description="Sink type.")
    name: str = Field(..., pattern=NAME, description="Sink name.")
    url: str = Field(..., pattern=r"^https?://", description="Endpoint URL; ${VAR} is replaced from the environment.")
    secret_env: str | None = Field(
        None,
        description="Environment variable with the HMAC secret (header X-Inspector-Signature: sha256=<hex>).",
    )
    timeout_s: float = Field(5.0, gt=0, le=300, description="Request timeout.")


class AppriseSinkConfig(Settings):
    """One Apprise URL (Slack, Teams, e-mail, ntfy, ...): one destination per sink so retries stay per destination."""

    kind: Literal["apprise"] = Field(..., description="Sink type.")
    name: str = Field(..., pattern=NAME, description="Sink name.")
    url: str = Field(
        ..., description="Apprise URL, e.g. ntfy://topic or mailto://...; ${VAR} is replaced from the environment."
    )
    title: str = Field("Defect on {line}/{source}", description="Message title template ({line}, {source}, {score}).")


SinkConfig = Annotated[MqttSinkConfig | WebhookSinkConfig | AppriseSinkConfig, Field(discriminator="kind")]


class StoreConfig(Settings):
    """Where flagged items, counters, the ledger and the outbox live."""

    url: str = Field(
        "sqlite:///store/store.db",
        description="SQLAlchemy URL: sqlite:///relative/or/absolute.db or postgresql://user@host/db.",
    )
    media_dir: Path | None = Field(
        None,
        description="Images and heat maps of flagged items (default: media/ next to the SQLite file; required for "
        "PostgreSQL).",
    )
    save_map: bool = Field(False, description="Also save the raw anomaly map (.npy) of each flagged item.")
    embed_good_every: int = Field(
        20,
        ge=0,
        le=1_000_000,
        description="Keep the latent embedding of one good frame in this many per source (the latent map's recent "
        "good frames, latent drift); 0 = none. Every flagged item keeps its embedding.",
    )
    keep_scores_days: float = Field(
        30,
        gt=0,
        le=3650,
        description="Recent-score samples (histograms, drift) older than this are pruned.",
    )
    max_score_rows: int = Field(1_000_000, ge=1000, description="At most this many recent-score samples are kept.")
    spool_dir: Path | None = Field(
        None,
        description="Camera frames scored while the store is unreachable are kept here, one small file each, and "
        "committed from it in order once the store answers, also after a crash or restart (default: "
        "spool/<line>/ beside the media folder). Give each line its own.",
    )
    spool_max_frames: int = Field(
        100_000,
        ge=100,
        le=10_000_000,
        description="At most this many frames in the spool (a file is 0.4-2 KB, one 4 KB block on ext4: 100000 "
        "take ~400 MB); when it is full, newer frames are not kept and one error says so.",
    )
    min_free_mb: int = Field(
        1024,
        ge=0,
        description="Below this much free space on the media folder's disk, /health says not ok and one error is "
        "logged, before flagged images can no longer be saved. 0 = off.",
    )


class OutboxConfig(Settings):
    """How the sender retries alerts that a sink did not acknowledge."""

    backoff_min_s: float = Field(1.0, gt=0, le=3600, description="First retry delay; doubles each failure ...")
    backoff_max_s: float = Field(
        60.0,
        gt=0,
        le=86400,
        description="... up to this. Alerts are retried until acknowledged, never dropped.",
    )


class OpsConfig(Settings):
    """Logs, /health and /metrics."""

    host: str = Field("127.0.0.1", description="Address of the /health and /metrics HTTP server.")
    port: int = Field(9108, ge=0, le=65535, description="Its port (0: no server).")
    log_format: Literal["text", "json"] = Field("text", description="json: one JSON object per log line.")


class DashboardConfig(Settings):
    """The `dashboard:` section of a line config."""

    token: SecretStr | None = Field(
        None, description="Review token. Prefer token_env: a secret in a file is read by whoever reads the file."
    )
    token_env: str = Field(
        "INSPECTOR_TOKEN",
        pattern=r"^[A-Za-z_][A-Za-z0-9_]{0,127}$",
        description="Environment variable holding the review token (used when `token` is unset).",
    )
    retrain_dir: Path | None = Field(
        None,
        description="Reviewed false alarms are copied here as good images for the next retrain "
        "(default: retrain/good/ beside the store).",
    )


class WatchConfig(Settings):
    """A production line: model, sources, rules, sinks, store."""

    line: str = Field(..., pattern=NAME, description="Line name, used in alert topics and payloads.")
    model: LineModel = Field(..., description="The model.")
    sources: list[SourceConfig] = Field(..., min_length=1, description="Folders and cameras to watch.")
    rules: Rules = Field(default_factory=Rules, description="Decision rules for all sources.")
    sinks: list[SinkConfig] = Field(default_factory=list, description="Where alerts go.")
    store: StoreConfig = Field(default_factory=StoreConfig, description="The store.")
    outbox: OutboxConfig = Field(default_factory=OutboxConfig, description="Alert retries.")
    ops: OpsConfig = Field(default_factory=OpsConfig, description="Operations.")
    dashboard: DashboardConfig = Field(default_factory=DashboardConfig, description="The review dashboard.")

    @model_validator(mode="after")
    def _unique_names(self) -> WatchConfig:
        for what, items in (("source", self.sources), ("sink", self.sinks)):
            names = [i.name for i in items]
            dup = sorted({n for n in names if names.count(n) > 1})
            if dup:
                raise ValueError(f"{what} names must be unique: {', '.join(dup)}")
        return self


def source_rules(cfg: WatchConfig, source: FolderSourceConfig | CameraSourceConfig) -> Rules:
    """The line's rules with the source's overrides applied."""
    merged = {**cfg.rules.model_dump(), **source.rules.model_dump(exclude_none=True)}
    try:
        return Rules(**merged)
    except ValidationError as e:
        raise InspectorError(f"source {source.name}: rules: {error_line(e)}") from None


UNION_TAGS = ("folder", "camera", "mqtt", "webhook", "apprise")  # pydantic puts the union member in the location


def load_config(path: Path) -> WatchConfig:
    """Read and validate a line config; any problem is one InspectorError line naming file and field."""
    return _resolve(validate(WatchConfig, read_yaml(path), str(path), UNION_TAGS), Path(path).resolve().parent)


def load_sections(path: Path) -> tuple[StoreConfig, DashboardConfig]:
    """Only the `store` and `dashboard` sections of a line config (what the dashboard needs), resolved as
    `load_config` resolves them."""
    raw, base = read_yaml(path), Path(path).resolve().parent
    store = validate(StoreConfig, raw.get("store") or {}, str(path), section="store")
    dash = validate(DashboardConfig, raw.get("dashboard") or {}, str(path), section="dashboard")
    return _resolve_store(store, base), dash.model_copy(update={"retrain_dir": _under(base, dash.retrain_dir)})


def _under(base: Path, x: Path | None) -> Path | None:
    """Relative paths in a config are relative to the config file, not to wherever the process started."""
    return None if x is None else (x if x.is_absolute() else base / x)


def _resolve_store(store: StoreConfig, base: Path) -> StoreConfig:
    url = store.url
    if url.startswith("sqlite:///") and not url.startswith("sqlite:////") and not url.endswith(":memory:"):
        url = "sqlite:///" + str(base / url[len("sqlite:///") :])
    return store.model_copy(
        update={"url": url, "media_dir": _under(base, store.media_dir), "spool_dir": _under(base, store.spool_dir)}
    )


def _resolve(cfg: WatchConfig, base: Path) -> WatchConfig:
    """Make relative paths relative to the config file, not to wherever the watcher was started."""

    def p(x: Path | None) -> Path | None:
        return _under(base, x)

    sources = []
    for s in cfg.sources:
        if isinstance(s, FolderSourceConfig):
            s = s.model_copy(
                update={"path": p(s.path), "processed_dir": p(s.processed_dir), "quarantine_dir": p(s.quarantine_dir)}
            )
        elif isinstance(s.uri, str) and "://" not in s.uri:
            s = s.model_copy(update={"uri": str(p(Path(s.uri)))})
        sources.append(s)
    store = _resolve_store(cfg.store, base)
    model = cfg.model.model_copy(update={"path": p(cfg.model.path)})
    dash = cfg.dashboard.model_copy(update={"retrain_dir": p(cfg.dashboard.retrain_dir)})
    return cfg.model_copy(update={"sources": sources, "store": store, "model": model, "dashboard": dash})
