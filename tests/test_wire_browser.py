"""Issue 14, "Lighter on the wire", in a real browser: an idle page with a live socket makes (almost) no
HTTP requests, since the server pushes the gauges, cards and current job over the socket (web/push.py); the
page polls only while its socket is down (test_honest_browser covers POLLING)."""
from __future__ import annotations

import time
from urllib.parse import urlsplit

from browser import requires_chromium
import test_fleet_browser

pytestmark = requires_chromium
two_hosts = test_fleet_browser.two_hosts   # the fixture: gpu1 and gpu2

LIVE = "() => document.getElementById('live').dataset.state === 'live'"
SAMPLED = "() => document.getElementById('gauges').dataset.sampledAt"


def _open(browser, server):
    context = browser.new_context(viewport={"width": 1366, "height": 900})
    page = context.new_page()
    requests = []
    page.on("request", lambda r: requests.append((time.monotonic(), urlsplit(r.url).path)))
    page.goto(server.url + "/admin/queue")
    page.wait_for_function(LIVE, timeout=20_000)
    return context, page, requests


def test_an_idle_page_with_a_live_socket_gets_its_gauges_pushed_and_does_not_poll(live_server, browser):
    context, page, requests = _open(browser, live_server)
    try:
        page.wait_for_timeout(1000)
        t0, first = time.monotonic(), page.evaluate(SAMPLED)
        page.wait_for_timeout(10_000)   # polling did 3 gauges + 1 cards + 1 current requests in this time
        made = [path for t, path in requests if t >= t0 and not path.endswith("/ws")]
        assert len(made) <= 1, made
        # ... and the gauges stayed live: new samples arrived over the socket (sampled every 0.5 s here)
        assert page.evaluate(SAMPLED) != first
    finally:
        context.close()


def test_a_new_card_arrives_over_the_socket_when_fragment_requests_fail(live_server, browser):
    live_server.fake.pause()   # the job stays queued: a card
    context, page, requests = _open(browser, live_server)
    blocked = []
    try:
        page.route("**/admin/queue/cards*", lambda route: (blocked.append(1), route.abort()))
        page.route("**/admin/queue/current*", lambda route: route.abort())
        job = live_server.submit(workflow_name="Pushed card")
        page.wait_for_function("id => !!document.querySelector('#cards [data-job-id=\"' + id + '\"]')",
                               arg=job["id"], timeout=15_000)
        assert blocked, "the page did try to fetch the cards (the job event asks for them)"
        assert page.evaluate(LIVE)
    finally:
        context.close()


def test_several_hosts_their_rows_follow_over_the_socket_without_requests(two_hosts, browser):
    server = two_hosts
    context = browser.new_context(viewport={"width": 1366, "height": 900})
    page = context.new_page()
    made = []
    try:
        page.goto(server.url + "/admin/queue")
        page.wait_for_function(LIVE, timeout=20_000)
        page.route("**/admin/queue/**", lambda route: (made.append(route.request.url), route.abort()))
        job = server.submit(workflow_name="Pushed host row")
        server.wait_status(job["id"], "running", timeout=20)
        # the host row's counts come with the pushed gauges fragment (its fetch would be refused)
        page.wait_for_function("() => [...document.querySelectorAll('#gauges .host-state')]"
                               ".some(e => e.textContent.startsWith('1 running'))", timeout=15_000)
        assert not [u for u in made if u.endswith("/gauges")], made
    finally:
        context.close()
