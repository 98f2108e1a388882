"""GET /metrics: Prometheus text parsed with prometheus_client's own parser; counters move as real jobs run on
two fake ComfyUI hosts; credentials as the API unless MONITOR_METRICS_PUBLIC; scrapes read cached state only."""
from __future__ import annotations

import os

import pytest
from prometheus_client.parser import text_string_to_metric_families

from fake_comfy import FakeComfy
from live import LiveServer, recorded_prompt, wait_for
from monitor import create_app, protocol
from monitor.config import Config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def scrape(text: str) -> dict[tuple[str, tuple], float]:
    """{(sample name, sorted labels): value} over every family."""
    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def value(samples, name, **labels) -> float | None:
    return samples.get((name, tuple(sorted(labels.items()))))


@pytest.fixture
def two_hosts(tmp_path):
    a = FakeComfy(scenarios=["01b_happy_path_feature_flags"])
    b = FakeComfy(scenarios=["04_error_mid_run"])
    server = LiveServer(a, str(tmp_path / "data"), comfyui_url=f"gpu1={a.url},gpu2={b.url}")
    wait_for(lambda: all(h.listener.connected for h in server.monitor.hosts), what="both hosts to connect")
    yield server, a, b
    server.stop_app()
    a.stop()
    b.stop()


def test_counters_move_as_jobs_finish_on_each_host(two_hosts):
    server, a, b = two_hosts
    before = scrape(server.get("/metrics").text)
    assert value(before, "comfymon_jobs_finished_total", host="gpu1", status="completed") is None
    assert value(before, "comfymon_comfy_connected", host="gpu1") == 1
    assert value(before, "comfymon_comfy_connected", host="gpu2") == 1

    ok = server.post("/api/run", json={"prompt": recorded_prompt(), "host": "gpu1"}).json()
    bad = server.post("/api/run", json={"prompt": recorded_prompt("04_error_mid_run"), "host": "gpu2"}).json()
    assert server.wait_status(ok["id"], "completed", timeout=30)
    assert server.wait_status(bad["id"], "failed", timeout=30)

    resp = server.get("/metrics")
    assert resp.status_code == 200 and resp.headers["Content-Type"].startswith("text/plain; version=0.0.4")
    after = scrape(resp.text)
    assert value(after, "comfymon_jobs_finished_total", host="gpu1", status="completed") == 1
    assert value(after, "comfymon_jobs_finished_total", host="gpu2", status="failed") == 1
    assert value(after, "comfymon_jobs_finished_total", host="gpu2", status="completed") is None
    assert value(after, "comfymon_job_duration_seconds_count", host="gpu1", status="completed") == 1
    assert value(after, "comfymon_job_duration_seconds_sum", host="gpu1", status="completed") >= 0
    # The frames of the run were counted by kind, on the host that sent them.
    for kind in ("executing", "progress", "execution_start"):
        assert value(after, "comfymon_comfy_frames_total", host="gpu1", kind=kind) > \
            (value(before, "comfymon_comfy_frames_total", host="gpu1", kind=kind) or 0)
    assert (value(after, "comfymon_comfy_frames_total", host="gpu2", kind="execution_error") or 0) >= 1
    assert value(after, "comfymon_comfy_reconnects_total", host="gpu1") == 0

    # Queue depth follows the store (refreshed in the background, not by the scrape).
    server.monitor.metrics.refresh()
    after = scrape(server.get("/metrics").text)
    assert value(after, "comfymon_queue_jobs", host="gpu1", state="running") == 0
    assert value(after, "comfymon_queue_jobs", host="gpu2", state="queued") == 0
    assert value(after, "comfymon_database_up") == 1

    # A host that goes away reads 0 at once; its reconnect is counted when it comes back.
    b.stop(abrupt=True)
    wait_for(lambda: not server.monitor.by_name["gpu2"].listener.connected, what="gpu2 to be gone")
    down = scrape(server.get("/metrics").text)
    assert value(down, "comfymon_comfy_connected", host="gpu2") == 0
    assert value(down, "comfymon_comfy_connected", host="gpu1") == 1
    b.start()
    wait_for(lambda: server.monitor.by_name["gpu2"].listener.connected, timeout=15, what="gpu2 back")
    again = scrape(server.get("/metrics").text)
    assert value(again, "comfymon_comfy_reconnects_total", host="gpu2") == 1


