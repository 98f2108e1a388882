"""GET /api/admin/queue answers an unchanged queue from memory (PageCache), and every input that changes the
answer makes it change: a new job, a position, a queued job's tracker state, an estimate, a running job's step."""
import json
import os

import pytest

from conftest import ROOT
from monitor import create_app
from monitor.config import Config
from monitor.estimate import cost_inputs, signature

GRAPH = {"1": {"class_type": "KSampler", "inputs": {"steps": 20, "seed": 1}}}


@pytest.fixture
def app(tmp_path):
    config = Config(comfyui_url="http://127.0.0.1:9", data_dir=str(tmp_path / "data"), testing=True,
                    workflows_dir=os.path.join(ROOT, "workflows"))
    app = create_app(config, start=False)
    yield app
    app.extensions["monitor"].close()


def queued(fleet, job_id):
    fleet.store.create({"id": job_id, "status": "queued", "host": fleet.hosts[0].name})
    fleet.hosts[0].tracker.register(job_id, None)


def test_an_unchanged_queue_is_answered_from_memory_and_each_change_shows(app, monkeypatch):
    fleet = app.extensions["monitor"]
    host = fleet.hosts[0]
    client = app.test_client()
    built = []
    real = type(fleet).active_versions
    monkeypatch.setattr(type(fleet), "active_versions", lambda self, *a: built.append(a) or real(self, *a))

    def jobs(path="/api/admin/queue"):
        return {job["id"]: job for job in client.get(path).get_json()["jobs"]}

    queued(fleet, "a")
    queued(fleet, "b")
    first = client.get("/api/admin/queue").data
    assert client.get("/api/admin/queue").data == first
    assert len(built) == 1, "an unchanged queue is not listed again"
    assert list(jobs("/api/admin/queue?limit=1")) == ["a"] and len(built) == 2, "each page has its own answer"

    queued(fleet, "c")   # a new job
    assert list(jobs()) == ["a", "b", "c"]

    fleet.store.update("a", status="cancelled")   # a position
    now = jobs()
    assert list(now) == ["b", "c"] and now["b"]["queue_position"] == 1 and now["c"]["queue_position"] == 2

    before = jobs()["c"]["progress"]
    host.tracker.register("b", GRAPH)
    host.tracker.register("c", GRAPH)   # a queued job's tracker state (no store write)
    assert jobs()["c"]["progress"] != before

    assert jobs()["c"]["eta_s"] is None
    fleet.estimator.add([{"host": host.name, "class_type": "KSampler", "signature": signature(GRAPH),
                          "node_id": "1", "seconds": 5.0, "cached": False,
                          "cost": json.dumps(cost_inputs(GRAPH, "1"), sort_keys=True)}])   # an estimate
    now = jobs()
    assert now["c"]["eta_s"] == 5.0 and now["c"]["starts_in_s"] == 5.0

    host._on_text("execution_start", {"prompt_id": "b"})   # b runs: its steps show on every answer
    host._on_text("executing", {"prompt_id": "b", "node": "1"})
    steps = []
    for value in (3, 4):
        host._on_text("progress", {"prompt_id": "b", "node": "1", "value": value, "max": 20})
        steps.append(jobs()["b"]["progress"])
    assert steps[0] != steps[1], "a running job's step is never answered from memory"
    calls = len(built)
    host._on_text("progress", {"prompt_id": "b", "node": "1", "value": 5, "max": 20})
    assert jobs()["b"]["progress"] != steps[1]
    assert len(built) == calls, "a running job's step re-renders that job alone"
