"""Learned durations: the tracker's node timings, the rows recorded from them, and the estimator's answers."""
import copy

import pytest

from monitor import estimate
from monitor.estimate import Estimator
from monitor.jobs import JobStore
from monitor.tracker import Tracker

GRAPH = {
    "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "m.safetensors"}},
    "2": {"class_type": "CLIPTextEncode", "inputs": {"text": "a fox", "clip": ["1", 1]}},
    "4": {"class_type": "EmptyLatentImage", "inputs": {"width": 512, "height": 512, "batch_size": 1}},
    "5": {"class_type": "KSampler", "inputs": {"model": ["1", 0], "positive": ["2", 0], "negative": ["2", 0],
                                               "latent_image": ["4", 0], "seed": 1, "steps": 20}},
    "6": {"class_type": "VAEDecode", "inputs": {"samples": ["5", 0], "vae": ["1", 2]}},
    "7": {"class_type": "SaveImage", "inputs": {"images": ["6", 0], "filename_prefix": "job-a/out"}},
}
# Seconds each node takes in the runs below (on the "slow" host; the fast one takes half).
COST = {"1": 3.0, "2": 0.5, "4": 0.1, "5": 10.0, "6": 1.5, "7": 0.4}


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


def run(graph, pid, cached=(), speed=1.0, steps_cost=None):
    """Drive a tracker through one run as ComfyUI reports it; returns its timings."""
    clock = Clock()
    tracker = Tracker(clock=clock)
    tracker.register(pid, graph, ["7"])
    tracker.handle("execution_start", {"prompt_id": pid})
    tracker.handle("execution_cached", {"prompt_id": pid, "nodes": list(cached)})
    for nid in ("1", "2", "4", "5", "6", "7"):
        if nid in cached:
            continue
        tracker.handle("executing", {"prompt_id": pid, "node": nid})
        seconds = (steps_cost or COST).get(nid, 1.0) * speed
        if nid == "5":
            steps = graph["5"]["inputs"]["steps"]
            for step in range(1, steps + 1):
                clock.now += seconds / steps
                tracker.handle("progress", {"prompt_id": pid, "node": "5", "value": step, "max": steps})
        else:
            clock.now += seconds
    tracker.handle("executed", {"prompt_id": pid, "node": "7", "output": {"images": []}})
    tracker.handle("execution_success", {"prompt_id": pid})
    return tracker.timings(pid)


def learned(runs, host="gpu1", graph=GRAPH, speed=1.0, cached=()):
    est = Estimator()
    for i in range(runs):
        g = copy.deepcopy(graph)
        g["5"]["inputs"]["seed"] = i   # seeds differ; the workflow is the same
        g["2"]["inputs"]["text"] = f"prompt {i}"
        est.add(estimate.timing_rows(g, run(g, f"p{i}", cached=cached, speed=speed), host), f"p{i}")
    return est


def test_tracker_times_each_node_from_its_start_to_the_next():
    timings = run(GRAPH, "a")
    assert timings["complete"] is True
    assert timings["nodes"] == pytest.approx(COST)


def test_a_lost_connection_mid_run_makes_the_timings_incomplete():
    clock = Clock()
    tracker = Tracker(clock=clock)
    tracker.register("a", GRAPH, ["7"])
    tracker.handle("execution_start", {"prompt_id": "a"})
    tracker.handle("execution_cached", {"prompt_id": "a", "nodes": []})
    tracker.handle("executing", {"prompt_id": "a", "node": "1"})
    tracker.on_disconnect()
    tracker.on_reconnect()
    clock.now += 5
    tracker.handle("execution_success", {"prompt_id": "a"})
    assert tracker.timings("a")["complete"] is False


def test_same_workflow_past_runs_give_the_whole_job():
    est = learned(3)
    nodes = ["1", "2", "4", "5", "6", "7"]
    seconds, basis = est.remaining(GRAPH, "gpu1", nodes)
    assert seconds == pytest.approx(sum(COST.values()), abs=0.2)
    assert basis == "3 past runs of this workflow"
    # What is left once the sampler runs: its live rate, then the nodes after it.
    seconds, _ = est.remaining(GRAPH, "gpu1", ["6", "7"], current="5", step_eta_s=4.0)
    assert seconds == pytest.approx(4.0 + COST["6"] + COST["7"], abs=0.05)
    # Without a live rate: its learned time less what it has run.
    seconds, _ = est.remaining(GRAPH, "gpu1", ["6", "7"], current="5", current_s=7.0)
    assert seconds == pytest.approx(3.0 + COST["6"] + COST["7"], abs=0.05)


def test_seeds_texts_and_output_prefixes_do_not_change_the_workflow_but_steps_do():
    other = copy.deepcopy(GRAPH)
    other["5"]["inputs"]["seed"] = 99
    other["2"]["inputs"]["text"] = "something else"
    other["7"]["inputs"]["filename_prefix"] = "job-b/out"
    assert estimate.signature(other) == estimate.signature(GRAPH)
    other["5"]["inputs"]["steps"] = 30
    assert estimate.signature(other) != estimate.signature(GRAPH)


