"""The web viewer in a real headless Chromium (Debian's chromium + chromium-driver, driven by
Selenium) against real servers: a memory captured through MCP shows up, search and deep links
find it, delete removes it, and with tokens on nothing is shown until a token is entered (once
per browser session). Also the JSON API's HTTP-level answers the browser relies on.

MEMORAY_UPDATE_SCREENSHOT=1 writes docs/viewer.png from the populated page."""

from __future__ import annotations

import asyncio
import os
import shutil
import time
from pathlib import Path
from urllib.parse import quote

import httpx
import pytest

from memoray.auth import TokenStore
from tests.server_process import ROOT, ServerProcess, mcp_client

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
DRIVER = shutil.which("chromedriver")
pytestmark = pytest.mark.skipif(not (CHROMIUM and DRIVER),
                                reason="needs chromium and chromium-driver (make test installs "
                                "them)")

WS = "github.com/acme/viewer"
MARKER = "quokkafence"  # a word nothing else contains, so search has one right answer


def run(coro):
    return asyncio.run(coro)


@pytest.fixture
def browser():
    from selenium import webdriver

    os.environ.setdefault("SE_OFFLINE", "true")  # never let Selenium Manager reach the network
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                "--window-size=1440,960", "--no-first-run", "--disable-extensions"):
        opts.add_argument(arg)
    driver = webdriver.Chrome(options=opts,
                              service=webdriver.ChromeService(executable_path=DRIVER))
    driver.set_page_load_timeout(60)
    yield driver
    driver.quit()


def wait_for(driver, css, timeout=30, text=None):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    def found(d):
        for e in d.find_elements(By.CSS_SELECTOR, css):
            if e.is_displayed() and (text is None or text in e.text):
                return e
        return False

    return WebDriverWait(driver, timeout).until(found, f"{css} {text or ''} never appeared")


def cards(driver):
    from selenium.webdriver.common.by import By

    return driver.find_elements(By.CSS_SELECTOR, "#list .card")


@pytest.fixture(scope="module")
def open_server(tmp_path_factory):
    srv = ServerProcess(tmp_path_factory.mktemp("viewer-open") / "data", embedder="hash").start()
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def token_server(tmp_path_factory):
    data = tmp_path_factory.mktemp("viewer-auth") / "data"
    data.mkdir(parents=True)
    store = TokenStore(data / "tokens.json")
    token = store.create("alice", [WS], ["read", "write"])
    admin = store.create("root", ["*"], ["read", "write", "admin"])
    srv = ServerProcess(data, embedder="hash").start()
    srv.token, srv.admin = token, admin  # type: ignore[attr-defined]
    yield srv
    srv.stop()


HISTORY = [  # (days ago, event type, workspace, branch, content): two weeks of a project
    (13, "decision", WS, "main", "Use Ray Serve for the HTTP layer; one replica per core."),
    (12, "code_change", WS, "main", "Added LMDB-backed shard storage with fsync on commit."),
    (11, "tool_event", WS, "main", "pytest tests/test_shard.py: 14 passed in 3.2s"),
    (10, "error", WS, "main", "hnswlib build failed: missing -march flags on aarch64"),
    (9, "decision", WS, "main", "Build hnswlib with HNSWLIB_NO_NATIVE=1 for portable wheels."),
    (8, "review", "github.com/acme/billing", "main", "Review: retry loop lacks jitter."),
    (8, "code_change", "github.com/acme/billing", "fix/retry", "Exponential backoff with full "
     "jitter in billing/retry.py"),
    (7, "prompt", WS, "main", "how do we keep search fast with 100k memories?"),
    (6, "tool_event", WS, "main", "make bench-core: p95 retrieve 41 ms at 50k records"),
    (5, "preference", WS, None, "The user prefers small commits with imperative messages."),
    (4, "code_change", WS, "feature/viewer", "Viewer: newest-first browse over postings."),
    (3, "tool_event", WS, "feature/viewer", "ruff check: all checks passed"),
    (2, "decision", WS, "feature/viewer", "No CDN: the viewer's assets ship in the wheel."),
    (1, "code_change", WS, "feature/viewer", "Timeline chart as inline SVG, no library."),
]


