"""Issue 14, numbers that agree and outcomes a person sees, in a real browser (Debian's chromium): the panel
shows how a job ended and then clears, the ETAs are labelled, the count counts the list, positions never
skip, a new job's bar never slides back, the overlay reads the same progress, notifications follow the tab."""
from __future__ import annotations

import copy
import re

import pytest

from browser import open_queue_page, requires_chromium
from fake_comfy import FakeComfy
from live import LiveServer
from monitor.demo import DEMO_PROMPT, SyntheticEngine

pytestmark = requires_chromium

# Records notifications; the permission comes from window.__perm (granted unless a test says otherwise).
NOTIFICATIONS = """
    window.__notes = [];
    window.__perm = window.__perm || "granted";
    window.__noteObjs = [];
    window.Notification = class { constructor(t, o) { window.__notes.push([t, (o || {}).body, (o || {}).icon]);
                                                      window.__noteObjs.push(this); }
                                  close() { this.closed = true; }
                                  static get permission() { return window.__perm; }
                                  static requestPermission() { return Promise.resolve(window.__perm); } };
"""

# Every animation frame: what the cards list and the Current Job panel show.
SAMPLER = """() => {
    window.__frames = [];
    const tick = () => {
        const cur = document.getElementById('current');
        const fill = cur.querySelector('[data-f="bar"] .bar-fill'), bar = cur.querySelector('[data-f="bar"]');
        const cards = [...document.querySelectorAll('#card-list > li')];
        const ov = document.querySelector('#overlay-job [data-f="percent"]');
        const ovStep = document.querySelector('#overlay-job [data-f="step"]');
        window.__frames.push({
            job: cur.dataset.jobId || '',
            width: fill && bar ? fill.getBoundingClientRect().width / bar.getBoundingClientRect().width : null,
            count: +(document.querySelector('#cards-h .count') || {}).textContent,
            cards: cards.length,
            running: cards.filter(c => c.querySelector('.badge-running')).length,
            positions: cards.map(c => (c.querySelector('.qpos') || {}).textContent).filter(Boolean),
            lingering: cards.filter(c => /completed|failed|interrupted|cancelled/.test(
                (c.querySelector('.badge') || {}).className || '')).length,
            panelPct: (cur.querySelector('[data-f="percent"]') || {}).textContent,
            overlayPct: ov ? ov.textContent : null,
            panelStep: (cur.querySelector('[data-f="step"]') || {}).textContent,
            overlayStep: ovStep ? ovStep.textContent : null,
        });
        window.__raf = requestAnimationFrame(tick);
    };
    tick();
}"""


def prompt(seed: int, steps: int = 20) -> dict:
    graph = copy.deepcopy(DEMO_PROMPT)
    graph["5"]["inputs"].update(seed=seed, steps=steps)
    return graph


def make_server(tmp_path, **engine):
    fake = FakeComfy(default=SyntheticEngine(step_s=0.15, seed=7, **engine))
    return fake, LiveServer(fake, str(tmp_path / "data"))


@pytest.fixture
def server(tmp_path):
    fake, srv = make_server(tmp_path)
    yield srv
    srv.stop_app()
    fake.stop(abrupt=False)


@pytest.fixture
def failing_server(tmp_path):
    fake, srv = make_server(tmp_path, failure_rate=1.0)
    yield srv
    srv.stop_app()
    fake.stop(abrupt=False)


def open_page(browser, server, init=NOTIFICATIONS):
    return open_queue_page(browser, server, init=init)


def test_numbers_agree_and_a_completed_job_shows_its_outcome_then_clears(server, browser):
    context, page, errors = open_page(browser, server)
    try:
        page.evaluate(SAMPLER)
        jobs = [server.submit(prompt(i), workflow_name=f"Outcome {i}") for i in range(3)]
        page.wait_for_function("id => document.getElementById('current').dataset.jobId === id",
                               arg=jobs[0]["id"], timeout=20_000)
        # The ETAs carry visible labels.
        page.wait_for_function("() => { const w = document.querySelector('#current [data-f=\"eta-wrap\"]');"
                               " return w && !w.hidden; }", timeout=20_000)
        assert re.fullmatch(r"This node:\s+~\d+s", page.locator('#current [data-f="eta-wrap"]').inner_text().strip())
        assert page.locator("#current .job-eta-stat").inner_text().startswith("Whole job:")
        # The overlay, opened over the running job, shows the panel's percent from the same messages.
        page.click(f"#job-{jobs[0]['id']} .wf-name")
        page.wait_for_selector('#overlay-job [data-f="percent"]', timeout=10_000)
        page.wait_for_timeout(1200)
        page.keyboard.press("Escape")
        for job in jobs:
            server.wait_status(job["id"], "completed", timeout=60)
        # The last one's outcome: completed, with its output thumbnail; then the panel clears with the preview.
        page.wait_for_selector("#current [data-outcome='completed'] .outcome-thumb img", timeout=10_000)
        page.wait_for_function("() => { const i = document.querySelector('#current .outcome-thumb img');"
                               " return i.complete && i.naturalWidth > 0; }", timeout=10_000)
        assert page.locator("#current .outcome-text").inner_text().startswith("Completed in")
        assert page.locator("#current .outcome .wf-name").inner_text() == "Outcome 2"
        page.wait_for_selector("#current .idle", timeout=15_000)
        assert page.locator("#preview-img").is_hidden()
        page.evaluate("() => cancelAnimationFrame(window.__raf)")
        frames = page.evaluate("() => window.__frames")

        # The count counts the list; no finished card among the active ones; at most one running; positions
        # start at #1 and never skip.
        assert all(f["count"] == f["cards"] for f in frames), [(f["count"], f["cards"]) for f in frames
                                                                if f["count"] != f["cards"]][:5]
        assert max(f["lingering"] for f in frames) == 0
        assert max(f["running"] for f in frames) <= 1
        for f in frames:
            numbers = [int(p.strip("#")) for p in f["positions"]]
            assert numbers == list(range(1, len(numbers) + 1)), f
        # Each job's bar only grows: a new job's bar starts empty instead of sliding back from the last one.
        followed = 0
        for job in jobs[1:]:
            widths = [f["width"] for f in frames if f["job"] == job["id"] and f["width"] is not None]
            followed += bool(widths)
            assert all(b >= a - 0.01 for a, b in zip(widths, widths[1:])), widths[:20]
        assert followed, "the panel never showed a second job"
        # While the overlay was open it showed what the panel showed.
        both = [f for f in frames if f["overlayPct"] is not None and f["job"] == jobs[0]["id"]]
        assert both and all(f["overlayPct"] == f["panelPct"] and f["overlayStep"] == f["panelStep"] for f in both), \
            [(f["overlayPct"], f["panelPct"], f["overlayStep"], f["panelStep"]) for f in both
             if f["overlayPct"] != f["panelPct"] or f["overlayStep"] != f["panelStep"]][:5]
        # The tab was visible the whole time: the outcomes were on screen, so no notification.
        assert page.evaluate("() => window.__notes") == []
        assert errors == []
    finally:
        context.close()


