"""The queue page's learned ETA, Recent section and "Run again" in a real browser (Debian's chromium)."""
from __future__ import annotations

import copy
import re

import pytest

from browser import requires_chromium
from fake_comfy import FakeComfy
from live import LiveServer
from monitor.demo import DEMO_PROMPT, SyntheticEngine

pytestmark = requires_chromium


@pytest.fixture
def server(tmp_path):
    # 30 steps of 0.1 s: a run of about four seconds, long enough to watch the ETA count down.
    fake = FakeComfy(default=SyntheticEngine(step_s=0.1, seed=5))
    srv = LiveServer(fake, str(tmp_path / "data"))
    yield srv
    srv.stop_app()
    fake.stop(abrupt=False)


def prompt(seed: int) -> dict:
    graph = copy.deepcopy(DEMO_PROMPT)
    graph["5"]["inputs"].update(seed=seed, steps=30)
    return graph


def job_eta(page) -> str:
    return page.locator('#current [data-f="job-eta"]').text_content().strip()


def test_whole_job_eta_on_the_second_run_counts_down_and_recent_gains_the_job(server, browser):
    context = browser.new_context(viewport={"width": 1366, "height": 900})
    page = context.new_page()
    errors = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    try:
        page.goto(server.url + "/admin/queue")
        page.wait_for_function("() => document.getElementById('live').dataset.state === 'live'", timeout=20_000)
        first = server.submit(prompt(1))
        page.wait_for_function("id => document.getElementById('current').dataset.jobId === id",
                               arg=first["id"], timeout=20_000)
        page.wait_for_function("() => { const e = document.querySelector('#current [data-f=\"step\"]');"
                               " return e && !e.hidden; }", timeout=20_000)
        assert job_eta(page) == "—"     # the first run: nothing learned yet, nothing guessed
        # It finishes: the Recent section gains it without a reload.
        page.wait_for_selector(f'#recent-list [data-job-id="{first["id"]}"]', timeout=30_000)
        assert page.locator("#recent-list .recent-item").first.get_attribute("data-job-id") == first["id"]

        second = server.submit(prompt(2))
        page.wait_for_function("id => document.getElementById('current').dataset.jobId === id",
                               arg=second["id"], timeout=20_000)
        page.wait_for_function("() => /^about .* left$/.test(document.querySelector("
                               "'#current [data-f=\"job-eta\"]').textContent.trim())", timeout=20_000)
        title = page.locator('#current [data-f="job-eta"]').get_attribute("title")
        assert "past run" in title or "rate" in title
        seconds = []
        for _ in range(2):
            m = re.match(r"about (?:(\d+)m )?(\d+)s left", job_eta(page))
            if m:
                seconds.append(int(m.group(1) or 0) * 60 + int(m.group(2)))
            page.wait_for_timeout(1200)
        assert len(seconds) == 2 and seconds[1] < seconds[0], seconds   # it counts down
        page.wait_for_selector(f'#recent-list [data-job-id="{second["id"]}"]', timeout=30_000)

        # "Run again" from the overlay of a finished job queues a new job.
        page.locator(f'#recent-list [data-job-id="{first["id"]}"]').click()
        page.wait_for_selector("#overlay[open] [data-requeue]", timeout=10_000)
        before = {j["id"] for j in server.monitor.store.history(limit=100, graph=False)} | {
            j["id"] for j in server.monitor.store.active(graph=False)}
        page.locator("#overlay [data-requeue]").first.click()
        page.wait_for_function("() => !document.getElementById('overlay').open", timeout=10_000)
        rows = server.monitor.store._query("SELECT id, requeued_from FROM jobs WHERE requeued_from IS NOT NULL")
        assert [r["requeued_from"] for r in rows] == [first["id"]] and rows[0]["id"] not in before
        assert errors == []
    finally:
        context.close()
