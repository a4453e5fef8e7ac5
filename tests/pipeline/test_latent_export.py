"""The embedding output: in the graph, parity with torch, unit length, a projection in the manifest."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch

from inspector.pipeline.checkpoint import load_model
from inspector.pipeline.export import EMBED_TOLERANCE, export_model, input_hw
from inspector.runtime.scorer import Scorer
from inspector.scoring.latent import LatentSpace

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def version(fitted_model, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("latent-export") / "part"
    shutil.copytree(fitted_model / "staging", out / "staging")
    return export_model(out)


def test_graph_has_a_unit_embedding_matching_torch(version):
    net, pre, _ = load_model(version.parent)
    m = json.loads((version / "manifest.json").read_text())
    assert m["outputs"]["embedding"]["name"] == "embedding"
    assert m["parity"]["max_abs_diff_embedding"] <= EMBED_TOLERANCE
    sess = ort.InferenceSession(str(version / "model.onnx"), providers=["CPUExecutionProvider"])
    x = np.random.default_rng(3).normal(0, 1, (3, 3, *input_hw(pre))).astype(np.float32)
    amap, score, emb = sess.run(["anomaly_map", "score", "embedding"], {"image": x})
    with torch.inference_mode():
        ref = net.forward_embedded(torch.from_numpy(x))
        plain = net(torch.from_numpy(x))
    assert emb.shape == (3, net.embedding_dim)
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(emb, ref.embedding.numpy(), atol=1e-4)
    np.testing.assert_allclose(score, plain.score.numpy(), rtol=1e-4, atol=1e-4)  # the score is unchanged by it


def test_manifest_projection_and_scorer_embedding(version, synthetic_data):
    m = json.loads((version / "manifest.json").read_text())
    space = LatentSpace.from_dict(m["latent"])
    assert space.dim == m["latent"]["dim"] and len(space.cloud) >= 3 and space.good_spread > 0
    scorer = Scorer.load(version, providers=["cpu"])
    good = sorted((synthetic_data / "test" / "good").glob("*.png"))[:4]
    res = scorer.score_batch(good)
    e = np.stack([r.embedding for r in res])
    assert e.shape == (4, space.dim)
    assert space.project(e).shape == (4, 2)
    assert space.drift(e) < 3.0  # held-out-like good frames sit in the good cloud
