"""The torch-free runtime: loading checks, preprocessing shared with training, batching, providers, reload."""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import cv2
import numpy as np
import pytest

from inspector.data.preprocess import prepare
from inspector.data.synthetic import add_defect, good_part
from inspector.errors import ImageError, InspectorError
from inspector.runtime import Scorer, registry
from inspector.runtime.providers import CPU, CUDA, TENSORRT, gpu_problem, requested

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def model_dir(fitted_model, tmp_path_factory) -> Path:
    """A private exported copy of the shared fitted model: v1, current."""
    from inspector.pipeline.export import export_model

    out = tmp_path_factory.mktemp("runtime") / "part"
    shutil.copytree(fitted_model / "staging", out / "staging")
    export_model(out)
    return out


@pytest.fixture(scope="module")
def scorer(model_dir) -> Scorer:
    return Scorer.load(model_dir, providers=["cpu"])


@pytest.fixture(scope="module")
def frames() -> dict[str, list[np.ndarray]]:
    rng = np.random.default_rng(123)
    good = [good_part(rng) for _ in range(4)]
    bad = [add_defect(good_part(rng), kind, rng)[0] for kind in ("scratch", "blob", "missing")]
    return {"good": good, "bad": bad, "wide": [cv2.resize(good_part(rng), (160, 96))]}


def run_python(code: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    env.pop("INSPECTOR_PROVIDERS", None)
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=REPO, timeout=120)


def test_load_and_score_never_import_torch(model_dir, frames, tmp_path):
    img = tmp_path / "part.png"
    cv2.imwrite(str(img), frames["bad"][0])
    proc = run_python(f"""
import sys
from pathlib import Path
from inspector.runtime import Scorer
from inspector.cli.score import score_images
s = Scorer.load({str(model_dir)!r})
r = s.score({str(img)!r}, overlay=True)
s.score_batch([{str(img)!r}] * 3)
s.reload_if_changed()
assert score_images(Path({str(model_dir)!r}), [Path({str(img)!r})], {str(tmp_path / "maps")!r}) == 0
leaked = sorted(m for m in sys.modules if m == 'torch' or m.startswith('torch.'))
print('TORCH', leaked, 'SCORE', r.score)
""")
    assert proc.returncode == 0, proc.stderr
    assert "TORCH [] SCORE" in proc.stdout


def test_cpu_only_machine_logs_one_clean_line(model_dir):
    """Default TensorRT -> CUDA -> CPU: no ORT error screen, one line saying what was dropped."""
    proc = run_python(f"""
import logging, sys
logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s")
import numpy as np
from inspector.runtime import Scorer
a = Scorer.load({str(model_dir)!r})
b = Scorer.load({str(model_dir)!r})  # a second load (a reload) does not repeat the line
a.score(np.zeros((96, 96, 3), np.uint8))
open({str(model_dir / "providers.txt")!r}, 'w').write(','.join(a.providers))
""")
    assert proc.returncode == 0, proc.stderr
    output = [line for line in (proc.stdout + proc.stderr).splitlines() if line.strip()]
    used = (model_dir / "providers.txt").read_text().split(",")
    if gpu_problem() is None:  # a GPU machine: it must run there, without ORT's error screen
        assert used[0] in (TENSORRT, CUDA) and not any("EP Error" in l or "[E:" in l for l in output)
        return
    assert used == [CPU]
    assert len(output) == 1, output
    assert re.fullmatch(
        rf"INFO inspector\.runtime\.providers: {TENSORRT}, {CUDA} unavailable \(.+\): running on {CPU}", output[0]
    ), output[0]


def test_provider_preferences(monkeypatch):
    monkeypatch.delenv("INSPECTOR_PROVIDERS", raising=False)
    assert requested(None) == [TENSORRT, CUDA, CPU]
    monkeypatch.setenv("INSPECTOR_PROVIDERS", "cuda, cpu")
    assert requested(None) == [CUDA, CPU]
    assert requested(["cuda"]) == [CUDA, CPU]  # CPU is always the last resort
    assert requested(["CPU", "trt", "cpu"]) == [CPU, TENSORRT]


def test_runtime_prepares_frames_exactly_like_training(scorer, model_dir, frames, tmp_path):
    from inspector.pipeline.checkpoint import load_model

    _, pre, _ = load_model(model_dir)
    assert scorer.manifest["preprocess"] == json.loads(json.dumps(pre.to_dict()))
    for img in frames["wide"] + frames["good"][:1]:
        path = tmp_path / "f.png"
        cv2.imwrite(str(path), img)
        x = prepare(img, pre)  # what training and the torch path feed the network
        assert scorer.prepare(img).dtype == np.float32
        assert np.array_equal(scorer.prepare(img), x)
        assert np.array_equal(scorer.prepare(path), x)  # a file path gives the same tensor (lossless PNG)


