"""Export: one ONNX graph + manifest per version, parity with torch checked before publishing."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from inspector.data.preprocess import Preprocess
from inspector.errors import InspectorError
from inspector.pipeline import export
from inspector.pipeline.checkpoint import FIT_FILE, load_model, read_json, staging
from inspector.pipeline.export import PARITY_TOLERANCE, export_model
from inspector.runtime import registry


@pytest.fixture(scope="module")
def model_dir(fitted_model, tmp_path_factory) -> Path:
    """A private copy of the shared fitted model, so exporting here changes no other test's folder."""
    out = tmp_path_factory.mktemp("export") / "part"
    shutil.copytree(fitted_model / "staging", out / "staging")
    return out


@pytest.fixture(scope="module")
def v1(model_dir) -> Path:
    return export_model(model_dir)


def test_export_publishes_a_self_describing_version(v1, model_dir):
    assert v1 == model_dir / "v1"
    assert sorted(p.name for p in v1.iterdir()) == ["calibration.json", "manifest.json", "model.onnx"]
    m = json.loads((v1 / "manifest.json").read_text())
    blob = (v1 / "model.onnx").read_bytes()
    assert m["format_version"] == 2
    assert m["model"] == {
        "file": "model.onnx",
        "sha256": hashlib.sha256(blob).hexdigest(),
        "size_bytes": len(blob),
        "opset": 17,
    }
    cal = read_json(model_dir / "staging" / "calibration.json", "")
    assert m["threshold"] == cal["threshold"]
    assert m["calibration"]["meaning"] == cal["meaning"] and "curve" not in json.dumps(m["calibration"])
    fit_info = read_json(model_dir / "staging" / "fit.json", "")
    assert m["training"]["fingerprint"] == fit_info["fingerprint"]
    net, pre, _ = load_model(model_dir)
    assert Preprocess.from_dict(m["preprocess"]) == pre
    assert m["backbone"]["name"] == net.cfg.backbone and m["latent_size"] == net.cfg.latent
    assert m["reference"]["bank_size"] == (net.bank.shape[0] if net.cfg.w_latent > 0 else 0)
    assert m["reference"]["patch_stride"] == 8
    assert m["input"]["layout"] == "NCHW"
    # one network input size per model: only the batch is dynamic
    assert m["input"]["dynamic_axes"] == ["batch"] and m["input"]["size"] == [pre.height, pre.width]
    assert m["network"] == net.cfg.model_dump(mode="json") and m["grid"] == list(net.grid)
    assert {"torch", "onnx", "onnxruntime", "python"} <= set(m["versions"])
    par = m["parity"]
    assert par["frames"] >= 4  # batches of several frames
    assert par["input_sizes"] == [m["input"]["size"]]
    assert par["max_diff_normalized"] <= PARITY_TOLERANCE == par["tolerance_normalized"]
    # The first export becomes current: `inspector score` then runs it.
    assert registry.current_version(model_dir) == "v1"
    assert [h["reason"] for h in registry.history(model_dir)] == ["first export"]


def test_graph_takes_any_batch_and_matches_torch(v1, model_dir):
    net, pre, _ = load_model(model_dir)
    h, w = export.input_hw(pre)
    graph = onnx.load(str(v1 / "model.onnx"))
    dims = [d.dim_param or d.dim_value for d in graph.graph.input[0].type.tensor_type.shape.dim]
    assert dims == ["batch", 3, h, w]
    sess = ort.InferenceSession(str(v1 / "model.onnx"), providers=["CPUExecutionProvider"])
    for b in (1, 3):
        x = np.random.default_rng(b).normal(0, 1, (b, 3, h, w)).astype(np.float32)
        amap, score = sess.run(["anomaly_map", "score"], {"image": x})
        with torch.inference_mode():
            ref = net(torch.from_numpy(x))
        assert amap.shape == (b, 1, h, w) and score.shape == (b,)
        np.testing.assert_allclose(score, ref.score.numpy(), rtol=1e-4, atol=1e-4)
        np.testing.assert_allclose(amap, ref.anomaly_map.numpy(), rtol=1e-4, atol=1e-4)


def test_graph_is_its_weights_not_a_blown_up_reference(v1, model_dir):
    graph = onnx.load(str(v1 / "model.onnx"))
    tensors = list(graph.graph.initializer) + [  # weights, and folded constants such as the Gaussian's whitening
        a.t for n in graph.graph.node if n.op_type == "Constant" for a in n.attribute if a.type == a.TENSOR
    ]
    constants = sum(onnx.numpy_helper.to_array(t).nbytes for t in tensors)
    size = (v1 / "model.onnx").stat().st_size
    assert constants <= size < constants + 1_000_000  # constants + a small graph, nothing materialized
    net, _, _ = load_model(model_dir)
    assert constants <= sum(t.numel() * t.element_size() for t in net.state_dict().values())
    assert net.gauss_prec.numel() * 4 < size  # the per-position Gaussian is inside, as constants
    kinds = {n.op_type for n in graph.graph.node}
    assert ("ReduceMin" in kinds) == (net.cfg.w_latent > 0)  # the kNN runs only in models that use it
    # A fixed-size graph holds constant shapes and weight slices: no per-frame shape arithmetic (at batch 1
    # those small ops cost as much as the Gaussian's matmul)
    assert not {"Shape", "Gather", "Mod", "Slice", "ConstantOfShape"} & kinds


