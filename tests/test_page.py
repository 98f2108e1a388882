"""The /admin/queue page in a real browser (Debian's chromium via playwright's sync API) against the real app
and a fake ComfyUI that replays recorded traffic.

Never downloads a browser: the tests run with /usr/bin/chromium (CHROMIUM env var to override) and are
skipped when it or playwright is missing. Its screenshot: idle.png (running, phone and overlay come from
tests/test_layout_browser.py, a demo run).
"""
from __future__ import annotations

import copy
import os
import re

import pytest

from browser import requires_chromium
from live import LiveServer, recorded_prompt

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Screenshots of every run go to artifacts/ (ignored); SCREENSHOTS_DIR=docs/screenshots refreshes the README's.
SHOTS = os.path.join(ROOT, os.environ.get("SCREENSHOTS_DIR", os.path.join("artifacts", "screenshots")))
XSS = "<img src=x onerror=alert(1)>"

pytestmark = requires_chromium


# ---- fixtures -----------------------------------------------------------------------------------------

class Page:
    """A page plus everything it said: console errors, uncaught exceptions, JS dialogs (alert/confirm)."""

    def __init__(self, browser, viewport=None, permissions=()):
        self.context = browser.new_context(viewport=viewport or {"width": 1366, "height": 900})
        self.page = self.context.new_page()
        self.errors: list[str] = []
        self.dialogs: list[str] = []
        self.accept_confirm = False
        self.page.on("console", lambda m: self.errors.append(f"console.{m.type}: {m.text}")
                     if m.type == "error" else None)
        self.page.on("pageerror", lambda e: self.errors.append(f"pageerror: {e}"))
        self.page.on("dialog", self._on_dialog)

    def _on_dialog(self, dialog):
        self.dialogs.append(f"{dialog.type}: {dialog.message}")
        if dialog.type == "confirm" and self.accept_confirm:
            dialog.accept()
        else:
            dialog.dismiss()

    def open(self, server):
        self.page.goto(server.url + "/admin/queue")
        self.wait_live()
        return self.page

    def wait_live(self, state="live", timeout=20_000):
        self.page.wait_for_function("s => document.getElementById('live').dataset.state === s", arg=state,
                                    timeout=timeout)

    def close(self):
        self.context.close()


@pytest.fixture
def page(browser):
    p = Page(browser)
    yield p
    p.close()


@pytest.fixture
def slow_server(tmp_path):
    """The app against a fake ComfyUI that replays the recorded run at 1/5 speed (about 10 s a job), long
    enough to watch it in the browser."""
    from fake_comfy import FakeComfy
    fake = FakeComfy(speed=0.2)
    server = LiveServer(fake, str(tmp_path / "data"))
    yield server
    server.stop_app()
    fake.stop(abrupt=False)


def xss_prompt() -> dict:
    graph = copy.deepcopy(recorded_prompt())
    graph["10"] = {"class_type": "CLIPTextEncode", "inputs": {"text": XSS}, "_meta": {"title": "Prompt"}}
    return graph


def shot(page, name: str, full_page: bool = False) -> None:
    os.makedirs(SHOTS, exist_ok=True)
    page.screenshot(path=os.path.join(SHOTS, name), full_page=full_page)


def card_ids(page) -> list[str]:
    return page.eval_on_selector_all("#card-list > .card", "els => els.map(e => e.dataset.jobId)")


# ---- tests --------------------------------------------------------------------------------------------

def test_empty_states_and_idle_screenshot(live_server, page):
    p = page.open(live_server)
    assert p.locator("#cards .empty").inner_text() == "No jobs in queue"
    assert p.locator("#current .idle").inner_text() == "No jobs running"
    assert p.title() == "Job Queue"
    # gauges: all five are there; a value is a percentage or "n/a", never blank
    for key in ("gpu0", "vram0", "ram", "cpu", "disk"):
        val = p.locator(f"#gauge-{key} .g-val").inner_text()
        assert re.fullmatch(r"\d+%|n/a", val), (key, val)
    p.wait_for_timeout(300)
    shot(p, "idle.png")
    assert page.errors == []


