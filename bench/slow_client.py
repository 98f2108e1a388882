"""Slow-client isolation (issue #6 item 3): 200 clients on the monitor, then one stops reading.

Same processes as fanout.py (fake ComfyUI at 20 steps/s with ~30 KB previews -> the monitor -> clients in
their own asyncio process). Client 0 has a 32 KB receive buffer and, after the first window, stops reading
(its kernel buffers fill; then the hub's send to it blocks until the hub's send timeout drops it). Windows,
by receipt time: before (all read), during (client 0 stalled, until the hub drops it), after (dropped).
Reported: the others' preview delay p99 during / p99 before+after (target <= 1.1x), the slow client's outbox
(bytes the hub holds for it, from the bench-only /bench/stats route) and the server's RSS while it is
stalled (target <= 2 MB growth), and when it was dropped.

    .venv/bin/python bench/slow_client.py [--clients 200] [--window 8] [--max-wait 45] [--quick]
"""
from __future__ import annotations

import argparse
import math
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from benchlib import Role, http_json, machine, ms, pct, sampler_prompt, start_clients, monitor_role, wait_connected  # noqa: E402

RATE = 20.0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clients", type=int, default=200)
    ap.add_argument("--window", type=float, default=8.0, help="seconds before and after the stall")
    ap.add_argument("--max-wait", type=float, default=45.0, help="longest wait for the drop")
    ap.add_argument("--quick", action="store_true", help="smoke test: 30 clients, short windows, no drop wait")
    args = ap.parse_args()
    n, window, max_wait, warmup = (30, 2.0, 3.0, 1.0) if args.quick else \
        (args.clients, args.window, args.max_wait, 1.5)
    print(machine())
    print(f"slow client: {n} clients, {RATE:g} previews/s of ~30 KB; client 0 stops reading after "
          f"{window:g} s; windows of {window:g} s before/after")
    tmp = tempfile.mkdtemp(prefix="bench-slow-")
    upstream = Role("upstream", log=os.path.join(tmp, "upstream.log"))
    monitor = monitor_role(tmp, upstream)
    mon = f"http://127.0.0.1:{monitor.port}"
    clients = None
    try:
        wait_connected(mon)
        time.sleep(1.0)
        out = os.path.join(tmp, "clients.json")
        clients = start_clients(f"ws://127.0.0.1:{monitor.port}/api/run/ws", n, "monitor", duration=0,
                                warmup=warmup, slow_at=warmup + window, out=out,
                                log=os.path.join(tmp, "clients.log"))
        steps = int(math.ceil((warmup + 2 * window + max_wait + 3) * RATE))
        job = http_json("POST", mon + "/api/run", {"prompt": sampler_prompt(steps, int(1000 / RATE))})
        clients.send("go")
        paused = float(clients.expect("paused", timeout=warmup + window + 30))
        base = http_json("GET", mon + "/bench/stats")
        dropped_at, top_outbox, top_rss, samples = None, 0, base["rss"], 0
        while time.time() < paused + max_wait:
            st = http_json("GET", mon + "/bench/stats")
            samples += 1
            top_rss = max(top_rss, st["rss"])
            top_outbox = max([top_outbox, *st["outbox_bytes"][:1]])
            if st["hub"]["clients_dropped"] > base["hub"]["clients_dropped"]:
                dropped_at = time.time()
                break
            time.sleep(0.25)
        stall_end = dropped_at or time.time()
        time.sleep(window if dropped_at else 0.0)
        clients.send("stop")
        clients.expect("done", timeout=60)
        res = clients.results()
        after = http_json("GET", mon + "/bench/stats")
        try:
            http_json("POST", f"{mon}/api/admin/jobs/{job['id']}/cancel", {})
        except Exception:
            pass
    finally:
        if clients is not None:
            clients.stop()
        monitor.stop()
        upstream.stop()

    start = res["window"][0]
    before = [d for d, t in zip(res["preview_delays"], res["preview_at"]) if start <= t < paused]
    during = [d for d, t in zip(res["preview_delays"], res["preview_at"]) if paused <= t < stall_end]
    post = [d for d, t in zip(res["preview_delays"], res["preview_at"]) if t >= stall_end]
    calm = before + post
    p_calm, p_during = pct(calm, 99), pct(during, 99)
    print(f"others' previews without the stall: {len(calm)} receipts, p50 {ms(pct(calm, 50))}, p99 {ms(p_calm)} "
          f"(before {ms(pct(before, 99))}, after {ms(pct(post, 99))})")
    print(f"others' previews while client 0 is stalled: {len(during)} receipts over {stall_end - paused:.1f} s, "
          f"p50 {ms(pct(during, 50))}, p99 {ms(p_during)}")
    if p_calm and p_during:
        print(f"p99 ratio stalled/calm: {p_during / p_calm:.2f}x (target <= 1.1x)")
    print(f"slow client's outbox held by the hub: max {top_outbox / 1024:.1f} KiB over {samples} samples; "
          f"server RSS growth while stalled: {(top_rss - base['rss']) / 2**20:+.2f} MiB (target <= 2 MB)")
    if dropped_at:
        print(f"slow client dropped {dropped_at - paused:.1f} s after it stopped reading (hub send timeout 10 s "
              f"after its socket buffers filled); hub clients now {after['hub']['clients']}, "
              f"clients_dropped {after['hub']['clients_dropped']}")
    else:
        print(f"slow client not dropped within {max_wait:g} s (quick runs do not wait for the 10 s send timeout)"
              if args.quick else f"slow client NOT dropped within {max_wait:g} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
