"""Cost of the tracker's weighted percent per message (issue 14): a chain of N nodes, learned weights, every
node executed with a 10-step progress each; prints microseconds per message and per state() for N = 100 …
20000 (flat = constant work per message).

    .venv/bin/python bench/percent.py [--sizes 100,2000,20000]
"""
from __future__ import annotations

import argparse
import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from monitor.tracker import Tracker  # noqa: E402


def run(n: int, weighted: bool) -> tuple[float, float]:
    graph = {"0": {"class_type": "EmptyImage", "inputs": {"width": 8, "height": 8}}}
    for i in range(1, n):
        graph[str(i)] = {"class_type": "ImageInvert", "inputs": {"image": [str(i - 1), 0]}}
    graph["out"] = {"class_type": "SaveImage", "inputs": {"images": [str(n - 1), 0]}}
    tracker = Tracker()
    tracker.register("p", graph, ["out"])
    tracker.handle("execution_start", {"prompt_id": "p"})
    tracker.handle("execution_cached", {"prompt_id": "p", "nodes": []})
    if weighted:
        tracker.set_weights("p", {k: 1.0 + i % 7 for i, k in enumerate(graph)})
    tracker.state("p")
    run_nodes = min(n, 300)
    messages = states = 0
    t_msg = t_state = 0.0
    for i in range(run_nodes):
        node = str(i)
        start = time.perf_counter()
        tracker.handle("executing", {"prompt_id": "p", "node": node})
        for step in range(1, 11):
            tracker.handle("progress", {"prompt_id": "p", "node": node, "value": step, "max": 10})
        tracker.handle("executed", {"prompt_id": "p", "node": node, "output": None})
        t_msg += time.perf_counter() - start
        messages += 12
        start = time.perf_counter()
        tracker.state("p")
        t_state += time.perf_counter() - start
        states += 1
    return 1e6 * t_msg / messages, 1e6 * t_state / states


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", default="100,2000,20000")
    args = ap.parse_args()
    print(f"{'nodes':>7} {'basis':>9} {'µs/message':>11} {'µs/state()':>11}")
    for n in (int(s) for s in args.sizes.split(",")):
        for weighted in (False, True):
            per_msg, per_state = run(n, weighted)
            print(f"{n:>7} {'weighted' if weighted else 'count':>9} {per_msg:>11.1f} {per_state:>11.1f}")


if __name__ == "__main__":
    main()
