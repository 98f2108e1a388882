"""A steady queue page on every screen, in a real browser (Debian's chromium): layout shift while demo jobs run
and finish, phone truncation, tab order and tap targets, 200 % zoom, text contrast, focus after the overlay,
running cards' accent. Each test measures what a person would see (geometry, computed colours)."""
from __future__ import annotations

import os
import re

import pytest

from browser import open_queue_page, requires_chromium
from live import LiveServer, wait_for

pytestmark = requires_chromium

PHONE = {"width": 390, "height": 844}
DESKTOP = {"width": 1366, "height": 900}
CLS_SECONDS = float(os.environ.get("LAYOUT_CLS_SECONDS", "30"))
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# The README's running, phone and overlay screenshots come from here (a demo run); like tests/test_page.py,
# every run writes them to artifacts/, and SCREENSHOTS_DIR=docs/screenshots refreshes the README's.
SHOTS = os.path.join(ROOT, os.environ.get("SCREENSHOTS_DIR", os.path.join("artifacts", "screenshots")))

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


open_page = open_queue_page


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
        screenshots(pages[1][1], pages[0][1])
    finally:
        for context, _, _ in pages:
            context.close()


def screenshots(desktop, phone):
    os.makedirs(SHOTS, exist_ok=True)
    for page in (desktop, phone):
        running(page)
        page.wait_for_function("() => { const i = document.getElementById('preview-img');"
                               " return !i.hidden && i.complete && i.naturalWidth > 0; }", timeout=20_000)
    settled = "() => ![...document.querySelectorAll('#main *')].some(e => e.style.transform)"   # no card gliding
    desktop.wait_for_function(settled, timeout=10_000)
    desktop.screenshot(path=os.path.join(SHOTS, "running.png"), full_page=True)
    phone.wait_for_function(settled, timeout=10_000)
    phone.screenshot(path=os.path.join(SHOTS, "phone.png"), full_page=True)
    desktop.click("#card-list > .card.is-running .wf-name")
    desktop.wait_for_selector("#overlay-job", timeout=10_000)
    desktop.wait_for_timeout(400)
    desktop.screenshot(path=os.path.join(SHOTS, "overlay.png"))


def running(page):
    page.wait_for_function("() => document.querySelector('#current [data-f=\"step\"]:not([hidden])')",
                           timeout=20_000)


def test_phone_cards_keep_name_and_prompt_on_one_line_and_the_overlay_title_breaks_between_words(demo, browser):
    from monitor.demo import DEMO_PROMPT
    demo.fake.pause()                                   # what is queued stays queued
    demo.monitor.submit(DEMO_PROMPT, workflow_name="A rather long workflow name for a small phone screen")
    context, page, errors = open_page(browser, demo, PHONE)
    try:
        page.wait_for_function("() => document.querySelectorAll('#card-list > .card .excerpt').length >= 2",
                               timeout=20_000)
        cards = page.evaluate("""() => [...document.querySelectorAll('#card-list > .card')].map(c => {
            const n = c.querySelector('.wf-name'), x = c.querySelector('.excerpt');
            const lh = parseFloat(getComputedStyle(n).lineHeight);
            return {name: n.textContent, nameH: n.getBoundingClientRect().height, lh,
                    nameEllipsis: getComputedStyle(n).textOverflow,
                    cardW: c.getBoundingClientRect().width,
                    exW: x ? x.getBoundingClientRect().width : null,
                    exH: x ? x.getBoundingClientRect().height : null,
                    exLh: x ? parseFloat(getComputedStyle(x).lineHeight) : null}; })""")
        for c in cards:
            assert c["nameH"] < 1.5 * c["lh"], c                  # one line
            assert c["nameEllipsis"] == "ellipsis", c
            if c["exW"] is not None:
                assert c["exH"] < 1.5 * c["exLh"], c
                assert c["exW"] >= 0.6 * c["cardW"], c            # the prompt gets the card's width
        # The overlay of an external job ("Untitled workflow") at phone width: no word split across lines.
        page.click("#card-list > .card.is-external, #card-list > .card", timeout=10_000)
        page.wait_for_selector("#overlay-title", timeout=10_000)
        split = page.evaluate("""() => {
            const h = document.getElementById('overlay-title'), t = h.firstChild, out = [];
            const re = /\\S+/g; let m;
            while ((m = re.exec(t.textContent))) {
                const r = document.createRange(); r.setStart(t, m.index); r.setEnd(t, m.index + m[0].length);
                const tops = new Set([...r.getClientRects()].map(x => Math.round(x.top)));
                if (tops.size > 1) out.push(m[0]);
            }
            return out; }""")
        assert split == []
        assert errors == []
    finally:
        context.close()
        demo.fake.resume()


