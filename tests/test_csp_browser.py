"""Issue 10 item 13 in a real browser: /admin/queue under its strict Content-Security-Policy, with a job
running, keeps working (live progress over the socket, preview blobs, morphed fragments, the overlay, gauge
and bar widths) with a clean console and no CSP violation; and the policy is really enforced."""
from __future__ import annotations

import pytest

from browser import requires_chromium
from live import LiveServer
from test_signin_browser import CSP_PROBE

pytestmark = requires_chromium


@pytest.fixture
def slow_server(tmp_path):
    from fake_comfy import FakeComfy
    fake = FakeComfy(speed=0.2)   # the recorded run at 1/5 speed: about 10 s a job
    server = LiveServer(fake, str(tmp_path / "data"))
    yield server
    server.stop_app()
    fake.stop(abrupt=False)


def test_13_the_queue_page_works_under_its_csp_with_a_clean_console(slow_server, browser):
    server = slow_server
    context = browser.new_context(viewport={"width": 1366, "height": 900})
    context.add_init_script(CSP_PROBE)
    page = context.new_page()
    errors = []
    page.on("console", lambda m: errors.append(f"{m.type}: {m.text}") if m.type in ("error", "warning") else None)
    page.on("pageerror", lambda e: errors.append(f"pageerror: {e}"))
    try:
        job = server.submit(workflow_name="Under CSP")
        server.wait_status(job["id"], "running", timeout=20)
        response = page.goto(server.url + "/admin/queue")
        assert "default-src 'self'" in response.headers["content-security-policy"]
        page.wait_for_function("() => document.getElementById('live').dataset.state === 'live'", timeout=20_000)
        page.evaluate("""() => {
            window.__pcts = new Set(); window.__swaps = 0;
            document.body.addEventListener('htmx:afterSwap', () => window.__swaps++);
            window.__t = setInterval(() => window.__pcts.add(
                document.querySelector('#current [data-f="percent"]')?.textContent), 50);
        }""")
        # live: the percentage moves over the socket, and the bar follows it
        page.wait_for_function("() => [...window.__pcts].filter(t => /^\\d+%$/.test(t || '')).length >= 3",
                               timeout=20_000)
        fill = page.eval_on_selector("#current .bar-fill", "e => e.getBoundingClientRect().width")
        assert fill > 0
        # a preview arrives as a blob: image (img-src 'self' blob:)
        page.wait_for_function("() => { const i = document.getElementById('preview-img');"
                               " return !i.hidden && i.complete && i.naturalWidth > 0; }", timeout=20_000)
        # server-rendered widths come from classes now: a gauge with a value shows a bar of that share
        page.wait_for_function("""() => {
            const g = [...document.querySelectorAll('.gauge')].find(g => g.querySelector('.g-bar[aria-valuenow]'));
            if (!g) return false;
            const bar = g.querySelector('.g-bar'), now = +bar.getAttribute('aria-valuenow');
            const shown = 100 * g.querySelector('.g-fill').getBoundingClientRect().width / bar.getBoundingClientRect().width;
            return Math.abs(shown - now) < 2;
        }""", timeout=10_000)
        # fragments are fetched and morphed in (a refresh now), and the overlay opens with its own bar
        page.click("#live")
        page.wait_for_function("() => window.__swaps >= 3", timeout=10_000)
        page.click(f"#job-{job['id']} .wf-name")
        page.wait_for_function("() => document.getElementById('overlay').open", timeout=10_000)
        page.wait_for_selector("#overlay-job .bar-fill", timeout=10_000)
        page.keyboard.press("Escape")
        server.wait_status(job["id"], "completed", timeout=40)
        page.wait_for_selector("#current [data-outcome='completed']", timeout=10_000)
        page.evaluate("() => clearInterval(window.__t)")
        assert page.evaluate("() => window.__csp") == []
        assert errors == [], errors

        # The policy is enforced, and the probe sees what it blocks: an inline style attribute is refused.
        page.evaluate("() => { const d = document.createElement('div'); d.setAttribute('style', 'width: 5px');"
                      " document.body.append(d); }")
        page.wait_for_function("() => window.__csp.length > 0", timeout=5_000)
        assert page.evaluate("() => window.__csp")[0].startswith("style-src")
    finally:
        context.close()
