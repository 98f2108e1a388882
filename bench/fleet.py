"""A fleet of simulated ComfyUI hosts (issue 11): ingest + fan-out relay cost, and queue API latency.

Part `fanout`: one process holds 8 fake ComfyUIs (SimComfy, the recorded protocol; each sampler step is a
progress_state, a ~30 KB stamped JPEG preview and a progress, 20 steps/s); the monitor (the real app on gevent's
WSGI server) watches all 8 (`COMFYUI_URL="h1=...,...,h8=..."`), one prompt submitted to each host through its
POST /api/run, so it ingests 8 streams at once while 200 browser-like clients read /api/run/ws. In the same
run, the same 200 clients read the aiohttp broadcast server (ComfyUI's own stack) sending 8 streams of the
same frames at the same rate. CPU = the server process's user+system seconds (psutil, from outside) over the
recorded window, divided by the frames the clients received in it. Target: monitor <= 0.5x aiohttp per frame.
Previews are "latest wins" per client in the monitor: a client that has not taken the last one gets the
newest instead, so it may receive fewer than were sent; the delivered share is printed.

Part `queue`: the 8 fakes paused (they queue and run nothing), 100 prompts submitted to each host through
POST /api/run with "host", so the store holds 800 queued jobs over 8 hosts, each host's /queue lists its 100
(the reconcilers read them every 3 s, as in production); then GET /api/admin/queue is timed sequentially on
one keep-alive connection, the default page (500 jobs) and the whole queue (?limit=1000). Target p95 <= 20 ms.

    .venv/bin/python bench/fleet.py [--part fanout|queue|both] [--hosts 8] [--viewers 200] [--jobs-per-host 100]
                                    [--duration 8] [--quick]
"""
from __future__ import annotations

import argparse
import http.client
import math
import os
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from benchlib import (Role, cpu_seconds, http_json, machine, ms, pct, sampler_prompt,  # noqa: E402
                      start_clients, monitor_role, wait_connected)

RATE = 20.0               # steps (previews) per second per host
TARGET_CPU_RATIO = 0.5    # monitor CPU per delivered frame / aiohttp's
TARGET_QUEUE_P95 = 0.020


def fleet_roles(tmp: str, hosts: int, paused: bool, preview_bytes: int):
    upstream = Role("upstream", "--hosts", hosts, "--preview-bytes", preview_bytes,
                    *(["--paused"] if paused else []), log=os.path.join(tmp, "upstream.log"))
    ports = [int(p) for p in upstream.expect("ports").split(",")]
    url = ",".join(f"h{i + 1}=http://127.0.0.1:{port}" for i, port in enumerate(ports))
    monitor = monitor_role(tmp, upstream, comfy_url=url)
    mon = f"http://127.0.0.1:{monitor.port}"
    wait_connected(mon)
    deadline = time.time() + 30
    while not all(h["connected"] for h in http_json("GET", mon + "/api/admin/hosts")["hosts"]):
        if time.time() > deadline:
            raise RuntimeError("not every host connected")
        time.sleep(0.1)
    return upstream, monitor, mon, [f"h{i + 1}" for i in range(hosts)]


def measure(server_pid: int, ws_url: str, mode: str, viewers: int, duration: float, warmup: float, tmp: str,
            kick) -> dict:
    out = os.path.join(tmp, f"{mode}.json")
    clients = start_clients(ws_url, viewers, mode, duration=duration, warmup=warmup, out=out,
                            log=os.path.join(tmp, f"clients-{mode}.log"))
    try:
        kick()
        clients.send("go")
        time.sleep(warmup)
        c0 = cpu_seconds(server_pid)
        time.sleep(duration)
        c1 = cpu_seconds(server_pid)
        clients.expect("done", timeout=120)
    finally:
        clients.stop()
    res = clients.results()
    res["server_cpu_s"] = c1 - c0
    return res


def fanout(args, tmp: str) -> dict:
    upstream, monitor, mon, names = fleet_roles(tmp, args.hosts, False, args.preview_bytes)
    bcast = Role("bcast", "--preview-bytes", args.preview_bytes, log=os.path.join(tmp, "bcast.log"))
    steps = int(math.ceil((args.warmup + args.duration + 2.0) * RATE))
    try:
        time.sleep(1.0)   # the first reconciles and feature probes settle

        def kick_monitor():
            with ThreadPoolExecutor(len(names)) as pool:   # the hosts start together
                jobs = list(pool.map(lambda i: http_json("POST", mon + "/api/run", {
                    "prompt": sampler_prompt(steps, int(1000 / RATE), seed=i), "host": names[i]}), range(len(names))))
            deadline = time.time() + 20
            while True:
                statuses = [http_json("GET", f"{mon}/api/admin/jobs/{j['id']}")["status"] for j in jobs]
                if all(s == "running" for s in statuses):
                    break
                if time.time() > deadline:
                    raise RuntimeError(f"the hosts did not all start their jobs: {statuses}")
                time.sleep(0.05)

        a = measure(monitor.pid, f"ws://127.0.0.1:{monitor.port}/api/run/ws", "monitor", args.viewers,
                    args.duration, args.warmup, tmp, kick_monitor)
        deadline = time.time() + 30   # the monitor's jobs end before the aiohttp phase
        while http_json("GET", mon + "/api/admin/queue")["total"] and time.time() < deadline:
            time.sleep(0.2)
        b = measure(bcast.pid, f"ws://127.0.0.1:{bcast.port}/ws", "comfy", args.viewers, args.duration,
                    args.warmup, tmp, lambda: http_json("POST", f"http://127.0.0.1:{bcast.port}/bench/start",
                                                        {"steps": steps, "interval": 1.0 / RATE,
                                                         "streams": args.hosts}))
    finally:
        for role in (bcast, monitor, upstream):
            role.stop()
    sent = args.viewers * args.hosts * RATE * args.duration
    per_frame = {}
    for name, res in (("monitor", a), ("aiohttp", b)):
        c = res["counts"]
        cpu = res["server_cpu_s"]
        per_frame[name] = cpu / max(1, c["frames"])
        pv = res["preview_delays"]
        print(f"  {name:8s} server CPU {cpu:.2f} s over {args.duration:g} s ({cpu / args.duration * 100:.0f}% of a "
              f"core) = {per_frame[name] * 1e6:.1f} us/frame over {c['frames']} frames; previews delivered "
              f"{c['previews']}/{sent:.0f} ({c['previews'] / max(1, sent) * 100:.0f}%), delay p50 {ms(pct(pv, 50))}, "
              f"p99 {ms(pct(pv, 99))}; clients' CPU "
              f"{'/'.join(f'{u * 100:.0f}%' for u in res['clients_cpu'])} of a core; closed {c['closed']}")
    ratio = per_frame["monitor"] / max(1e-12, per_frame["aiohttp"])
    print(f"  => relay CPU per delivered frame: monitor/aiohttp {ratio:.2f}x (target <= {TARGET_CPU_RATIO}x: "
          f"{'OK' if ratio <= TARGET_CPU_RATIO else 'MISSED'})")
    return {"ratio": ratio}


