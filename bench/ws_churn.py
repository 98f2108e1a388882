"""WebSocket churn (issue #5 item 13): 1,000 browser clients connect to /api/run/ws and disconnect, again and
again, while the hub keeps broadcasting; afterwards nothing may be left behind.

The monitor (the real app, on gevent, with a simulated ComfyUI) runs in this process so that its insides can
be counted: `hub.client_count()`, the hub's client set and outboxes, the server's handler pool and every live
gevent greenlet (found with gc). The clients run in a child process (asyncio, raw sockets): each round all N
connect (same-origin handshake, read `hello`), then leave in one of four ways, in turn: a proper close
handshake, a bare TCP close (FIN, no close frame), a reset (RST) and a close right after the handshake
(before `hello` is read). Exit status 1 if anything leaked.

    .venv/bin/python bench/ws_churn.py [--clients 1000] [--rounds 5]
    .venv/bin/python bench/ws_churn.py --quick          # 100 clients, 2 rounds (tests/test_hardening.py)
"""
from __future__ import annotations

import sys

if __name__ == "__main__" and sys.argv[1:2] != ["clients"]:
    from gevent import monkey

    monkey.patch_all()

import argparse  # noqa: E402
import asyncio  # noqa: E402
import base64  # noqa: E402
import gc  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import resource  # noqa: E402
import socket  # noqa: E402
import struct  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
for _p in (ROOT, os.path.join(ROOT, "tests")):
    if _p not in sys.path:
        sys.path.insert(0, _p)

MODES = ("close_frame", "fin", "rst", "before_hello")


def _raise_fd_limit(need: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < need:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(need, hard), hard))


# ------------------------------------------------------------------------------------------------
# The clients (child process, asyncio: no gevent)

async def _client(host: str, port: int, mode: str, hold: asyncio.Event, stats: dict) -> None:
    reader, writer = await asyncio.open_connection(host, port)
    key = base64.b64encode(os.urandom(16)).decode()
    writer.write((f"GET /api/run/ws HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\n"
                  f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
                  f"Origin: http://{host}:{port}\r\n\r\n").encode())
    head = await reader.readuntil(b"\r\n\r\n")
    if not head.startswith(b"HTTP/1.1 101"):
        stats["refused"] += 1
        writer.close()
        return
    if mode != "before_hello":
        b0, b1 = await reader.readexactly(2)
        size = b1 & 0x7F
        if size == 126:
            size = struct.unpack("!H", await reader.readexactly(2))[0]
        elif size == 127:
            size = struct.unpack("!Q", await reader.readexactly(8))[0]
        hello = json.loads(await reader.readexactly(size))
        assert hello["type"] == "hello", hello
        stats["hello"] += 1
    stats["connected"] += 1
    await hold.wait()
    sock = writer.get_extra_info("socket")
    if mode == "close_frame":
        mask = os.urandom(4)
        payload = struct.pack("!H", 1000)
        writer.write(bytes([0x88, 0x80 | len(payload)]) + mask + bytes(b ^ mask[i % 4] for i, b in
                                                                          enumerate(payload)))
        try:   # the server answers with its own close frame (RFC 6455 §5.5.1)...
            while True:
                b0, b1 = await asyncio.wait_for(reader.readexactly(2), timeout=10)
                await reader.readexactly(b1 & 0x7F if b1 & 0x7F < 126 else struct.unpack(
                    "!H" if b1 & 0x7F == 126 else "!Q",
                    await reader.readexactly(2 if b1 & 0x7F == 126 else 8))[0])
                if b0 & 0x0F == 0x8:
                    break
        except (asyncio.TimeoutError, asyncio.IncompleteReadError, ConnectionError):
            stats["no_close_reply"] += 1
        else:
            try:   # ...and then the server closes the TCP connection first (§7.1.1)
                await asyncio.wait_for(reader.read(), timeout=3)
            except (asyncio.TimeoutError, ConnectionError):
                stats["tcp_left_open"] += 1
    elif mode == "rst":
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.close()
    try:
        await writer.wait_closed()
    except (ConnectionError, OSError):
        pass
    stats[mode] += 1


async def _churn(host: str, port: int, n: int, rounds: int) -> dict:
    stats = {k: 0 for k in ("connected", "hello", "refused", "no_close_reply", "tcp_left_open", *MODES)}
    rounds_s = []
    for r in range(rounds):
        t0 = time.time()
        hold = asyncio.Event()
        tasks = [asyncio.create_task(_client(host, port, MODES[(i + r) % len(MODES)], hold, stats))
                 for i in range(n)]
        while stats["connected"] + stats["refused"] < (r + 1) * n and not any(t.done() and t.exception()
                                                                              for t in tasks):
            await asyncio.sleep(0.01)
        hold.set()
        results = await asyncio.gather(*tasks, return_exceptions=True)
        errors = [e for e in results if isinstance(e, BaseException)]
        if errors:
            raise RuntimeError(f"{len(errors)} clients failed, first: {errors[0]!r}")
        rounds_s.append(time.time() - t0)
    stats["rounds_s"] = [round(s, 2) for s in rounds_s]
    return stats


def clients_main(argv) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args(argv)
    _raise_fd_limit(args.n + 256)
    stats = asyncio.run(_churn(args.host, args.port, args.n, args.rounds))
    print(json.dumps(stats), flush=True)
    return 0


