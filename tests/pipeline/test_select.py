"""Per-product selection in fit: the rule picks the clearly better candidate, keeps the cheaper one on a tie,
leaves hand-set terms alone, and the fitted model records and carries what it chose."""

import json

import numpy as np

from inspector.config.fit import FitSettings
from inspector.pipeline import select
from inspector.pipeline.checkpoint import FIT_FILE, load_model, staging
from inspector.pipeline.fit import fit
from tests.conftest import FAST_FIT


def _rigged(monkeypatch, separation: dict[str, float]):
    """Components replaced by ids; candidate c scores defect images `separation[c]` above good ones (plus noise)."""
    rng = np.random.default_rng(0)
    monkeypatch.setattr(select, "damaged", lambda net, pre, holdout, seed: [("bad", i) for i in range(60)])
    noise = {c: rng.normal(0, 1, 200) for c in separation}

    def with_weights(net, overrides):
        name = next(c.name for c in CANDS if c.overrides == overrides)
        return lambda comps: (
            noise[name][comps[1] + (100 if comps[0] == "bad" else 0)] + (separation[name] if comps[0] == "bad" else 0.0)
        )

    monkeypatch.setattr(select, "with_weights", with_weights)
    good = [("good", i) for i in range(30)]
    return select.choose(None, None, CANDS, good, [], [], 0)


CANDS = [select.Candidate("cheap", {"w_latent": 0.0}), select.Candidate("costly", {"w_latent": 1.0})]


def test_selection_picks_the_candidate_that_clearly_separates_defects(monkeypatch):
    sel = _rigged(monkeypatch, {"cheap": 0.0, "costly": 4.0})
    assert sel.chosen.name == "costly" and sel.synthetic_defects == 60
    rows = {r["name"]: r for r in sel.tried}
    assert rows["costly"]["synthetic_auroc"] > 0.95 and rows["cheap"]["synthetic_auroc"] < 0.7
    assert sel.reason.startswith("costly: AUROC")


def test_selection_keeps_the_cheaper_candidate_when_both_separate_alike(monkeypatch):
    assert _rigged(monkeypatch, {"cheap": 6.0, "costly": 6.0}).chosen.name == "cheap"


def test_plan_searches_only_what_was_not_set_by_hand():
    search, cands = select.plan(FitSettings(), 50)
    net = search.network
    assert len(cands) == 4 and net.w_latent == 1.0 and net.w_global == 1.0 and net.global_bank == 50
    search, cands = select.plan(FitSettings(w_latent=0.0), 50)
    assert len(cands) == 2 and search.network.w_latent == 0.0 and all("w_latent" not in c.overrides for c in cands)
    assert len(select.plan(FitSettings(select=False), 50)[1]) == 1


def test_fit_records_its_choice_and_the_model_carries_it(synthetic_data, tmp_path):
    r = fit(synthetic_data, tmp_path / "m", FitSettings(**FAST_FIT, select_labelled=False), show=False)
    info = json.loads((staging(tmp_path / "m") / FIT_FILE).read_text())["selection"]
    assert r.selection == info and len(info["tried"]) == 4 and info["synthetic_defects"] >= 60
    best = max(row["criterion"] for row in info["tried"])
    chosen = next(row for row in info["tried"] if row["name"] == info["chosen"])
    assert chosen["criterion"] >= best - select.TIE
    net, _, blob = load_model(tmp_path / "m")
    assert net.cfg.w_latent == info["settings"]["w_latent"] and net.cfg.w_global == info["settings"]["w_global"]
    assert (net.bank.shape[0] > 1) == (info["settings"]["w_latent"] > 0)  # an unchosen kNN leaves no bank behind


def test_a_term_set_by_hand_is_not_searched(synthetic_data, tmp_path):
    r = fit(
        synthetic_data, tmp_path / "m", FitSettings(**FAST_FIT, w_latent=0.0, global_bank=0, w_global=0.0), show=False
    )
    assert r.selection is None
    assert load_model(tmp_path / "m")[0].cfg.w_latent == 0.0
