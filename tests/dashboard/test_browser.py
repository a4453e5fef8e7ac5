"""The dashboard in a real browser: Playwright driving Debian's Chromium against a real uvicorn server.

Never a downloaded browser: without /usr/bin/chromium these tests skip (scripts/setup.sh installs it).
Screenshots of every page go to test-output/dashboard/ (git-ignored) for a person to look at.
"""

from __future__ import annotations

import re
import threading
import time
from pathlib import Path

import pytest

from inspector.dashboard import _listen
from inspector.dashboard.app import create_app
from inspector.io.store import Store
from tests.dashboard.test_api import TOKEN, seed_store
from tests.support import ROOT, wait_for

CHROMIUM = Path("/usr/bin/chromium")
SHOTS = ROOT / "test-output" / "dashboard"
ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]

pytestmark = pytest.mark.skipif(
    not CHROMIUM.exists(),
    reason="needs Debian's Chromium at /usr/bin/chromium (apt-get install chromium; scripts/setup.sh does it)",
)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    import uvicorn

    tmp = tmp_path_factory.mktemp("dashboard")
    store = Store.open(f"sqlite:///{tmp}/line/store.db")
    seed_store(store, n=160)
    app = create_app(store, TOKEN, tmp / "retrain" / "good", trusted_hosts=["127.0.0.1"])
    sock = _listen("127.0.0.1", 0)
    srv = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    thread = threading.Thread(target=srv.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    wait_for(lambda: srv.started, 20, what="dashboard server start")
    yield f"http://127.0.0.1:{sock.getsockname()[1]}", store, tmp
    srv.should_exit = True
    thread.join(10)
    store.close()


@pytest.fixture(scope="module")
def browser_context(tmp_path_factory):
    from playwright.sync_api import sync_playwright  # the dev extra; missing it is an error, not a skip

    SHOTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        ctx = p.chromium.launch_persistent_context(
            str(tmp_path_factory.mktemp("chromium-profile")),
            executable_path=str(CHROMIUM),
            headless=True,
            args=ARGS,
            viewport={"width": 1440, "height": 900},
        )
        yield ctx
        ctx.close()


@pytest.fixture
def page(browser_context):
    """A tab that records console errors and uncaught exceptions (CSP violations show up here)."""
    pg = browser_context.new_page()
    pg.errors = []
    pg.on("console", lambda m: pg.errors.append(m.text) if m.type == "error" and "401" not in m.text else None)
    pg.on("pageerror", lambda e: pg.errors.append(str(e)))
    yield pg
    pg.close()


def shot(page, name: str) -> None:
    page.screenshot(path=str(SHOTS / name), full_page=True)


def false_alarms(page, url: str, source: str) -> int:
    page.goto(f"{url}/stats")
    return int(page.inner_text(f'tr[data-source="{source}"] td.fa'))


def images_loaded(page, selector: str) -> bool:
    return page.eval_on_selector_all(
        selector, "els => els.length > 0 && els.every(e => e.complete && e.naturalWidth > 0)"
    )


def test_list_filter_open_review_and_see_stats_change(server, page):
    url, store, tmp = server
    before = false_alarms(page, url, "scan")
    shot(page, "05-stats-before.png")
    page.goto(url + "/")
    page.wait_for_selector(".card")
    assert page.locator(".card").count() == 32
    wait_for(lambda: images_loaded(page, ".card img"), 20, what="thumbnails")
    shot(page, "01-list.png")

    page.select_option("select[name=source]", "scan")
    page.click("button.primary")
    page.wait_for_url(re.compile(r"source=scan"))
    sources = page.locator(".card .src").all_inner_texts()
    assert len(sources) == 16 and set(sources) == {"scan"}
    shot(page, "02-list-filtered.png")

    page.locator(".card").first.click()
    page.wait_for_url(re.compile(r"/items/\d+$"))
    item_id = int(page.url.rsplit("/", 1)[1])
    wait_for(lambda: images_loaded(page, ".images img"), 20, what="item images")
    assert page.locator(".images img").count() == 3
    shot(page, "03-item.png")

    page.fill("#reviewer", "Ana")
    page.fill("#token", TOKEN)
    page.fill("#note", "reflection, part is fine")
    page.keyboard.press("Escape")  # leave the text field: shortcuts do not fire while typing
    page.keyboard.press("f")
    page.wait_for_selector('#status[data-status="false_alarm"]')
    assert page.inner_text("#status") == "False alarm" and "by Ana" in page.inner_text("#who")
    assert len(list((tmp / "retrain" / "good").glob(f"*_{item_id}.png"))) == 1
    shot(page, "04-item-reviewed.png")

    page.reload()
    assert page.inner_text("#status") == "False alarm" and page.is_visible("#retrain")
    assert false_alarms(page, url, "scan") == before + 1
    assert page.inner_text('tr[data-source="scan"] td.rate').strip().endswith("100%")
    shot(page, "06-stats-after.png")
    assert page.errors == []


def test_wrong_token_is_refused_in_the_page(server, page):
    url, _, _ = server
    page.goto(url + "/?source=cam1&status=pending")
    page.locator(".card").first.click()
    page.wait_for_url(re.compile(r"/items/\d+$"))
    page.fill("#reviewer", "Eve")
    page.fill("#token", "not-the-token-at-all")
    page.click("button.defect")
    page.wait_for_selector("#msg.err")
    assert page.inner_text("#msg") == "Token rejected." and page.inner_text("#status") == "Pending"
    here = page.url
    page.keyboard.press("j")  # keyboard navigation to the older neighbour
    page.wait_for_url(lambda u: u != here and re.search(r"/items/\d+$", u) is not None)
    page.keyboard.press("Escape")  # back to the list
    page.wait_for_url(url + "/")
    assert page.errors == []


def test_new_items_appear_without_reloading(server, page):
    url, store, _ = server
    page.goto(url + "/")
    page.wait_for_selector(".card")
    first = int(page.locator(".card").first.get_attribute("data-id"))
    later = seed_store(store, n=10, seed=3)  # two more flagged items, recorded while the page is open
    page.wait_for_selector(".card.fresh", timeout=20_000)
    time.sleep(0.3)
    fresh = sorted(int(x) for x in page.locator(".card.fresh").evaluate_all("els => els.map(e => e.dataset.id)"))
    assert fresh == sorted(r["id"] for r in later.flagged) and min(fresh) > first
    shot(page, "07-list-live.png")
    assert page.errors == []


def test_pages_fit_a_phone_screen(server, browser_context):
    url, _, _ = server
    pg = browser_context.new_page()
    pg.set_viewport_size({"width": 390, "height": 844})
    for path, name in (("/", "08-list-phone.png"), ("/stats", "09-stats-phone.png")):
        pg.goto(url + path)
        assert pg.evaluate("document.documentElement.scrollWidth <= window.innerWidth + 1"), path
        pg.wait_for_load_state("networkidle")
        pg.screenshot(path=str(SHOTS / name), full_page=path != "/")
    pg.goto(url + "/api/docs")
    pg.set_viewport_size({"width": 1280, "height": 900})
    assert "/api/items" in pg.inner_text("main")
    pg.screenshot(path=str(SHOTS / "10-api-docs.png"), full_page=False)
    pg.close()
