"""`make demo`: the whole pipeline on a synthetic product, on one machine, in a few minutes.

A synthetic data set (made once under demo/data, or `--data`), the train flow into demo/models/part, then
`inspector watch` on the hot folder demo/line/incoming fed by a simulated camera that now and then makes a
defective part (alerts to a local webhook, and to MQTT when a broker answers on 127.0.0.1:1883), and the
dashboard with a review token. After `--seconds` or Ctrl-C the watcher finishes what it took, everything
stops, and a summary compares what was flagged with the camera's ground truth. The line folder starts empty
each run; the model folder keeps its versions, so a second run shows the gate deciding.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import cv2
import numpy as np
import yaml

from inspector.data.synthetic import DEFECTS, add_defect, good_part
from inspector.files import atomic_write

DEMO = Path("demo")


class Camera(threading.Thread):
    """Writes a part image into the hot folder every `interval` s (temp name, then rename, as cameras should)."""

    def __init__(self, folder: Path, size: int, defect_rate: float, interval: float, seed: int = 1) -> None:
        super().__init__(name="camera", daemon=True)
        self.folder, self.size, self.rate, self.interval = folder, size, defect_rate, interval
        self.rng = np.random.default_rng(seed)
        self.truth: dict[str, str] = {}  # file name -> "good" or the defect kind
        self.stop = threading.Event()

    def run(self) -> None:
        n = 0
        while not self.stop.wait(self.interval):
            img = good_part(self.rng, (self.size, self.size))
            kind = str(self.rng.choice(DEFECTS)) if self.rng.random() < self.rate else "good"
            if kind != "good":
                img, _ = add_defect(img, kind, self.rng)
            name = f"part_{n:05d}.png"
            atomic_write(self.folder / name, cv2.imencode(".png", img)[1].tobytes())
            self.truth[name] = kind
            n += 1


class Webhook:
    """A local alert receiver standing in for the plant's MES: counts the alerts the watcher delivers."""

    def __init__(self) -> None:
        self.alerts: list[dict] = []
        hook = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server API
                hook.alerts.append(json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0)))))
                self.send_response(204)
                self.end_headers()

            def log_message(self, *_a) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/alerts"
        threading.Thread(target=self.server.serve_forever, name="webhook", daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def pick_port(wanted: int = 0) -> int:
    """`wanted` when it is free, else any free port."""
    for port in (wanted, 0):
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
                return s.getsockname()[1]
            except OSError:
                continue
    raise OSError("no free port")


def port_answers(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


def ensure_data(root: Path, size: int) -> Path:
    """The bundled synthetic product, generated once (a marker says it is complete)."""
    from inspector.data.synthetic import write_dataset

    if not (root / ".complete").is_file():
        shutil.rmtree(root, ignore_errors=True)
        write_dataset(root, n_train=100, n_test_good=20, n_test_defect=6, size=(size, size), seed=0)
        (root / ".complete").write_text("synthetic demo data set\n")
        print(f"demo: generated a synthetic product data set in {root}")
    return root


def train_model(data: Path, model: Path, short_side: int, steps: int):
    from flows.train import train
    from inspector.config.fit import CalibrateSettings, FitSettings

    fit = FitSettings(short_side=short_side, steps=steps, bank_size=1024, batch_size=1024)
    return train(data, model, fit, CalibrateSettings(fpr=0.05))


def line_config(line: Path, model: Path, hook_url: str, mqtt: bool, ops_port: int) -> Path:
    sinks = [{"kind": "webhook", "name": "mes", "url": hook_url}]
    if mqtt:
        sinks.append({"kind": "mqtt", "name": "plant-mqtt", "host": "127.0.0.1", "port": 1883})
    doc = {
        "line": "demo",
        "model": {"path": str(model.resolve()), "providers": ["cpu"], "threads": 1, "reload_check_s": 2},
        "sources": [{"kind": "folder", "name": "camera", "path": "incoming", "stable_s": 0.3, "rescan_s": 2}],
        "sinks": sinks,
        "store": {"url": "sqlite:///store/store.db", "save_map": True},
        "outbox": {"backoff_min_s": 0.5, "backoff_max_s": 5},
        "ops": {"port": ops_port},
    }
    path = line / "line.yaml"
    path.write_text("# written by `make demo` (launch/demo.py)\n" + yaml.safe_dump(doc, sort_keys=False))
    return path


def spawn(args: list[str], log: Path, env: dict | None = None) -> subprocess.Popen:
    """An `inspector` command in its own session: Ctrl-C reaches the demo only, which stops it in order."""
    return subprocess.Popen(
        [sys.executable, "-m", "inspector.cli.main", *args],
        stdout=open(log, "ab"),
        stderr=subprocess.STDOUT,
        env={**os.environ, **(env or {})},
        start_new_session=True,
    )


def wait_http(url: str, proc: subprocess.Popen, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except OSError:
            time.sleep(0.3)
    raise SystemExit(f"demo: {url} did not answer; see the logs under {DEMO / 'line'}")


def stop(proc: subprocess.Popen | None, timeout: float = 60) -> int | None:
    """SIGTERM, then wait: the watcher commits every frame it scored before it exits."""
    if proc is None:
        return None
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        return proc.wait()


def drain(incoming: Path, watcher: subprocess.Popen, timeout: float = 30) -> None:
    """Let the watcher score what the camera already wrote."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and watcher.poll() is None and any(incoming.glob("*.png")):
        time.sleep(0.3)


def store_facts(db: Path) -> dict:
    """Counters, flagged file names and alerts (per sink) from the line's store."""
    import sqlalchemy as sa

    from inspector.io.schema import Flagged, Outbox
    from inspector.io.store import Store

    store = Store.open(f"sqlite:///{db}")
    try:
        with store.engine.connect() as c:
            flagged = set(c.scalars(sa.select(Flagged.origin)))
            alerts = dict(c.execute(sa.select(Outbox.sink, sa.func.count()).group_by(Outbox.sink)).all())
        return {
            "counters": store.counters().get("camera", {}),
            "flagged": flagged,
            "alerts": alerts,
            "pending": store.pending_count(),
        }
    finally:
        store.close()


def summary(line: Path, cam: Camera, hook: Webhook) -> list[str]:
    """What happened, against the camera's ground truth."""
    facts = store_facts(line / "store" / "store.db")
    scored = {n for n in cam.truth if (line / "incoming" / "processed" / n).exists()}
    defects = {n for n in scored if cam.truth[n] != "good"}
    flagged = facts["flagged"]
    c = facts["counters"]
    return [
        f"camera: {len(cam.truth)} parts written, {sum(k != 'good' for k in cam.truth.values())} of them defective",
        f"watcher: {c.get('scored', 0)} frames scored, {len(flagged)} flagged, {c.get('errors', 0)} unreadable",
        f"defects caught: {len(defects & flagged)} of {len(defects)} scored; "
        f"false alarms: {len(flagged - defects)} "
        f"of {len(scored - defects)} good parts",
        f"alerts raised: {facts['alerts'].get('mes', 0)}; delivered to the webhook: {len(hook.alerts)}"
        + (
            f"; to MQTT: {facts['alerts']['plant-mqtt'] - facts['pending'].get('plant-mqtt', 0)}"
            if "plant-mqtt" in facts["alerts"]
            else "; MQTT: no broker on 127.0.0.1:1883"
        ),
    ]


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="Run the whole inspector pipeline on a synthetic product.")
    p.add_argument("--seconds", type=float, default=60, help="how long the simulated camera runs (default 60)")
    p.add_argument("--data", type=Path, help="your own data set (train/good, test/...) instead of the synthetic one")
    p.add_argument("--size", type=int, default=128, help="synthetic image size and network short side (px)")
    p.add_argument("--steps", type=int, default=300, help="autoencoder training steps")
    p.add_argument("--defect-rate", type=float, default=0.15, help="share of defective parts from the camera")
    p.add_argument("--interval", type=float, default=0.5, help="seconds between camera frames")
    p.add_argument("--port", type=int, default=8080, help="dashboard port (another free one if taken)")
    p.add_argument("--keep-dashboard", action="store_true", help="keep serving the dashboard after the summary")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    try:
        return demo(parse(argv))
    except KeyboardInterrupt:
        print("\ndemo: interrupted", file=sys.stderr)
        return 130


def demo(a: argparse.Namespace) -> int:
    t0 = time.monotonic()
    data = a.data or ensure_data(DEMO / "data" / "part", a.size)
    model = DEMO / "models" / "part"
    print(f"demo: training {model} on {data} with the train flow (Prefect, no server needed)")
    result = train_model(data, model, a.size, a.steps)
    print(f"demo: {result.version} {'is current' if result.promoted else 'registered, not promoted'}; gate:")
    print("\n".join(f"  {c}" for c in result.checks))
    return run_line(a, model, t0)


def run_line(a: argparse.Namespace, model: Path, t0: float) -> int:
    """Watcher + dashboard + camera for `a.seconds`, then a clean stop and the summary."""
    from inspector.io.store import Store

    line = DEMO / "line"
    shutil.rmtree(line, ignore_errors=True)
    (line / "incoming").mkdir(parents=True)
    hook, token = Webhook(), secrets.token_urlsafe(18)
    port = pick_port(a.port)
    config = line_config(line, model, hook.url, port_answers(1883), pick_port())
    Store.open(f"sqlite:///{(line / 'store' / 'store.db').resolve()}").close()  # the dashboard needs it to exist
    watcher = spawn(["watch", "--config", str(config)], line / "watcher.log")
    dashboard = spawn(
        ["dashboard", "--config", str(config), "--port", str(port)], line / "dashboard.log", {"INSPECTOR_TOKEN": token}
    )
    cam = Camera(line / "incoming", a.size, a.defect_rate, a.interval)
    url = f"http://127.0.0.1:{port}/"
    try:
        wait_http(url, dashboard)
        print(
            f"demo: dashboard on {url} (review token: {token}); camera runs for {a.seconds:.0f} s, Ctrl-C stops early"
        )
        cam.start()
        deadline = time.monotonic() + a.seconds
        while time.monotonic() < deadline and watcher.poll() is None:
            time.sleep(0.5)
    except KeyboardInterrupt:
        print("\ndemo: stopping")
    finally:
        code = shutdown(cam, watcher, None if a.keep_dashboard else dashboard, line / "incoming")
    print(
        "\n".join(
            [
                "",
                "demo summary",
                *(f"  {s}" for s in summary(line, cam, hook)),
                f"  watcher exit code: {code}",
                f"  model registry: {model} (`inspector promote`), line: {line} (logs, store, media)",
                f"  see it again: .venv/bin/inspector dashboard --config {config}",
                f"  total time: {time.monotonic() - t0:.0f} s",
            ]
        )
    )
    hook.close()
    return finish_dashboard(dashboard, url, a.keep_dashboard) if code == 0 else 1


def shutdown(cam: Camera, watcher: subprocess.Popen, dashboard: subprocess.Popen | None, incoming: Path) -> int | None:
    """Camera off, the watcher scores what is left and stops; a second Ctrl-C meanwhile must not orphan them."""
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        cam.stop.set()
        if cam.is_alive():
            cam.join()
        drain(incoming, watcher)
        code = stop(watcher)
        stop(dashboard, 30)
        return code
    finally:
        signal.signal(signal.SIGINT, previous)


def finish_dashboard(dashboard: subprocess.Popen, url: str, keep: bool) -> int:
    if keep and dashboard.poll() is None:
        print(f"demo: the dashboard keeps serving on {url}; Ctrl-C stops it")
        try:
            dashboard.wait()
        except KeyboardInterrupt:
            pass
    stop(dashboard, 30)
    return 0


if __name__ == "__main__":
    sys.exit(main())
