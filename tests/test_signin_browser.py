"""Issue 10 item 12 in a real browser: with only MONITOR_TOKEN set, the page sends the browser to a sign-in
form (never a Basic password prompt), the token becomes an HttpOnly, SameSite=Strict, Secure session cookie,
the page and its WebSocket work with it, a visit arriving from another site is let through by the sign-in
page's same-site check, and sign-out ends it."""
from __future__ import annotations

import pytest

from browser import requires_chromium
from live import LiveServer

pytestmark = requires_chromium

# Pages record CSP violations from the first script on (playwright's init scripts run before the page's).
CSP_PROBE = """
window.__csp = [];
document.addEventListener("securitypolicyviolation", e => window.__csp.push(e.violatedDirective + " " + e.blockedURI));
"""


@pytest.fixture
def token_server(fake_comfy, tmp_path):
    server = LiveServer(fake_comfy, str(tmp_path / "data"), token="tok-123")
    yield server
    server.stop_app()


def test_12_sign_in_with_the_token_then_the_page_and_socket_work_then_sign_out(token_server, browser):
    server = token_server
    context = browser.new_context()
    context.add_init_script(CSP_PROBE)
    page = context.new_page()
    errors, dialogs, requested = [], [], []
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
    page.on("request", lambda r: requested.append(r.url))
    live = "() => document.getElementById('live').dataset.state === 'live'"
    try:
        page.goto(server.url + "/admin/queue")
        assert page.url == server.url + "/signin?next=/admin/queue"
        assert page.title().startswith("Sign in")
        page.fill("#token", "wrong")
        page.click("button[type=submit]")
        page.wait_for_selector("#signin-error")
        assert "not right" in page.inner_text("#signin-error")
        assert [e for e in errors if "401" not in e] == [], errors   # the refused POST's own status line
        errors.clear()

        page.fill("#token", "tok-123")
        page.click("button[type=submit]")
        page.wait_for_url(server.url + "/admin/queue")
        page.wait_for_function(live, timeout=20_000)             # the WebSocket authenticated by the cookie
        cookies = context.cookies(server.url)
        assert [c["name"] for c in cookies] == [f"monitor_session_{server.port}"]
        assert cookies[0]["httpOnly"] and cookies[0]["secure"] and cookies[0]["sameSite"] == "Strict"
        assert "tok-123" not in cookies[0]["value"]
        assert page.evaluate("() => document.cookie") == "", "HttpOnly: no script can read it"

        # A link on another site (localhost is another site than 127.0.0.1): that navigation carries no
        # Strict cookie, so the server shows the sign-in page; its same-site check finds the session and
        # goes on.
        page.goto(f"http://localhost:{server.port}/signin")
        requested.clear()
        page.evaluate("""url => { const a = document.createElement("a"); a.id = "go"; a.href = url;
                                  a.textContent = "queue"; document.body.append(a); }""", server.url + "/admin/queue")
        page.click("#go")
        page.wait_for_url(server.url + "/admin/queue", timeout=15_000)
        page.wait_for_function(live, timeout=20_000)
        assert any(u.startswith(server.url + "/signin") for u in requested), requested

        page.click(".signout button")
        page.wait_for_url(server.url + "/signin")
        assert context.cookies(server.url) == []
        page.goto(server.url + "/admin/queue")
        assert page.url.startswith(server.url + "/signin")
        assert page.evaluate("() => window.__csp") == []
        assert errors == [] and dialogs == [], (errors, dialogs)
    finally:
        context.close()
