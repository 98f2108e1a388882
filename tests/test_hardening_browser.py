"""Issue 5 item 11 in a real browser: node titles, error messages and output file names carrying HTML/JS
render as text in the current-job panel, the cards, the overlay and the output strip. No dialog fires, no
element or `hx-*` attribute from the data comes alive, nothing is requested on the payloads' behalf.

(Prompt text and workflow names: tests/test_page.py::test_user_text_is_escaped_and_inert.)
"""
from __future__ import annotations

import copy
from urllib.parse import urlsplit


from fake_comfy import FakeComfy, ReplayEngine
from browser import requires_chromium
from live import LiveServer, recorded_prompt
from monitor.demo import SyntheticEngine

pytestmark = requires_chromium

PAYLOADS = [
    "<img src=x onerror=alert('title')>",
    '<b class="pwn" hx-get="/pwned" hx-trigger="load">hx</b>',
    '"><script>alert("s")</script>',
    "<svg onload=alert(1)>",
    "{{7*7}}<iframe src=javascript:alert(2)>",
]
ERROR_PAYLOAD = '<img src=x onerror=alert("err")><b class="pwn" hx-get="/pwned" hx-trigger="load">boom</b>'
# SaveImage's prefix becomes the file name (no '/': that would be a folder)
FILE_PAYLOAD = '<img src=x onerror=alert(\'file\')><b class=pwn hx-get=pwned hx-trigger=load>f'
INJECTED = ".pwn, [hx-get*='pwned'], img[src='x'], iframe, svg[onload], script:not([src])"


def titled(graph: dict) -> dict:
    graph = copy.deepcopy(graph)
    for i, node in enumerate(graph.values()):
        node.setdefault("_meta", {})["title"] = PAYLOADS[i % len(PAYLOADS)]
    return graph


def erroring_engine() -> ReplayEngine:
    engine = ReplayEngine("04_error_mid_run", speed=0.25)
    for _, item in engine.items:
        if isinstance(item, dict) and item["type"] == "execution_error":
            item["data"]["exception_message"] = ERROR_PAYLOAD + "\n"
    return engine


FILE_GRAPH = {
    "1": {"class_type": "EmptyImage", "inputs": {"width": 64, "height": 64, "batch_size": 1, "color": 0},
          "_meta": {"title": PAYLOADS[0]}},
    "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": FILE_PAYLOAD},
          "_meta": {"title": PAYLOADS[1]}},
    "3": {"class_type": "MonitorProbeSampler", "inputs": {"image": ["1", 0], "steps": 15, "delay_ms": 200,
                                                          "seed": 1, "fail_at_step": 0},
          "_meta": {"title": PAYLOADS[3]}},
    "4": {"class_type": "PreviewImage", "inputs": {"images": ["3", 0]}, "_meta": {"title": PAYLOADS[4]}},
}


def test_11_titles_errors_and_file_names_render_as_inert_text(browser, tmp_path):
    fake = FakeComfy(scenarios=[ReplayEngine("01b_happy_path_feature_flags", speed=0.5), erroring_engine(),
                                SyntheticEngine(time_scale=1.0)])
    server = LiveServer(fake, str(tmp_path / "data"))
    context = browser.new_context(viewport={"width": 1366, "height": 900})
    page = context.new_page()
    dialogs, errors, pwned = [], [], []
    page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.on("request", lambda r: pwned.append(r.url) if urlsplit(r.url).path.rsplit("/", 1)[-1] in (
        "pwned", "x") else None)

    def inert():
        assert page.locator(INJECTED).count() == 0, page.content()[:3000]
        assert dialogs == [] and pwned == [], (dialogs, pwned)

    def open_overlay(job_id):
        page.click(f"#job-{job_id} .wf-name")
        page.wait_for_function("() => document.getElementById('overlay').open", timeout=10_000)

    def close_overlay():
        page.keyboard.press("Escape")
        page.wait_for_function("() => !document.getElementById('overlay').open", timeout=10_000)

    try:
        page.goto(server.url + "/admin/queue")
        page.wait_for_function("() => document.getElementById('live').dataset.state === 'live'", timeout=20_000)

        # --- node titles: current panel, overlay, strip labels ---
        job = server.submit(titled(recorded_prompt()))
        page.wait_for_function("ids => { const t = document.querySelector('#current [data-f=\"node\"]');"
                               " return t && ids.includes(t.textContent); }", arg=PAYLOADS, timeout=20_000)
        open_overlay(job["id"])
        page.wait_for_function("ids => ids.some(t => document.getElementById('overlay-job')"
                               ".textContent.includes(t))", arg=PAYLOADS, timeout=15_000)
        inert()
        close_overlay()
        page.wait_for_function("() => document.querySelectorAll('#node-strip .strip-label').length > 0",
                               timeout=20_000)
        labels = page.locator("#node-strip .strip-label").all_inner_texts()
        assert labels and set(labels) <= set(PAYLOADS), labels
        server.wait_status(job["id"], "completed", timeout=30)
        inert()

        # --- an error message (and titles) in the overlay of a failing job ---
        failing = server.submit(titled(recorded_prompt("04_error_mid_run")))
        page.wait_for_selector(f"#job-{failing['id']}", timeout=15_000)
        open_overlay(failing["id"])
        server.wait_status(failing["id"], "failed", timeout=30)
        page.wait_for_selector("#overlay-job .ov-error .err-msg", timeout=15_000)
        message = page.locator("#overlay-job .ov-error .err-msg").inner_text()
        assert ERROR_PAYLOAD in message, message
        assert any(t in message for t in PAYLOADS), "the failing node's title, as text"
        inert()
        close_overlay()

        # --- output file names: live strip, overlay strip, the /api/view proxy ---
        saving = server.submit(FILE_GRAPH)
        page.wait_for_function("p => [...document.querySelectorAll('#node-strip li')].some(li => "
                               "li.dataset.key.includes(p))", arg=FILE_PAYLOAD, timeout=20_000)
        page.wait_for_function("() => [...document.querySelectorAll('#node-strip img')]"
                               ".some(i => i.complete && i.naturalWidth > 0)", timeout=20_000)
        open_overlay(saving["id"])
        page.wait_for_function("p => [...document.querySelectorAll('#overlay-job .ov-strip li')].some(li => "
                               "li.dataset.key.includes(p))", arg=FILE_PAYLOAD, timeout=15_000)
        hrefs = page.eval_on_selector_all("#overlay-job .ov-strip a", "as => as.map(a => a.getAttribute('href'))")
        assert hrefs and all(h.startswith("/api/view?") for h in hrefs), hrefs
        inert()
        close_overlay()
        server.wait_status(saving["id"], "completed", timeout=60)
        page.wait_for_timeout(500)
        inert()
        assert errors == [], errors
    finally:
        context.close()
        server.stop_app()
        fake.stop(abrupt=False)
