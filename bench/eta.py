"""Whole-job ETA accuracy and the history page's speed with 100,000 finished jobs.

    python bench/eta.py [--quick] [--trials N] [--rows N] [--history-only] [--database-url URL|pg]

ETA: the real app on loopback watches a simulated ComfyUI (monitor/demo.py's SyntheticEngine: a text-to-image
graph whose sampler steps, VAE decode and save take real time). After 3 completed runs of the workflow (new
seeds each time), a 4th run's whole-job ETA is read 1 s after it starts and compared with how long it really
took (goal: within ±25%); then three jobs are queued at once and the third one's `starts_in_s`, read right after
it was queued, is compared with when it really started (goal: within ±30%).

History: 100,000 finished jobs in the store; GET /admin/history (first page, then with a status filter, then a
page 1,000 rows deep by its cursor), p50/p95 over repeated requests (goal: first page p95 ≤ 30 ms).
"""
from __future__ import annotations

from gevent import monkey

monkey.patch_all()

import argparse  # noqa: E402
import copy  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import random  # noqa: E402
import shutil  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import benchlib  # noqa: E402  (puts the repo and tests/ on sys.path)

import gevent  # noqa: E402
import requests  # noqa: E402

from fake_comfy import FakeComfy  # noqa: E402
from live import LiveServer, wait_for  # noqa: E402
from monitor.demo import DEMO_PROMPT, SyntheticEngine  # noqa: E402
from monitor.timeutil import epoch_from_iso, iso_from_epoch  # noqa: E402


def prompt(seed: int, steps: int) -> dict:
    graph = copy.deepcopy(DEMO_PROMPT)
    graph["2"]["inputs"]["text"] = f"subject {seed}"
    graph["5"]["inputs"].update(seed=seed, steps=steps)
    return graph


def eta_trial(trial: int, steps: int, step_s: float) -> dict:
    data = tempfile.mkdtemp(prefix="eta-bench-")
    # Jitter of ±10% per step, as a real GPU's it/s wanders.
    engine = SyntheticEngine(step_s=step_s, seed=trial)
    fake = FakeComfy(default=engine)
    srv = LiveServer(fake, data)
    rnd = random.Random(trial)
    try:
        for _ in range(3):
            job = srv.submit(prompt(rnd.randrange(1 << 30), steps))
            srv.wait_status(job["id"], "completed", timeout=120)
        job = srv.submit(prompt(rnd.randrange(1 << 30), steps))
        running = srv.wait_status(job["id"], "running", timeout=60)
        started = epoch_from_iso(running["started_at"])
        gevent.sleep(max(0.0, started + 1.0 - time.time()))
        read_at = time.time()
        seen = srv.get(f"/api/admin/jobs/{job['id']}").json()
        done = srv.wait_status(job["id"], "completed", timeout=120)
        real = epoch_from_iso(done["finished_at"]) - started
        eta = seen.get("eta_s")
        out = {"eta_s": eta, "basis": seen.get("eta_basis"), "elapsed_at_read": read_at - started,
               "real_s": real, "real_left_s": epoch_from_iso(done["finished_at"]) - read_at}
        # Three at once: the third waits behind two.
        queued_at = time.time()
        jobs = [srv.submit(prompt(rnd.randrange(1 << 30), steps)) for _ in range(3)]
        third = wait_for(lambda: (e := srv.get(f"/api/admin/jobs/{jobs[2]['id']}").json()).get("starts_in_s")
                         is not None and e, timeout=10, what="starts_in_s")
        predicted_start = time.time() - queued_at + third["starts_in_s"]
        started_third = srv.wait_status(jobs[2]["id"], "running", timeout=180)
        actual_start = epoch_from_iso(started_third["started_at"]) - queued_at
        srv.wait_status(jobs[2]["id"], "completed", timeout=180)
        out.update(starts_in_s=predicted_start, real_start_s=actual_start, starts_basis=third.get("eta_basis"))
        return out
    finally:
        srv.stop_app()
        fake.stop()
        shutil.rmtree(data, ignore_errors=True)


def fill_history(store, rows: int, host: str) -> None:
    """`rows` finished jobs, one transaction per 10,000 (as if recorded over weeks)."""
    statuses = ["completed"] * 8 + ["failed", "interrupted"]
    base = time.time() - rows * 30
    columns = ("id", "host", "source", "workflow_name", "status", "queued_at", "started_at", "finished_at",
               "duration_s", "params", "seeds", "outputs", "error", "prompt_excerpt")
    for start in range(0, rows, 10_000):
        batch = []
        for i in range(start, min(rows, start + 10_000)):
            t = base + i * 30
            status = statuses[i % len(statuses)]
            batch.append((f"hist-{i:07d}", host, "local", f"Workflow {i % 17}", status, iso_from_epoch(t),
                          iso_from_epoch(t + 1), iso_from_epoch(t + 12), 11.0, "{}", "[]",
                          json.dumps([{"node_id": "9", "title": "Save", "text": [],
                                       "images": [{"filename": f"out_{i}.png", "subfolder": "", "type": "output"}]}]),
                          json.dumps({"message": "CUDA out of memory"}) if status == "failed" else None,
                          "a lighthouse at dusk"))
        with store._write() as conn:
            conn.executemany(f"INSERT INTO jobs ({', '.join(columns)}) VALUES ({', '.join('?' for _ in columns)})",
                             batch)


