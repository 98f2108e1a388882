"""The percent means work done: node shares from learned durations (set_weights), the effective node count
when any is unknown, the running node's steps filling its share, and constant work per message."""
from monitor.estimate import Estimator, timing_rows
from monitor.tracker import Tracker

GRAPH = {
    "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "m.safetensors"}},
    "2": {"class_type": "KSampler", "inputs": {"model": ["1", 0], "steps": 28}},
    "3": {"class_type": "VAEDecode", "inputs": {"samples": ["2", 0], "vae": ["1", 2]}},
    "4": {"class_type": "SaveImage", "inputs": {"images": ["3", 0]}},
}


class Clock:
    now = 1000.0

    def __call__(self):
        return self.now


def start(tracker, pid="p1", graph=GRAPH):
    tracker.register(pid, graph, [n for n, v in graph.items() if v["class_type"] == "SaveImage"])
    tracker.handle("execution_start", {"prompt_id": pid, "timestamp": 1})
    tracker.handle("execution_cached", {"prompt_id": pid, "nodes": []})


def run_to_sampler_step(tracker, value, pid="p1"):
    tracker.handle("executing", {"prompt_id": pid, "node": "1"})
    tracker.handle("executed", {"prompt_id": pid, "node": "1", "output": None})
    tracker.handle("executing", {"prompt_id": pid, "node": "2"})
    tracker.handle("progress", {"prompt_id": pid, "node": "2", "value": value, "max": 28})
    return tracker.state(pid)["percent"]


def test_without_learned_durations_each_node_counts_one_and_steps_fill_the_running_nodes_share():
    tracker = Tracker(clock=Clock())
    start(tracker)
    # 4 nodes run (none instant here): loader done + 7/28 of the sampler = 1.25 / 4
    assert run_to_sampler_step(tracker, 7) == round(100 * 1.25 / 4, 2)


def test_learned_durations_make_each_nodes_share_its_expected_time():
    tracker = Tracker(clock=Clock())
    start(tracker)
    weights = {"1": 2.0, "2": 14.0, "3": 3.0, "4": 1.0}
    tracker.set_weights("p1", weights)
    # loader's 2 s + a quarter of the sampler's 14 s, of 20 s
    assert run_to_sampler_step(tracker, 7) == round(100 * (2 + 14 * 7 / 28) / 20, 2)
    tracker.handle("progress", {"prompt_id": "p1", "node": "2", "value": 28, "max": 28})
    assert tracker.state("p1")["percent"] == round(100 * 16 / 20, 2)
    assert tracker.state("p1")["nodes_done"] == 1   # the counts stay node counts


def test_one_unknown_node_falls_back_to_the_node_count():
    tracker = Tracker(clock=Clock())
    start(tracker)
    tracker.set_weights("p1", {"1": 2.0, "2": 14.0, "3": 3.0})   # SaveImage never timed
    assert run_to_sampler_step(tracker, 7) == round(100 * 1.25 / 4, 2)


def test_weights_from_an_estimator_that_learned_a_run():
    """The service's path: timing rows of a finished run → Estimator → weights of the next run."""
    estimator = Estimator()
    estimator.add(timing_rows(GRAPH, {"nodes": {"1": 1.0, "2": 8.0, "3": 0.5, "4": 0.5}, "cached": []}, "local"))
    from monitor.estimate import signature
    sig = signature(GRAPH)
    weights = {n: estimator.node(GRAPH, n, "local", sig, True)[0] for n in GRAPH}
    tracker = Tracker(clock=Clock())
    start(tracker)
    tracker.set_weights("p1", weights)
    assert run_to_sampler_step(tracker, 14) == round(100 * (1 + 4) / 10, 2)


def test_the_percent_costs_constant_work_per_message_on_a_big_graph():
    """The sums behind the percent are computed once per basis, then kept up to date as nodes finish."""
    n = 3000
    graph = {"0": {"class_type": "EmptyImage", "inputs": {"width": 8, "height": 8}}}
    for i in range(1, n):
        graph[str(i)] = {"class_type": "ImageInvert", "inputs": {"image": [str(i - 1), 0]}}
    graph["out"] = {"class_type": "SaveImage", "inputs": {"images": [str(n - 1), 0]}}
    tracker = Tracker(clock=Clock())
    start(tracker, graph=graph)
    tracker.set_weights("p1", {k: 1.0 + (int(k) % 3 if k.isdigit() else 0) for k in graph})
    tracker.state("p1")
    sums = tracker._prompts["p1"].sums
    assert sums is not None
    for i in range(200):
        tracker.handle("executing", {"prompt_id": "p1", "node": str(i)})
        tracker.handle("executed", {"prompt_id": "p1", "node": str(i), "output": None})
        tracker.state("p1")
    p = tracker._prompts["p1"]
    assert p.sums is sums, "recomputed over the whole graph during the run"
    # ...and the running sums equal a recount
    total = sum(p.weights[k] for k in p.effective)
    done = sum(p.weights[k] for k in p.done & p.effective)
    assert tracker.state("p1")["percent"] == round(100 * done / total, 2)


def test_the_percent_never_goes_backwards_and_completion_is_100():
    tracker = Tracker(clock=Clock())
    start(tracker)
    tracker.set_weights("p1", {"1": 2.0, "2": 14.0, "3": 3.0, "4": 1.0})
    seen = [run_to_sampler_step(tracker, 27)]
    tracker.handle("progress", {"prompt_id": "p1", "node": "2", "value": 28, "max": 28})
    tracker.handle("executing", {"prompt_id": "p1", "node": "3"})
    seen.append(tracker.state("p1")["percent"])
    tracker.handle("execution_success", {"prompt_id": "p1"})
    seen.append(tracker.state("p1")["percent"])
    assert seen == sorted(seen) and seen[-1] == 100.0
