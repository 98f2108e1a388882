"""The monitor's own work under heavy load (issue #10 items 6 and 11): how long `/healthz` waits meanwhile.

    .venv/bin/python bench/load_limits.py outputs      [--nodes 2000]   # one job with N node outputs
    .venv/bin/python bench/load_limits.py submissions  [--posts 60]     # N concurrent 1.8 MB submissions
    .venv/bin/python bench/load_limits.py retention    [--jobs 60]      # database size before/after retention

`outputs` runs the fake ComfyUI in this process (yielding as a separate process would); `submissions` runs it
in its own process (bench/benchlib.py upstream --paused). Figures in bench/RESULTS.md section 9.
"""
from __future__ import annotations

import sys

if __name__ == "__main__":
    from gevent import monkey

    monkey.patch_all()

import argparse  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
import types  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
for _p in (ROOT, os.path.join(ROOT, "tests"), HERE):
    if _p not in sys.path:
        sys.path.insert(0, _p)


def watch(server):
    """Times /healthz every 50 ms in a greenlet; returns stop() -> (worst seconds, samples)."""
    import gevent
    import requests
    times, running = [], [True]

    def loop():
        session = requests.Session()
        while running[0]:
            start = time.monotonic()
            session.get(server.url + "/healthz", timeout=300)
            times.append(time.monotonic() - start)
            gevent.sleep(0.05)
    greenlet = gevent.spawn(loop)

    def stop():
        running[0] = False
        greenlet.join()
        return max(times), len(times)
    return stop


def big_graph(nodes: int = 2100) -> dict:
    graph = {str(i): {"class_type": "CLIPTextEncode", "inputs": {"text": "a lighthouse " * 60, "clip": ["1", 1]}}
             for i in range(2, nodes)}
    graph["1"] = {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "x.safetensors"}}
    graph["9"] = {"class_type": "SaveImage", "inputs": {"images": ["2", 0]}}
    return graph


def outputs(n: int) -> None:
    from fake_comfy import FakeComfy
    from live import LiveServer
    from monitor.demo import CHECK, Engine

    class ManyOutputs(Engine):
        def run(self, job, run):
            pid = job.prompt_id
            yield 0, {"type": "execution_start", "data": {"prompt_id": pid}}
            yield 0, {"type": "execution_cached", "data": {"nodes": [], "prompt_id": pid}}
            for i, nid in enumerate(job.prompt):
                if i % 20 == 0:   # the fake lives in this process: let the monitor run, as it would
                    yield 0.0005, CHECK
                if nid != "1":
                    yield 0, {"type": "executed", "data": {"node": nid, "display_node": nid, "prompt_id": pid,
                              "output": {"images": [{"filename": f"p_{nid}.png", "subfolder": "", "type": "temp"}]}}}

    graph = {"1": {"class_type": "EmptyImage", "inputs": {"width": 8, "height": 8, "batch_size": 1, "color": 0}}}
    for i in range(n):
        graph[str(100 + i)] = {"class_type": "PreviewImage", "inputs": {"images": ["1", 0]},
                               "_meta": {"title": f"Preview {i} " + "x" * 100}}
    fake = FakeComfy(default=ManyOutputs())
    server = LiveServer(fake, tempfile.mkdtemp(prefix="bench-outputs-"))
    try:
        stop = watch(server)
        started = time.monotonic()
        job = server.submit(graph)
        server.wait_status(job["id"], "completed", timeout=600)
        took = time.monotonic() - started
        worst, count = stop()
        stored = len(server.monitor.get_job(job["id"])["outputs"])
        print(f"{n} node outputs: job settled after {took:.1f} s; /healthz worst {worst:.2f} s over {count} "
              f"requests; outputs stored {stored}")
    finally:
        server.stop_app()
        fake.stop()


def submissions(n: int) -> None:
    import gevent
    import requests
    from benchlib import Role
    from live import LiveServer
    tmp = tempfile.mkdtemp(prefix="bench-submit-")
    upstream = Role("upstream", "--paused", log=os.path.join(tmp, "upstream.log"))
    server = LiveServer(types.SimpleNamespace(url=f"http://127.0.0.1:{upstream.port}"), os.path.join(tmp, "data"))
    body = json.dumps({"prompt": big_graph()}).encode()
    try:
        stop = watch(server)
        started = time.monotonic()
        posts = [gevent.spawn(requests.post, server.url + "/api/run", data=body, timeout=600,
                              headers={"Content-Type": "application/json"}) for _ in range(n)]
        gevent.joinall(posts)
        posted = time.monotonic() - started
        server.monitor.reconcile()   # ComfyUI's /queue now holds every graph
        worst, count = stop()
        codes = sorted({p.value.status_code for p in posts if p.value is not None})
        print(f"{n} concurrent {len(body) / 1e6:.1f} MB submissions: answered {codes} within {posted:.1f} s; "
              f"/healthz worst {worst:.2f} s over {count} requests")
    finally:
        server.stop_app()
        upstream.stop()


def retention(n: int) -> None:
    from monitor.jobs import JobStore, prune_step
    path = os.path.join(tempfile.mkdtemp(prefix="bench-retention-"), "monitor.sqlite3")
    store = JobStore(path)
    graph = big_graph()

    def size():
        return sum(os.path.getsize(path + s) for s in ("", "-wal") if os.path.exists(path + s)) / 1e6
    for i in range(n):
        store.create({"id": f"j{i}", "status": "queued", "graph": graph})
        store.update(f"j{i}", status="failed", error={"message": "validation"})
    print(f"{n} rejected 1.8 MB prompts: database {size():.0f} MB")
    started, worst = time.time(), 0.0
    while True:
        step_started = time.time()
        step = prune_step(store, keep_days=30, keep_jobs=20000, graph_budget=16 * 1024 * 1024)
        worst = max(worst, time.time() - step_started)
        if not any(step.values()):
            break
    store._query("PRAGMA wal_checkpoint(TRUNCATE)")
    print(f"after retention with a 16 MB graph budget: database {size():.0f} MB, {time.time() - started:.2f} s "
          f"in all, longest step {worst * 1000:.0f} ms")
    store.close()


def main() -> int:
    from benchlib import machine
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("case", choices=("outputs", "submissions", "retention"))
    ap.add_argument("--nodes", type=int, default=2000)
    ap.add_argument("--posts", type=int, default=60)
    ap.add_argument("--jobs", type=int, default=60)
    args = ap.parse_args()
    print(machine())
    {"outputs": lambda: outputs(args.nodes), "submissions": lambda: submissions(args.posts),
     "retention": lambda: retention(args.jobs)}[args.case]()
    return 0


if __name__ == "__main__":
    sys.exit(main())