def test_every_score_term_exports_and_matches_torch(synthetic_data, tmp_path):
    """kNN bank, reconstruction, image-level distance and smoothing: all inside the graph, parity checked."""
    from inspector.config.fit import CalibrateSettings, FitSettings
    from inspector.pipeline.calibrate import calibrate_model
    from inspector.pipeline.fit import fit
    from tests.conftest import FAST_FIT

    s = FitSettings(
        **{
            **FAST_FIT,
            "steps": 30,
            "w_latent": 1.0,
            "w_recon": 0.5,
            "global_bank": 40,
            "w_global": 0.5,
            "pool": 3,
            "smooth": 3,
            "pos_weight": 0.5,
            "gauss_cell": 5,
            "score_top": 0.05,
            "exposure": "product",
        }
    )  # 5x5 cells: partial ones at the edges; the image score a top-cells mean (TopK in the graph)
    fit(synthetic_data, tmp_path / "m", s, show=False)
    calibrate_model(tmp_path / "m", CalibrateSettings(fpr=0.05))
    v = export_model(tmp_path / "m")  # refuses to publish unless torch and ORT agree
    m = json.loads((v / "manifest.json").read_text())
    assert m["parity"]["max_diff_normalized"] <= PARITY_TOLERANCE
    assert m["reference"]["bank_size"] == 512
    graph = onnx.load(str(v / "model.onnx"))
    assert {"ReduceMin", "MatMul", "TopK"} <= {n.op_type for n in graph.graph.node}
    net, _, _ = load_model(tmp_path / "m")
    assert (net.bank.numel() + net.gauss_prec.numel()) * 4 < (v / "model.onnx").stat().st_size
    gh, gw = net.grid
    assert net.gauss_prec.shape[0] == -(-gh // 5) * -(-gw // 5) < gh * gw  # one covariance per cell, not per position


def test_feature_gaussian_exports_and_matches_torch(synthetic_data, tmp_path):
    """The Gaussian on the standardized features (one covariance per position) inside the graph, parity checked."""
    from inspector.config.fit import CalibrateSettings, FitSettings
    from inspector.pipeline.calibrate import calibrate_model
    from inspector.pipeline.fit import fit
    from tests.conftest import FAST_FIT

    s = FitSettings(**{**FAST_FIT, "steps": 30, "gauss_source": "features", "gauss_cell": 1, "select": False})
    fit(synthetic_data, tmp_path / "m", s, show=False)
    calibrate_model(tmp_path / "m", CalibrateSettings(fpr=0.05))
    v = export_model(tmp_path / "m")  # refuses to publish unless torch and ORT agree
    assert json.loads((v / "manifest.json").read_text())["parity"]["max_diff_normalized"] <= PARITY_TOLERANCE
    net, _, _ = load_model(tmp_path / "m")
    gh, gw = net.grid
    # fewer fit images than feature channels: the covariance's rank-r basis per position, not its d x d precision
    n_fit = json.loads((staging(tmp_path / "m") / FIT_FILE).read_text())["fit_images"]
    assert net.cfg.gauss_rank == n_fit - 1 < net.feature_dim and net.gauss_prec.numel() == 1
    assert net.gauss_basis.shape == (gh * gw, net.feature_dim, n_fit - 1)
    size = (v / "model.onnx").stat().st_size
    assert net.gauss_basis.numel() * 4 < size < gh * gw * net.feature_dim**2 * 4


def test_threshold_is_not_in_the_graph(v1, model_dir):
    """Recalibrating changes the manifest only: the re-exported graph is byte-identical."""
    cal_path = model_dir / "staging" / "calibration.json"
    original = cal_path.read_text()
    cal = json.loads(original)
    cal["threshold"] = cal["threshold"] * 1.5
    cal_path.write_text(json.dumps(cal))
    try:
        v2 = export_model(model_dir)
    finally:
        cal_path.write_text(original)
    assert v2.name == "v2"
    assert (v2 / "model.onnx").read_bytes() == (v1 / "model.onnx").read_bytes()
    assert json.loads((v2 / "manifest.json").read_text())["threshold"] == cal["threshold"]
    assert registry.current_version(model_dir) == "v1"  # later exports wait for `inspector promote`


def test_parity_failure_stops_the_export_and_leaves_nothing(model_dir, monkeypatch):
    real = export.to_onnx

    def drifted(net, path, *args, **kwargs):  # a graph whose scores drift by 1% from torch's
        net = type(net)(net.cfg, net.grid)
        net.load_state_dict(load_model(model_dir)[0].state_dict())
        net.scales.mul_(1.01)
        real(net, path, *args, **kwargs)

    monkeypatch.setattr(export, "to_onnx", drifted)
    before = sorted(p.name for p in model_dir.iterdir())
    with pytest.raises(
        InspectorError, match=r"parity check failed: .* differ by .* of the threshold \(tolerance 1e-03\)"
    ):
        export_model(model_dir)
    assert sorted(p.name for p in model_dir.iterdir()) == before


def test_export_needs_a_calibrated_model(fitted_model, tmp_path):
    shutil.copytree(fitted_model / "staging", tmp_path / "m" / "staging")
    (tmp_path / "m" / "staging" / "calibration.json").unlink()
    with pytest.raises(InspectorError, match="run `inspector calibrate` first"):
        export_model(tmp_path / "m")
    assert registry.list_versions(tmp_path / "m") == []


def test_export_from_the_command_line(model_dir, capsys):
    from inspector.cli.main import main

    n = len(registry.list_versions(model_dir))
    assert main(["export", str(model_dir)]) == 0
    assert capsys.readouterr().out.strip() == f"exported {model_dir / f'v{n + 1}'}"
