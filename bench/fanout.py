"""Fan-out latency and relay cost (issue #6 items 1 and 2), side by side with aiohttp.

Four processes: a fake ComfyUI (SimComfy, the recorded protocol) whose sampler emits progress_state, a
~30 KB JPEG preview (type 4) and progress at 20 steps/s; the monitor (the real app on gevent's WSGI server,
its listener connected to that fake, the prompt submitted through the monitor's own POST /api/run); an
aiohttp broadcast server sending the same progress + preview frames (type 1) the way ComfyUI's
PromptServer.send does for a prompt without client id; and N browser-like WebSocket clients in one asyncio
process. Per N, phase A puts the N clients on the monitor's /api/run/ws, phase B the same N on aiohttp.

Delay = client receipt (time.time()) - upstream send time (stamped in each JPEG; progress by step via the
upstream's send-time table). For the monitor that is the whole path: fake -> listener -> tracker -> hub ->
client. Progress is coalesced on the hub's 150 ms tick, so its delay is also shown "beyond the tick".
CPU = the server process's user+system seconds (psutil, from outside) over the recorded window, divided by
the frames the clients received in that window.

    .venv/bin/python bench/fanout.py [--sizes 100,500,1000] [--duration 8] [--quick]
"""
from __future__ import annotations

import argparse
import math
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from benchlib import (Role, cpu_seconds, http_json, machine, ms, pct, sampler_prompt,  # noqa: E402
                      start_clients, monitor_role, wait_connected)

TICK = 0.15
RATE = 20.0   # steps (previews) per second
TARGET_BEYOND_TICK = 0.025


def phase(name, server_pid, ws_url, n, duration, warmup, tmp, kick, table_url, log_dir):
    out = os.path.join(tmp, f"{name}-{n}.json")
    clients = start_clients(ws_url, n, "monitor" if name == "monitor" else "comfy", duration=duration,
                            warmup=warmup, out=out, log=os.path.join(log_dir, f"clients-{name}-{n}.log"))
    try:
        steps = int(math.ceil((warmup + duration + 1.0) * RATE))
        ident = kick(steps)
        clients.send("go")
        time.sleep(warmup)
        c0 = cpu_seconds(server_pid)
        time.sleep(duration)
        c1 = cpu_seconds(server_pid)
        clients.expect("done", timeout=60)
    finally:
        clients.stop()
    res = clients.results()
    table = {int(k): v for k, v in http_json("GET", table_url(ident)).items()}
    # age of the state received: receipt - send time of the step it shows
    res["progress_delays"] = [t - table[s] for _, s, t in res["progress"] if s in table]
    # coalescing included: for every step sent in the window, its send time -> the first receipt, on
    # each client, of a state at or past that step
    first_seen = []
    by_client: dict[int, list] = {}
    for idx, s, t in res["progress"]:
        by_client.setdefault(idx, []).append((t, s))
    start, end = res["window"]
    steps = sorted((s, ts) for s, ts in table.items() if start <= ts < end - 0.5)
    for seq in by_client.values():
        seq.sort()
        i = 0
        for s, ts in steps:
            while i < len(seq) and seq[i][1] < s:
                i += 1
            if i < len(seq):
                first_seen.append(seq[i][0] - ts)
    res["progress_first_seen"] = first_seen
    res["server_cpu_s"] = c1 - c0
    res["ident"] = ident
    return res


