"""Memory over many jobs (issue #6 item 6, shared with the hardening soak): 10,000 jobs through the pipeline.

A fake ComfyUI (SimComfy with the synthetic engine at zero delay: cached loaders, sampler steps with
previews, outputs, and a deliberate failure for every 10th job) in its own process; the monitor (the real app)
in another; every job submitted through the monitor's POST /api/run with a bounded number in flight. Checks:
every job ends in its expected state (completed, or failed for the failing ones), the tracker holds state
only for active jobs (plus those finished within the last LINGER_S = 30 s, by design), and the monitor's RSS
growth between the end of the warm-up and the end of the run (target <= 10 MB). The full run then waits out
the linger and checks that the tracker holds nothing.

    .venv/bin/python bench/memory.py [--jobs 10000] [--warmup 1000] [--quick] [--database-url URL|pg]

--database-url: the monitor stores its jobs in PostgreSQL (`pg`: a throwaway cluster from tests/pg.py).
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from benchlib import (Role, http_json, machine, pg_cluster, pg_destroy, rss, sampler_prompt,  # noqa: E402
                      monitor_role, wait_connected)

LINGER_S = 30.0
IN_FLIGHT = 8
FAIL_EVERY = 10


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--jobs", type=int, default=10_000)
    ap.add_argument("--warmup", type=int, default=1_000)
    ap.add_argument("--quick", action="store_true", help="smoke test: 150 jobs, 50 of warm-up, no linger wait")
    ap.add_argument("--database-url", help="PostgreSQL URL, or `pg` for a throwaway cluster (default: SQLite)")
    args = ap.parse_args()
    total, warmup = (150, 50) if args.quick else (args.jobs, args.warmup)
    print(machine())
    url, cluster = pg_cluster(args.database_url)
    print(f"database: {'PostgreSQL' if url else 'SQLite'}")
    try:
        return run_bench(total, warmup, url, args.quick)
    finally:
        pg_destroy(cluster)


def run_bench(total: int, warmup: int, database_url: str | None, quick: bool) -> int:
    tmp = tempfile.mkdtemp(prefix="bench-mem-")
    upstream = Role("upstream", "--engine", "synthetic", log=os.path.join(tmp, "upstream.log"))
    monitor = monitor_role(tmp, upstream, database_url=database_url)
    mon = f"http://127.0.0.1:{monitor.port}"
    expected: dict[str, str] = {}
    lock = threading.Lock()
    slots = threading.Semaphore(IN_FLIGHT)
    try:
        wait_connected(mon)

        def submit(i: int) -> None:
            fail = i % FAIL_EVERY == FAIL_EVERY - 1
            prompt = sampler_prompt(4, 0, seed=7, fail_at=2 if fail else 0, text=f"memory bench job {i}")
            job = http_json("POST", mon + "/api/run", {"prompt": prompt})
            with lock:
                expected[job["id"]] = "failed" if fail else "completed"

        def run(start: int, stop: int) -> float:
            t0 = time.time()
            with ThreadPoolExecutor(4) as pool:
                futures = []
                for i in range(start, stop):
                    # bounded in flight: wait while the monitor has IN_FLIGHT active jobs
                    while True:
                        active = http_json("GET", mon + "/bench/stats")["store_active"] if i % 4 == 0 else 0
                        if active < IN_FLIGHT:
                            break
                        time.sleep(0.01)
                    slots.acquire()
                    f = pool.submit(submit, i)
                    f.add_done_callback(lambda _: slots.release())
                    futures.append(f)
                for f in futures:
                    f.result()
            while http_json("GET", mon + "/bench/stats")["store_active"]:
                time.sleep(0.05)
            return time.time() - t0

        t_warm = run(0, warmup)
        time.sleep(1.0)
        s0 = http_json("GET", mon + "/bench/stats")
        r0 = rss(monitor.pid)
        print(f"warm-up: {warmup} jobs in {t_warm:.1f} s; RSS {r0 / 2**20:.1f} MiB; tracker holds {s0['tracker_prompts']} "
              f"prompts ({s0['tracker_active']} active, {s0['lingering']} finished < {LINGER_S:g} s ago)")
        trend = []
        step = max(1, (total - warmup) // 5)
        t_main = 0.0
        for start in range(warmup, total, step):
            t_main += run(start, min(total, start + step))
            trend.append((min(total, start + step), rss(monitor.pid)))
        time.sleep(1.0)
        s1 = http_json("GET", mon + "/bench/stats")
        r1 = rss(monitor.pid)
        rate = (total - warmup) / t_main if t_main else 0
        print(f"run: {total - warmup} more jobs in {t_main:.1f} s ({rate:.0f} jobs/s); RSS after each fifth: "
              + ", ".join(f"{n}: {r / 2**20:.1f}" for n, r in trend) + " MiB")
        print(f"tracker holds {s1['tracker_prompts']} prompts ({s1['tracker_active']} active, {s1['lingering']} "
              f"finished < {LINGER_S:g} s ago); store active {s1['store_active']}; hub {s1['hub']}")
        statuses = http_json("GET", mon + "/bench/statuses")
        wrong = {pid: (statuses.get(pid), want) for pid, want in expected.items() if statuses.get(pid) != want}
        by_status: dict[str, int] = {}
        for pid in expected:
            by_status[statuses.get(pid)] = by_status.get(statuses.get(pid), 0) + 1
        print(f"final states: {len(expected)} jobs, {len(expected) - len(wrong)} as expected, {len(wrong)} wrong "
              f"{dict(list(wrong.items())[:5]) if wrong else ''}; by status {by_status}")
        growth = (r1 - r0) / 2**20
        print(f"RSS growth over {total - warmup} jobs after the warm-up: {growth:+.2f} MiB (target <= 10 MB: "
              f"{'OK' if growth <= 10 * 1e6 / 2**20 else 'MISSED'})")
        if not quick:
            time.sleep(LINGER_S + 5)
            s2 = http_json("GET", mon + "/bench/stats")
            r2 = rss(monitor.pid)
            print(f"after the {LINGER_S:g} s linger: tracker holds {s2['tracker_prompts']} prompts "
                  f"({s2['tracker_active']} active); RSS {r2 / 2**20:.1f} MiB ({(r2 - r0) / 2**20:+.2f} MiB vs warm-up)")
    finally:
        monitor.stop()
        upstream.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
