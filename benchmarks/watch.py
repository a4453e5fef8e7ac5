"""Benchmark (not a test): the watcher end to end against the raw scorer, and alert latency.

1. raw: `Scorer.score(path)` over N images (read + decode + score), one after another.
2. e2e: the same N images dropped into the hot folder of a running `inspector watch` (real process,
   SQLite store, MQTT sink on 127.0.0.1:1883): N / (last commit - first drop).
   Raw and e2e alternate in rounds on the same images, so both see the same load on a shared machine.
3. latency: images dropped at a fixed rate (default 10/s), every one anomalous (cooldown 0), time from
   the file appearing (rename done) to its MQTT message arriving at a subscriber; p50 / p99.

4. cameras (`--cameras 1,4,8`): N video files played at 25 fps each (written here with cv2.VideoWriter from
   synthetic parts, 256x256 MJPG, a 3-frame defect every 2 s per camera) on one watcher: scored frames/s,
   dropped frames per camera, alert latency from the defect appearing to its MQTT message (p50/p99), and the
   watcher process's CPU share of the box. The largest N measured without a dropped frame is stated.

Throughput is run with ORT's default thread pool and with one thread, and (unless --no-spin-compare) with the
default pool's threads spinning between operators as ORT does by default and inspector did before #18
($INSPECTOR_ORT_SPIN=1): all variants in the same rounds, so raw and watcher of each are compared under the same load.

Writes benchmarks/results/watch.json. Without --model, a small model is fitted on synthetic parts first
(torch needed for that step only; the watcher itself runs torch-free).

    .venv/bin/python benchmarks/watch.py [--model models/part] [--n 1000] [--size 256] [--cameras 1,4,8]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import cv2
import numpy as np
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from inspector.data.synthetic import DEFECTS, add_defect, good_part  # noqa: E402
from inspector.runtime.session import SPIN_VAR  # noqa: E402


def build_model(model: Path, work: Path, size: int) -> Path:
    """fit -> calibrate -> export (first export becomes `current`) on synthetic good parts."""
    from inspector.config.fit import CalibrateSettings, FitSettings
    from inspector.data.synthetic import write_dataset
    from inspector.pipeline.calibrate import calibrate_model
    from inspector.pipeline.export import export_model
    from inspector.pipeline.fit import fit

    data = write_dataset(work / "data", n_train=110, n_test_good=10, n_test_defect=4, size=(size, size), seed=3)
    fit(data, model, FitSettings(short_side=min(size, 128), steps=150, bank_size=512, batch_size=1024), show=False)
    calibrate_model(model, CalibrateSettings(fpr=0.05))
    export_model(model)
    return model


def make_images(folder: Path, n: int, size: int, defect_every: int, seed: int = 0) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(n):
        img = good_part(rng, (size, size))
        if defect_every and i % defect_every == 0:
            img, _ = add_defect(img, DEFECTS[i % len(DEFECTS)], rng)
        p = folder / f"img{i:05d}.png"
        cv2.imwrite(str(p), img)
        paths.append(p)
    return paths


def raw_seconds(scorer, paths: list[Path]) -> float:
    t = time.perf_counter()
    for p in paths:
        scorer.score(p)
    return time.perf_counter() - t


class Subscriber:
    """MQTT subscriber recording arrival time per image name."""

    def __init__(self, topic: str) -> None:
        import paho.mqtt.client as mqtt

        self.arrived: dict[str, float] = {}  # origin -> first arrival
        self.events: list[tuple[str, float]] = []  # (source, arrival) of every message
        self.ready = threading.Event()
        self.c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"bench-{uuid.uuid4().hex[:8]}")
        self.c.on_connect = lambda c, u, f, rc, p: c.subscribe(topic, qos=1)
        self.c.on_subscribe = lambda *a: self.ready.set()
        self.c.on_message = self._on_message
        self.c.connect("127.0.0.1", 1883)
        self.c.loop_start()
        assert self.ready.wait(10), "no MQTT broker on 127.0.0.1:1883"

    def _on_message(self, _c, _u, m) -> None:
        doc, t = json.loads(m.payload), time.time()
        self.arrived.setdefault(doc["origin"], t)
        self.events.append((doc["source"], t))

    def close(self) -> None:
        self.c.disconnect()
        self.c.loop_stop()


def start_watcher(
    work: Path,
    model: Path,
    line: str,
    name: str,
    rules: dict | None = None,
    threads: int = 0,
    env: dict | None = None,
) -> tuple[subprocess.Popen, Path, Path]:
    inbox, db = work / name / "in", work / name / "store.db"
    inbox.mkdir(parents=True)
    doc = {
        "line": line,
        "model": {"path": str(model), "providers": ["cpu"], "threads": threads},
        "sources": [{"kind": "folder", "name": name, "path": str(inbox)}],
        "sinks": [{"kind": "mqtt", "name": "mq"}],
        "store": {"url": f"sqlite:///{db}"},
        "ops": {"port": 0},
        "rules": rules or {},
    }
    cfg = work / name / "line.yaml"
    cfg.write_text(yaml.safe_dump(doc))
    log = open(work / name / "watch.log", "wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "inspector.cli.main", "watch", "--config", str(cfg)],
        cwd=ROOT,
        stdout=log,
        stderr=subprocess.STDOUT,
        env={**os.environ, **(env or {})},
    )
    wait(lambda: "watching line" in (work / name / "watch.log").read_text(), 120, "watcher start")
    return proc, inbox, db


def wait(cond, timeout: float, what: str) -> None:
    end = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > end:
            raise SystemExit(f"timed out waiting for {what}")
        time.sleep(0.02)


def scored(db: Path) -> tuple[int, float | None]:
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=30) as c:
        row = c.execute("SELECT scored, last_seen FROM frames").fetchone()
    if not row:
        return 0, None
    from datetime import datetime, timezone

    return row[0], datetime.fromisoformat(row[1]).replace(tzinfo=timezone.utc).timestamp()


def drop_into(inbox: Path, src: Path) -> float:
    """Copy under a temp name, then rename into the hot folder; returns when it appeared."""
    tmp = inbox / f".{src.name}.tmp"
    shutil.copyfile(src, tmp)
    os.replace(tmp, inbox / src.name)
    return time.time()


@dataclass
class Variant:
    """One ORT setting, applied to the raw scorer and the watcher alike."""

    label: str
    threads: int  # 0: ORT's default pool (one thread per core)
    spin: bool  # ORT's pool threads busy-wait between operators (ORT's default; off in inspector since #18)

    def env(self) -> dict:
        return {SPIN_VAR: "1" if self.spin else "0"}


def throughput(work: Path, model: Path, paths: list[Path], rounds: int, variants: list[Variant]) -> dict[str, dict]:
    """Per variant: raw and e2e img/s, measured in rounds on the same images so that all see the same machine load:
    in each round every variant's raw scorer scores a slice, then the same slice is dropped into its running
    watcher (one watcher per variant, idle while the others work)."""
    from inspector.runtime import Scorer

    work.mkdir(parents=True, exist_ok=True)
    runs = {}
    for v in variants:
        os.environ[SPIN_VAR] = v.env()[SPIN_VAR]  # read when the session is created
        scorer = Scorer.load(model, providers=["cpu"], threads=v.threads)
        os.environ.pop(SPIN_VAR)
        for p in paths[:10]:
            scorer.score(p)  # warm-up
        proc, inbox, db = start_watcher(
            work / v.label, model, f"bench{uuid.uuid4().hex[:6]}", "e2e", None, v.threads, v.env()
        )
        staged = work / v.label / "e2e" / "staging"  # same filesystem: the drop itself is a cheap rename
        staged.mkdir()
        for p in paths:
            shutil.copyfile(p, staged / p.name)
        runs[v.label] = {
            "scorer": scorer,
            "proc": proc,
            "inbox": inbox,
            "db": db,
            "staged": staged,
            "raw": [],
            "e2e": [],
        }
    try:
        for k in range(rounds):
            batch = paths[k::rounds]
            for r in runs.values():
                r["raw"].append(raw_seconds(r["scorer"], batch))
                done = scored(r["db"])[0]
                t0 = time.time()
                for p in batch:
                    os.replace(r["staged"] / p.name, r["inbox"] / p.name)
                wait(lambda: scored(r["db"])[0] >= done + len(batch), 3600, "batch scored")  # noqa: B023 - called here
                r["e2e"].append(scored(r["db"])[1] - t0)
    finally:
        for r in runs.values():
            r["proc"].send_signal(signal.SIGTERM)
            r["proc"].wait(60)
    out = {}
    for label, r in runs.items():
        raw, e2e = len(paths) / sum(r["raw"]), len(paths) / sum(r["e2e"])
        sizes = [len(paths[k::rounds]) for k in range(rounds)]
        out[label] = {
            "throughput_ratio": round(e2e / raw, 3),
            "e2e_fps": round(e2e, 1),
            "raw_fps": round(raw, 1),
            "ratio_per_round": [round(rs / es, 3) for rs, es in zip(r["raw"], r["e2e"], strict=True)],
            "raw_fps_per_round": [round(n / s, 1) for n, s in zip(sizes, r["raw"], strict=True)],
        }
    return out


def latency_ms(work: Path, model: Path, paths: list[Path], rate: float, threads: int) -> dict:
    line = f"lat{uuid.uuid4().hex[:6]}"
    sub = Subscriber(f"inspector/{line}/+/alert")
    # every image an alert: a threshold far below any score, no cooldown
    proc, inbox, _ = start_watcher(
        work, model, line, "lat", rules={"threshold": 1e-9, "cooldown_s": 0}, threads=threads
    )
    appeared: dict[str, float] = {}
    try:
        t_next = time.time()
        for p in paths:
            time.sleep(max(0.0, t_next - time.time()))
            appeared[p.name] = drop_into(inbox, p)
            t_next += 1.0 / rate
        wait(lambda: len(sub.arrived) >= len(paths), 120, "all alerts")
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(60)
        sub.close()
    lat = np.array([(sub.arrived[k] - appeared[k]) * 1000 for k in appeared])
    return {
        "p50": round(float(np.percentile(lat, 50)), 1),
        "p99": round(float(np.percentile(lat, 99)), 1),
        "max": round(float(lat.max()), 1),
        "n": int(lat.size),
        "rate_fps": rate,
    }


CAM_FPS = 25.0
DEFECT_EVERY_S = 2.0  # each camera shows a defect for DEFECT_FRAMES frames this often
DEFECT_FRAMES = 3


def make_videos(folder: Path, n: int, seconds: float, size: int) -> tuple[list[Path], list[int]]:
    """N MJPG videos at CAM_FPS of good parts with a short defect every DEFECT_EVERY_S (staggered per camera);
    returns the paths and the first frame index of each defect (the same in every video)."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(7)
    good = [good_part(rng, (size, size)) for _ in range(25)]
    bad = [add_defect(good[i], DEFECTS[i % len(DEFECTS)], rng)[0] for i in range(DEFECT_FRAMES)]
    frames = int(seconds * CAM_FPS)
    every = int(DEFECT_EVERY_S * CAM_FPS)
    onsets = list(range(every // 2, frames - DEFECT_FRAMES, every))
    paths = []
    for cam in range(n):
        p = folder / f"cam{cam:02d}.avi"
        vw = cv2.VideoWriter(str(p), cv2.VideoWriter_fourcc(*"MJPG"), CAM_FPS, (size, size))
        for i in range(frames):
            k = i - max((o for o in onsets if o <= i), default=-(10**9))
            vw.write(bad[k] if 0 <= k < DEFECT_FRAMES else good[(i + 3 * cam) % len(good)])
        vw.release()
        paths.append(p)
    return paths, onsets


def _cpu_seconds(pid: int) -> float:
    """User + system CPU of a process and its threads so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def cameras_run(work: Path, model: Path, videos: list[Path], onsets: list[int], seconds: float, threads: int) -> dict:
    """One watcher, one camera source per video, played in real time; see the module docstring."""
    line = f"cams{uuid.uuid4().hex[:6]}"
    sub = Subscriber(f"inspector/{line}/+/alert")
    d = work / f"cams{len(videos)}"
    d.mkdir(parents=True)
    # one alert per defect; the model was fitted on PNG parts and MJPG artefacts lift good frames to 1.1-1.9x the
    # threshold (defects 3-7x), as a fit on this camera's own frames would not: the threshold is scaled for that
    rules = {"debounce_n": 1, "debounce_m": 1, "cooldown_s": 1.0, "flag_in_cooldown": False, "threshold_scale": 2.5}
    doc = {
        "line": line,
        "model": {"path": str(model), "providers": ["cpu"], "threads": threads},
        "sources": [{"kind": "camera", "name": v.stem, "uri": str(v), "rules": rules} for v in videos],
        "sinks": [{"kind": "mqtt", "name": "mq"}],
        "store": {"url": f"sqlite:///{d / 'store.db'}"},
        "ops": {"port": 0, "log_format": "json"},
    }
    (d / "line.yaml").write_text(yaml.safe_dump(doc))
    log_path = d / "watch.log"
    proc = subprocess.Popen(
        [sys.executable, "-m", "inspector.cli.main", "watch", "--config", str(d / "line.yaml")],
        cwd=ROOT,
        stdout=open(log_path, "wb"),
        stderr=subprocess.STDOUT,
    )
    try:
        wait(lambda: log_path.read_text().count("reading cam") >= len(videos), 120, "cameras open")
        cpu0, t0 = _cpu_seconds(proc.pid), time.time()
        wait(lambda: log_path.read_text().count("end of video file") >= len(videos), seconds * 4 + 60, "videos played")
        cpu, wall = _cpu_seconds(proc.pid) - cpu0, time.time() - t0
        time.sleep(1.0)  # the last alerts on their way
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(60)
        sub.close()
    started = {}
    for ln in log_path.read_text().splitlines():
        if ln.startswith("{") and ": reading cam" in ln:
            doc_ = json.loads(ln)
            when = datetime.fromisoformat(doc_["ts"].replace("Z", "+00:00")).timestamp()
            started[doc_["msg"].split()[1].rstrip(":")] = when
    lat = []
    for v in videos:  # frame i of a video is offered at its start + (i + 1) / fps; an alert belongs to the last defect
        shown = [started[v.stem] + (o + 1) / CAM_FPS for o in onsets]  # before it (defects are 2 s apart)
        first: dict[int, float] = {}
        for src, t in sub.events:
            k = max((j for j, a in enumerate(shown) if a <= t), default=None)
            if src == v.stem and k is not None:
                first[k] = min(first.get(k, t), t)
        lat += [(t - shown[k]) * 1000 for k, t in first.items()]
    with sqlite3.connect(f"file:{d / 'store.db'}?mode=ro", uri=True) as c:
        per = {s: (sc, dr) for s, sc, dr in c.execute("SELECT source, scored, dropped FROM frames")}
    scored_total = sum(sc for sc, _ in per.values())
    return {
        "fps": round(scored_total / wall, 1),
        "offered_fps": CAM_FPS * len(videos),
        "dropped": sum(dr for _, dr in per.values()),
        "dropped_per_camera": {s: dr for s, (_, dr) in sorted(per.items())},
        "alerts": len(lat),
        "defects": len(onsets) * len(videos),
        "alert_p50_ms": round(float(np.percentile(lat, 50)), 1) if lat else None,
        "alert_p99_ms": round(float(np.percentile(lat, 99)), 1) if lat else None,
        "cpu_share": round(cpu / wall / (os.cpu_count() or 1), 3),
        "load_avg_1m": round(os.getloadavg()[0], 2),
    }  # the box's run queue: other work on a shared machine


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--model", type=Path, help="model folder with a `current` version; fitted on synthetic parts first if missing"
    )
    ap.add_argument("--n", type=int, default=1000, help="images for the throughput comparison")
    ap.add_argument("--size", type=int, default=256, help="image side in pixels")
    ap.add_argument("--rounds", type=int, default=5, help="alternating raw/e2e rounds (fair under varying load)")
    ap.add_argument("--rate", type=float, default=10.0, help="drop rate for the latency run (images/s)")
    ap.add_argument("--latency-n", type=int, default=200, help="images for the latency run")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "watch.json")
    ap.add_argument(
        "--threads",
        default="0,1",
        help="ORT CPU threads to compare, raw and watcher alike (0: ORT default); the first is the headline",
    )
    ap.add_argument(
        "--no-spin-compare",
        action="store_true",
        help="skip the side-by-side run of the first thread setting with ORT's spinning pool threads (before #18)",
    )
    ap.add_argument(
        "--cameras",
        default="1,4,8",
        help="camera counts to run, comma-separated (video files at 25 fps each on one watcher); '' skips",
    )
    ap.add_argument("--camera-seconds", type=float, default=20.0, help="length of each camera's video")
    ap.add_argument(
        "--skip-folder", action="store_true", help="only the camera runs (watch.json keeps its other fields)"
    )
    ap.add_argument("--build-model", type=Path, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.build_model:
        with tempfile.TemporaryDirectory(prefix="watch-bench-data-") as tmp:
            build_model(a.build_model, Path(tmp), a.size)
        return
    threads = [int(t) for t in str(a.threads).split(",")]
    runs: dict[str, dict] = {}
    with tempfile.TemporaryDirectory(prefix="watch-bench-") as tmp:
        work = Path(tmp)
        model = a.model or work / "models" / "part"
        if not model.exists():  # in a child process: torch's thread pool must not share this process with ORT
            subprocess.run([sys.executable, __file__, "--build-model", str(model), "--size", str(a.size)], check=True)
        if not a.skip_folder:
            paths = make_images(work / "images", a.n, a.size, defect_every=10)
            variants = [Variant(str(t), t, False) for t in threads]
            if not a.no_spin_compare:
                variants.append(Variant(f"{threads[0]}+spin", threads[0], True))
            runs = throughput(work / "tp", model, paths, a.rounds, variants)
            lat = latency_ms(
                work, model, make_images(work / "lat_images", a.latency_n, a.size, 0, seed=1), a.rate, threads[0]
            )
        cams: dict[str, dict] = {}
        for n in [int(c) for c in str(a.cameras).split(",") if c.strip()]:
            videos, onsets = make_videos(work / f"videos{n}", n, a.camera_seconds, a.size)
            cams[str(n)] = cameras_run(work, model, videos, onsets, a.camera_seconds, threads[0])
    previous = json.loads(a.out.read_text()) if a.out.exists() else {}
    if a.skip_folder:
        result = {**previous}
    else:
        head = runs[str(threads[0])]
        result = {
            **{k: head[k] for k in ("throughput_ratio", "e2e_fps", "raw_fps")},
            "alert_latency_ms": lat,
            "ort_threads": threads[0],
            "by_ort_threads": runs,
            "n_images": a.n,
            "rounds": a.rounds,
            "image_size": a.size,
            "providers": ["cpu"],
            "cpu_count": os.cpu_count(),
            "machine": platform.machine(),
            "load_avg_1m": round(os.getloadavg()[0], 2),
        }
    if cams:
        held = [int(n) for n, c in cams.items() if c["dropped"] == 0]
        result["cameras"] = cams
        result["camera_setup"] = {
            "resolution": f"{a.size}x{a.size}",
            "fps_each": CAM_FPS,
            "seconds": a.camera_seconds,
            "ort_threads": threads[0],
            "largest_without_drops": max(held) if held else 0,
        }
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(result, indent=2) + "\n")
    if cams:
        print(
            f"| cameras ({a.size}x{a.size}, {CAM_FPS:g} fps each) | scored fps | dropped (per camera) "
            "| alert p50 / p99 | CPU share | load avg |\n|---|---|---|---|---|---|"
        )
        for n, c in cams.items():
            per = ", ".join(str(v) for v in c["dropped_per_camera"].values())
            print(
                f"| {n} | {c['fps']} of {c['offered_fps']:g} | {c['dropped']} ({per}) | {c['alert_p50_ms']} / "
                f"{c['alert_p99_ms']} ms ({c['alerts']}/{c['defects']} defects) | {c['cpu_share']:.0%} "
                f"| {c['load_avg_1m']} |"
            )
        largest = result["camera_setup"]["largest_without_drops"]
        print(f"largest camera count measured without a dropped frame: {largest}")
    if a.skip_folder:
        print(f"wrote {a.out}")
        return
    print("| ORT threads | raw scorer (read+score) | watcher end to end | ratio (target >= 0.9) |\n|---|---|---|---|")
    for t, r in runs.items():
        label = {"0": "0 (default)", "0+spin": "0, spinning (ORT's default, before #18)"}.get(t, t)
        per = " ".join(f"{x:.2f}" for x in r["ratio_per_round"])
        print(f"| {label} | {r['raw_fps']} img/s | {r['e2e_fps']} img/s | {r['throughput_ratio']} (rounds: {per}) |")
    print(
        f"\nalert latency at {a.rate:g} img/s (file appears -> MQTT message), {lat['n']} alerts: "
        f"p50 {lat['p50']} ms, p99 {lat['p99']} ms (target < 1000), max {lat['max']} ms"
    )
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
