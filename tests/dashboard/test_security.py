"""Dashboard security: reviews need the token, images come only from the media folder, no secret leaks.

Paths are sent percent-encoded or as raw request targets so that no client-side URL normalisation
hides a traversal attempt from the server.
"""

from __future__ import annotations

import logging
import os
from datetime import datetime, timezone

import cv2
import numpy as np
import pytest
from fastapi.testclient import TestClient

from inspector.dashboard.app import create_app
from inspector.dashboard.files import Refused, safe_path
from inspector.io.store import FlagRecord, ScoredFrame, Store
from tests.dashboard.test_api import AUTH, TOKEN, seed_store

SECRET = b"TOP-SECRET-CONTENT"


@pytest.fixture
def env(tmp_path):
    store = Store.open(f"sqlite:///{tmp_path}/line/store.db")
    seeded = seed_store(store, n=20)
    outside = tmp_path / "outside"
    outside.mkdir()
    ok, png = cv2.imencode(".png", np.zeros((8, 8, 3), np.uint8))
    (outside / "secret.png").write_bytes(png.tobytes() + SECRET)
    (outside / "notes.txt").write_bytes(SECRET)
    yield store, seeded, tmp_path
    store.close()


@pytest.fixture
def client(env):
    store, _, tmp = env
    return TestClient(create_app(store, TOKEN, tmp / "retrain"))


def item_id(env) -> int:
    return env[1].flagged[0]["id"]


def test_review_without_or_with_a_wrong_token_is_refused(client, env):
    url = f"/api/items/{item_id(env)}/review"
    body = {"status": "false_alarm", "reviewer": "mallory"}
    assert client.post(url, json=body).status_code == 401
    assert client.post(url, json=body, headers={"Authorization": "Bearer wrong-token-wrong-token"}).status_code == 401
    assert client.post(url, json=body, headers={"Authorization": f"Basic {TOKEN}"}).status_code == 401
    assert client.post(url, json=body, headers={"X-Inspector-Token": TOKEN[:-1]}).status_code == 401
    assert client.get(f"/api/items/{item_id(env)}").json()["item"]["review_status"] == "pending"
    assert not (env[2] / "retrain").exists()
    assert client.post(url, json=body, headers={"X-Inspector-Token": TOKEN}).status_code == 200


def test_read_only_dashboard_refuses_every_review(env):
    store, _, tmp = env
    c = TestClient(create_app(store, None, tmp / "retrain"))
    r = c.post(f"/api/items/{item_id(env)}/review", json={"status": "confirmed", "reviewer": "x"}, headers=AUTH)
    assert r.status_code == 403 and "disabled" in r.json()["detail"]
    assert c.get("/").status_code == 200  # reading needs no token


def test_cross_site_form_posts_cannot_review(client, env):
    """A form from another site can send neither a header nor JSON: refused before anything is read."""
    url = f"/api/items/{item_id(env)}/review"
    form = {"status": "false_alarm", "reviewer": "csrf"}
    assert client.post(url, data=form).status_code == 401
    assert client.post(url, data=form, headers=AUTH).status_code == 422  # and only JSON bodies are accepted
    assert client.get(f"/api/items/{item_id(env)}").json()["item"]["review_status"] == "pending"


@pytest.mark.parametrize(
    "target",
    [
        "/media/..%2F..%2Foutside%2Fsecret.png",
        "/media/%2e%2e/%2e%2e/outside/secret.png",
        "/media/cam1/..%2F..%2F..%2Foutside%2Fsecret.png",
        "/media/%2Fetc%2Fpasswd",
        "/media//etc/passwd",
        "/media/%2F{tmp}%2Foutside%2Fsecret.png",
        "/media/{tmp}/outside/secret.png",
        "/media/..%5C..%5Coutside%5Csecret.png",
        "/media/C:%5Cwindows%5Cwin.ini",
        "/media/cam1%00.png",
        "/media/..%2foutside%2fnotes.txt",
        "/media/%2e%2e",
    ],
)
def test_traversal_and_absolute_paths_are_refused(client, env, target):
    r = client.get(target.format(tmp=str(env[2]).lstrip("/")))
    assert r.status_code in (404, 422) and SECRET not in r.content


def test_raw_request_targets_with_dot_segments_are_refused(env):
    """Bypass the client: send `..` segments exactly as an attacker's socket would."""
    import asyncio

    store, _, tmp = env
    app = create_app(store, TOKEN, tmp / "retrain")

    async def get(raw: str) -> tuple[int, bytes]:
        sent: list[dict] = []
        scope = {
            "type": "http",
            "method": "GET",
            "path": raw,
            "raw_path": raw.encode(),
            "query_string": b"",
            "headers": [(b"host", b"127.0.0.1")],
            "scheme": "http",
            "server": ("127.0.0.1", 80),
            "client": ("127.0.0.1", 1),
            "http_version": "1.1",
            "root_path": "",
        }

        async def receive():
            return {"type": "http.request", "body": b"", "more_body": False}

        async def send(message):
            sent.append(message)

        await app(scope, receive, send)
        return sent[0]["status"], b"".join(m.get("body", b"") for m in sent[1:])

    for raw in (
        "/media/../outside/secret.png",
        "/media/cam1/../../outside/secret.png",
        f"/media/{tmp}/outside/secret.png",
        "/media//" + str(tmp / "outside" / "secret.png"),
    ):
        status, body = asyncio.run(get(raw))
        assert status == 404 and SECRET not in body, raw