def test_live_indicator_green_amber_green_and_offline(live_server, page):
    p = page.open(live_server)
    assert p.locator("#live-text").inner_text() == "LIVE"

    live_server.stop_app()                       # the monitor goes away: the socket drops
    page.wait_live("reconnecting")
    assert p.locator("#live-text").inner_text() == "RECONNECTING"
    live_server.start_app()
    page.wait_live("live")                       # backoff retries find it again

    live_server.fake.stop(abrupt=True)           # ComfyUI itself dies: the server says so
    page.wait_live("offline")
    assert p.locator("#live-text").inner_text() == "ComfyUI OFFLINE"
    live_server.fake.start()
    page.wait_live("live")
    # While the server is down the browser reports the refused socket and the failed fallback polls
    # (htmx logs them too); nothing else may go wrong.
    # (The in-process restart can also answer a poll in flight with a 500 while the old app shuts down.)
    expected = ("WebSocket", "ERR_CONNECTION_REFUSED", "Failed to load resource", "htmx:",
                "Response Status Error Code 500")
    assert [e for e in page.errors if not any(x in e for x in expected)] == [], page.errors
    # once back, a refresh works cleanly
    page.errors.clear()
    p.evaluate("() => { window.__ok = 0; document.body.addEventListener('htmx:afterSwap', () => window.__ok++); }")
    p.click("#live")
    p.wait_for_function("() => window.__ok >= 3", timeout=10_000)
    assert page.errors == []


def test_running_job_progress_preview_strip_title_and_notification(slow_server, browser):
    page = Page(browser)
    page.context.grant_permissions(["notifications"])
    # Record notifications instead of showing them.
    page.context.add_init_script("""
        window.__notes = [];
        // The tab is in the background: notifications are for when the page is not seen.
        Object.defineProperty(Document.prototype, "visibilityState", { get: () => "hidden" });
        window.Notification = class { constructor(t, o) { window.__notes.push([t, (o || {}).body, (o || {}).icon]); }
                                      static get permission() { return "granted"; }
                                      static requestPermission() { return Promise.resolve("granted"); } };
    """)
    try:
        p = page.open(slow_server)
        # Sample what the panel shows while the run plays.
        p.evaluate("""() => {
            window.__seen = {node: new Set(), step: new Set(), pct: new Set(), rate: new Set(), eta: new Set(),
                             title: new Set(), valuenow: new Set()};
            const f = n => document.querySelector('#current [data-f="' + n + '"]');
            window.__sampler = setInterval(() => {
                const s = window.__seen;
                for (const k of ["node", "step", "rate", "eta"]) { const e = f(k); if (e && !e.hidden) s[k].add(e.textContent); }
                const pc = f("percent"); if (pc) s.pct.add(pc.textContent);
                const bar = f("bar"); if (bar && bar.hasAttribute("aria-valuenow")) s.valuenow.add(bar.getAttribute("aria-valuenow"));
                s.title.add(document.title);
            }, 40);
        }""")
        job = slow_server.submit(xss_prompt(), workflow_name="Probe run")
        second = slow_server.submit()          # queued behind it, for the cards in the screenshot
        p.wait_for_function("id => document.querySelector('#current').dataset.jobId === id", arg=job["id"],
                            timeout=15_000)
        # a preview image arrives over the socket and renders
        p.wait_for_function("() => { const i = document.getElementById('preview-img');"
                            " return !i.hidden && i.complete && i.naturalWidth > 0; }", timeout=15_000)
        assert p.get_attribute("#preview-img", "src").startswith("blob:")
        # the node output strip fills with thumbnails that load, labelled by node title
        p.wait_for_function("() => [...document.querySelectorAll('#node-strip img')]"
                            ".some(i => i.complete && i.naturalWidth > 0)", timeout=20_000)
        labels = p.locator("#node-strip .strip-label").all_inner_texts()
        assert labels and all(labels)
        # the running card is first, with its pulsing badge; the second job is queued behind it
        assert card_ids(p)[:2] == [job["id"], second["id"]]
        assert p.locator(f"#job-{job['id']} .badge-running .pulse").count() == 1
        assert "queued" in p.locator(f"#job-{second['id']} .badge").inner_text()
        # mid-run: step, rate and ETA all showing
        p.wait_for_function("""() => { const f = n => document.querySelector('#current [data-f="' + n + '"]');
            const m = /Step (\\d+)\\//.exec(f('step').textContent);
            return m && +m[1] >= 5 && !f('rate').hidden && !f('eta').hidden; }""", timeout=20_000)

        slow_server.wait_status(job["id"], "completed", timeout=30)
        # the finished card leaves the active list (it is in Recent now)
        p.wait_for_selector(f"#job-{job['id']}", state="detached", timeout=5_000)
        p.wait_for_function("() => window.__notes.length > 0", timeout=10_000)
        seen = p.evaluate("() => Object.fromEntries(Object.entries(window.__seen).map(([k, v]) => [k, [...v]]))")
        p.evaluate("() => clearInterval(window.__sampler)")

        assert any(n not in ("", "Starting…") for n in seen["node"]), seen["node"]
        assert any(re.fullmatch(r"Step \d+/\d+", s) for s in seen["step"]), seen["step"]
        assert any(re.fullmatch(r"\d+\.\d it/s", s) for s in seen["rate"]), seen["rate"]
        assert any(re.fullmatch(r"~\d.*s", s) for s in seen["eta"]), seen["eta"]
        assert any(re.fullmatch(r"\d+%", s) for s in seen["pct"]), seen["pct"]
        assert any(0 < int(v) < 100 for v in seen["valuenow"]), seen["valuenow"]
        assert any(re.fullmatch(r"\(\d+%\) Job Queue", t) for t in seen["title"]), seen["title"]
        notes = p.evaluate("() => window.__notes")
        assert notes[0][0] == "Probe run — completed" and notes[0][1] == "Probe run completed", notes
        assert page.dialogs == []
        assert page.errors == []
    finally:
        page.close()