def test_phone_tab_order_follows_the_visual_order_and_tap_targets_are_big_and_apart(demo, browser):
    context, page, errors = open_page(browser, demo, PHONE)
    try:
        running(page)
        # measured the moment a job runs (the chip and Cancel exist only then)
        sizes = page.wait_for_function("""() => { const sels = ['#current .jobid', '#current [data-cancel]',
            '#preview-toggle']; if (!sels.every(s => document.querySelector(s))) return null;
            return Object.fromEntries(sels.map(s => { const r = document.querySelector(s).getBoundingClientRect();
            return [s, [r.left, r.right, r.width, r.height]]; })); }""", timeout=30_000).json_value()
        demo.fake.pause()                                 # no new job starts while we walk the page
        page.wait_for_function("() => document.querySelectorAll('#card-list > .card').length >= 2", timeout=20_000)
        order = []
        page.focus("body")
        for _ in range(30):
            page.keyboard.press("Tab")
            el = page.evaluate("""() => { const a = document.activeElement;
                if (!a || !a.closest('#main')) return null;
                const r = a.getBoundingClientRect();
                return [a.id || a.className || a.tagName, Math.round(r.top + scrollY), Math.round(r.left)]; }""")
            if el:
                order.append(el)
            elif order:
                break                                     # past the end of the page
        assert len(order) >= 4, order
        for a, b in zip(order, order[1:]):
            assert b[1] >= a[1] - 8, f"{b} comes after {a} in tab order but sits above it: {order}"
        for sel, (_, _, w, h) in sizes.items():
            assert w >= 24 and h >= 24, (sel, w, h)
        gap = sizes["#current [data-cancel]"][0] - sizes["#current .jobid"][1]
        assert gap >= 12, f"Cancel {gap:.0f}px from the copy chip"
        assert errors == []
    finally:
        demo.fake.resume()
        context.close()


def test_at_200_percent_zoom_the_queue_comes_before_the_preview_and_gauges_wrap_evenly(demo, browser):
    context, page, errors = open_page(browser, demo, {"width": 683, "height": 450}, scale=2)
    try:
        running(page)
        geo = page.evaluate("""() => {
            const top = s => document.querySelector(s).getBoundingClientRect().top + scrollY;
            const rows = {};
            for (const g of document.querySelectorAll('#gauges > .gauge')) {
                const t = Math.round(g.getBoundingClientRect().top); rows[t] = (rows[t] || 0) + 1; }
            return {cards: top('#cards'), preview: top('#preview'),
                    previewH: document.getElementById('preview-frame').getBoundingClientRect().height,
                    rows: Object.values(rows)}; }""")
        assert geo["cards"] < geo["preview"], geo
        assert geo["previewH"] <= 0.5 * 450, geo
        assert sum(geo["rows"]) == 5 and (len(geo["rows"]) == 1 or min(geo["rows"]) >= 2), geo
        for width in (800, 1000, 1366):                 # 200 % of wider screens, and no zoom
            page.set_viewport_size({"width": width, "height": 450})
            rows = page.evaluate("""() => { const rows = {};
                for (const g of document.querySelectorAll('#gauges > .gauge')) {
                    const t = Math.round(g.getBoundingClientRect().top); rows[t] = (rows[t] || 0) + 1; }
                return Object.values(rows); }""")
            assert len(rows) == 1 or min(rows) >= 2, (width, rows)
        assert errors == []
    finally:
        context.close()