def test_symlinks_out_of_the_media_folder_are_refused(client, env):
    store, seeded, tmp = env
    (store.media_dir / "cam1").mkdir(exist_ok=True)
    os.symlink(tmp / "outside" / "secret.png", store.media_dir / "cam1" / "evil.png")
    os.symlink(tmp / "outside", store.media_dir / "linkdir")
    assert client.get("/media/cam1/evil.png").status_code == 404
    assert client.get("/media/linkdir/secret.png").status_code == 404
    with pytest.raises(Refused):
        safe_path(store.media_dir, "cam1/evil.png")
    real = client.get(client.get(f"/api/items/{seeded.flagged[0]['id']}").json()["urls"]["original"])
    assert real.status_code == 200 and real.headers["content-type"] == "image/png"  # the real ones still work


def test_only_images_are_served_even_inside_the_media_folder(client, env):
    store, seeded, _ = env
    item = client.get(f"/api/items/{seeded.flagged[0]['id']}").json()["item"]
    (store.media_dir / "cam1" / "notes.txt").write_bytes(SECRET)
    assert client.get(f"/media/{item['map_path']}").status_code == 404  # the raw .npy map
    assert client.get("/media/cam1/notes.txt").status_code == 404
    assert client.get("/media/.hidden.png").status_code == 404


def test_rows_pointing_outside_the_media_folder_are_not_followed(client, env):
    """A row is data too: a crafted image_path must not turn the dashboard into a file reader."""
    store, _, tmp = env
    t = datetime.now(timezone.utc)
    fid = store.record_frame(
        ScoredFrame("cam1", "evil-key", t, 2.0, 4.0, 2.0, True),
        FlagRecord(
            "v1", "../outside/secret.png", str(tmp / "outside" / "secret.png"), "../../outside/secret.npy", 8, 8
        ),
    )
    for url in (f"/thumbs/{fid}.jpg", f"/heatmaps/{fid}.png", "/media/../outside/secret.png"):
        r = client.get(url)
        assert r.status_code == 404 and SECRET not in r.content, url
    r = client.post(f"/api/items/{fid}/review", json={"status": "false_alarm", "reviewer": "a"}, headers=AUTH)
    assert r.status_code == 409 and not (tmp / "retrain").exists()


@pytest.mark.parametrize(
    "url",
    [
        "/api/items/-1",
        "/api/items/1.5",
        "/api/items/1%20OR%201=1",
        "/thumbs/0.jpg",
        "/thumbs/abc.jpg",
        "/heatmaps/-3.png",
        "/items/99999999999",
    ],
)
def test_ids_are_validated(client, url):
    assert client.get(url).status_code in (404, 422)


def test_pages_escape_stored_text_and_carry_security_headers(client, env):
    store, _, _ = env
    t = datetime.now(timezone.utc)
    fid = store.record_frame(
        ScoredFrame("cam1", "xss-key", t, 2.0, 4.0, 2.0, True),
        FlagRecord("v1<script>", "cam1/x.png", "cam1/x.jpg", None, 8, 8, "<script>alert(1)</script>"),
    )
    client.post(
        f"/api/items/{fid}/review",
        headers=AUTH,
        json={
            "status": "confirmed",
            "reviewer": "<img src=x onerror=alert(1)>",
            "note": "</textarea><script>x()</script>",
        },
    )
    html = client.get(f"/items/{fid}").text
    assert "<script>alert(1)</script>" not in html and "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert "<img src=x" not in html and "</textarea><script>" not in html
    r = client.get("/")
    assert "v1&lt;script&gt;" in r.text and "<script>x()" not in r.text
    csp = r.headers["content-security-policy"]
    assert "script-src 'self'" in csp and "frame-ancestors 'none'" in csp and "unsafe-inline" not in csp
    assert r.headers["x-content-type-options"] == "nosniff" and r.headers["x-frame-options"] == "DENY"
    assert "<script>" not in r.text.replace('<script src="/static/app.js', "")  # no inline script at all


def test_the_token_never_appears_in_pages_or_logs(client, env, caplog):
    caplog.set_level(logging.DEBUG)
    client.post(f"/api/items/{item_id(env)}/review", headers=AUTH, json={"status": "false_alarm", "reviewer": "ana"})
    client.post(
        f"/api/items/{item_id(env)}/review",
        headers={"Authorization": "Bearer " + TOKEN + "x"},
        json={"status": "confirmed", "reviewer": "ana"},
    )
    bodies = [
        client.get(u).text
        for u in (
            "/",
            "/stats",
            f"/items/{item_id(env)}",
            "/api/docs",
            "/openapi.json",
            f"/api/items/{item_id(env)}",
            "/api/export.csv",
        )
    ]
    assert all(TOKEN not in b for b in bodies)
    assert TOKEN not in caplog.text and "reviewed as false_alarm by ana" in caplog.text


def test_only_loopback_host_names_when_bound_to_loopback(env):
    store, _, tmp = env
    c = TestClient(
        create_app(store, TOKEN, tmp / "r", trusted_hosts=["127.0.0.1", "localhost"]), base_url="http://127.0.0.1"
    )
    assert c.get("/").status_code == 200
    assert c.get("/", headers={"Host": "attacker.example"}).status_code == 400  # DNS rebinding
