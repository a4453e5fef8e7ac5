"""`inspector` command line. Errors a user can cause print one line and exit 2; nothing half-written."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from pydantic import ValidationError

from inspector.config.base import error_line
from inspector.errors import InspectorError

log = logging.getLogger("inspector")


def _fit(a: argparse.Namespace) -> int:
    from inspector.config.fit import FitSettings, fit_overrides
    from inspector.pipeline.fit import fit

    try:
        extra = fit_overrides([kv for group in a.set for kv in group])
    except ValueError as e:
        raise InspectorError(f"--set: {e}") from None
    overrides = {
        **extra,
        **{
            k: v
            for k, v in {
                "max_pixels": a.max_pixels,
                "short_side": a.short_side,
                "backbone": a.backbone,
                "weights": a.weights,
                "steps": a.steps,
                "keep_aspect": False if a.square else None,
                "seed": a.seed,
                "holdout": a.holdout,
                "exposure": a.exposure,
                "device": a.device,
            }.items()
            if v is not None
        },
    }
    r = fit(Path(a.data), Path(a.out), FitSettings(**overrides), show=not a.quiet)
    skipped = f", skipped {r.skipped} unreadable" if r.skipped else ""
    print(
        f"fitted {r.model_dir} on {r.n_fit} good images ({r.n_holdout} held out for calibration{skipped}"
        + (f"; the {r.n_left_out} fit images too, each scored by a model that did not see it" if r.n_left_out else "")
        + f") in {r.seconds:.0f} s"
    )
    if r.tiling:
        print(f"input: {r.tiling['reason']}; see fit.json 'tiling' (--set tiles=off|auto|ROWSxCOLS fixes it)")
    if r.selection:
        print(
            f"settings: {r.selection['reason']}; see fit.json 'selection' "
            "(--set exposure=/w_latent=/w_global=/score_top= fixes them)"
        )
    return 0


def _calibrate(a: argparse.Namespace) -> int:
    from inspector.config.fit import CalibrateSettings
    from inspector.pipeline.calibrate import calibrate_model

    cal = calibrate_model(Path(a.model), CalibrateSettings(fpr=a.fpr, strategy=a.strategy))
    print(cal["meaning"])
    return 0


def _evaluate(a: argparse.Namespace) -> int:
    from inspector.pipeline.evaluate import evaluate_model, format_table

    print(format_table(evaluate_model(Path(a.model), Path(a.data) if a.data else None, show=not a.quiet)))
    return 0


def _score(a: argparse.Namespace) -> int:
    from inspector.cli.score import score_images

    return score_images(Path(a.model), [Path(p) for p in a.images], a.save_map)


def _export(a: argparse.Namespace) -> int:
    from inspector.pipeline.export import export_model

    print(f"exported {export_model(Path(a.model))}")
    return 0


def _promote(a: argparse.Namespace) -> int:
    from inspector.runtime.registry import promote

    print(f"current -> {promote(Path(a.model), a.version)}")
    return 0


def _watch(a: argparse.Namespace) -> int:
    from inspector.watcher import run

    return run(Path(a.config))


def _dashboard(a: argparse.Namespace) -> int:
    from inspector.dashboard import serve

    return serve(store=a.store, host=a.host, port=a.port, config=Path(a.config) if a.config else None)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="inspector", description="Visual inspection: fit on good parts, calibrate, export, watch."
    )
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = p.add_subparsers(dest="cmd", required=True)

    s = sub.add_parser("fit", help="learn what good looks like from defect-free images")
    s.add_argument("data", help="folder of good images, or a dataset root with train/good")
    s.add_argument("--out", required=True, help="model folder to write, e.g. models/ballscrew")
    s.add_argument(
        "--short-side",
        type=int,
        help="network input short side in px (default 256, lowered for long images "
        "to keep within --max-pixels; given, it is kept: e.g. 256 for line-scan strips)",
    )
    s.add_argument(
        "--max-pixels",
        type=int,
        help="cap on network input pixels when --short-side is not given (default 81920 = 320x256)",
    )
    s.add_argument("--square", action="store_true", help="squash images into a square instead of keeping aspect")
    s.add_argument(
        "--backbone",
        help="timm backbone name (needs --weights unless efficientnet_lite0, or lite1/lite2 with their package)",
    )
    s.add_argument("--weights", help="local backbone weights file")
    s.add_argument("--steps", type=int, help="autoencoder training steps")
    s.add_argument(
        "--exposure",
        choices=["standardize", "product", "none"],
        help="standardize: every image's intensity "
        "mean and spread set alike (to a fixed level), so camera gain or lighting drift is not an anomaly; "
        "product: alike too, at the fit images' own typical level; none: as captured (when brightness itself "
        "is the defect). Default: fit tries standardize and product and keeps the better",
    )
    s.add_argument(
        "--holdout",
        choices=["last", "random"],
        help="good images held out for calibration: the last 20%% "
        "in name order, the newest with timestamped names (default), or a seeded random 20%%",
    )
    s.add_argument("--seed", type=int)
    s.add_argument(
        "--device",
        choices=["auto", "cpu", "cuda"],
        help="where to fit: cuda (NVIDIA GPU), cpu, or auto (default: cuda when torch sees a GPU)",
    )
    s.add_argument(
        "--set",
        nargs="+",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="any other fit setting (inspector.config.FitSettings), e.g. --set gauss_cell=1 hidden=256",
    )
    s.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    s.set_defaults(func=_fit)

    s = sub.add_parser("calibrate", help="choose the alarm threshold")
    s.add_argument("model")
    s.add_argument("--fpr", type=float, default=0.01, help="target false-alarm rate on good parts (default 0.01)")
    s.add_argument(
        "--strategy", choices=["fpr", "f1"], default="fpr", help="fpr: good images only; f1: use labelled defects"
    )
    s.set_defaults(func=_calibrate)

    s = sub.add_parser("evaluate", help="metrics, heat maps and a score histogram on labelled test images")
    s.add_argument("model")
    s.add_argument("--data", help="dataset root (default: the one the model was fitted on)")
    s.add_argument("-q", "--quiet", action="store_true")
    s.set_defaults(func=_evaluate)

    s = sub.add_parser("score", help="score images: score, verdict, heat map")
    s.add_argument("model")
    s.add_argument("images", nargs="+", help="image files, or folders of them (the images directly inside)")
    s.add_argument("--save-map", help="folder to write heat-map overlays into")
    s.set_defaults(func=_score)

    s = sub.add_parser("export", help="export the calibrated model to ONNX + manifest as a new version")
    s.add_argument("model")
    s.set_defaults(func=_export)

    s = sub.add_parser("promote", help="point `current` at a version")
    s.add_argument("model")
    s.add_argument("version", help="e.g. v3")
    s.set_defaults(func=_promote)

    s = sub.add_parser("watch", help="watch folders/cameras and raise alerts")
    s.add_argument("--config", required=True, help="line config YAML")
    s.set_defaults(func=_watch)

    s = sub.add_parser("dashboard", help="review flagged items in the browser")
    s.add_argument("--store", help="store URL, e.g. sqlite:///line1/store.db")
    s.add_argument("--config", help="line config YAML (store, token)")
    s.add_argument("--host", default="127.0.0.1")
    s.add_argument("--port", type=int, default=8080)
    s.set_defaults(func=_dashboard)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        return args.func(args)
    except InspectorError as e:
        print(f"inspector: error: {e}", file=sys.stderr)
        return 2
    except ValidationError as e:
        print(f"inspector: error: {error_line(e)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("inspector: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
