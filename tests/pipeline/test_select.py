"""Per-product selection in fit: the rule picks the clearly better candidate, keeps the cheaper one on a tie,
leaves hand-set terms alone, and the fitted model records and carries what it chose."""

import json

import numpy as np

from inspector.config.fit import FitSettings
from inspector.pipeline import select
from inspector.pipeline.checkpoint import FIT_FILE, load_model, staging
from inspector.pipeline.fit import fit
from tests.conftest import FAST_FIT


def _rigged(monkeypatch, separation: dict[tuple[str, str], float], exposures=("standardize",)):
    """Components replaced by ids; candidate c on the fit with exposure e scores defect images `separation[(e, c)]`
    above good ones (plus noise)."""
    rng = np.random.default_rng(0)
    monkeypatch.setattr(select, "damaged", lambda net, pre, holdout, seed: [("bad", i) for i in range(60)])
    noise = {k: rng.normal(0, 1, 200) for k in separation}

    def with_weights(exposure, overrides):
        key = (exposure, next(c.name for c in CANDS if c.overrides == overrides))
        return lambda comps: (
            noise[key][comps[1] + (100 if comps[0] == "bad" else 0)] + (separation[key] if comps[0] == "bad" else 0.0)
        )

    monkeypatch.setattr(select, "with_weights", with_weights)
    good = [("good", i) for i in range(30)]
    fits = [select.Fitted(FitSettings(exposure=e), e, None, [], good) for e in exposures]  # net = its exposure
    return select.choose(fits, CANDS, [], [], 0)


CANDS = [select.Candidate("cheap", {"w_latent": 0.0}), select.Candidate("costly", {"w_latent": 1.0})]


def test_selection_picks_the_candidate_that_clearly_separates_defects(monkeypatch):
    sel = _rigged(monkeypatch, {("standardize", "cheap"): 0.0, ("standardize", "costly"): 4.0})
    assert sel.chosen.name == "costly" and sel.synthetic_defects == 60 and sel.fit == 0
    rows = {r["name"]: r for r in sel.tried}
    assert rows["costly"]["synthetic_auroc"] > 0.95 and rows["cheap"]["synthetic_auroc"] < 0.7
    assert sel.reason.startswith("costly: AUROC")


def test_selection_keeps_the_cheaper_candidate_when_both_separate_alike(monkeypatch):
    sel = _rigged(monkeypatch, {("standardize", "cheap"): 6.0, ("standardize", "costly"): 6.0})
    assert sel.chosen.name == "cheap"


def test_selection_picks_the_exposure_whose_fit_separates_defects(monkeypatch):
    """Two fits (fixed and product exposure level): the one where defects stand out wins, whichever term."""
    sep = {("standardize", "cheap"): 0.3, ("standardize", "costly"): 0.3}
    sep |= {("product", "cheap"): 4.0, ("product", "costly"): 4.0}
    sel = _rigged(monkeypatch, sep, ("standardize", "product"))
    assert sel.fit == 1 and sel.chosen.name == "cheap"  # the cheaper term on the better fit
    assert sel.to_dict()["chosen"] == "cheap, exposure product" and sel.to_dict()["exposure"] == "product"
    assert len(sel.tried) == 4 and sum(r["chosen"] for r in sel.tried) == 1
    sep = {k: 4.0 for k in sep}  # alike: the first (fixed level) is kept
    assert _rigged(monkeypatch, sep, ("standardize", "product")).fit == 0


def test_feature_gaussian_is_searched_by_default_unless_a_term_was_set_by_hand():
    assert select.feature_plan(FitSettings(select_features=False)) == []
    on = FitSettings()  # on by default
    assert [c.name for c in select.feature_plan(on)] == [
        "feature Gaussian (map maximum)",
        "feature Gaussian (top 2% mean)",
    ]
    assert all(
        c.overrides["gauss_source"] == "features" and c.overrides["gauss_cell"] == 1 for c in select.feature_plan(on)
    )
    for hand in ({"gauss_source": "latent"}, {"gauss_cell": 2}, {"w_latent": 1.0}, {"select": False}):
        assert select.feature_plan(FitSettings(**hand)) == [], hand
    assert [c.name for c in select.feature_plan(FitSettings(score_top=0.05))] == ["feature Gaussian"]


