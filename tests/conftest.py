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


# --- both storage backends ----------------------------------------------------------------------
def pg_url_or_skip() -> str:
    """The throwaway PostgreSQL of tests/pg.py (`.ci/run` exports it). Without it the PostgreSQL variants
    are skipped locally, but fail under CI: a CI run must test both backends."""
    import pg
    url = os.environ.get(pg.URL_VAR)
    if not url:
        if os.environ.get("CI"):
            pytest.fail(f"CI is set but {pg.URL_VAR} is not: PostgreSQL did not start (see .ci/run)")
        pytest.skip(f"{pg.URL_VAR} not set (start one: python tests/pg.py start)")
    return url


@pytest.fixture(params=["sqlite", "postgres"])
def database(request, tmp_path):
    """What a JobStore opens: a SQLite file under tmp_path, or an emptied PostgreSQL database."""
    if request.param == "sqlite":
        return str(tmp_path / "data" / "monitor.sqlite3")
    import pg
    url = pg_url_or_skip()
    pg.reset(url)
    return url


@pytest.fixture(params=["sqlite", "postgres"])
def backend(request):
    """For app-level modules: every LiveServer in the test uses this backend (None: SQLite in its data dir)."""
    import live
    import pg
    if request.param == "sqlite":
        yield None
        return
    url = pg_url_or_skip()
    pg.reset(url)
    live.DATABASE_URL = url
    try:
        yield url
    finally:
        live.DATABASE_URL = None
