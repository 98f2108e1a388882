"""What the relay node costs ComfyUI: the extra CPU per relayed preview and the delay it adds to the client that
queued the prompt (p50/p99), measured against the same run without the node.

    python bench/relay_cost.py [--steps 300] [--interval-ms 30] [--px 512] [--rounds 3] [--quick]

The server is tests/comfy_standin.py (ComfyUI 0.3.64's send path on aiohttp: publish loop, per-call preview
encoding with PIL, JPEG quality 95) in its own process, with or without monitor/comfy_node installed; a worker
thread plays a sampler (like ComfyUI's execution thread): per step one `progress` (carrying its send time) and
one unencoded preview, both addressed to the 'ui' client. 'ui' and 'mon' connect in every run; with the node,
'mon' subscribes. The server's CPU is read with psutil from outside.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [ROOT, os.path.join(ROOT, "tests")]


# --- the server role (its own process) ------------------------------------------------------------------------
def serve(node: bool) -> None:
    from aiohttp import web
    from PIL import Image

    from comfy_standin import UNENCODED_PREVIEW_IMAGE, StandInServer
    from monitor.comfy_node import relay

    async def main():
        server = StandInServer()
        if node:
            relay.install(server)

        def sampler(steps, interval, px):
            image = Image.effect_noise((px, px), 64).convert("RGB")
            for step in range(1, steps + 1):
                time.sleep(interval)
                server.send_sync("progress", {"value": step, "max": steps, "prompt_id": "p", "node": "3",
                                              "t": time.time()}, "ui")
                server.send_sync(UNENCODED_PREVIEW_IMAGE, ("JPEG", image, None), "ui")
            server.send_sync("execution_success", {"prompt_id": "p"}, "ui")

        async def run(request):
            q = request.rel_url.query
            threading.Thread(target=sampler, args=(int(q["steps"]), float(q["interval"]), int(q["px"])),
                             daemon=True).start()
            return web.json_response({"ok": True})
        server.routes.post("/bench/run")(run)
        await server.start()
        print(f"port {server.port}", flush=True)
        await asyncio.Event().wait()
    asyncio.run(main())


# --- the harness ----------------------------------------------------------------------------------------------
async def one_run(port: int, node: bool, steps: int, interval: float, px: int) -> dict:
    import aiohttp
    import psutil
    url = f"http://127.0.0.1:{port}"
    delays, relayed = [], 0
    async with aiohttp.ClientSession() as session:
        ui = await session.ws_connect(f"{url}/ws?clientId=ui")
        mon = await session.ws_connect(f"{url}/ws?clientId=mon")
        await ui.receive()
        await mon.receive()
        if node:
            async with session.post(f"{url}/monitor/relay/subscribe", json={"client_id": "mon"}) as resp:
                assert resp.status == 200

        async def read_ui():
            async for msg in ui:
                if msg.type == aiohttp.WSMsgType.TEXT:
                    data = json.loads(msg.data)
                    if data["type"] == "progress":
                        delays.append((time.time() - data["data"]["t"]) * 1000)
                    elif data["type"] == "execution_success":
                        return

        async def read_mon():
            nonlocal relayed
            async for msg in mon:
                relayed += msg.type == aiohttp.WSMsgType.BINARY
        proc = psutil.Process(server_pid[port])
        before = proc.cpu_times()
        async with session.post(f"{url}/bench/run?steps={steps}&interval={interval}&px={px}"):
            pass
        mon_task = asyncio.ensure_future(read_mon())
        await read_ui()
        await asyncio.sleep(0.2)
        after = proc.cpu_times()
        mon_task.cancel()
        await ui.close()
        await mon.close()
    cpu_ms = ((after.user - before.user) + (after.system - before.system)) * 1000
    return {"cpu_ms": cpu_ms, "delays": delays, "relayed_previews": relayed}


server_pid: dict[int, int] = {}


def start_server(node: bool) -> tuple[subprocess.Popen, int]:
    proc = subprocess.Popen([sys.executable, __file__, "serve"] + (["--node"] if node else []),
                            stdout=subprocess.PIPE, text=True)
    port = int(proc.stdout.readline().split()[1])
    server_pid[port] = proc.pid
    return proc, port


def pct(values, q):
    values = sorted(values)
    return values[min(len(values) - 1, int(round(q * (len(values) - 1))))]


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "serve":
        serve("--node" in sys.argv)
        return 0
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--interval-ms", type=float, default=30)
    ap.add_argument("--px", type=int, default=512)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--quick", action="store_true", help="40 steps, 1 round")
    args = ap.parse_args()
    if args.quick:
        args.steps, args.rounds = 40, 1
    results = {False: [], True: []}
    for _ in range(args.rounds):
        for node in (False, True):   # alternated, so drift on a shared machine hits both alike
            proc, port = start_server(node)
            try:
                results[node].append(asyncio.run(one_run(port, node, args.steps, args.interval_ms / 1000, args.px)))
            finally:
                proc.terminate()
                proc.wait(10)
    print(f"{args.steps} steps x {args.rounds} rounds, {args.px}px JPEG previews every {args.interval_ms:g} ms")
    summary = {}
    for node in (False, True):
        runs = results[node]
        cpu = statistics.median(r["cpu_ms"] for r in runs) / args.steps
        delays = [d for r in runs for d in r["delays"]]
        summary[node] = cpu
        print(f"  {'with the node   ' if node else 'without the node'}: server CPU {cpu:.2f} ms/step, "
              f"ui delay p50 {pct(delays, .5):.2f} ms p99 {pct(delays, .99):.2f} ms, "
              f"previews relayed to 'mon': {sum(r['relayed_previews'] for r in runs)}")
    print(f"  extra CPU per relayed preview (+ its progress message): {summary[True] - summary[False]:.3f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