def test_scores_match_torch_and_rank_defects_higher(scorer, model_dir, frames):
    import torch

    from inspector.pipeline.checkpoint import load_model

    net, pre, _ = load_model(model_dir)
    imgs = frames["good"] + frames["bad"] + frames["wide"]
    results = scorer.score_batch(imgs)
    with torch.inference_mode():
        ref = [float(net(torch.from_numpy(prepare(i, pre))[None]).score[0]) for i in imgs]
    np.testing.assert_allclose([r.raw_score for r in results], ref, rtol=0, atol=1e-3 * scorer.threshold)
    good, bad = [r.score for r in results[:4]], [r.score for r in results[4:7]]
    assert np.mean(bad) > np.mean(good)


def test_frame_result(scorer, frames):
    img = frames["wide"][0]
    r = scorer.score(img)
    assert r.anomaly_map.shape == img.shape[:2] and r.anomaly_map.dtype == np.float32
    assert r.score == pytest.approx(r.raw_score / scorer.threshold)
    assert r.is_anomaly == (r.score >= 1.0) and r.overlay is None
    assert 0 < r.anomaly_map.max() <= r.score * 1.001  # the map is normalized like the score
    with_overlay = scorer.score(img, overlay=True)
    assert with_overlay.overlay.shape == img.shape and with_overlay.overlay.dtype == np.uint8
    gray = scorer.score(cv2.cvtColor(img, cv2.COLOR_BGR2GRAY))
    gray_bgr = scorer.score(cv2.cvtColor(cv2.cvtColor(img, cv2.COLOR_BGR2GRAY), cv2.COLOR_GRAY2BGR))
    assert gray.raw_score == pytest.approx(gray_bgr.raw_score, rel=1e-6)


def test_per_call_threshold(scorer, frames):
    r = scorer.score(frames["good"][0])
    low = scorer.score(frames["good"][0], threshold=r.raw_score / 2)
    high = scorer.score(frames["good"][0], threshold=r.raw_score * 2)
    assert (low.score, low.is_anomaly) == (pytest.approx(2.0), True)
    assert (high.score, high.is_anomaly) == (pytest.approx(0.5), False)
    for bad in (0, -1.0, float("nan"), "x"):
        with pytest.raises(InspectorError, match="must be"):
            scorer.score(frames["good"][0], threshold=bad)


def test_batch_of_mixed_sizes_equals_one_by_one(scorer, frames):
    imgs = frames["good"] + frames["wide"] + frames["bad"] + frames["wide"] + frames["good"]  # 13 > max_batch
    batch = scorer.score_batch(imgs)
    assert len(batch) == len(imgs)
    for img, r in zip(imgs, batch):
        one = scorer.score(img)
        assert r.raw_score == pytest.approx(one.raw_score, rel=1e-5, abs=1e-6)
        assert r.anomaly_map.shape == img.shape[:2]


def test_a_frame_size_never_fitted_is_warned_once(model_dir, frames, caplog):
    fresh = Scorer.load(model_dir, providers=["cpu"])
    assert fresh.manifest["training"]["image_sizes"] == {"96x96": 96}  # the synthetic fit images
    with caplog.at_level(logging.WARNING, logger="inspector.runtime"):
        fresh.score_batch(frames["good"] + frames["wide"] + frames["wide"])
        fresh.score(frames["wide"][0])
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warned == [
        "frame size 160x96: no fit image had this size (fitted: 96x96); expect more false alarms until "
        "the model is fitted on this format"
    ]