def test_a_queued_job_shows_in_the_queue_gauge(tmp_path):
    fake = FakeComfy(paused=True)
    server = LiveServer(fake, str(tmp_path / "data"))
    try:
        server.submit()
        server.submit()
        wait_for(lambda: len(server.monitor.store.active(graph=False)) == 2, what="two active jobs")
        server.monitor.metrics.refresh()
        samples = scrape(server.get("/metrics").text)
        host = server.monitor.hosts[0].name
        running = value(samples, "comfymon_queue_jobs", host=host, state="running")
        queued = value(samples, "comfymon_queue_jobs", host=host, state="queued")
        assert running + queued == 2 and queued >= 1
        assert value(samples, "comfymon_browser_clients") == 0
        assert value(samples, "comfymon_hub_events_dropped_total") == 0
    finally:
        server.stop_app()
        fake.stop()


def test_a_scrape_reads_no_database(tmp_path):
    fake = FakeComfy()
    server = LiveServer(fake, str(tmp_path / "data"))
    try:
        store, metrics, touched, scraping = server.monitor.store, server.monitor.metrics, [], []

        def refuse(*_a, **_k):
            if scraping:   # the reconciler and the hosts read it too, in their own greenlets: not counted
                touched.append(_a)
            raise RuntimeError("the database is down")
        render = metrics.render

        def watched_render():
            scraping.append(True)
            try:
                return render()
            finally:
                scraping.clear()
        metrics.render = watched_render
        metrics.stop()   # its background refresh would read it too
        for name in ("active", "get", "history", "_query", "status"):
            setattr(store, name, refuse)
        resp = server.get("/metrics")
        assert resp.status_code == 200, resp.text
        assert "comfymon_comfy_connected" in resp.text
        assert touched == [], "a scrape read the database"
        # The background refresh does read it, and says when the database fails.
        server.monitor.metrics.refresh()
        assert value(scrape(server.get("/metrics").text), "comfymon_database_up") == 0
    finally:
        server.stop_app()
        fake.stop()


def _offline_app(tmp_path, **overrides):
    config = Config(comfyui_url="http://127.0.0.1:9", data_dir=str(tmp_path / "data"), testing=True,
                    workflows_dir=os.path.join(ROOT, "workflows"), **overrides)
    return create_app(config, start=False)


def test_metrics_need_the_api_credentials_unless_public(tmp_path):
    app = _offline_app(tmp_path, password="s3cret")
    try:
        client = app.test_client()
        assert client.get("/metrics").status_code == 401
        ok = client.get("/metrics", auth=("admin", "s3cret"))
        assert ok.status_code == 200 and b"comfymon_comfy_connected" in ok.data
    finally:
        app.extensions["monitor"].close()
    public = _offline_app(tmp_path, password="s3cret", metrics_public=True)
    try:
        resp = public.test_client().get("/metrics")
        assert resp.status_code == 200 and b"comfymon_comfy_connected" in resp.data
        # Public metrics open nothing else.
        assert public.test_client().get("/api/admin/queue").status_code == 401
    finally:
        public.extensions["monitor"].close()


def test_metrics_public_is_read_from_the_environment(monkeypatch):
    monkeypatch.setenv("MONITOR_METRICS_PUBLIC", "1")
    assert Config.from_env().metrics_public is True
    monkeypatch.setenv("MONITOR_METRICS_PUBLIC", "0")
    assert Config.from_env().metrics_public is False


def test_frame_kinds_are_a_bounded_set():
    assert protocol.text_kind("executing") == "executing"
    assert protocol.text_kind("x" * 40) == "other"
    assert protocol.binary_kind(1) == "binary.preview"
    assert protocol.binary_kind(99) == "binary.other"