# ------------------------------------------------------------------------------------------------
# The server side (this process, gevent) and the leak count

def live_greenlets() -> dict:
    import gevent
    from monitor.hub import Hub
    counts = {"all": 0, "hub_pumps": 0}
    for g in gc.get_objects():
        if isinstance(g, gevent.Greenlet) and not g.dead:
            counts["all"] += 1
            run = getattr(g, "_run", None)
            if getattr(run, "__func__", None) is Hub._pump:
                counts["hub_pumps"] += 1
    return counts


def snapshot(server) -> dict:
    from benchlib import rss
    gc.collect()
    hub = server.monitor.hub
    return {"clients": hub.client_count(), "hub_client_set": len(hub._clients),
            "outbox_max": hub.stats()["outbox_max"], "handler_pool": len(server.server.pool),
            **live_greenlets(), "rss_mb": round(rss(os.getpid()) / 2 ** 20, 1)}


def main() -> int:
    import gevent
    from live import LiveServer, wait_for
    from monitor.demo import SimComfy, SyntheticEngine

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clients", type=int, default=1000)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--quick", action="store_true", help="100 clients, 2 rounds")
    args = ap.parse_args()
    n, rounds = (100, 2) if args.quick else (args.clients, args.rounds)
    _raise_fd_limit(2 * n + 512)
    from benchlib import machine
    print(machine())

    sim = SimComfy(SyntheticEngine())
    sim.start()
    server = LiveServer(sim, tempfile.mkdtemp(prefix="bench-churn-"))
    hub = server.monitor.hub
    # Keep the hub busy while clients come and go: progress every tick, an event and a preview now and then.
    jpeg = b"\xff\xd8" + os.urandom(20_000)

    def traffic():
        i = 0
        while True:
            i += 1
            hub.set_progress("churn", {"status": "running", "percent": i % 100, "step": {"value": i, "max": 10**9}})
            if i % 5 == 0:
                hub.publish_event({"seq": i, "ts": "t", "kind": "job.queued", "severity": "info",
                                   "message": "churn", "data": {}})
            if i % 3 == 0:
                hub.publish_preview("churn", "3", "image/jpeg", jpeg)
            gevent.sleep(0.05)
    traffic_g = gevent.spawn(traffic)
    try:
        gevent.sleep(1.0)   # telemetry, reconcile and hub greenlets all started
        before = snapshot(server)

        def run_clients(rounds_: int):
            t0, peak = time.time(), 0
            proc = subprocess.Popen([sys.executable, os.path.abspath(__file__), "clients", "--port",
                                     str(server.port), "--n", str(n), "--rounds", str(rounds_)],
                                    stdout=subprocess.PIPE, text=True)
            while proc.poll() is None:
                peak = max(peak, hub.client_count())
                gevent.sleep(0.05)
            out = proc.stdout.read()
            if proc.returncode != 0:
                raise RuntimeError(f"clients failed (exit {proc.returncode}): {out}")
            wait_for(lambda: hub.client_count() == 0, timeout=30, what="every session to end")
            return json.loads(out.strip().splitlines()[-1]), peak, time.time() - t0

        run_clients(1)   # warm-up: the allocator's high-water mark for N sessions at once
        gevent.sleep(0.5)
        warm = snapshot(server)
        stats, peak, wall = run_clients(rounds)
        traffic_g.kill()
        try:
            wait_for(lambda: hub.client_count() == 0 and len(server.server.pool) == 0, timeout=30,
                     what="every session to end")
        except AssertionError:
            pass
        gevent.sleep(0.5)
        after = snapshot(server)
        sessions = n * rounds
        print(f"churn: {n} clients x {rounds} rounds = {sessions} sessions in {wall:.1f} s "
              f"({sessions / wall:.0f} sessions/s), peak {peak} at once, rounds {stats['rounds_s']} s")
        print(f"client side: {stats['hello']} hellos, {stats['refused']} refused, "
              + ", ".join(f"{m} {stats[m]}" for m in MODES) + f"; close frames unanswered {stats['no_close_reply']}, then TCP left open by the server "
              f"{stats['tcp_left_open']}")
        print(f"before: {before}")
        print(f"after:  {after}")
        print(f"hub counters: {hub.counters}")
        leaks = {k: after[k] - before[k] for k in ("clients", "hub_client_set", "handler_pool", "hub_pumps")
                 if after[k] != before[k]}
        # the traffic greenlet was alive before and is dead after: allow for it
        extra = after["all"] - (before["all"] - 1)
        if extra > 0:
            leaks["greenlets"] = extra
        if after["outbox_max"]:
            leaks["outbox_max"] = after["outbox_max"]
        if stats["refused"]:
            leaks["refused_handshakes"] = stats["refused"]
        print(f"RSS: {before['rss_mb']} MB idle, {warm['rss_mb']} MB after a warm-up round of {n}, {after['rss_mb']} MB "
              f"after {sessions} more sessions ({after['rss_mb'] - warm['rss_mb']:+.1f} MB since the warm-up)")
        print("leaks: " + (json.dumps(leaks) if leaks else "none"))
        return 1 if leaks else 0
    finally:
        traffic_g.kill()
        server.stop_app()
        sim.stop(abrupt=False)


if __name__ == "__main__":
    if sys.argv[1:2] == ["clients"]:
        sys.exit(clients_main(sys.argv[2:]))
    sys.exit(main())
