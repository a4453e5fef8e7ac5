"""Image reading, the hot-folder source and the camera source (a video file written with OpenCV)."""

from __future__ import annotations

import logging
import os
import subprocess
import threading
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from inspector.config.line import CameraSourceConfig, FolderSourceConfig
from inspector.data.images import header_size, read_image, truncation
from inspector.errors import ImageError
from inspector.io.camera import CameraSource
from inspector.io.sources import FolderSource
from tests.support import PYTHON, ROOT, big_png, drop, part_image, wait_for, watcher_env, write_video

MB = 2**20


@pytest.mark.parametrize("ext", [".png", ".jpg", ".bmp", ".tif"])
def test_header_size_matches_decoder(tmp_path, ext):
    img = part_image(0, False, size=40)[:, :37]  # 37 wide, 40 high
    ok, buf = cv2.imencode(ext, img)
    assert header_size(buf.tobytes()) == (37, 40) and truncation(buf.tobytes()) is None


@pytest.mark.parametrize(
    "make, reason",
    [
        (lambda p: p.write_bytes(b""), "file is empty"),
        (lambda p: p.write_text("this is not an image"), "not a PNG, JPEG, BMP or TIFF image"),
        (lambda p: p.write_bytes(cv2.imencode(".jpg", part_image(1, False, 64))[1].tobytes()[:900]), "truncated JPEG"),
        (lambda p: p.write_bytes(cv2.imencode(".png", part_image(1, False, 64))[1].tobytes()[:500]), "truncated PNG"),
        (lambda p: big_png(p), "20000x20000 pixels is over the 100000000 pixel limit"),
    ],
)
def test_bad_files_raise_image_error_with_reason(tmp_path, make, reason):
    p = tmp_path / "bad.png"
    make(p)
    with pytest.raises(ImageError, match=reason):
        read_image(p, max_pixels=100_000_000, max_bytes=64 * MB)