def _history():
    now = time.time()
    items = []
    for days, event, ws, branch, content in HISTORY:
        ts = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now - days * 86400 - 3600))
        item = {"content": content, "eventType": event, "workspaceId": ws, "timestamp": ts}
        if branch:
            item["gitBranch"] = branch
        items.append(item)
    return items


def _capture(url, token=None):
    async def go():
        async with mcp_client(url, token=token) as c:
            await c.call("capture-memories", items=_history())
            first = await c.call("capture-memory", eventType="decision", workspaceId=WS,
                                 gitBranch="main", content=f"We keep the {MARKER} cache in "
                                 "LMDB so a crash never loses an acknowledged write.",
                                 metadata={"file": "store/cache.py"})
            await c.call("capture-memories", items=[
                {"content": f"ran pytest, shard {i} green", "eventType": "tool_event",
                 "workspaceId": WS, "gitBranch": "feature/viewer", "sessionId": "s-1"}
                for i in range(12)])
            await c.call("capture-memory", eventType="code_change", workspaceId="other/ws",
                         content="Moved the retry loop to billing/retry.py",
                         timestamp="2026-11-20T09:30:00Z")
            await c.call("capture-memory", eventType="review", workspaceId=WS,
                         content="Review: the login handler logs the session cookie.",
                         timestamp="2026-11-25T14:00:00Z")
            return first["id"]
    return run(go())


def test_viewer_shows_searches_deep_links_and_deletes(open_server, browser):
    from selenium.webdriver.common.by import By

    mid = _capture(open_server.mcp_url)
    browser.get(open_server.url + "/")
    # Newest first on opening: the batch of tool events (captured after the decision) leads.
    wait_for(browser, "#list .card")
    first = cards(browser)[0]
    assert "tool_event" in first.text
    assert any(c.get_attribute("data-id") == mid for c in cards(browser))
    wait_for(browser, "#health", text="ok")
    wait_for(browser, "#components li", text="shard-0")
    assert browser.find_elements(By.CSS_SELECTOR, "#chart-days svg rect.bar")
    types = browser.find_element(By.ID, "chart-types").text
    assert "tool_event" in types and "decision" in types

    # Search through the form finds the memory (hybrid retrieval), and the URL becomes a link.
    box = browser.find_element(By.ID, "q")
    box.clear()
    box.send_keys(MARKER)
    browser.find_element(By.ID, "search-btn").click()
    wait_for(browser, "#list-title", text=MARKER)
    top = wait_for(browser, "#list .card", text=MARKER)
    assert top.get_attribute("data-id") == mid
    assert f"q={MARKER}" in browser.current_url

    # A deep link opens that search, in that workspace, with its results.
    browser.get(f"{open_server.url}/?q={quote('session cookie')}&workspace={quote(WS)}")
    hit = wait_for(browser, "#list .card", text="session cookie")
    assert browser.find_element(By.ID, "q").get_attribute("value") == "session cookie"
    assert browser.find_element(By.ID, "f-workspace").get_attribute("value") == WS
    assert all(WS in c.text for c in cards(browser))
    assert "Review:" in hit.text

    if os.environ.get("MEMORAY_UPDATE_SCREENSHOT"):  # the newest-first view, one memory open
        browser.get(open_server.url + "/")
        wait_for(browser, "#list .card", text=MARKER).click()
        wait_for(browser, "#detail-content", text=MARKER)
        wait_for(browser, "#components li", text="shard-0")
        browser.execute_script("window.scrollTo(0, 0)")
        time.sleep(0.3)
        browser.save_screenshot(str(ROOT / "docs" / "viewer.png"))

    # Browse one branch; open one memory in full.
    browser.get(f"{open_server.url}/?branch=feature%2Fviewer")
    wait_for(browser, "#list .card", text="ran pytest")
    on_branch = 12 + sum(1 for h in HISTORY if h[3] == "feature/viewer")
    assert len(cards(browser)) == on_branch
    assert all("feature/viewer" in c.text for c in cards(browser))
    browser.get(f"{open_server.url}/?q={MARKER}")
    wait_for(browser, "#list .card", text=MARKER).click()
    detail = wait_for(browser, "#detail-content", text=MARKER)
    assert "acknowledged write" in detail.text
    assert "store/cache.py" in browser.find_element(By.ID, "detail-meta").text


    # Delete through the UI: confirm, gone from the page and from the server.
    browser.find_element(By.ID, "detail-delete").click()
    browser.switch_to.alert.accept()
    wait_for(browser, "#status", text="Deleted")
    assert not any(c.get_attribute("data-id") == mid for c in cards(browser))
    res = httpx.get(f"{open_server.url}/api/memories/{mid}")
    assert res.status_code == 404 and res.json()["code"] == "NOT_FOUND"