def test_a_failed_job_shows_its_one_line_reason_and_notifies_with_the_workflow_name(failing_server, browser):
    context, page, errors = open_page(
        browser, failing_server,
        NOTIFICATIONS + 'Object.defineProperty(Document.prototype, "visibilityState", { get: () => "hidden" });')
    try:
        job = failing_server.submit(prompt(1), workflow_name="Doomed run")
        done = failing_server.wait_status(job["id"], "failed", timeout=60)
        page.wait_for_selector("#current [data-outcome='failed']", timeout=10_000)
        text = page.locator("#current .outcome-text").inner_text()
        assert text.startswith("Failed: ") and done["error"]["message"].splitlines()[0] in text
        assert page.locator("#current .outcome-thumb").count() == 0
        page.wait_for_function("() => window.__notes.length > 0", timeout=10_000)
        title, body, _icon = page.evaluate("() => window.__notes")[0]
        assert title == "Doomed run — failed" and body.startswith("Doomed run failed: ")
        # A click on it opens the job's overlay (and closes the notification).
        page.evaluate("() => window.__noteObjs[0].onclick()")
        page.wait_for_function("id => document.getElementById('overlay').open && "
                               "document.querySelector('#overlay-job').dataset.jobId === id", arg=job["id"],
                               timeout=10_000)
        assert page.evaluate("() => window.__noteObjs[0].closed") is True
        assert errors == []
    finally:
        context.close()


def test_the_notify_button_says_when_the_browser_blocks_notifications(server, browser):
    context, page, errors = open_page(browser, server, 'window.__perm = "denied";' + NOTIFICATIONS)
    try:
        btn = page.locator("#notify-btn")
        assert btn.is_visible() and btn.is_disabled()
        assert "blocked" in btn.inner_text()
        assert errors == []
    finally:
        context.close()


def test_the_overlay_names_the_output_folder_of_saved_outputs(server):
    job = server.submit(prompt(3), workflow_name="Folder run")
    server.wait_status(job["id"], "completed", timeout=60)
    html = server.get(f"/admin/jobs/{job['id']}/overlay").text
    folder = re.search(r"<dt>Output folder</dt><dd>(.*?)</dd>", html, re.S).group(1)
    assert "ComfyUI output" in folder and "—" not in folder, folder


# Every socket message reaches the page 0.5 s late, so the server's state (what a freshly fetched overlay is
# rendered from) runs a few steps ahead of the panel.
SLOW_SOCKET = """
    window.WebSocket = class extends window.WebSocket {
        set onmessage(fn) { super.onmessage = (ev) => setTimeout(() => fn(ev), 500); }
        get onmessage() { return super.onmessage; }
    };
"""


def test_an_overlay_opened_behind_a_slow_socket_reads_the_panel_progress(server, browser):
    context, page, errors = open_page(browser, server, SLOW_SOCKET)
    try:
        job = server.submit(prompt(5, steps=60), workflow_name="Slow socket")
        page.wait_for_function("() => /Step [1-9]/.test((document.querySelector('#current [data-f=\"step\"]')"
                               " || {}).textContent || '')", timeout=20_000)
        page.evaluate(SAMPLER)
        for _ in range(3):
            page.click(f"#job-{job['id']} .wf-name")
            page.wait_for_selector('#overlay-job [data-f="percent"]', timeout=10_000)
            page.wait_for_timeout(600)
            page.keyboard.press("Escape")
            page.wait_for_timeout(200)
        page.evaluate("() => cancelAnimationFrame(window.__raf)")
        frames = [f for f in page.evaluate("() => window.__frames")
                  if f["overlayPct"] is not None and f["job"] == job["id"]]
        assert len(frames) > 10
        apart = [(f["overlayPct"], f["panelPct"], f["overlayStep"], f["panelStep"]) for f in frames
                 if f["overlayPct"] != f["panelPct"] or f["overlayStep"] != f["panelStep"]]
        assert apart == []
        assert errors == []
    finally:
        context.close()
