"""`manifest.json`, written beside every exported `model.onnx`.

The runtime reads nothing else, so the manifest says how frames become the input tensor, where the alarm
threshold lies (kept out of the graph so sensitivity can change without re-exporting) and the sha256
of the graph. A tiled model's `preprocess` carries its tiles (`inspector.data.tiles`), so the runtime cuts and
stitches frames exactly as the fit did (`tiling` says the same in words). Loading refuses any model it cannot
vouch for, with one line saying what to fix.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from inspector.data.preprocess import Preprocess
from inspector.errors import InspectorError, refuse_older

# 2: `network` + `grid` (the network's settings) replace `model_config`; every graph has one input size
FORMAT_VERSION = 2
MANIFEST_FILE = "manifest.json"
MODEL_FILE = "model.onnx"
REQUIRED = ("model", "input", "outputs", "preprocess", "threshold")


@dataclass(frozen=True)
class Manifest:
    """A validated manifest of one exported version folder."""

    version_dir: Path
    data: dict[str, Any]

    @property
    def threshold(self) -> float:
        return float(self.data["threshold"])

    @property
    def preprocess(self) -> Preprocess:
        return Preprocess.from_dict(self.data["preprocess"])

    @property
    def input_name(self) -> str:
        return str(self.data["input"]["name"])

    @property
    def output_names(self) -> tuple[str, str]:
        """(anomaly map, score) output names."""
        return str(self.data["outputs"]["anomaly_map"]["name"]), str(self.data["outputs"]["score"]["name"])

    @property
    def embedding_name(self) -> str | None:
        """The embedding output's name; None for versions exported before the graph had one."""
        out = self.data["outputs"].get("embedding")
        return str(out["name"]) if isinstance(out, dict) and "name" in out else None

    @property
    def latent(self) -> dict | None:
        """The latent map's projection and good cloud (`inspector.scoring.latent.LatentSpace`), if exported."""
        lat = self.data.get("latent")
        return lat if isinstance(lat, dict) else None

    @property
    def image_sizes(self) -> dict[str, int] | None:
        """The fit images' formats ("WxH" -> count); None when sizes varied per part (or an older manifest)."""
        return (self.data.get("training") or {}).get("image_sizes") or None

    @property
    def model_path(self) -> Path:
        return self.version_dir / str(self.data["model"]["file"])


def check_threshold(value: Any, where: str = "threshold") -> float:
    """A usable threshold: a finite number above zero (scores are divided by it)."""
    try:
        thr = float(value)
    except (TypeError, ValueError):
        raise InspectorError(f"{where} must be a number, got {value!r}") from None
    if not math.isfinite(thr) or thr <= 0:
        raise InspectorError(f"{where} must be a positive number, got {value!r}")
    return thr


def read_manifest(version_dir: Path) -> Manifest:
    """Parse and validate `<version_dir>/manifest.json` (missing, corrupt, unknown format: one error)."""
    path = Path(version_dir) / MANIFEST_FILE
    if not path.is_file():
        raise InspectorError(f"{version_dir} has no {MANIFEST_FILE}: not an exported model (run `inspector export`)")
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise InspectorError(f"{path} is corrupt ({e.__class__.__name__}); re-export the model") from None
    if not isinstance(data, dict):
        raise InspectorError(f"{path} is corrupt (not a JSON object); re-export the model")
    fmt = data.get("format_version")
    refuse_older(fmt, FORMAT_VERSION, version_dir, "manifest", "with `inspector fit`, then calibrate and export")
    if fmt != FORMAT_VERSION:
        raise InspectorError(
            f"{path} has manifest format {fmt!r}; this inspector reads format {FORMAT_VERSION}: "
            "re-export the model with this inspector version"
        )
    missing = [k for k in REQUIRED if k not in data]
    if missing:
        raise InspectorError(f"{path} lacks {', '.join(missing)}; re-export the model")
    m = Manifest(Path(version_dir), data)
    try:
        _ = (m.preprocess, m.input_name, m.output_names, m.model_path, data["model"]["sha256"])
        _ = int(data["model"]["size_bytes"])
    except (KeyError, TypeError, ValueError) as e:
        raise InspectorError(f"{path} is malformed ({e.__class__.__name__}: {e}); re-export the model") from None
    check_threshold(data["threshold"], f"threshold in {path}")
    return m


def read_model(m: Manifest) -> bytes:
    """The graph bytes, checked against the manifest (the same bytes are then loaded: no race)."""
    path = m.model_path
    try:
        blob = path.read_bytes()
    except FileNotFoundError:
        raise InspectorError(f"{path} is missing; copy the whole version folder or re-export") from None
    except OSError as e:
        raise InspectorError(f"{path} cannot be read ({e.strerror})") from None
    size = int(m.data["model"]["size_bytes"])
    if len(blob) < size:
        raise InspectorError(f"{path} is truncated ({len(blob)} of {size} bytes); copy it again or re-export")
    digest = hashlib.sha256(blob).hexdigest()
    if digest != m.data["model"]["sha256"]:
        raise InspectorError(
            f"{path} does not match its manifest (sha256 {digest[:12]}..., expected "
            f"{str(m.data['model']['sha256'])[:12]}...): the file was changed or damaged; copy it again or re-export"
        )
    return blob


def load_verified(version_dir: Path) -> tuple[Manifest, bytes]:
    """Manifest and checked graph bytes of one version folder."""
    m = read_manifest(version_dir)
    return m, read_model(m)
