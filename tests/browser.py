"""Headless Chromium for browser tests: Debian's package, never a downloaded browser."""
from __future__ import annotations

import os
import shutil

import pytest

CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
        "--disable-sync", "--no-first-run"]
# CI installs chromium (.ci/run); elsewhere these tests say why they did not run.
requires_chromium = pytest.mark.skipif(not (os.path.exists(CHROMIUM) or shutil.which(CHROMIUM)),
                                       reason=f"no chromium at {CHROMIUM} (apt-get install chromium)")


def launch(playwright):
    return playwright.chromium.launch(executable_path=CHROMIUM, args=ARGS)


DESKTOP = {"width": 1366, "height": 900}


def open_queue_page(browser, server, viewport=None, scale=1, init=""):
    """A fresh context on the server's /admin/queue, once its LIVE indicator is green: (context, page,
    errors), `errors` collecting uncaught page errors. `init` is a script run before the page's own."""
    context = browser.new_context(viewport=viewport or DESKTOP, device_scale_factor=scale)
    if init:
        context.add_init_script(init)
    page = context.new_page()
    errors = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(server.url + "/admin/queue")
    page.wait_for_function("() => document.getElementById('live').dataset.state === 'live'", timeout=20_000)
    return context, page, errors
