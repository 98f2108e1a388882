"""Server side of the page for several hosts (no browser): the fragments render each host and each running job
from cached state, cards interleave the hosts' queues by time, and --demo-hosts starts named simulators."""
from __future__ import annotations

import pytest

from fake_comfy import FakeComfy
from live import LiveServer, wait_for
from monitor.config import Config


@pytest.fixture
def fleet(tmp_path):
    """gpu1: a fake ComfyUI held paused (jobs stay queued); gpu2: nothing listens (down from the start)."""
    fake = FakeComfy(speed=10, paused=True)
    fake.start()
    # No periodic reconcile during a test: the jobs it writes straight into the store are not in gpu1's queue.
    server = LiveServer(fake, str(tmp_path / "data"), comfyui_url=f"gpu1={fake.url},gpu2=http://127.0.0.1:9",
                        reconcile_interval=120)
    yield server
    server.stop_app()
    fake.stop(abrupt=False)


def test_fragments_show_each_host_and_a_down_one(fleet):
    wait_for(lambda: fleet.monitor.hosts[1].listener.status()["last_error"], what="gpu2's first refusal")
    gauges = fleet.get("/admin/queue/gauges").text
    assert 'id="host-0"' in gauges and 'id="host-1"' in gauges and 'id="gauge-gpu0"' not in gauges
    assert 'class="host is-up" id="host-0"' in gauges and 'class="host is-down" id="host-1"' in gauges
    assert "down since" in gauges and "ComfyUI unreachable" in gauges and "Errno" not in gauges
    current = fleet.get("/admin/queue/current").text
    assert 'class="runs is-idle"' in current and "No jobs running" in current
    page = fleet.get("/admin/queue").text
    assert 'data-multi-host="true"' in page and 'id="preview-for"' in page


def test_cards_interleave_hosts_by_queue_time_with_badges(fleet):
    store = fleet.monitor.store
    wait_for(lambda: fleet.monitor.hosts[0].reconciled_at, what="gpu1's reconcile after connecting")
    # Each ComfyUI numbers its own queue: gpu2's low numbers must not jump ahead of gpu1's earlier jobs.
    for job_id, host, number, queued_at in [("a1", "gpu1", 50, "2026-01-01T10:00:00+00:00"),
                                            ("b1", "gpu2", 1, "2026-01-01T10:00:05+00:00"),
                                            ("a2", "gpu1", 51, "2026-01-01T10:00:10+00:00"),
                                            ("b2", "gpu2", 2, "2026-01-01T10:00:15+00:00")]:
        store.create({"id": job_id, "host": host, "status": "queued", "number": number, "queued_at": queued_at,
                      "source": "external"})
    order = [job_id for job_id, _, _ in fleet.monitor.card_versions()]
    assert order == ["a1", "b1", "a2", "b2"]
    cards = fleet.get("/admin/queue/cards").text
    assert [cards.index(f'id="job-{i}"') for i in order] == sorted(cards.index(f'id="job-{i}"') for i in order)
    assert cards.count('class="tag tag-host"') == 4
    # Positions stay per host, and files are asked of the job's own host.
    positions = {job["id"]: job["queue_position"] for job in fleet.monitor.active_jobs()}
    assert positions == {"a1": 1, "a2": 2, "b1": 1, "b2": 2}
    overlay = fleet.get("/admin/jobs/b2/overlay").text
    assert "<dt>Host</dt><dd>gpu2</dd>" in overlay


def test_demo_hosts_config_and_simulators(monkeypatch):
    monkeypatch.setenv("MONITOR_DEMO_HOSTS", "3")
    assert Config.from_env().demo_hosts == 3
    assert Config.from_env(demo_hosts=2).demo_hosts == 2
    monkeypatch.setenv("MONITOR_DEMO_HOSTS", "0")
    with pytest.raises(SystemExit, match="MONITOR_DEMO_HOSTS"):
        Config.from_env()
    from monitor.demo import start_demo_fleet
    named = start_demo_fleet(3)
    try:
        assert [name for name, _ in named] == ["gpu1", "gpu2", "gpu3"]
        speeds = [sim.engine.step_s for _, sim in named]
        assert len(set(speeds)) == 3                # several panels move at different paces
        assert len({sim.url for _, sim in named}) == 3
    finally:
        for _, sim in named:
            sim.stop(abrupt=False)


def test_a_host_whose_job_just_ended_shows_its_outcome_panel_until_it_expires_or_runs_again(fleet):
    """Several hosts: a panel per running job, and for a host where a job ended moments ago its outcome
    (completed with its output thumbnail from that host, failed with its reason); old endings show nothing."""
    from monitor.timeutil import iso_from_epoch
    import time as _time
    store = fleet.monitor.store
    now = _time.time()
    store.create({"id": "done1", "host": "gpu1", "status": "completed", "source": "external",
                  "workflow_name": "Fresh render", "queued_at": iso_from_epoch(now - 20),
                  "started_at": iso_from_epoch(now - 14), "finished_at": iso_from_epoch(now - 2),
                  "outputs": [{"node_id": "9", "title": "Save", "text": [],
                               "images": [{"filename": "out_1.png", "subfolder": "runs", "type": "output"}]}]})
    store.create({"id": "fail2", "host": "gpu2", "status": "failed", "source": "external",
                  "workflow_name": "Broken", "queued_at": iso_from_epoch(now - 9), "finished_at": iso_from_epoch(now - 1),
                  "error": {"message": "CUDA out of memory\nTraceback...", "node_title": "KSampler"}})
    current = fleet.get("/admin/queue/current").text
    assert 'data-outcome="completed"' in current and 'data-outcome="failed"' in current
    assert "host=gpu1" in current and "out_1.png" in current          # the thumbnail comes from its host
    assert "KSampler: CUDA out of memory" in current and "Traceback" not in current
    assert current.index("outcome-done1") < current.index("outcome-fail2")   # host order
    assert "No jobs running" not in current
    # Past the outcome window: the idle panel again.
    assert fleet.monitor.recent_outcomes(8, now=now + 30) == []
    # A host that runs again shows its running job, not the last outcome.
    store.create({"id": "run1", "host": "gpu1", "status": "running", "source": "external",
                  "queued_at": iso_from_epoch(now), "started_at": iso_from_epoch(now)})
    ids = [job["id"] for job in fleet.monitor.recent_outcomes(8, now=now)]
    assert ids == ["fail2"]