def test_fit_judges_the_feature_gaussian_after_every_latent_candidate(synthetic_data, tmp_path):
    s = FitSettings(**FAST_FIT, select_labelled=False, select_exposure=True)
    info = fit(synthetic_data, tmp_path / "m", s, show=False).selection
    # 8 latent candidates per exposure, then the feature Gaussian's 2 per exposure (costlier: after every latent one)
    assert [row["name"].startswith("feature Gaussian") for row in info["tried"]] == [False] * 16 + [True] * 4
    assert {row["exposure"] for row in info["tried"]} == {"standardize", "product"}
    net, _, _ = load_model(tmp_path / "m")
    assert net.cfg.gauss_source == info["settings"].get("gauss_source", "latent")
    reads = net.feature_dim if net.cfg.gauss_source == "features" else net.cfg.latent
    kept = net.gauss_basis.shape[1] if net.cfg.gauss_rank else net.gauss_prec.shape[2]  # low-rank: few images
    assert net.gauss_mean.shape[1] == reads == kept


def test_plan_searches_only_what_was_not_set_by_hand():
    search, cands = select.plan(FitSettings(), 50)
    net = search.network
    assert len(cands) == 8 and net.w_latent == 1.0 and net.w_global == 1.0 and net.global_bank == 50
    assert {c.overrides["score_top"] for c in cands} == {0.0, select.TOP}
    search, cands = select.plan(FitSettings(w_latent=0.0, score_top=0.0), 50)
    assert len(cands) == 2 and search.network.w_latent == 0.0 and all("w_latent" not in c.overrides for c in cands)
    assert len(select.plan(FitSettings(select=False), 50)[1]) == 1
    assert select.exposures(FitSettings()) == ["standardize"]  # the fixed level unless asked
    assert select.exposures(FitSettings(select_exposure=True)) == ["standardize", "product"]
    assert select.exposures(FitSettings(select_exposure=True, exposure="standardize")) == ["standardize"]  # by hand
    assert select.exposures(FitSettings(select_exposure=True, select=False)) == ["standardize"]


def test_fit_records_its_choice_and_the_model_carries_it(synthetic_data, tmp_path):
    r = fit(synthetic_data, tmp_path / "m", FitSettings(**FAST_FIT, select_labelled=False), show=False)
    info = json.loads((staging(tmp_path / "m") / FIT_FILE).read_text())["selection"]
    # one exposure level: 8 latent candidates, then the feature Gaussian's 2
    assert r.selection == info and len(info["tried"]) == 10 and info["synthetic_defects"] >= 60
    assert [row["name"].startswith("feature Gaussian") for row in info["tried"]] == [False] * 8 + [True] * 2
    best = max(row["criterion"] for row in info["tried"])
    chosen = next(row for row in info["tried"] if row["name"] == info["chosen"])
    assert chosen["criterion"] >= best - select.TIE
    net, _, blob = load_model(tmp_path / "m")
    assert net.cfg.w_latent == info["settings"]["w_latent"] and net.cfg.w_global == info["settings"]["w_global"]
    assert net.cfg.score_top == info["settings"]["score_top"]
    saved = json.loads((staging(tmp_path / "m") / FIT_FILE).read_text())
    pre = load_model(tmp_path / "m")[1]
    assert (pre.exposure_std != 0.25) == (info["exposure"] == "product") and saved["selection"]["exposure"] in (
        "standardize",
        "product",
    )
    assert (net.bank.shape[0] > 1) == (info["settings"]["w_latent"] > 0)  # an unchosen kNN leaves no bank behind


def test_a_term_set_by_hand_is_not_searched(synthetic_data, tmp_path):
    r = fit(
        synthetic_data,
        tmp_path / "m",
        FitSettings(**FAST_FIT, w_latent=0.0, global_bank=0, w_global=0.0, score_top=0.0, exposure="standardize"),
        show=False,
    )
    assert r.selection is None
    assert load_model(tmp_path / "m")[0].cfg.w_latent == 0.0
