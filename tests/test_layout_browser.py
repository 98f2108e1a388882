"""A steady queue page on every screen, in a real browser (Debian's chromium): layout shift while demo jobs run
and finish, phone truncation, tab order and tap targets, 200 % zoom, text contrast, focus after the overlay,
running cards' accent. Each test measures what a person would see (geometry, computed colours)."""
from __future__ import annotations

import os

import pytest

from browser import requires_chromium
from live import LiveServer, wait_for

pytestmark = requires_chromium

PHONE = {"width": 390, "height": 844}
DESKTOP = {"width": 1366, "height": 900}
CLS_SECONDS = float(os.environ.get("LAYOUT_CLS_SECONDS", "30"))

# Every layout shift not caused by input, with the nodes that moved (for a readable failure).
CLS_PROBE = """
window.__shifts = [];
new PerformanceObserver(list => {
  for (const e of list.getEntries()) {
    if (e.hadRecentInput) continue;
    const who = (e.sources || []).map(s => {
      const n = s.node; if (!n || !n.tagName) return '?';
      return n.tagName.toLowerCase() + (n.id ? '#' + n.id : '') +
             (n.className && typeof n.className === 'string' ? '.' + n.className.trim().split(/\\s+/).join('.') : '') +
             ' ' + Math.round(s.previousRect.y) + '->' + Math.round(s.currentRect.y) +
             ' h' + Math.round(s.previousRect.height) + '->' + Math.round(s.currentRect.height);
    });
    window.__shifts.push([Math.round(e.startTime), e.value, who]);
  }
}).observe({type: 'layout-shift', buffered: true});
"""


@pytest.fixture
def demo(tmp_path):
    """The --demo simulator (synthetic text-to-image runs, an occasional failure, external jobs) driven fast:
    jobs start, run and finish every few seconds."""
    from monitor.demo import drive_monitor, start_demo
    sim = start_demo(traffic_every_s=None, step_s=0.12)
    server = LiveServer(sim, str(tmp_path / "data"))
    driver = drive_monitor(server.monitor, sim, every_s=1.5, external_every=4, max_active=3, seed=3)
    wait_for(lambda: server.monitor.active_jobs(), timeout=20, what="demo jobs")
    yield server
    driver.kill()
    server.stop_app()
    sim.stop(abrupt=False)


def open_page(browser, server, viewport, scale=1, init=""):
    context = browser.new_context(viewport=viewport, device_scale_factor=scale)
    if init:
        context.add_init_script(init)
    page = context.new_page()
    errors = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(server.url + "/admin/queue")
    page.wait_for_function("() => document.getElementById('live').dataset.state === 'live'", timeout=20_000)
    return context, page, errors


def test_cumulative_layout_shift_stays_under_a_tenth_while_jobs_run_and_finish(demo, browser):
    """CLS (the sum of every shift without recent input) over a run of jobs starting, previewing and finishing,
    at phone and desktop sizes side by side, both under 0.1."""
    pages = [open_page(browser, demo, vp, init=CLS_PROBE) for vp in (PHONE, DESKTOP)]
    try:
        for _, page, _ in pages:
            page.wait_for_function("() => document.querySelector('#current [data-f=\"step\"]:not([hidden])')",
                                   timeout=20_000)
        finished_before = len(demo.monitor.history(limit=500))
        pages[0][1].wait_for_timeout(int(CLS_SECONDS * 1000))
        assert len(demo.monitor.history(limit=500)) >= finished_before + 2, "too few jobs finished"
        results = {}
        for (_, page, errors), name in zip(pages, ("phone", "desktop")):
            shifts = page.evaluate("() => window.__shifts")
            total = sum(s[1] for s in shifts)
            results[name] = total
            print(f"\nCLS {name} {total:.3f} over {CLS_SECONDS:.0f}s, {len(shifts)} shifts")
            for s in sorted(shifts, key=lambda s: -s[1])[:8]:
                print(f"  t={s[0]}ms {s[1]:.4f} {s[2][:4]}")
            assert errors == []
        assert results["phone"] < 0.1 and results["desktop"] < 0.1, results
    finally:
        for context, _, _ in pages:
            context.close()