def report(name, res, n, duration):
    c = res["counts"]
    pv, pr, fs = res["preview_delays"], res["progress_delays"], res["progress_first_seen"]
    expected = n * duration * RATE
    line = (f"  {name:8s} previews p50 {ms(pct(pv, 50))}, p99 {ms(pct(pv, 99))}, max {ms(max(pv) if pv else None)}"
            f" ({c['previews']}/{expected:.0f} delivered) | progress p50 {ms(pct(pr, 50))}, p99 {ms(pct(pr, 99))}")
    print(line)
    line = f"  {'':8s} step sent -> first state at or past it: p50 {ms(pct(fs, 50))}, p99 {ms(pct(fs, 99))}"
    if name == "monitor" and fs:
        line += f" (beyond the {TICK * 1000:.0f} ms tick: p99 {ms(max(0.0, pct(fs, 99) - TICK))})"
    print(line)
    cpu = res["server_cpu_s"]
    print(f"  {'':8s} server CPU {cpu:.2f} s over {duration:g} s = {cpu / max(1, c['frames']) * 1e6:.1f} us/frame "
          f"({c['frames']} frames), {cpu / max(1, c['previews']) * 1e6:.1f} us/preview | clients' process CPU "
          f"{'/'.join(f'{u * 100:.0f}%' for u in res['clients_cpu'])} of a core, closed {c['closed']}, "
          f"compressed frames {c['compressed']}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="100,500,1000")
    ap.add_argument("--duration", type=float, default=8.0, help="recorded seconds per phase")
    ap.add_argument("--warmup", type=float, default=1.5)
    ap.add_argument("--quick", action="store_true", help="smoke test: 20 clients, 2 s")
    args = ap.parse_args()
    sizes = [20] if args.quick else [int(s) for s in args.sizes.split(",")]
    duration, warmup = (2.0, 1.0) if args.quick else (args.duration, args.warmup)
    print(machine())
    print(f"fan-out: {RATE:g} steps/s, each = progress_state + ~30 KB JPEG preview + progress; "
          f"hub tick {TICK * 1000:.0f} ms; {duration:g} s recorded per phase after {warmup:g} s warm-up")
    tmp = tempfile.mkdtemp(prefix="bench-fanout-")
    upstream = Role("upstream", log=os.path.join(tmp, "upstream.log"))
    monitor = monitor_role(tmp, upstream)
    bcast = Role("bcast", log=os.path.join(tmp, "bcast.log"))
    mon_url = f"http://127.0.0.1:{monitor.port}"
    up_url = f"http://127.0.0.1:{upstream.port}"
    bc_url = f"http://127.0.0.1:{bcast.port}"
    summary = []
    try:
        wait_connected(mon_url)
        time.sleep(1.0)   # let the first reconcile and feature probe settle

        def kick_monitor(steps):
            job = http_json("POST", mon_url + "/api/run", {"prompt": sampler_prompt(steps, int(1000 / RATE))})
            return job["id"]

        def kick_bcast(steps):
            http_json("POST", bc_url + "/bench/start", {"steps": steps, "interval": 1.0 / RATE})
            return None

        for n in sizes:
            print(f"N = {n}")
            a = phase("monitor", monitor.pid, f"ws://127.0.0.1:{monitor.port}/api/run/ws", n, duration, warmup,
                      tmp, kick_monitor, lambda pid: f"{up_url}/bench/sendtimes/{pid}", tmp)
            # the monitor's job finishes (about 1 s left) before the aiohttp phase starts
            deadline = time.time() + 30
            while http_json("GET", f"{mon_url}/api/admin/jobs/{a['ident']}")["status"] in ("queued", "running"):
                if time.time() > deadline:
                    break
                time.sleep(0.2)
            b = phase("aiohttp", bcast.pid, f"ws://127.0.0.1:{bcast.port}/ws", n, duration, warmup, tmp,
                      kick_bcast, lambda _: f"{bc_url}/bench/sendtimes", tmp)
            time.sleep(1.2)
            report("monitor", a, n, duration)
            report("aiohttp", b, n, duration)
            ratio_frame = (a["server_cpu_s"] / max(1, a["counts"]["frames"])) / max(
                1e-12, b["server_cpu_s"] / max(1, b["counts"]["frames"]))
            ratio_preview = (a["server_cpu_s"] / max(1, a["counts"]["previews"])) / max(
                1e-12, b["server_cpu_s"] / max(1, b["counts"]["previews"]))
            beyond = max(0.0, pct(a["progress_first_seen"], 99) - TICK) if a["progress_first_seen"] else None
            pv99 = pct(a["preview_delays"], 99)
            print(f"  => N={n}: monitor/aiohttp CPU ratio {ratio_frame:.2f}x per frame, {ratio_preview:.2f}x "
                  f"per preview (target <= 1.0x); monitor preview p99 {ms(pv99)}, progress p99 beyond tick "
                  f"{ms(beyond)} (target <= {TARGET_BEYOND_TICK * 1000:.0f} ms at N=1000); aiohttp preview "
                  f"p99 {ms(pct(b['preview_delays'], 99))}")
            summary.append((n, pv99, beyond, ratio_frame, ratio_preview))
        print("summary: N | monitor preview p99 | progress p99 beyond tick | CPU ratio per frame | per preview")
        for n, pv99, beyond, rf, rp in summary:
            print(f"summary: {n} | {ms(pv99)} | {ms(beyond)} | {rf:.2f}x | {rp:.2f}x")
    finally:
        for role in (bcast, monitor, upstream):
            role.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