def test_long_strips_are_split_to_bound_ort_memory(scorer, frames, monkeypatch):
    from types import SimpleNamespace

    from inspector.runtime import session

    knn = SimpleNamespace(data={"reference": {"patch_stride": 8, "bank_size": 512}})  # a model with the kNN term
    assert session.images_per_run(knn, (3, 96, 96), 8) == 8
    strip_bytes = (96 // 8) * (96 * 40 // 8) * 512 * 4  # one 96 x 3840 strip's distance matrix
    assert session.images_per_run(knn, (3, 96, 96 * 40), 8, budget=2 * strip_bytes) == 2
    assert session.images_per_run(knn, (3, 96, 96 * 40), 8, budget=strip_bytes // 2) == 1
    no_knn = SimpleNamespace(data={"reference": {"patch_stride": 8, "bank_size": 0}})  # nothing of that size
    assert session.images_per_run(no_knn, (3, 96, 96 * 40), 8, budget=1) == 8
    imgs = frames["good"] + frames["bad"]
    together = scorer.score_batch(imgs)
    monkeypatch.setattr(session, "images_per_run", lambda *a, **k: 1)  # every frame in its own run
    apart = scorer.score_batch(imgs)
    np.testing.assert_allclose([r.raw_score for r in apart], [r.raw_score for r in together], rtol=1e-5)


def test_threshold_edited_in_the_manifest_needs_no_re_export(model_dir, frames, tmp_path):
    v = shutil.copytree(model_dir / "v1", tmp_path / "v1")
    m = json.loads((v / "manifest.json").read_text())
    m["threshold"] *= 2
    (v / "manifest.json").write_text(json.dumps(m))
    a, b = Scorer.load(model_dir / "v1", ["cpu"]), Scorer.load(v, ["cpu"])
    ra, rb = a.score(frames["good"][0]), b.score(frames["good"][0])
    assert rb.raw_score == pytest.approx(ra.raw_score, rel=1e-6)
    assert rb.score == pytest.approx(ra.score / 2, rel=1e-6)


def _flip_byte(p: Path) -> None:
    data = bytearray(p.read_bytes())
    data[len(data) // 2] ^= 0xFF
    p.write_bytes(bytes(data))


def _truncate_consistently(v: Path) -> None:
    """A cut-off graph whose manifest was rewritten to match: only ONNX Runtime can tell."""
    import hashlib

    data = (v / "model.onnx").read_bytes()[:5000]
    (v / "model.onnx").write_bytes(data)
    m = json.loads((v / "manifest.json").read_text())
    m["model"].update(sha256=hashlib.sha256(data).hexdigest(), size_bytes=len(data))
    (v / "manifest.json").write_text(json.dumps(m))


def _edit_manifest(**changes):
    def apply(v: Path) -> None:
        m = json.loads((v / "manifest.json").read_text())
        for k, val in changes.items():
            if val is None:
                del m[k]
            else:
                m[k] = val
        (v / "manifest.json").write_text(json.dumps(m))

    return apply


@pytest.mark.parametrize(
    "damage, message",
    [
        (lambda v: (v / "manifest.json").unlink(), r"has no manifest\.json: not an exported model"),
        (lambda v: (v / "manifest.json").write_text("{oops"), r"manifest\.json is corrupt \(JSONDecodeError\)"),
        (_edit_manifest(format_version=99), r"has manifest format 99; this inspector reads format 2"),
        (_edit_manifest(format_version=1), r"fitted by an older inspector version \(manifest format 1\): refit it"),
        (_edit_manifest(threshold=None), r"lacks threshold"),
        (_edit_manifest(threshold=-2), r"threshold in .* must be a positive number"),
        (lambda v: _flip_byte(v / "model.onnx"), r"model\.onnx does not match its manifest \(sha256"),
        (
            lambda v: (v / "model.onnx").write_bytes((v / "model.onnx").read_bytes()[:1000]),
            r"model\.onnx is truncated \(1000 of \d+ bytes\)",
        ),
        (lambda v: (v / "model.onnx").unlink(), r"model\.onnx is missing"),
        (_truncate_consistently, r"model\.onnx cannot be loaded by ONNX Runtime"),
    ],
)
def test_damaged_versions_give_one_clear_error(model_dir, tmp_path, damage, message):
    v = shutil.copytree(model_dir / "v1", tmp_path / "v1")
    damage(v)
    with pytest.raises(InspectorError, match=message) as err:
        Scorer.load(v, ["cpu"])
    assert "\n" not in str(err.value)


def test_unreadable_image_names_the_file(scorer, tmp_path):
    bad = tmp_path / "cut.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 20)
    with pytest.raises(ImageError, match=r"cut\.png: not a readable image"):
        scorer.score(bad)


def _new_version(model: Path, name: str, threshold_factor: float) -> None:
    """Another version of the same graph with another threshold, as a recalibration would give."""
    shutil.copytree(model / "v1", model / name)
    m = json.loads((model / name / "manifest.json").read_text())
    m["threshold"] *= threshold_factor
    (model / name / "manifest.json").write_text(json.dumps(m))


def test_reload_follows_current_and_keeps_a_working_model(model_dir, frames, tmp_path, caplog):
    model = tmp_path / "m"
    shutil.copytree(model_dir, model, symlinks=True, ignore=shutil.ignore_patterns("staging"))
    s = Scorer.load(model, ["cpu"])
    t1 = s.threshold
    assert (s.version, s.reload_if_changed()) == ("v1", False)
    _new_version(model, "v2", 2.0)
    assert s.reload_if_changed() is False  # exported but not promoted
    registry.promote(model, "v2")
    assert s.reload_if_changed() is True and (s.version, s.threshold) == ("v2", 2 * t1)
    assert s.reload_if_changed() is False
    _edit_manifest(threshold=3 * t1)(model / "v2")  # sensitivity changed in place
    os.utime(model / "v2" / "manifest.json", ns=(1, os.stat(model / "v2" / "manifest.json").st_mtime_ns + 10**9))
    assert s.reload_if_changed() is True and s.threshold == pytest.approx(3 * t1)
    _new_version(model, "v3", 4.0)
    registry.promote(model, "v3")
    _flip_byte(model / "v3" / "model.onnx")  # damaged after promotion
    with caplog.at_level(logging.ERROR, logger="inspector.runtime"):
        assert s.reload_if_changed() is False and s.reload_if_changed() is False
    assert s.version == "v2" and s.score(frames["good"][0]).raw_score > 0
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and "keeping model v2" in errors[0] and "does not match its manifest" in errors[0]
    _flip_byte(model / "v3" / "model.onnx")  # copied again, intact
    assert s.reload_if_changed() is True and s.version == "v3"


def test_no_frame_is_dropped_while_the_model_swaps(model_dir, frames, tmp_path):
    model = tmp_path / "m"
    shutil.copytree(model_dir, model, symlinks=True, ignore=shutil.ignore_patterns("staging"))
    _new_version(model, "v2", 2.0)
    s = Scorer.load(model, ["cpu"])
    thresholds = {s.threshold, 2 * s.threshold}
    results, errors, stop = [], [], threading.Event()

    def line() -> None:  # the watcher's loop: frames keep coming while versions change
        while not stop.is_set() or len(results) < 30:
            try:
                results.append(s.score(frames["good"][len(results) % 4]))
            except Exception as e:
                errors.append(e)
                return

    worker = threading.Thread(target=line)
    worker.start()
    swaps = 0
    for i in range(6):
        registry.promote(model, "v2" if i % 2 == 0 else "v1")
        swaps += s.reload_if_changed()
    stop.set()
    worker.join(timeout=120)
    assert errors == [] and swaps == 6 and len(results) >= 30
    for r in results:  # each frame was scored wholly by one version: raw / its own threshold
        assert any(r.score == pytest.approx(r.raw_score / t, rel=1e-6) for t in thresholds)


_LINE = re.compile(r"^(\S+)  (\d+\.\d\d)x  (ANOMALY|ok)$")


def test_score_command_runs_the_onnx_model(model_dir, scorer, frames, tmp_path, capsys):
    from inspector.cli.main import main

    paths = []
    for i, img in enumerate(frames["good"][:2] + frames["bad"]):
        paths.append(tmp_path / f"p{i}.png")
        cv2.imwrite(str(paths[-1]), img)
    (tmp_path / "junk.png").write_bytes(b"not an image")
    rc = main(
        ["score", str(model_dir), *map(str, paths), str(tmp_path / "junk.png"), "--save-map", str(tmp_path / "maps")]
    )
    out, err = capsys.readouterr()
    assert rc == 1  # one image was unreadable
    assert [l for l in err.splitlines() if "junk.png" in l] == [
        f"error: {tmp_path / 'junk.png'}: not a readable image: not a PNG, JPEG, BMP or TIFF image"
    ]
    rows = [_LINE.match(l).groups() for l in out.splitlines()]
    expected = scorer.score_batch(paths)
    assert [(Path(p), float(s), v) for p, s, v in rows] == [
        (p, round(r.score, 2), "ANOMALY" if r.is_anomaly else "ok") for p, r in zip(paths, expected)
    ]
    maps = sorted((tmp_path / "maps").iterdir())
    assert [m.name for m in maps] == [f"p{i}_map.png" for i in range(len(paths))]
    assert cv2.imread(str(maps[0])).shape == frames["good"][0].shape


def test_score_command_before_export_uses_torch_and_agrees(model_dir, frames, tmp_path, capsys):
    from inspector.cli.main import main

    path = tmp_path / "p.png"
    cv2.imwrite(str(path), frames["bad"][0])
    staging_only = tmp_path / "m"
    shutil.copytree(model_dir / "staging", staging_only / "staging")
    assert main(["score", str(model_dir), str(path)]) == 0
    onnx_line = capsys.readouterr().out.strip()
    assert main(["score", str(staging_only), str(path)]) == 0
    torch_line = capsys.readouterr().out.strip()
    assert _LINE.match(torch_line) and torch_line == onnx_line
    (staging_only / "staging" / "calibration.json").unlink()
    assert main(["score", str(staging_only), str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "not calibrated yet: run `inspector calibrate` first" in err
