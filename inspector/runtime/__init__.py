"""Torch-free scoring of exported models: ONNX Runtime, numpy and OpenCV only (the edge-box install)."""

from inspector.runtime.manifest import FORMAT_VERSION, Manifest, read_manifest
from inspector.runtime.scorer import Scorer

__all__ = ["FORMAT_VERSION", "Manifest", "Scorer", "read_manifest"]