def test_different_steps_scale_the_sampler_by_its_class_rate():
    est = learned(3)
    longer = copy.deepcopy(GRAPH)
    longer["5"]["inputs"]["steps"] = 40
    seconds, basis = est.remaining(longer, "gpu1", ["5"])
    assert seconds == pytest.approx(20.0, rel=0.02)   # twice the steps, twice the time
    assert basis == "KSampler rate on gpu1"
    bigger = copy.deepcopy(GRAPH)
    bigger["4"]["inputs"].update(width=1024, height=1024)
    assert est.remaining(bigger, "gpu1", ["5"])[0] == pytest.approx(40.0, rel=0.02)   # four times the pixels
    # The nodes whose cost inputs did not change keep their own figures.
    assert est.remaining(longer, "gpu1", ["6"]) == (pytest.approx(COST["6"], abs=0.01), "past VAEDecode runs on gpu1")


def test_an_unknown_class_makes_the_estimate_unknown_not_a_guess():
    est = learned(2)
    graph = copy.deepcopy(GRAPH)
    graph["8"] = {"class_type": "UltimateUpscale", "inputs": {"image": ["6", 0]}}
    seconds, basis = est.remaining(graph, "gpu1", ["5", "6", "8"])
    assert seconds is None and basis == "no history yet for UltimateUpscale on gpu1"
    assert Estimator().remaining(GRAPH, "gpu1", ["5"]) == (None, "no history yet")


def test_cached_nodes_are_recorded_as_zero_and_marked():
    timings = run(GRAPH, "a", cached=("1", "2"))
    rows = estimate.timing_rows(GRAPH, timings, "gpu1")
    cached = {r["node_id"]: r for r in rows if r["cached"]}
    assert set(cached) == {"1", "2"} and all(r["seconds"] == 0 for r in cached.values())
    est = Estimator()
    est.add(estimate.timing_rows(GRAPH, run(GRAPH, "a"), "gpu1"), "a")            # loader ran: 3 s
    est.add(rows, "b")                                                             # loader cached
    est.add(estimate.timing_rows(GRAPH, run(GRAPH, "c", cached=("1",)), "gpu1"), "c")
    # A running job knows its cached nodes: the loader, if it runs, takes what uncached runs took.
    assert est.remaining(GRAPH, "gpu1", ["1"], cached_known=True)[0] == pytest.approx(3.0)
    # A queued job does not: past cached runs count as 0 s (the median of 3, 0, 0).
    assert est.remaining(GRAPH, "gpu1", ["1"], cached_known=False)[0] == pytest.approx(0.0)


def test_a_host_twice_as_fast_is_estimated_from_its_own_runs():
    est = learned(3, host="slow")
    for i in range(3):
        est.add(estimate.timing_rows(GRAPH, run(GRAPH, f"f{i}", speed=0.5), "fast"), f"f{i}")
    nodes = ["5", "6", "7"]
    slow, _ = est.remaining(GRAPH, "slow", nodes)
    fast, _ = est.remaining(GRAPH, "fast", nodes)
    assert slow == pytest.approx(2 * fast, rel=0.02)
    assert est.remaining(GRAPH, "other", nodes) == (None, "no history yet")


def test_timings_survive_in_the_store(tmp_path):
    store = JobStore(tmp_path / "db.sqlite3")
    rows = estimate.timing_rows(GRAPH, run(GRAPH, "a"), "gpu1")
    store.record_timings("a", rows)
    store.close()
    store = JobStore(tmp_path / "db.sqlite3")
    est = Estimator()
    est.add(store.timings())
    assert est.remaining(GRAPH, "gpu1", ["5"]) == (pytest.approx(10.0), "1 past run of this workflow")
    store.close()


def test_a_retried_timings_write_stores_the_run_once(database, monkeypatch):
    # A PostgreSQL commit whose answer was lost is tried again with retried=True (JobStore._transact and the
    # queue's drain): the retry must not count the run twice. Here the retry follows a write that did commit.
    store = JobStore(database)
    try:
        writes = []
        monkeypatch.setattr(store, "_write_soon", lambda work, then=None: writes.append(work))
        rows = estimate.timing_rows(GRAPH, run(GRAPH, "a"), "gpu1")
        store.record_timings("a", rows)
        store.record_timings("b", rows)
        store._transact(lambda conn, _r: writes[0](conn, False))
        store._transact(lambda conn, _r: writes[1](conn, False))
        store._transact(lambda conn, _r: writes[0](conn, True))
        stored = store.timings()
        assert sorted(r["job_id"] for r in stored) == sorted(["a"] * len(rows) + ["b"] * len(rows))
    finally:
        store.close()


def test_card_thumbnail_precedence_live_output_then_record_output_then_input_then_none():
    from monitor.web.pages import job_thumb

    def img(name):
        return [{"node_id": "9", "images": [{"filename": name, "subfolder": "", "type": "output"}]}]
    job = {"outputs": img("old.png"), "progress": {"outputs": img("old.png") + img("new.png")},
           "input_image": "in.png"}
    assert "new.png" in job_thumb(job)                      # a running job's live outputs are the newest
    assert "old.png" in job_thumb({**job, "progress": None})  # finished (external ones: from /history)
    assert "in.png" in job_thumb({"outputs": [], "progress": {"outputs": []}, "input_image": "in.png"})
    assert job_thumb({"outputs": [], "input_image": None}) is None   # the placeholder