def test_cards_order_and_survive_a_poll(slow_server, page):
    p = page.open(slow_server)
    jobs = [slow_server.submit(workflow_name=f"Job {i}") for i in range(3)]
    slow_server.wait_status(jobs[0]["id"], "running", timeout=15)
    ids = [j["id"] for j in jobs]
    p.wait_for_function("ids => ids.every(id => document.getElementById('job-' + id))", arg=ids,
                        timeout=15_000)
    p.wait_for_function("id => document.getElementById('job-' + id).dataset.status === 'running'",
                        arg=ids[0], timeout=15_000)
    assert card_ids(p)[:3] == ids                 # running first, then queued by position
    # positions come from the server's reconcile of ComfyUI's queue: they settle within a few seconds
    p.wait_for_function("ids => ids.map(id => (document.querySelector('#job-' + id + ' .qpos') || {}).textContent)"
                        ".join() === '#1,#2'", arg=ids[1:], timeout=10_000)
    # running card has the accent class; the cards are keyboard reachable
    assert "is-running" in p.get_attribute(f"#job-{ids[0]}", "class")
    assert p.get_attribute(f"#job-{ids[1]}", "tabindex") == "0"

    # Tag the DOM nodes, force a refresh of the list (click on the LIVE indicator), check they're the same.
    p.evaluate("""ids => { window.__swaps = 0;
        document.body.addEventListener('htmx:afterSwap', e => { if (e.detail.target.id === 'cards') window.__swaps++; });
        ids.forEach(id => { document.getElementById('job-' + id).__tag = id; }); }""", ids)
    p.click("#live")
    p.wait_for_function("() => window.__swaps >= 1", timeout=10_000)
    p.wait_for_function("() => window.__swaps >= 1", timeout=10_000)
    same = p.evaluate("ids => ids.map(id => { const e = document.getElementById('job-' + id);"
                      " return !!e && e.isConnected && e.__tag === id; })", ids)
    assert same == [True, True, True]
    assert page.errors == []


def test_overlay_opens_shows_record_and_closes_on_escape(slow_server, page):
    p = page.open(slow_server)
    job = slow_server.submit(workflow_name="Overlay probe")
    p.wait_for_selector(f"#job-{job['id']}", timeout=15_000)
    p.focus(f"#job-{job['id']}")
    p.keyboard.press("Enter")                       # keyboard opens it too
    p.wait_for_function("() => document.getElementById('overlay').open", timeout=10_000)
    p.wait_for_selector("#overlay-job")
    body = p.locator("#overlay-job").inner_text()
    assert job["id"] in body
    assert "Overlay probe" in body
    assert "parameters" in body.lower() and "outputs" in body.lower()
    p.keyboard.press("Escape")
    p.wait_for_function("() => !document.getElementById('overlay').open", timeout=5_000)
    # focus returns to the card
    assert p.evaluate("() => document.activeElement && document.activeElement.id") == f"job-{job['id']}"

    # click opens; the × closes; a backdrop click closes
    p.click(f"#job-{job['id']} .wf-name")
    p.wait_for_function("() => document.getElementById('overlay').open", timeout=10_000)
    p.click("#overlay [data-close]")
    p.wait_for_function("() => !document.getElementById('overlay').open", timeout=5_000)
    p.click(f"#job-{job['id']} .wf-name")
    p.wait_for_function("() => document.getElementById('overlay').open", timeout=10_000)
    p.mouse.click(5, 5)
    p.wait_for_function("() => !document.getElementById('overlay').open", timeout=5_000)
    assert page.errors == []


def test_overlay_unknown_job_is_a_not_found_fragment(live_server):
    resp = live_server.get("/admin/jobs/no-such-job/overlay")
    assert resp.status_code == 404
    assert "Job not found" in resp.text


