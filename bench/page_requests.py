"""Requests per minute of an idle /admin/queue page with a live socket (issue 14, "Lighter on the wire").

    python bench/page_requests.py [--seconds 60] [--hosts 1|2]

The real app (gevent) against the fake ComfyUI, idle; headless Debian chromium opens the page, waits for
LIVE, then counts every HTTP request the page makes (page.on("request"), the WebSocket excluded) over the
window and prints them per minute, by path. Telemetry is sampled at the production default interval.
"""
from gevent import monkey

monkey.patch_all()

import argparse  # noqa: E402
import os  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from collections import Counter  # noqa: E402
from urllib.parse import urlsplit  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
for _p in (ROOT, os.path.join(ROOT, "tests")):
    if _p not in sys.path:
        sys.path.insert(0, _p)

from playwright.sync_api import sync_playwright  # noqa: E402

from browser import launch  # noqa: E402
from fake_comfy import FakeComfy  # noqa: E402
from live import LiveServer  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=60.0)
    ap.add_argument("--hosts", type=int, default=1)
    args = ap.parse_args()
    fakes = [FakeComfy(speed=10) for _ in range(args.hosts)]
    for f in fakes:
        f.start()
    extra = {}
    if args.hosts > 1:
        extra["comfyui_url"] = ",".join(f"gpu{i + 1}={f.url}" for i, f in enumerate(fakes))
    with tempfile.TemporaryDirectory() as data:
        server = LiveServer(fakes[0], data, telemetry_interval=1.5, **extra)
        try:
            with sync_playwright() as p:
                browser = launch(p)
                page = browser.new_page(viewport={"width": 1366, "height": 900})
                seen = []
                page.on("request", lambda r: seen.append((time.monotonic(), urlsplit(r.url).path)))
                page.goto(server.url + "/admin/queue")
                page.wait_for_function("() => document.getElementById('live').dataset.state === 'live'"
                                       " || document.getElementById('live').dataset.state === 'degraded'",
                                       timeout=20_000)
                page.wait_for_timeout(2000)   # the page's own start-up requests are not the idle rate
                t0 = time.monotonic()
                page.wait_for_timeout(args.seconds * 1000)   # events are delivered while Playwright waits
                window = [path for t, path in seen if t >= t0 and not path.endswith("/ws")]
                browser.close()
        finally:
            server.stop_app()
            for f in fakes:
                f.stop()
    per_min = len(window) * 60.0 / args.seconds
    print(f"hosts={args.hosts} window={args.seconds:g}s requests={len(window)} per_minute={per_min:.1f}")
    for path, n in Counter(window).most_common():
        print(f"  {n * 60.0 / args.seconds:6.1f}/min  {path}")


if __name__ == "__main__":
    main()
