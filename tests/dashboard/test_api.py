"""Dashboard JSON API and pages with FastAPI's test client, on SQLite and on the real PostgreSQL.

`seed_store` records frames through the Store API (real images, overlays and maps written into the
media folder), so the dashboard reads exactly what a watcher writes. The browser and security tests
import it from here.
"""

from __future__ import annotations

import csv
import io
import subprocess
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

import cv2
import numpy as np
import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient

from inspector.dashboard.app import create_app
from inspector.data.preprocess import overlay
from inspector.io.media import media_paths, save_media
from inspector.io.schema import RetrainCopy
from inspector.io.store import FlagRecord, ScoredFrame, Store
from tests.support import PYTHON, ROOT, watcher_env

TOKEN = "test-token-0123456789abcdef"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@dataclass(frozen=True)
class Seeded:
    flagged: list[dict]  # what was recorded, oldest first: id, source, created_at, score
    good: list[tuple[str, float]]  # (source, score) of frames that were not anomalous


def part(score: float, w: int = 320, h: int = 240) -> tuple[np.ndarray, np.ndarray]:
    """A gray part with a dark scratch, and a map that is hot along the scratch."""
    img = np.full((h, w, 3), 150, np.uint8)
    cv2.rectangle(img, (20, 20), (w - 20, h - 20), (175, 175, 175), -1)
    cv2.line(img, (w // 6, h // 4), (w * 2 // 3, h * 3 // 4), (45, 45, 45), 5)
    amap = np.full((h, w), 0.2, np.float32)
    cv2.line(amap, (w // 6, h // 4), (w * 2 // 3, h * 3 // 4), float(score), 17)
    return img, cv2.GaussianBlur(amap, (0, 0), 6)


def seed_store(store: Store, n: int = 120, every: int = 5, now: datetime | None = None, seed: int = 0) -> Seeded:
    """n frames over the last few hours from two sources; every `every`-th is flagged (score > 1)."""
    rng = np.random.default_rng(seed)
    now = now or datetime.now(timezone.utc)
    batch, flagged, good = [], [], []
    for i in range(n):
        src = ("cam1", "scan")[i % 2]
        t = now - timedelta(minutes=2 * (n - i))
        is_flag = i % every == every - 1
        score = float(rng.uniform(1.1, 3.2) if is_flag else rng.uniform(0.2, 0.9))
        key = f"s{seed}-{i:05d}"
        frame = ScoredFrame(src, key, t, score, score * 2.5, 2.5, is_flag, f"in/{key}.png")
        flag = None
        if is_flag:
            img, amap = part(score)
            p = media_paths(src, key, t, ".png", with_map=True)
            save_media(store.media_dir, p, img, overlay(img, amap), amap)
            flag = FlagRecord("v7", p.image, p.overlay, p.map, img.shape[1], img.shape[0], f"{key}.png")
            flagged.append({"source": src, "created_at": t, "score": score})
        else:
            good.append((src, score))
        batch.append((frame, flag))
    ids = [i for i in store.record_frames(batch) if i is not None]
    for row, fid in zip(flagged, ids):
        row["id"] = fid
    return Seeded(flagged, good)


def newest_first(rows: list[dict]) -> list[int]:
    return [r["id"] for r in sorted(rows, key=lambda r: (r["created_at"], r["id"]), reverse=True)]


@pytest.fixture
def seeded(store) -> Seeded:
    return seed_store(store)


@pytest.fixture
def client(store, tmp_path) -> TestClient:
    return TestClient(create_app(store, TOKEN, tmp_path / "retrain" / "good"))


def all_pages(client: TestClient, params: dict, limit: int = 7) -> list[int]:
    ids, cursor = [], None
    while True:
        r = client.get("/api/items", params={**params, "limit": limit, **({"cursor": cursor} if cursor else {})})
        assert r.status_code == 200, r.text
        body = r.json()
        ids += [i["id"] for i in body["items"]]
        cursor = body["next_cursor"]
        if cursor is None:
            return ids


def test_keyset_pages_cover_every_item_once_newest_first(client, seeded):
    ids = all_pages(client, {})
    assert ids == newest_first(seeded.flagged) and len(ids) == 24
    body = client.get("/api/items", params={"count": "true", "limit": 5}).json()
    assert body["count"] == 24 and not body["count_capped"] and len(body["items"]) == 5


def test_filters_match_the_rows_they_describe(client, seeded):
    rows = seeded.flagged
    mid = sorted(r["created_at"] for r in rows)[len(rows) // 2]
    cases = [
        ({"source": "scan"}, lambda r: r["source"] == "scan"),
        ({"min_score": 2.0}, lambda r: r["score"] >= 2.0),
        (
            {"min_score": 1.5, "max_score": 2.5, "source": "cam1"},
            lambda r: 1.5 <= r["score"] <= 2.5 and r["source"] == "cam1",
        ),
        ({"since": mid.isoformat()}, lambda r: r["created_at"] >= mid),
        ({"until": mid.replace(tzinfo=None).isoformat()}, lambda r: r["created_at"] < mid),  # no zone = UTC
        ({"status": "confirmed"}, lambda r: False),
    ]
    for params, keep in cases:
        expected = newest_first([r for r in rows if keep(r)])
        assert all_pages(client, params) == expected, params
        assert client.get("/api/items", params={**params, "count": "true"}).json()["count"] == len(expected)


def test_polling_returns_only_items_recorded_after_an_id(client, store, seeded):
    top = max(r["id"] for r in seeded.flagged)
    assert client.get("/api/items", params={"after_id": top}).json()["items"] == []
    later = seed_store(store, n=8, every=4, seed=1)  # two more flagged items
    got = client.get("/api/items", params={"after_id": top}).json()["items"]
    assert sorted(i["id"] for i in got) == sorted(r["id"] for r in later.flagged)
    assert [i["id"] for i in client.get("/api/items", params={"after_id": top, "source": "cam1"}).json()["items"]] == []


def test_item_detail_has_neighbours_of_the_same_source_in_time(client, seeded):
    scan = [r for r in sorted(seeded.flagged, key=lambda r: r["created_at"]) if r["source"] == "scan"]
    mid = scan[len(scan) // 2]
    body = client.get(f"/api/items/{mid['id']}").json()
    k = scan.index(mid)
    assert [i["id"] for i in body["older"]] == [r["id"] for r in reversed(scan[max(k - 4, 0) : k])]
    assert [i["id"] for i in body["newer"]] == [r["id"] for r in scan[k + 1 : k + 5]]
    assert body["item"]["score"] == pytest.approx(mid["score"]) and body["item"]["source"] == "scan"
    assert body["urls"]["heatmap"] == f"/heatmaps/{mid['id']}.png"
    for name in ("original", "overlay", "heatmap", "thumb"):
        img = client.get(body["urls"][name])
        assert img.status_code == 200, name
        decoded = cv2.imdecode(np.frombuffer(img.content, np.uint8), cv2.IMREAD_COLOR)
        assert decoded is not None and (
            max(decoded.shape[:2]) <= 360 if name == "thumb" else decoded.shape[:2] == (240, 320)
        )


def test_false_alarm_is_copied_for_retrain_and_undo_removes_the_copy(client, store, seeded, tmp_path):
    item = seeded.flagged[3]
    r = client.post(
        f"/api/items/{item['id']}/review",
        headers=AUTH,
        json={"status": "false_alarm", "reviewer": "Ana", "note": "dust on the lens"},
    )
    assert r.status_code == 200, r.text
    body = r.json()
    assert (body["review_status"], body["reviewed_by"], body["review_note"]) == (
        "false_alarm",
        "Ana",
        "dust on the lens",
    )
    copies = list((tmp_path / "retrain" / "good").iterdir())
    original = store.media_dir / body["image_path"]
    assert len(copies) == 1 and copies[0].read_bytes() == original.read_bytes()
    with store.engine.connect() as c:
        assert c.execute(sa.select(RetrainCopy.flagged_id, RetrainCopy.path)).all() == [(item["id"], str(copies[0]))]
    again = client.post(
        f"/api/items/{item['id']}/review", headers=AUTH, json={"status": "false_alarm", "reviewer": "Ana"}
    )
    assert again.status_code == 200 and len(list(copies[0].parent.iterdir())) == 1  # idempotent
    rates = {x["source"]: x for x in client.get("/api/stats").json()["reviews"]}
    assert rates[item["source"]]["false_alarm"] == 1 and rates[item["source"]]["false_alarm_rate"] == 1.0
    r = client.post(f"/api/items/{item['id']}/review", headers=AUTH, json={"status": "confirmed", "reviewer": "Ben"})
    assert r.json()["review_status"] == "confirmed" and not copies[0].exists()
    with store.engine.connect() as c:
        assert c.scalar(sa.select(sa.func.count()).select_from(RetrainCopy)) == 0
    rates = {x["source"]: x for x in client.get("/api/stats").json()["reviews"]}
    assert (rates[item["source"]]["confirmed"], rates[item["source"]]["false_alarm_rate"]) == (1, 0.0)
    assert [i["id"] for i in client.get("/api/items", params={"status": "confirmed"}).json()["items"]] == [item["id"]]


def test_item_whose_images_were_never_saved_renders_and_reviews(client, store, seeded, tmp_path):
    """A camera frame flagged while the media folder was full is recorded without image paths: the pages say so
    instead of showing broken images, the API gives null URLs, and a false-alarm review records without a copy."""
    t = datetime.now(timezone.utc)
    [fid] = store.record_frames(
        [
            (
                ScoredFrame("cam1", "nomedia-1", t, 1.8, 4.5, 2.5, True, None),
                FlagRecord("v7", None, None, None, 640, 480, "rtsp://cam1"),
            )
        ]
    )
    body = client.get(f"/api/items/{fid}").json()
    assert body["urls"] == {"original": None, "overlay": None, "heatmap": None, "thumb": None}
    assert body["item"]["image_path"] is None
    assert client.get(f"/thumbs/{fid}.jpg").status_code == 404
    page = client.get(f"/items/{fid}")
    assert page.status_code == 200 and "could not be saved when it was flagged" in page.text
    assert 'src="None"' not in page.text and "/media/None" not in page.text
    listing = client.get("/")
    assert listing.status_code == 200 and "no image saved" in listing.text
    assert f'src="/thumbs/{fid}.jpg"' not in listing.text
    r = client.post(f"/api/items/{fid}/review", headers=AUTH, json={"status": "false_alarm", "reviewer": "Ana"})
    assert r.status_code == 200 and r.json()["review_status"] == "false_alarm"
    assert not (tmp_path / "retrain" / "good").exists()  # nothing to retrain on
    with store.engine.connect() as c:
        assert c.scalar(sa.select(sa.func.count()).select_from(RetrainCopy)) == 0


def test_stats_count_what_was_recorded(client, seeded):
    s = client.get("/api/stats", params={"hours": 24, "days": 7}).json()
    per_source = {k: sum(h["flagged"] for h in v) for k, v in s["per_hour"].items()}
    assert sum(per_source.values()) == len(seeded.flagged)
    assert (
        s["histogram"]["n"] == 120 and s["histogram"]["above_threshold"] == 24 and sum(s["histogram"]["counts"]) == 120
    )
    for src in ("cam1", "scan"):
        good = [x for sname, x in seeded.good if sname == src]
        days = s["drift"][src]
        assert sum(d["n"] for d in days) == len(good)
        mean = sum(d["mean"] * d["n"] for d in days) / sum(d["n"] for d in days)
        assert mean == pytest.approx(float(np.mean(good)), rel=1e-6)
    assert {r["source"]: r["pending"] for r in s["reviews"]} == {
        src: sum(1 for r in seeded.flagged if r["source"] == src) for src in {r["source"] for r in seeded.flagged}
    }


def test_csv_export_streams_the_filtered_items_and_defuses_formulas(client, seeded):
    item = seeded.flagged[0]
    client.post(
        f"/api/items/{item['id']}/review",
        headers=AUTH,
        json={"status": "confirmed", "reviewer": "Ana", "note": '=HYPERLINK("http://x")'},
    )
    r = client.get("/api/export.csv", params={"min_score": 2.0})
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/csv")
    assert "attachment" in r.headers["content-disposition"]
    rows = list(csv.DictReader(io.StringIO(r.text)))
    assert [int(x["id"]) for x in rows] == newest_first([x for x in seeded.flagged if x["score"] >= 2.0])
    everything = list(csv.DictReader(io.StringIO(client.get("/api/export.csv").text)))
    note = next(x["review_note"] for x in everything if int(x["id"]) == item["id"])
    assert note.startswith("'=") and len(everything) == 24


def test_pages_render_the_items_and_charts(client, seeded):
    html = client.get("/", params={"source": "scan"}).text
    scan_ids = [r["id"] for r in seeded.flagged if r["source"] == "scan"]
    assert all(f'href="/items/{i}"' in html for i in scan_ids) and len(scan_ids) == 12
    assert html.count('class="card') == 12 and "12</strong> flagged items match" in html
    page = client.get(f"/items/{scan_ids[0]}").text
    for url in (
        f"/heatmaps/{scan_ids[0]}.png",
        f"/thumbs/{scan_ids[0]}.jpg",
        "Original",
        "Overlay",
        "of the threshold",
    ):
        assert url in page
    stats = client.get("/stats").text
    assert stats.count('<svg class="chart"') == 3 and "False-alarm rate" in stats
    assert "/api/items" in client.get("/api/docs").text
    assert client.get("/", params={"min_score": "lots", "status": "bogus"}).status_code == 200  # noted, not fatal


def test_bad_ids_and_cursors_are_refused(client, seeded):
    assert client.get("/api/items/0").status_code == 422
    assert client.get("/api/items/abc").status_code == 422
    assert client.get("/api/items/99999999999").status_code == 422
    assert client.get("/api/items/999999").status_code == 404
    assert client.get("/api/items", params={"cursor": "1;drop table flagged"}).status_code == 422
    assert client.get("/api/items", params={"source": "../etc"}).status_code == 422
    assert client.get("/thumbs/999999.jpg").status_code == 404


def test_store_without_reviews_or_scores_still_renders(tmp_path):
    s = Store.open(f"sqlite:///{tmp_path}/empty/store.db")
    c = TestClient(create_app(s, None, tmp_path / "r"))
    for url in ("/", "/stats", "/api/stats", "/api/items", "/api/export.csv"):
        assert c.get(url).status_code == 200, url
    assert "Read-only" in c.get("/").text
    s.close()


def test_settings_from_line_config_and_one_line_errors(tmp_path, monkeypatch):
    from inspector.cli.main import main
    from inspector.config.access import resolve
    from inspector.errors import InspectorError

    cfg = tmp_path / "line1.yaml"
    cfg.write_text(
        "store:\n  url: sqlite:///store/line1.db\ndashboard:\n  token_env: LINE1_TOKEN\n  retrain_dir: rt/good\n"
    )
    monkeypatch.setenv("LINE1_TOKEN", "t" * 20)
    s = resolve(None, cfg)
    assert s.store_url == f"sqlite:///{tmp_path}/store/line1.db" and s.token == "t" * 20
    assert s.retrain_dir == tmp_path / "rt" / "good"
    monkeypatch.setenv("LINE1_TOKEN", "short")
    with pytest.raises(InspectorError, match="at least 16"):
        resolve(None, cfg)
    cfg.write_text("dashboard:\n  tokn: x\n")
    with pytest.raises(InspectorError, match=r"dashboard.tokn: unknown key"):
        resolve(None, cfg)
    with pytest.raises(InspectorError, match="no store"):
        resolve(None, None)
    assert main(["dashboard", "--store", f"sqlite:///{tmp_path}/nope/store.db"]) == 2
    assert not (tmp_path / "nope").exists()  # a typo does not create an empty store


def test_dashboard_never_imports_torch():
    code = (
        "import sys\nimport inspector.dashboard, inspector.dashboard.app, inspector.dashboard.settings\n"
        "import inspector.cli.main\n"
        "bad = sorted(m for m in sys.modules if m == 'torch' or m.startswith(('torch.', 'torchvision')))\n"
        "assert not bad, bad\nprint('ok')"
    )
    r = subprocess.run([PYTHON, "-c", code], cwd=ROOT, env=watcher_env(), capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr


def test_served_app_binds_loopback_and_refuses_a_taken_port(tmp_path):
    import socket

    from inspector.dashboard import _is_loopback, _listen
    from inspector.errors import InspectorError

    assert _is_loopback("127.0.0.1") and _is_loopback("::1") and _is_loopback("localhost")
    assert not _is_loopback("0.0.0.0")
    sock = _listen("127.0.0.1", 0)
    assert sock.proto == socket.IPPROTO_TCP  # else asyncio skips TCP_NODELAY: +40 ms per keep-alive response
    try:
        with pytest.raises(InspectorError, match="cannot listen on 127.0.0.1"):
            _listen("127.0.0.1", sock.getsockname()[1])
    finally:
        sock.close()
    assert isinstance(sock, socket.socket)
