"""Shared pytest fixtures. gevent patches the standard library first, exactly as app.py does in production."""
from gevent import monkey

monkey.patch_all()

import os  # noqa: E402
import sys  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TESTS = os.path.dirname(os.path.abspath(__file__))
for p in (ROOT, TESTS):
    if p not in sys.path:
        sys.path.insert(0, p)

import pytest  # noqa: E402


@pytest.fixture
def fake_comfy():
    from fake_comfy import FakeComfy
    fake = FakeComfy(speed=10)
    fake.start()
    yield fake
    fake.stop()


@pytest.fixture
def live_server(fake_comfy, tmp_path):
    from live import LiveServer
    server = LiveServer(fake_comfy, str(tmp_path / "data"))
    yield server
    server.stop_app()


@pytest.fixture(scope="module")
def browser():
    """Headless Debian chromium (tests/browser.py); one per test module."""
    sync_api = pytest.importorskip("playwright.sync_api")
    from browser import launch
    with sync_api.sync_playwright() as p:
        b = launch(p)
        yield b
        b.close()