def test_huge_image_is_refused_without_memory(tmp_path):
    """The 20000x20000 PNG (1.2 GB decoded) is refused from its header: the process stays small."""
    p = big_png(tmp_path / "huge.png")
    code = (
        "import resource, sys\nfrom pathlib import Path\nfrom inspector.errors import ImageError\n"
        "from inspector.data.images import load_image, read_image\n"
        f"for f in (lambda: read_image(Path({str(p)!r}), 10**8, 2**30), lambda: load_image({str(p)!r})):\n"
        "    try:\n        f(); sys.exit('decoded!')\n    except ImageError:\n        pass\n"
        # VmHWM, not ru_maxrss: the latter keeps the (large) pytest parent's peak across fork+exec
        "print([int(l.split()[1]) // 1024 for l in open('/proc/self/status') if l.startswith('VmHWM')][0])"
    )
    r = subprocess.run([PYTHON, "-c", code], cwd=ROOT, env=watcher_env(), capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert int(r.stdout.split()[-1]) < 400  # MB peak, vs 1200 MB for the decoded pixels


@pytest.mark.parametrize(
    "img",
    [
        np.full((20, 30), 90, np.uint8),  # grayscale
        np.full((20, 30, 4), 90, np.uint8),  # RGBA
        np.full((20, 30), 90 * 257, np.uint16),  # 16-bit
    ],
    ids=["gray", "rgba", "16bit"],
)
def test_odd_pixel_formats_become_bgr8(tmp_path, img):
    p = tmp_path / "x.png"
    cv2.imwrite(str(p), img)
    bgr, data = read_image(p, 10**8, 64 * MB)
    assert bgr.shape == (20, 30, 3) and bgr.dtype == np.uint8 and int(bgr.mean()) == 90 and data == p.read_bytes()


def folder(tmp_path: Path, **kw) -> FolderSource:
    src = FolderSource(FolderSourceConfig(kind="folder", name="f", path=tmp_path / "in", **{"stable_s": 0.3, **kw}))
    src.start(threading.Event())
    return src


def drain(src: FolderSource, n: int, timeout: float = 10) -> list:
    items: list = []
    wait_for(lambda: (items.append(it) if (it := src.poll()) else None) or len(items) >= n, timeout, what=f"{n} files")
    return items


def test_backlog_oldest_first_then_events(tmp_path):
    for i, name in enumerate(["c.png", "a.png", "b.png"]):
        p = drop(tmp_path / "in", name, part_image(i, False))
        os.utime(p, ns=(10**18 + i * 10**9, 10**18 + i * 10**9))  # c oldest
    (tmp_path / "in" / "notes.txt").write_text("ignored")
    src = folder(tmp_path)
    try:
        assert [i.relpath for i in drain(src, 3)] == ["c.png", "a.png", "b.png"]
        drop(tmp_path / "in", "d.png", part_image(4, False))  # rename into the folder: complete at once
        assert [i.relpath for i in drain(src, 1)] == ["d.png"]
        assert src.poll() is None
    finally:
        src.stop()


def test_file_being_written_waits_until_stable(tmp_path):
    src = folder(tmp_path, stable_s=0.5, rescan_s=0.1)
    src.stop()  # no events: only the rescan + size/mtime stability rule
    try:
        p = tmp_path / "in" / "slow.png"
        with open(p, "wb") as f:
            f.write(b"\x89PNG\r\n\x1a\n")
            f.flush()
            src.rescan()
            assert src.poll() is None  # just written: not stable yet
        item = drain(src, 1)[0]
        assert item.path == p and item.size == 8
    finally:
        src.stop()


def test_finish_moves_or_keeps_and_quarantine_explains(tmp_path):
    src = folder(tmp_path)
    try:
        drop(tmp_path / "in", "a.png", part_image(0, False))
        drop(tmp_path / "in", "bad.png", part_image(1, False))
        a, bad = sorted(drain(src, 2), key=lambda i: i.relpath)
        src.finish(a)
        src.quarantine(bad, "truncated PNG (no IEND chunk)")
        assert (tmp_path / "in/processed/a.png").exists() and not a.path.exists()
        assert (tmp_path / "in/quarantine/bad.png.reason.txt").read_text() == "truncated PNG (no IEND chunk)\n"
        drop(tmp_path / "in", "a.png", part_image(2, False))  # same name again: no overwrite
        src.finish(drain(src, 1)[0])
        assert (tmp_path / "in/processed/a.1.png").exists()
    finally:
        src.stop()
    keep = folder(tmp_path / "k", after="keep")
    try:
        drop(tmp_path / "k/in", "x.png", part_image(0, False))
        keep.finish(drain(keep, 1)[0])
        keep.rescan()
        assert keep.poll() is None and (tmp_path / "k/in/x.png").exists()
    finally:
        keep.stop()


def frames(n: int) -> list[np.ndarray]:
    return [np.full((48, 64, 3), 10 + i * 3, np.uint8) for i in range(n)]


def camera(uri, **kw) -> CameraSource:
    cam = CameraSource(CameraSourceConfig(kind="camera", name="cam", uri=uri, **{"reconnect_min_s": 0.1, **kw}))
    cam.start(threading.Event())
    return cam


def test_video_file_as_fast_as_scoring_allows_loses_nothing(tmp_path):
    video = write_video(tmp_path / "v.avi", frames(40))
    cam = camera(str(video), realtime=False, every_nth=2)
    got: list = []
    try:
        wait_for(
            lambda: (got.append(it) if (it := cam.poll()) else None) or cam.finished and cam.depth() == 0,
            20,
            what="end of video",
        )
    finally:
        cam.stop()
    assert [it.index for it in got] == list(range(0, 40, 2))
    means = [float(it.frame.mean()) for it in got]
    assert np.allclose(means, [10 + 3 * i for i in range(0, 40, 2)], atol=2.5)  # the right frames (MJPG is lossy)
    assert cam.take_dropped() == 0 and len({it.key for it in got}) == 20


def test_slow_consumer_gets_latest_frame_and_counts_drops(tmp_path):
    video = write_video(tmp_path / "v.avi", frames(30), fps=100.0)
    cam = camera(str(video), realtime=True)
    got: list = []
    try:
        while not cam.finished or cam.depth():
            it = cam.poll()
            if it is not None:
                got.append(it)
                time.sleep(0.05)  # a scorer slower than the camera
            else:
                time.sleep(0.005)
    finally:
        cam.stop()
    dropped = cam.take_dropped()
    assert dropped > 0 and len(got) + dropped == 30
    assert got[-1].index == 29  # the newest frame is scored, not a stale one
    assert [i.index for i in got] == sorted(i.index for i in got)


def test_camera_that_does_not_answer_keeps_retrying(tmp_path, caplog):
    from tests.support import free_port

    caplog.set_level(logging.DEBUG, logger="inspector.watch.camera")
    cam = camera(f"rtsp://127.0.0.1:{free_port()}/stream", open_timeout_s=1, reconnect_max_s=0.2)
    try:
        wait_for(lambda: sum("cannot open" in r.getMessage() for r in caplog.records) >= 3, 15, what="retries")
        assert not cam.connected and cam.poll() is None and not cam.finished
        warned = [r for r in caplog.records if r.levelno >= logging.WARNING]
        assert len(warned) == 1 and "cannot open" in warned[0].getMessage()  # one line per outage, retries at debug
    finally:
        t = time.monotonic()
        cam.stop()
        assert not cam._thread.is_alive() and time.monotonic() - t < 10


def test_files_moved_out_or_in_subfolders_are_ignored(tmp_path):
    src = folder(tmp_path)
    try:
        elsewhere = tmp_path / "elsewhere"
        elsewhere.mkdir()
        p = drop(tmp_path / "in", "away.png", part_image(0, False))
        drain(src, 1)
        os.replace(p, elsewhere / "away.png")  # a "moved" event whose destination is outside the folder
        drop(tmp_path / "in" / "sub", "deep.png", part_image(1, False))  # not recursive
        time.sleep(0.3)
        src.rescan()
        assert src.poll() is None and src.depth() == 0
    finally:
        src.stop()
