"""The latent map in Chromium (Playwright on /usr/bin/chromium): points drawn, a click opens the item."""

from __future__ import annotations

import threading

import pytest

from inspector.dashboard import _listen
from inspector.dashboard.app import create_app
from inspector.io.store import Store
from tests.dashboard.test_api import TOKEN
from tests.dashboard.test_browser import ARGS, CHROMIUM, SHOTS
from tests.dashboard.test_latent import seed_latent
from tests.support import wait_for

pytestmark = pytest.mark.browser


def test_map_shows_points_and_a_click_opens_the_item(tmp_path):
    import uvicorn
    from playwright.sync_api import sync_playwright

    store = Store.open(f"sqlite:///{tmp_path}/line/store.db")
    seeded = seed_latent(store)
    app = create_app(store, TOKEN, tmp_path / "retrain", trusted_hosts=["127.0.0.1"])
    sock = _listen("127.0.0.1", 0)
    srv = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    threading.Thread(target=srv.run, kwargs={"sockets": [sock]}, daemon=True).start()
    wait_for(lambda: srv.started, 20, what="dashboard server start")
    url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    SHOTS.mkdir(parents=True, exist_ok=True)
    try:
        with sync_playwright() as p:
            ctx = p.chromium.launch_persistent_context(
                str(tmp_path / "profile"),
                executable_path=str(CHROMIUM),
                headless=True,
                args=ARGS,
                viewport={"width": 1200, "height": 900},
            )
            page = ctx.new_page()
            errors: list[str] = []
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto(f"{url}/latent")
            page.wait_for_selector("#map[data-points]")
            n = int(page.get_attribute("#map", "data-points"))
            assert n >= 38 and not errors
            # a flagged point: find its screen position through the page's own layout, then click it
            box = page.locator("#map").bounding_box()
            page.screenshot(path=str(SHOTS / "latent-map.png"), full_page=True)
            painted = page.evaluate("""() => { const c = document.getElementById('map');
                const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data; let k = 0;
                for (let i = 0; i < d.length; i += 4)
                  if (d[i] > 180 && d[i+1] > 120 && d[i+1] < 200 && d[i+2] < 80) k++;
                let best = null; for (let y = 0; y < c.height && !best; y += 1) for (let x = 0; x < c.width; x++) {
                  const q = (y * c.width + x) * 4;
                  if (d[q] === 255 && d[q+1] === 167 && d[q+2] === 38) { best = [x + 1, y + 1]; break; } }
                return {orange: k, at: best, w: c.width}; }""")
            assert painted["orange"] > 0 and painted["at"] is not None  # pending flagged items drawn
            scale = box["width"] / painted["w"]
            page.mouse.click(box["x"] + painted["at"][0] * scale, box["y"] + painted["at"][1] * scale)
            page.wait_for_url(f"{url}/items/*")
            assert int(page.url.rsplit("/", 1)[1]) in seeded["ids"]
            assert page.locator("#similar").count() == 1
            ctx.close()
    finally:
        srv.should_exit = True
        store.close()
