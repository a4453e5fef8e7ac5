"""The CLI: one clear line and a non-zero exit for every mistake a user can make."""

import pytest

from inspector.cli.main import main


@pytest.mark.parametrize(
    "argv,words",
    [
        (["fit", "{tmp}/nope", "--out", "{tmp}/m"], "does not exist"),
        (["fit", "{tmp}/empty", "--out", "{tmp}/m"], "no images"),
        (["calibrate", "{tmp}/nope"], "does not exist"),
        (["calibrate", "{tmp}/empty"], "not a fitted model folder"),
        (["evaluate", "{tmp}/nope"], "does not exist"),
        (["fit", "{tmp}/empty", "--out", "{tmp}/m", "--short-side", "5"], "short_side"),
        (
            ["fit", "{tmp}/empty", "--out", "{tmp}/m", "--set", "gauss_cel=1"],
            "gauss_cel: unknown key (did you mean 'gauss_cell'?)",
        ),
        (["fit", "{tmp}/empty", "--out", "{tmp}/m", "--set", "gauss_cell=0"], "gauss_cell: Input should be greater"),
        (["fit", "{tmp}/empty", "--out", "{tmp}/m", "--set", "tiles=1x"], "tiles must be auto, off or ROWSxCOLS"),
    ],
)
def test_user_errors_are_one_line(tmp_path, capsys, argv, words):
    (tmp_path / "empty").mkdir()
    code = main([a.format(tmp=tmp_path) for a in argv])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert len(err.splitlines()) == 1 and words in err and "Traceback" not in err


def test_fit_calibrate_evaluate_score_from_the_command_line(synthetic_data, tmp_path, capsys):
    out = tmp_path / "m"
    argv = [
        "fit",
        str(synthetic_data),
        "--out",
        str(out),
        "--short-side",
        "96",
        "--steps",
        "100",
        "--holdout",
        "random",
        "--exposure",
        "none",
        "-q",
        "--set",
        "gauss_cell=1",
        "--set",
        "hidden=64",
    ]
    assert main(argv) == 0
    from inspector.pipeline.checkpoint import FIT_FILE, load_model, read_json, staging

    assert (
        read_json(staging(out) / FIT_FILE, "")["holdout_policy"] == "random" and load_model(out)[1].exposure == "none"
    )
    net = load_model(out)[0]
    assert (net.cfg.gauss_cell, net.cfg.hidden) == (1, 64)
    assert net.gauss_prec.shape[0] == net.grid[0] * net.grid[1]  # one covariance per position, as asked
    assert main(["calibrate", str(out), "--fpr", "0.05"]) == 0
    assert "flagged when its score reaches 1.0" in capsys.readouterr().out
    assert main(["evaluate", str(out), "-q"]) == 0
    assert "image_auroc" in capsys.readouterr().out
    img = next((synthetic_data / "test" / "blob").iterdir())
    assert main(["score", str(out), str(img), "--save-map", str(tmp_path / "maps")]) == 0
    assert "x" in capsys.readouterr().out and any((tmp_path / "maps").iterdir())
    folder = synthetic_data / "test" / "good"  # a folder: every image directly in it
    assert main(["score", str(out), str(folder)]) == 0
    assert len(capsys.readouterr().out.splitlines()) == len([p for p in folder.iterdir() if p.suffix == ".png"])
    (tmp_path / "none").mkdir()
    assert main(["score", str(out), str(tmp_path / "none"), str(img)]) == 1  # the image is still scored
    got = capsys.readouterr()
    assert "no images in it" in got.err and len(got.out.splitlines()) == 1