def _contrast(page, selector):
    """WCAG contrast of the first `selector`'s text colour against the first opaque background behind it."""
    return page.evaluate("""sel => {
        const el = document.querySelector(sel); if (!el) return null;
        const rgb = s => s.match(/[\\d.]+/g).map(Number);
        const lum = c => { const [r, g, b] = c.slice(0, 3).map(v => { v /= 255;
            return v <= 0.03928 ? v / 12.92 : Math.pow((v + 0.055) / 1.055, 2.4); });
            return 0.2126 * r + 0.7152 * g + 0.0722 * b; };
        let bg = null;
        for (let e = el; e; e = e.parentElement) {
            const c = rgb(getComputedStyle(e).backgroundColor);
            if (c.length < 4 || c[3] > 0.99) { bg = c; break; } }
        bg = bg || [255, 255, 255];
        const a = lum(rgb(getComputedStyle(el).color)), b = lum(bg);
        return (Math.max(a, b) + 0.05) / (Math.min(a, b) + 0.05); }""", selector)


def test_prompt_id_and_na_text_meet_wcag_aa_contrast(demo, browser):
    context, page, errors = open_page(browser, demo, DESKTOP)
    try:
        page.wait_for_selector("#card-list > .card .pid", timeout=20_000)
        pid = _contrast(page, "#card-list > .card .pid")
        assert pid >= 4.5, f"prompt id {pid:.2f}:1"
        if page.locator("#gauges .lv-na .g-val").count() == 0:
            # A machine whose every gauge reads: show an unknown one as the page would.
            page.evaluate("() => { const g = document.querySelector('#gauges .gauge');"
                          " g.className = g.className.replace(/lv-\\w+/, 'lv-na'); }")
        na = _contrast(page, "#gauges .lv-na .g-val")
        assert na >= 4.5, f"n/a {na:.2f}:1"
        assert errors == []
    finally:
        context.close()


def test_closing_the_overlay_of_a_job_whose_card_left_does_not_drop_focus_to_body(demo, browser):
    context, page, errors = open_page(browser, demo, DESKTOP)
    try:
        running(page)
        job_id = page.evaluate("() => document.getElementById('current').dataset.jobId")
        page.focus(f"#job-{job_id}")
        page.keyboard.press("Enter")
        page.wait_for_function("() => document.getElementById('overlay').open", timeout=10_000)
        page.wait_for_selector(f"#card-list #job-{job_id}", state="detached", timeout=40_000)
        page.keyboard.press("Escape")
        page.wait_for_function("() => !document.getElementById('overlay').open", timeout=5_000)
        try:
            page.wait_for_function("() => { const a = document.activeElement;"
                                   " return a && a !== document.body && !a.closest('#overlay'); }", timeout=2_000)
        except Exception:
            pass
        where = page.evaluate("() => { const a = document.activeElement;"
                              " return a === document.body ? 'body' : (a.id || a.className); }")
        assert where != "body"
        assert page.evaluate("() => !!document.activeElement.closest('#cards, #recent')"), where
        assert errors == []
    finally:
        context.close()


def test_running_cards_have_a_yellow_left_accent(demo, browser):
    context, page, errors = open_page(browser, demo, DESKTOP)
    try:
        page.wait_for_selector("#card-list > .card.is-running", timeout=20_000)
        style = page.evaluate("() => { const s = getComputedStyle(document.querySelector('#card-list > .card.is-running'));"
                              " return [s.borderLeftColor, s.borderLeftWidth]; }")
        r, g, b = [float(v) for v in re.findall(r"[\d.]+", style[0])[:3]]
        assert r > 180 and g > 140 and b < 120, style          # yellow, not blue
        assert float(style[1].rstrip("px")) >= 3, style
        assert errors == []
    finally:
        context.close()