def test_user_text_is_escaped_and_inert(slow_server, page):
    p = page.open(slow_server)
    job = slow_server.submit(xss_prompt(), workflow_name='<b hx-get="/admin/queue" hx-trigger="load">W</b>')
    card = f"#job-{job['id']}"
    p.wait_for_selector(card, timeout=15_000)
    assert p.locator(f"{card} .excerpt").inner_text() == XSS
    assert p.locator(f"{card} .wf-name").inner_text() == '<b hx-get="/admin/queue" hx-trigger="load">W</b>'
    assert p.locator(f"{card} .info img, {card} .info b").count() == 0
    p.click(f"{card} .wf-name")
    p.wait_for_function("() => document.getElementById('overlay').open", timeout=10_000)
    assert XSS in p.locator("#overlay-job").inner_text()
    assert p.locator("#overlay-job .ov-scroll img[src='x']").count() == 0
    p.wait_for_timeout(500)
    assert page.dialogs == []
    assert page.errors == []


def test_cancel_running_job_from_the_page(slow_server, page):
    p = page.open(slow_server)
    job = slow_server.submit(workflow_name="To cancel")
    p.wait_for_function("id => document.querySelector('#current').dataset.jobId === id", arg=job["id"],
                        timeout=15_000)
    # the truncated id copies the full id
    page.context.grant_permissions(["clipboard-read", "clipboard-write"])
    assert p.locator("#current .jobid").inner_text() == job["id"][:8] + "…"
    p.click("#current .jobid")
    p.wait_for_function("() => document.getElementById('toast').textContent === 'Job id copied'", timeout=5_000)
    assert p.evaluate("() => navigator.clipboard.readText()") == job["id"]

    # An in-page dialog asks: it starts on "Keep running", keeps focus inside, and Escape keeps the job.
    p.click("#current [data-cancel]")
    p.wait_for_function("() => document.getElementById('confirm-stop').open", timeout=5_000)
    assert "To cancel" in p.locator("#confirm-stop-title").inner_text()
    assert p.evaluate("() => document.activeElement.textContent") == "Keep running"
    p.keyboard.press("Tab")
    assert p.evaluate("() => document.activeElement.textContent") == "Stop job"
    p.keyboard.press("Tab")   # focus cycles inside the dialog
    assert p.evaluate("() => document.activeElement.textContent") == "Keep running"
    p.keyboard.press("Escape")
    p.wait_for_function("() => !document.getElementById('confirm-stop').open", timeout=5_000)
    assert p.evaluate("() => document.activeElement.matches('#current [data-cancel]')")
    assert slow_server.get(f"/api/admin/jobs/{job['id']}").json()["status"] == "running"
    p.click("#current [data-cancel]")
    p.click("#confirm-stop button[value='stop']")
    slow_server.wait_status(job["id"], {"interrupted", "cancelled"}, timeout=20)
    assert page.dialogs == []   # no window.confirm
    # the panel says how it ended, then goes idle
    p.wait_for_selector("#current [data-outcome='interrupted'], #current [data-outcome='cancelled']", timeout=10_000)
    p.wait_for_function("() => document.querySelector('#current').dataset.jobId === ''", timeout=10_000)
    p.wait_for_selector("#current .idle", timeout=15_000)
    assert p.locator("#current .idle").inner_text() == "No jobs running"
    assert page.errors == []


def test_preview_toggle_is_remembered(live_server, page):
    p = page.open(live_server)
    assert p.get_attribute("#preview-toggle", "aria-expanded") == "true"
    p.click("#preview-toggle")
    assert p.get_attribute("#preview-toggle", "aria-expanded") == "false"
    assert p.locator("#preview-body").is_hidden()
    p.reload()
    page.wait_live()
    assert p.get_attribute("#preview-toggle", "aria-expanded") == "false"
    assert p.locator("#preview-body").is_hidden()
    assert page.errors == []


def test_phone_layout_has_no_horizontal_scroll(live_server, browser):
    page = Page(browser, viewport={"width": 390, "height": 844})
    try:
        p = page.open(live_server)
        live_server.fake.pause()                   # keep them queued
        for i in range(2):
            live_server.submit(workflow_name=f"A rather long workflow name number {i} for a small screen")
        p.wait_for_function("() => document.querySelectorAll('#card-list > .card').length >= 2", timeout=15_000)
        assert p.evaluate("() => document.documentElement.scrollWidth <= window.innerWidth")
        assert page.errors == []
    finally:
        live_server.fake.resume()
        page.close()
