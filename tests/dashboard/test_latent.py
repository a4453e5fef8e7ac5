"""The latent space end to end: synthetic parts with three defect kinds, the store, the dashboard API.

Real embeddings (the exported graph on seeded synthetic scratches, blobs and missing pieces) for the
retrieval and clustering tests; seeded clustered vectors for the store/API tests (SQLite and PostgreSQL).
"""

from __future__ import annotations

import json
import shutil
import struct
from datetime import datetime, timedelta, timezone

import numpy as np
import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient
from sklearn.metrics import normalized_mutual_info_score

from inspector.dashboard.app import create_app
from inspector.data.preprocess import overlay
from inspector.data.synthetic import add_defect, good_part
from inspector.io.media import media_paths, save_media
from inspector.io.schema import RetrainCopy
from inspector.io.store import FlagRecord, LatentPoint, ScoredFrame, Store
from inspector.scoring.kinds import cluster
from inspector.scoring.latent import fit_space
from inspector.scoring.neighbours import VectorIndex, suggest
from tests.dashboard.test_api import AUTH, TOKEN, part

KINDS = ("scratch", "blob", "missing")
# local noon two days ago: the seeded frames (T0 + up to 40 minutes) fall in one local day whatever the hour the
# tests run at (from T0 = now - 2 days, the drift test failed in the last 20 minutes before midnight)
T0 = (datetime.now().astimezone() - timedelta(days=2)).replace(hour=12, minute=0, second=0, microsecond=0)
T0 = T0.astimezone(timezone.utc)


@pytest.fixture(scope="module")
def kinds_embedded(fitted_model, tmp_path_factory):
    """Embeddings (N, D) and kind labels of 10 seeded defect parts per kind, scored by the exported graph."""
    from inspector.pipeline.export import export_model
    from inspector.runtime.scorer import Scorer

    out = tmp_path_factory.mktemp("latent") / "part"
    shutil.copytree(fitted_model / "staging", out / "staging")
    scorer = Scorer.load(export_model(out), providers=["cpu"])
    rng = np.random.default_rng(11)
    imgs, labels = [], []
    for k, kind in enumerate(KINDS):
        for _ in range(10):
            imgs.append(add_defect(good_part(rng), kind, rng)[0])
            labels.append(k)
    res = scorer.score_batch(imgs)
    return np.stack([r.embedding for r in res]), np.array(labels), scorer


@pytest.mark.slow
def test_similar_items_of_a_scratch_are_mostly_scratches(kinds_embedded):
    emb, labels, _ = kinds_embedded
    index = VectorIndex(emb.shape[1])
    index.add(np.arange(len(emb)), emb)
    same = []
    for i in range(len(emb)):
        ids, dist = index.search(emb[i], 5, exclude=i)
        assert i not in ids and np.all(np.diff(dist) >= 0)
        same.append(np.mean(labels[ids] == labels[i]))
    scratch = np.mean([s for s, lab in zip(same, labels) if lab == 0])
    print(f"precision@5: scratch {scratch:.2f}, all kinds {np.mean(same):.2f}")
    assert scratch >= 0.5 and np.mean(same) >= 0.5  # chance: 9 of 29 others (0.31)


@pytest.mark.slow
def test_clusters_separate_the_defect_kinds(kinds_embedded):
    emb, labels, _ = kinds_embedded
    groups = cluster(emb, n_groups=3)
    nmi = normalized_mutual_info_score(labels, groups)
    rng = np.random.default_rng(0)  # chance: the same group sizes, shuffled
    chance = np.mean([normalized_mutual_info_score(labels, rng.permutation(groups)) for _ in range(50)])
    print(f"NMI {nmi:.3f}, chance {chance:.3f}")
    assert nmi >= max(0.25, 3 * chance)


def test_suggested_verdict_is_the_reviewed_majority():
    assert suggest(["pending", "false_alarm", "confirmed", "false_alarm"]) == ("false_alarm", 2, 3)
    assert suggest(["pending", "pending"]) == (None, 0, 0)
    assert suggest(["confirmed", "false_alarm"]) == ("confirmed", 1, 2)  # a tie: the nearest reviewed