def test_viewer_refuses_without_token_and_asks_once(token_server, browser):
    from selenium.webdriver.common.by import By

    _capture(token_server.mcp_url, token=token_server.admin)
    # The API refuses at the HTTP layer, as the MCP authorization spec has it.
    res = httpx.get(f"{token_server.url}/api/memories")
    assert res.status_code == 401 and res.headers["www-authenticate"].startswith("Bearer")
    res = httpx.get(f"{token_server.url}/api/search", params={"q": MARKER},
                    headers={"Authorization": "Bearer not-a-token"})
    assert res.status_code == 401 and MARKER not in res.text

    browser.get(token_server.url + "/")
    wait_for(browser, "#token-dialog[open]")
    time.sleep(1.0)  # give a leaking page time to render anything it should not
    assert cards(browser) == []
    assert MARKER not in browser.find_element(By.TAG_NAME, "body").text

    # A wrong token is refused and asked for again; the right one shows the memories.
    browser.find_element(By.ID, "token").send_keys("wrong")
    browser.find_element(By.ID, "token-submit").click()
    wait_for(browser, "#token-error", text="refused")
    assert cards(browser) == []
    browser.find_element(By.ID, "token").send_keys(token_server.token)
    browser.find_element(By.ID, "token-submit").click()
    wait_for(browser, "#list .card", text=MARKER)
    # alice sees her workspace only: the other workspace's memory is not listed.
    assert all("other/ws" not in c.text for c in cards(browser))

    # Kept for the browser session: a reload and a deep link do not ask again.
    browser.get(f"{token_server.url}/?q={MARKER}&workspace={quote(WS)}")
    wait_for(browser, "#list .card", text=MARKER)
    assert not browser.find_elements(By.CSS_SELECTOR, "#token-dialog[open]")
    assert browser.execute_script("return sessionStorage.getItem('memoray.token')") == (
        token_server.token)


def test_api_rejects_cross_site_and_bad_input(open_server):
    url = open_server.url
    # DNS rebinding: a foreign Host is refused while the server runs without tokens.
    res = httpx.get(f"{url}/api/memories", headers={"Host": "attacker.example"})
    assert res.status_code == 403
    # A mutating request without the viewer's header (a plain cross-site form post) is refused.
    res = httpx.post(f"{url}/api/import", content=b'{"records": []}')
    assert res.status_code == 403
    before = httpx.get(f"{url}/api/stats").json()["total"]
    bad = [{"id": "not-an-id", "content": "x", "event_type": "note", "workspace_id": "w",
            "timestamp": 1.0}]
    res = httpx.post(f"{url}/api/import", json={"records": bad},
                     headers={"X-Memoray-Client": "test"})
    assert res.status_code == 400 and "records[0].id" in res.json()["message"]
    res = httpx.get(f"{url}/api/memories", params={"cursor": "garbage"})
    assert res.status_code == 400 and res.json()["code"] == "INVALID_INPUT"
    res = httpx.get(f"{url}/api/memories", params={"start": "yesterday"})
    assert res.status_code == 400
    assert httpx.get(f"{url}/api/stats").json()["total"] == before
    assert httpx.get(f"{url}/viewer/../../etc/passwd").status_code == 404
    page = httpx.get(url + "/")
    assert page.status_code == 200 and "script-src 'self'" in page.headers[
        "content-security-policy"]
    assert Path(ROOT / "memoray" / "web" / "app.js").is_file()