def queue(args, tmp: str) -> dict:
    upstream, monitor, mon, names = fleet_roles(tmp, args.hosts, True, args.preview_bytes)
    out = {}
    try:
        t0 = time.time()
        with ThreadPoolExecutor(4) as pool:
            list(pool.map(lambda i: http_json("POST", mon + "/api/run", {
                "prompt": sampler_prompt(20, 50, seed=i), "host": names[i % len(names)]}),
                range(args.hosts * args.jobs_per_host)))
        total = http_json("GET", mon + "/api/admin/queue?limit=1")["total"]
        print(f"  {args.hosts} hosts x {args.jobs_per_host} jobs submitted in {time.time() - t0:.1f} s; "
              f"{total} active")
        time.sleep(3.5)   # every host's reconciler has read its full queue at least once
        c0 = cpu_seconds(monitor.pid)
        idle_s = 1.0 if args.quick else 6.0
        time.sleep(idle_s)
        idle = (cpu_seconds(monitor.pid) - c0) / idle_s
        print(f"  monitor CPU with no request ({args.hosts} reconcilers, listeners, telemetry): {idle * 100:.1f}% of a core")
        conn = http.client.HTTPConnection("127.0.0.1", monitor.port, timeout=30)
        paths = ["/api/admin/queue", "/api/admin/queue?limit=1000"]
        timings: dict[str, list[float]] = {p: [] for p in paths}
        sizes: dict[str, int] = {}
        cpu: dict[str, float] = {p: 0.0 for p in paths}
        for i in range(args.requests + 5):
            for path in paths:
                c0 = cpu_seconds(monitor.pid)
                start = time.perf_counter()
                conn.request("GET", path)
                resp = conn.getresponse()
                body = resp.read()
                elapsed = time.perf_counter() - start
                if resp.status != 200:
                    raise RuntimeError(f"GET {path}: {resp.status}")
                sizes[path] = len(body)
                if i >= 5:
                    timings[path].append(elapsed)
                    cpu[path] += cpu_seconds(monitor.pid) - c0   # the server's CPU for it (and background)
        conn.close()
        for path, values in timings.items():
            p95 = pct(values, 95)
            out[path] = p95
            print(f"  GET {path:28s} p50 {ms(pct(values, 50))}, p95 {ms(p95)}, max {ms(max(values))} over "
                  f"{len(values)} requests, {sizes[path] / 1024:.0f} KiB, server CPU "
                  f"{cpu[path] / len(values) * 1000:.1f} ms/request (target p95 <= "
                  f"{TARGET_QUEUE_P95 * 1000:.0f} ms: {'OK' if p95 <= TARGET_QUEUE_P95 else 'MISSED'})")
    finally:
        monitor.stop()
        upstream.stop()
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--part", choices=("fanout", "queue", "both"), default="both")
    ap.add_argument("--hosts", type=int, default=8)
    ap.add_argument("--viewers", type=int, default=200)
    ap.add_argument("--jobs-per-host", type=int, default=100)
    ap.add_argument("--requests", type=int, default=200, help="timed requests per path")
    ap.add_argument("--duration", type=float, default=8.0, help="recorded seconds per phase")
    ap.add_argument("--warmup", type=float, default=1.5)
    ap.add_argument("--preview-bytes", type=int, default=30_000)
    ap.add_argument("--quick", action="store_true", help="smoke size: 2 hosts, 10 viewers, 10 jobs each, 2 s")
    args = ap.parse_args()
    if args.quick:
        args.hosts, args.viewers, args.jobs_per_host, args.requests = 2, 10, 10, 20
        args.duration, args.warmup = 2.0, 1.0
    print(machine())
    if args.part in ("fanout", "both"):
        print(f"fleet fan-out: {args.hosts} hosts x {RATE:g} steps/s (progress_state + {args.preview_bytes // 1000} KB "
              f"JPEG preview + progress each) -> {args.viewers} viewers; {args.duration:g} s recorded after "
              f"{args.warmup:g} s warm-up")
        fanout(args, tempfile.mkdtemp(prefix="bench-fleet-fanout-"))
    if args.part in ("queue", "both"):
        print(f"fleet queue API: {args.hosts} hosts x {args.jobs_per_host} queued jobs")
        queue(args, tempfile.mkdtemp(prefix="bench-fleet-queue-"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