def history_bench(rows: int, requests_n: int, database_url: str | None = None) -> dict:
    data = tempfile.mkdtemp(prefix="history-bench-")
    fake = FakeComfy(default=SyntheticEngine(time_scale=0.0))
    srv = LiveServer(fake, data, database_url=database_url)
    try:
        t0 = time.time()
        fill_history(srv.monitor.store, rows, srv.monitor.hosts[0].name)
        filled = time.time() - t0
        if database_url:   # as autovacuum would after 100,000 inserts
            with srv.monitor.store._write() as conn:
                conn.execute("ANALYZE jobs")
        session = requests.Session()
        _, cursor = srv.monitor.store.history_page(limit=1000)
        results = {}
        for name, path, params in (("first page", "/admin/history", {}),
                                   ("status=failed", "/admin/history/rows", {"status": "failed"}),
                                   ("1,000 rows deep (cursor)", "/admin/history/rows", {"before": cursor}),
                                   ("/api/admin/history", "/api/admin/history", {})):
            times = []
            for i in range(requests_n + 5):
                t = time.perf_counter()
                resp = session.get(srv.url + path, params=params, timeout=10)
                took = time.perf_counter() - t
                rows_seen = (len(resp.json()["jobs"]) if path.startswith("/api/") else resp.text.count('class="hrow'))
                assert resp.status_code == 200 and rows_seen == 50, (resp.status_code, rows_seen)
                if i >= 5:
                    times.append(took)
            results[name] = (benchlib.pct(times, 50), benchlib.pct(times, 95))
        query = ("SELECT id FROM jobs WHERE status NOT IN ('queued', 'running') "
                 "ORDER BY COALESCE(finished_at, queued_at) DESC, rowid DESC LIMIT 51")
        if database_url:
            plan = " | ".join(str(r[0]).strip() for r in srv.monitor.store._query("EXPLAIN " + query))
        else:
            plan = " | ".join(str(r[3]) for r in srv.monitor.store._query("EXPLAIN QUERY PLAN " + query))
        return {"fill_s": filled, "results": results, "plan": plan}
    finally:
        srv.stop_app()
        fake.stop()
        shutil.rmtree(data, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="smoke size: 1 trial, short runs, 5,000 rows")
    ap.add_argument("--trials", type=int, default=3)
    ap.add_argument("--rows", type=int, default=100_000)
    ap.add_argument("--history-only", action="store_true", help="skip the ETA trials")
    ap.add_argument("--database-url", help="the history part on PostgreSQL (`pg`: a throwaway cluster)")
    args = ap.parse_args()
    trials, rows, steps, step_s, n = args.trials, args.rows, 20, 0.12, 100
    if args.quick:
        trials, rows, steps, step_s, n = 1, 5_000, 8, 0.05, 20
    print(benchlib.machine())
    if not args.history_only:
        eta_part(trials, steps, step_s)
    url, cluster = benchlib.pg_cluster(args.database_url)
    try:
        history_part(rows, n, url)
    finally:
        benchlib.pg_destroy(cluster)


def history_part(rows: int, n: int, database_url: str | None = None) -> dict:
    h = history_bench(rows, n, database_url)
    print(f"\nHistory page with {rows:,} finished jobs on {'PostgreSQL' if database_url else 'SQLite'} "
          f"(filled in {h['fill_s']:.1f} s), {n} requests each:")
    for name, (p50, p95) in h["results"].items():
        print(f"  {name:26s} p50 {benchlib.ms(p50)}  p95 {benchlib.ms(p95)}")
    print(f"  query plan: {h['plan']}")
    print(f"  goal first page p95 ≤ 30 ms: {'met' if h['results']['first page'][1] <= 0.030 else 'MISSED'}")
    return h


def eta_part(trials: int, steps: int, step_s: float) -> None:
    print(f"\nETA: {trials} trial(s), text-to-image graph, {steps} steps of ~{step_s * 1000:.0f} ms")
    eta_ok = start_ok = True
    for trial in range(trials):
        r = eta_trial(trial, steps, step_s)
        predicted_total = None if r["eta_s"] is None else r["elapsed_at_read"] + r["eta_s"]
        err = None if predicted_total is None else (predicted_total - r["real_s"]) / r["real_s"]
        start_err = (r["starts_in_s"] - r["real_start_s"]) / r["real_start_s"]
        eta_ok &= err is not None and abs(err) <= 0.25
        start_ok &= abs(start_err) <= 0.30
        print(f"  trial {trial + 1}: 4th run eta_s {r['eta_s']} at {r['elapsed_at_read']:.2f} s "
              f"({r['basis']}); predicted total {predicted_total and round(predicted_total, 2)} s, real "
              f"{r['real_s']:.2f} s ({'n/a' if err is None else f'{err:+.1%}'}); left {r['real_left_s']:.2f} s")
        print(f"           third of three queued: starts in {r['starts_in_s']:.2f} s, really started after "
              f"{r['real_start_s']:.2f} s ({start_err:+.1%}; {r['starts_basis']})")
    print(f"  goals: whole-job ETA within ±25%: {'met' if eta_ok else 'MISSED'}; "
          f"starts_in within ±30%: {'met' if start_ok else 'MISSED'}")


if __name__ == "__main__":
    main()