def _vectors(n_per: int, dim: int = 16, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Three tight clusters of unit vectors (three defect kinds)."""
    rng = np.random.default_rng(seed)
    centres = np.eye(dim)[:3]
    labels = np.repeat(np.arange(3), n_per)
    v = centres[labels] + rng.normal(0, 0.08, (len(labels), dim))
    return (v / np.linalg.norm(v, axis=1, keepdims=True)).astype(np.float32), labels


def seed_latent(store: Store, version: str = "v3", n_per: int = 6, with_old: int = 2) -> dict:
    """Flagged items of three kinds with embeddings, good samples, and `with_old` items with none."""
    vecs, labels = _vectors(n_per)
    good = _vectors(40, seed=5)[0] * 0.2 + 0.5
    good /= np.linalg.norm(good, axis=1, keepdims=True)
    space = fit_space(good, vecs)
    store.put_latent_space(version, space.to_dict(), T0)
    batch, kinds = [], []
    for i, (v, lab) in enumerate(zip(vecs, labels)):
        t = T0 + timedelta(minutes=i)
        img, amap = part(2.0)
        key = f"{version}-f{i}"
        p = media_paths("cam", key, t, ".png", with_map=False)
        save_media(store.media_dir, p, img, overlay(img, amap), None)
        x, y = space.project(v[None])[0]
        frame = ScoredFrame(
            "cam", key, t, 2.0, 4.0, 2.0, True, None, LatentPoint(version, v.tobytes(), float(x), float(y))
        )
        batch.append((frame, FlagRecord(version, p.image, p.overlay, None, img.shape[1], img.shape[0], key)))
        kinds.append(int(lab))
    for j, g in enumerate(good[:20]):
        x, y = space.project(g[None])[0]
        batch.append(
            (
                ScoredFrame(
                    "cam",
                    f"{version}-g{j}",
                    T0 + timedelta(minutes=j),
                    0.3,
                    0.6,
                    2.0,
                    False,
                    None,
                    LatentPoint(version, g.tobytes(), float(x), float(y)),
                ),
                None,
            )
        )
    for k in range(with_old):
        batch.append(
            (
                ScoredFrame("cam", f"{version}-old{k}", T0, 1.5, 3.0, 2.0, True),
                FlagRecord("v1", None, None, None, 64, 48, f"old{k}"),
            )
        )
    ids = store.record_frames(batch)
    flagged = [i for i in ids if i is not None]
    return {"ids": flagged[: len(vecs)], "kinds": kinds, "old": flagged[len(vecs) :]}


@pytest.fixture
def client(store, tmp_path):
    return TestClient(create_app(store, TOKEN, tmp_path / "retrain" / "good"))


def test_similar_items_api_suggests_a_verdict_and_old_items_are_not_embedded(client, store):
    s = seed_latent(store)
    first = s["ids"][0]
    body = client.get(f"/api/items/{first}/similar", params={"k": 5}).json()
    assert body["embedded"] and body["model_version"] == "v3" and body["suggestion"] is None
    got = [n["item"]["id"] for n in body["neighbours"]]
    kind_of = dict(zip(s["ids"], s["kinds"]))
    assert first not in got and all(kind_of[i] == kind_of[first] for i in got)
    for i in got[:3]:
        assert (
            client.post(
                f"/api/items/{i}/review", json={"status": "false_alarm", "reviewer": "ann"}, headers=AUTH
            ).status_code
            == 200
        )
    sug = client.get(f"/api/items/{first}/similar", params={"k": 5}).json()["suggestion"]
    assert sug["verdict"] == "false_alarm" and (sug["votes"], sug["reviewed"]) == (3, 3)
    old = s["old"][0]
    assert client.get(f"/api/items/{old}/similar").json() == {
        "embedded": False,
        "model_version": None,
        "neighbours": [],
        "suggestion": None,
    }
    page = client.get(f"/items/{old}", headers={"Accept": "text/html"})
    assert page.status_code == 200 and "Not embedded" in page.text
    page = client.get(f"/items/{first}", headers={"Accept": "text/html"})
    assert "Suggested" in page.text and "3 of the 3 most similar" in page.text


def test_a_new_item_is_searchable_at_once_and_versions_are_not_mixed(client, store):
    s = seed_latent(store, "v3")
    other = seed_latent(store, "v4", n_per=3, with_old=0)
    assert client.get(f"/api/items/{s['ids'][0]}/similar", params={"k": 50}).status_code == 200  # index built
    v = _vectors(6)[0][0]
    fid = store.record_frame(
        ScoredFrame(
            "cam", "late", T0 + timedelta(hours=1), 2.0, 4.0, 2.0, True, None, LatentPoint("v3", v.tobytes(), 0.0, 0.0)
        ),
        FlagRecord("v3", None, None, None, 64, 48, "late"),
    )
    got = [
        n["item"]["id"] for n in client.get(f"/api/items/{s['ids'][0]}/similar", params={"k": 50}).json()["neighbours"]
    ]
    assert fid in got and not set(got) & set(other["ids"]) and len(got) == len(s["ids"])
    got4 = [
        n["item"]["id"]
        for n in client.get(f"/api/items/{other['ids'][0]}/similar", params={"k": 50}).json()["neighbours"]
    ]
    assert set(got4) == set(other["ids"]) - {other["ids"][0]}


def test_groups_and_bulk_review_record_each_item_and_copy_false_alarms(client, store, tmp_path):
    s = seed_latent(store)
    groups = client.get("/api/latent/groups", params={"version": "v3"}).json()
    assert len(groups) == 3 and sorted(g["count"] for g in groups) == [6, 6, 6]
    kind_of = dict(zip(s["ids"], s["kinds"]))
    for g in groups:
        assert len({kind_of[i] for i in g["members"]}) == 1 and set(g["exemplars"]) <= set(g["members"])
    members = groups[0]["members"]
    body = {"item_ids": members, "status": "false_alarm", "reviewer": "bob"}
    assert client.post("/api/latent/review", json=body).status_code == 401  # no token: refused
    assert client.post("/api/latent/review", json=body, headers={"Authorization": "Bearer wrong"}).status_code == 401
    assert all(client.get(f"/api/items/{i}").json()["item"]["review_status"] == "pending" for i in members)
    r = client.post("/api/latent/review", json=body, headers=AUTH)
    assert r.status_code == 200 and sorted(r.json()["reviewed"]) == sorted(members)
    for i in members:
        item = client.get(f"/api/items/{i}").json()["item"]
        assert (item["review_status"], item["reviewed_by"]) == ("false_alarm", "bob") and item["reviewed_at"]
    with store.engine.connect() as c:
        copies = c.execute(sa.select(RetrainCopy.flagged_id, RetrainCopy.path)).all()
    assert sorted(c[0] for c in copies) == sorted(members)
    assert all((tmp_path / "retrain" / "good" / p.split("/")[-1]).is_file() for _, p in copies)
    again = client.get("/api/latent/groups", params={"version": "v3"}).json()
    assert {g["id"] for g in again} == {g["id"] for g in groups}  # stable ids across refreshes
    assert next(g for g in again if g["id"] == groups[0]["id"])["reviewed_share"] == 1.0
    undo = members[0]  # undo per item: the single review, its copy removed
    assert (
        client.post(
            f"/api/items/{undo}/review", json={"status": "pending", "reviewer": "bob"}, headers=AUTH
        ).status_code
        == 200
    )
    path = dict(copies)[undo]
    assert not (tmp_path / "retrain" / "good" / path.split("/")[-1]).exists()
    # one transaction: an unknown id in the list reviews nothing
    rest = groups[1]["members"]
    assert (
        client.post("/api/latent/review", json={**body, "item_ids": [*rest, 999999]}, headers=AUTH).status_code == 404
    )
    assert all(client.get(f"/api/items/{i}").json()["item"]["review_status"] == "pending" for i in rest)


def parse_map(data: bytes) -> dict:
    """The map payload's columns (layout in inspector/dashboard/latent_map.py), as the page reads them."""
    (hlen,) = struct.unpack("<I", data[:4])
    head = json.loads(data[4 : 4 + hlen])
    n, m, o = head["n"], head["m"], 4 + hlen
    assert len(data) == o + 9 * n + 8 * m
    cols = {
        "head": head,
        "x": np.frombuffer(data, np.float32, n, o),
        "y": np.frombuffer(data, np.float32, n, o + 4 * n),
    }
    cols["id"] = np.frombuffer(data, np.int32, m, o + 8 * n)
    cols["group"] = np.frombuffer(data, np.int32, m, o + 8 * n + 4 * m)
    cols["kind"] = np.frombuffer(data, np.uint8, n, o + 8 * n + 8 * m)
    return cols


def test_map_payload_and_drift(client, store):
    seeded = seed_latent(store)
    p = parse_map(client.get("/api/latent/map.bin").content)
    head, kind = p["head"], p["kind"]
    assert head["n"] == head["reference"] + 18 + 20 and head["m"] == 18 and head["good"] == 20
    assert (kind == 0).sum() == head["reference"] and (kind == 1).sum() == 20 and (kind == 2).sum() == 18
    assert np.all(kind[head["n"] - head["m"] :] >= 2) and sorted(p["id"].tolist()) == sorted(seeded["ids"])
    drift = client.get("/api/latent/drift", params={"days": 365}).json()
    day = drift["sources"]["cam"][0]
    assert day["n"] == 20 and day["shift"] >= 0 and day["noise_floor"] == round(1 / np.sqrt(20), 4)
    assert client.get("/latent", headers={"Accept": "text/html"}).status_code == 200
    stats = client.get("/stats", params={"days": 7}, headers={"Accept": "text/html"}).text
    assert "Latent drift of good frames" in stats and f"{day['shift']:.3f}" in stats
    from inspector.io.latent import window_drift

    win = window_drift(store.engine, T0 - timedelta(days=1))["cam"]
    assert win["n"] == 20 and abs(win["shift"] - day["shift"]) < 1e-3  # one day: the same number


def test_store_from_revision_0003_keeps_its_rows_unembedded(tmp_path):
    from alembic import command

    from inspector.io.store import _engine, alembic_config

    url = f"sqlite:///{tmp_path}/old.db"
    engine = _engine(url)
    with engine.begin() as c:
        command.upgrade(alembic_config(c), "0003")
        c.execute(
            sa.text(
                "INSERT INTO flagged (source, created_at, score, raw_score, threshold, model_version, width, "
                "height, review_status, frame_key) VALUES ('cam', '2026-11-01 10:00:00', 2, 4, 2, 'v1', 64, "
                "48, 'pending', 'k-old')"
            )
        )
    engine.dispose()
    store = Store.open(url)
    client = TestClient(create_app(store, TOKEN, tmp_path / "retrain"))
    assert client.get("/api/items/1").json()["item"]["frame_key"] == "k-old"
    assert client.get("/api/items/1/similar").json()["embedded"] is False
    assert client.get("/latent", headers={"Accept": "text/html"}).status_code == 200
    assert client.get("/api/latent/groups").status_code == 404  # no embeddings yet: said so, no error page
    store.close()


def test_a_spooled_frame_keeps_its_embedding():
    from inspector.io.spool import SpooledFrame, _from_json, _to_json

    v = _vectors(1)[0][0]
    frame = ScoredFrame("cam", "k", T0, 2.0, 4.0, 2.0, True, None, LatentPoint("v3", v.tobytes(), 0.5, -0.5))
    sf = SpooledFrame(frame, FlagRecord("v3", None, None, None, 64, 48, "k"), True, "k", "v3")
    back = _from_json(json.loads(json.dumps(_to_json(sf))))
    assert back.frame == frame and np.array_equal(np.frombuffer(back.frame.latent.vector, np.float32), v)


def test_the_watcher_keeps_every_flagged_embedding_and_one_in_n_good(store):
    from inspector.watcher.latent import LatentKeeper

    good = _vectors(40, seed=5)[0]
    space = fit_space(good)

    class FakeScorer:
        version, latent = "v9", space.to_dict()

    keeper = LatentKeeper(store, good_every=5)
    v = good[0]
    kept = [keeper.point(FakeScorer, "cam", v, False, T0) for _ in range(12)]
    assert [p is not None for p in kept] == [i % 5 == 0 for i in range(12)]
    flagged = keeper.point(FakeScorer, "cam", v, True, T0)
    assert flagged is not None and flagged.model_version == "v9"
    np.testing.assert_allclose([flagged.x, flagged.y], space.project(v[None])[0], atol=1e-6)
    assert keeper.point(FakeScorer, "cam", None, True, T0) is None  # a graph without an embedding output
    from inspector.io.latent import read_space

    assert read_space(store.engine, "v9").dim == space.dim  # registered once for the dashboard


def test_map_payload_round_trips_the_stored_points_and_follows_new_rows_and_reviews(client, store):
    from inspector.io.schema import Embedding

    seeded = seed_latent(store)
    first = client.get("/api/latent/map.bin").content
    assert client.get("/api/latent/map.bin").content == first  # nothing changed: the same bytes
    p = parse_map(first)
    with store.engine.connect() as c:
        rows = c.execute(
            sa.select(Embedding.flagged_id, Embedding.x, Embedding.y).where(Embedding.model_version == "v3")
        )
        stored = {r[0]: (r[1], r[2]) for r in rows if r[0] is not None}
    start = p["head"]["n"] - p["head"]["m"]
    for j, item in enumerate(p["id"].tolist()):  # every flagged point where the store has it, with its group
        assert np.allclose((p["x"][start + j], p["y"][start + j]), stored[item], atol=1e-6)
    groups = {i: g["id"] for g in client.get("/api/latent/groups").json() for i in g["members"]}
    assert p["group"].tolist() == [groups[i] for i in p["id"].tolist()]
    item = seeded["ids"][0]
    body = {"status": "false_alarm", "reviewer": "ann"}
    assert client.post(f"/api/items/{item}/review", json=body, headers=AUTH).status_code == 200
    p2 = parse_map(client.get("/api/latent/map.bin").content)
    at = start + p2["id"].tolist().index(item)
    assert p2["kind"][at] == 4 and (p2["kind"] == 2).sum() == 17  # the review shows on the next request
    v = _vectors(6)[0][0]
    store.record_frame(
        ScoredFrame("cam", "new-good", T0, 0.3, 0.6, 2.0, False, None, LatentPoint("v3", v.tobytes(), 9.5, -9.5)), None
    )
    p3 = parse_map(client.get("/api/latent/map.bin").content)
    assert p3["head"]["good"] == 21 and (9.5, -9.5) in set(zip(p3["x"].tolist(), p3["y"].tolist()))
    few = parse_map(client.get("/api/latent/map.bin", params={"recent": 5}).content)["head"]
    assert few["n"] == few["reference"] + 5


def test_the_map_page_lists_the_largest_groups_and_counts_the_rest(client, store, monkeypatch):
    from inspector.dashboard import latent_api

    seed_latent(store)
    groups = client.get("/api/latent/groups").json()
    assert len(groups) >= 2
    monkeypatch.setattr(latent_api, "GROUPS_SHOWN", 1)
    page = client.get("/latent", headers={"Accept": "text/html"}).text
    assert page.count('<tr data-group="') == 1 and f'data-group="{groups[0]["id"]}"' in page
    assert f"{len(groups) - 1} smaller groups not shown" in page
