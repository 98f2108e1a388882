"""The relay node's cost measured inside a real ComfyUI 0.3.64 (bench/relay_cost.py measures it in a stand-in):
the same run with the node in custom_nodes and with it moved out, alternated, ComfyUI restarted in between.

    python bench/relay_cost_real.py [--comfy /tmp/comfy] [--port 8190] [--rounds 2] [--jobs 4] [--steps 150]
                                    [--delay-ms 30] [--px 512] [--quick]

Needs a ComfyUI built by /work/shared/comfyui/build.sh (TARGET/serve.sh, the monitor_probe node) with the relay
node installed (`python -m monitor install-node TARGET/ComfyUI`); the node folder is moved out of custom_nodes for
the runs without it and put back afterwards. In each run a 'ui' socket (feature_flags first, as ComfyUI's frontend)
queues JOBS MonitorProbeSampler prompts of STEPS steps with a PX preview each; a subscriber socket ('mon', in its
own process so its reading never slows 'ui''s) is connected in every run and subscribed when the node is present.

Figures: (a) ComfyUI's CPU (psutil, user+system of the server process, from the first POST /prompt to 0.5 s after
the last job ended) per preview delivered to 'ui'; (b) 'ui''s delay from the moment ComfyUI produced a message
(the execution thread's PromptServer.send_sync call, time-stamped by a 5-line instrument node loaded from a temp
folder via --extra-model-paths-config in both runs) to its receipt, p50/p99, for `progress` messages and binary
previews; (c) previews received by the subscriber against those received by 'ui'.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request

NODE = "comfyui_monitor_relay"
PREVIEW = 4   # BinaryEventTypes.PREVIEW_IMAGE_WITH_METADATA: what a client with supports_preview_metadata gets
FLAGS = {"type": "feature_flags", "data": {"supports_preview_metadata": True, "supports_manager_v4_ui": True}}

STAMP_NODE = '''"""Bench instrument: time-stamps every PromptServer.send_sync call (the moment ComfyUI produces a message)."""
import time
from aiohttp import web
from server import PromptServer
NODE_CLASS_MAPPINGS = {}
_srv, _stamps = PromptServer.instance, []
_orig = _srv.send_sync
def send_sync(event, data, sid=None):
    _stamps.append((time.time(), event, sid, data.get("value") if event == "progress" else None))
    _orig(event, data, sid)
_srv.send_sync = send_sync
@_srv.routes.get("/bench/stamps")
async def stamps(request):
    return web.json_response(_stamps)
'''


def graph(seed: int, steps: int, delay_ms: int, px: int) -> dict:
    return {"1": {"class_type": "EmptyImage", "inputs": {"width": 64, "height": 64, "batch_size": 1, "color": 0}},
            "3": {"class_type": "MonitorProbeSampler",
                  "inputs": {"image": ["1", 0], "steps": steps, "delay_ms": delay_ms, "seed": seed,
                             "fail_at_step": 0, "preview_px": px, "preview_format": "JPEG"}},
            "7": {"class_type": "PreviewImage", "inputs": {"images": ["3", 0]}}}


def http(url: str, body: dict | None = None, timeout: float = 10) -> tuple[int, dict]:
    req = urllib.request.Request(url, data=None if body is None else json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, json.loads(resp.read() or b"null")
    except urllib.error.HTTPError as exc:
        return exc.code, {}


# --- the subscriber (its own process) ---------------------------------------------------------------------------
async def subscriber(url: str, subscribe: bool) -> None:
    import aiohttp
    counts: dict[str, int] = {}
    async with aiohttp.ClientSession() as session:
        ws = await session.ws_connect(f"{url.replace('http', 'ws', 1)}/ws?clientId=mon", max_msg_size=0)
        await ws.send_str(json.dumps(FLAGS))   # as the monitor's listener does
        while (await ws.receive()).type != aiohttp.WSMsgType.TEXT:
            pass
        if subscribe:
            async with session.post(f"{url}/monitor/relay/subscribe", json={"client_id": "mon"}) as resp:
                assert resp.status == 200, resp.status
        print("ready", flush=True)
        stop = asyncio.ensure_future(asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline))
        reader = asyncio.ensure_future(_count(ws, counts))
        await stop
        reader.cancel()
        await ws.close()
    print(json.dumps(counts), flush=True)


async def _count(ws, counts: dict) -> None:
    import aiohttp
    async for msg in ws:
        if msg.type == aiohttp.WSMsgType.BINARY:
            key = f"binary{int.from_bytes(msg.data[:4], 'big')}"
        else:
            key = json.loads(msg.data)["type"]
        counts[key] = counts.get(key, 0) + 1


# --- ComfyUI ------------------------------------------------------------------------------------------------------
def start_comfy(comfy: str, port: int, extra_yaml: str, log) -> subprocess.Popen:
    proc = subprocess.Popen([os.path.join(comfy, "serve.sh"), str(port), "--extra-model-paths-config", extra_yaml],
                            stdout=log, stderr=subprocess.STDOUT)
    deadline = time.time() + 300
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"ComfyUI exited with {proc.returncode}; see {log.name}")
        try:
            if http(f"http://127.0.0.1:{port}/bench/stamps", timeout=2)[0] == 200:
                return proc
        except OSError:
            pass
        time.sleep(1)
    raise RuntimeError(f"ComfyUI did not answer within 300 s; see {log.name}")


def stop_comfy(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


async def one_run(url: str, pid: int, node: bool, args) -> dict:
    import aiohttp
    import psutil
    assert http(f"{url}/monitor/relay")[0] == (200 if node else 404), "node presence is not what this run expects"
    received: list[tuple[float, object, object]] = []   # (receipt time, event, progress value)
    async with aiohttp.ClientSession() as session:
        ui = await session.ws_connect(f"{url.replace('http', 'ws', 1)}/ws?clientId=ui", max_msg_size=0)
        await ui.send_str(json.dumps(FLAGS))

        async def queue(n: int, steps: int) -> None:
            for _ in range(n):
                body = {"prompt": graph(random.randrange(1 << 40), steps, args.delay_ms, args.px), "client_id": "ui"}
                async with session.post(f"{url}/prompt", json=body) as resp:
                    assert resp.status == 200, await resp.text()

        async def read_until_done(n: int) -> None:
            done = 0
            async for msg in ui:
                now = time.time()
                if msg.type == aiohttp.WSMsgType.BINARY:
                    received.append((now, int.from_bytes(msg.data[:4], "big"), None))
                elif msg.type == aiohttp.WSMsgType.TEXT:
                    data = json.loads(msg.data)
                    received.append((now, data["type"], (data.get("data") or {}).get("value")))
                    if data["type"] in ("execution_success", "execution_error", "execution_interrupted"):
                        done += 1
                        if done == n:
                            return

        await queue(1, 5)                      # warm-up job, not measured
        await read_until_done(1)
        received.clear()
        sub = subprocess.Popen([sys.executable, __file__, "subscriber", url] + (["--subscribe"] if node else []),
                               stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert sub.stdout.readline().strip() == "ready"
        proc = psutil.Process(pid)
        t0, before = time.time(), proc.cpu_times()
        await queue(args.jobs, args.steps)
        await read_until_done(args.jobs)
        await asyncio.sleep(0.5)
        after = proc.cpu_times()
        await ui.close()
    sub.stdin.write("stop\n")
    sub.stdin.flush()
    mon = json.loads(sub.stdout.readline())
    sub.wait(10)
    stamps = [s for s in http(f"{url}/bench/stamps")[1] if s[0] >= t0 and s[2] == "ui"]
    delays: dict[str, list[float]] = {"progress": [], "preview": [], "progress_state": []}
    for key, event in (("progress", "progress"), ("preview", PREVIEW), ("progress_state", "progress_state")):
        made = [s for s in stamps if s[1] == event]
        got = [r for r in received if r[1] == event]
        assert len(made) == len(got), (key, len(made), len(got))
        for s, r in zip(made, got):
            assert s[3] == r[2], "out of order"   # progress values must pair up
            delays[key].append((r[0] - s[0]) * 1000)
    previews = len(delays["preview"])
    return {"node": node, "cpu_s": (after.user - before.user) + (after.system - before.system), "previews": previews,
            "delays": delays, "mon_previews": mon.get(f"binary{PREVIEW}", 0), "mon_progress": mon.get("progress", 0)}


def pct(values, q):
    values = sorted(values)
    return values[min(len(values) - 1, int(round(q * (len(values) - 1))))]


def node_listing(path: str) -> list:
    return sorted((os.path.relpath(os.path.join(d, f), path), os.path.getsize(os.path.join(d, f)),
                   os.path.getmtime(os.path.join(d, f))) for d, _, files in os.walk(path) for f in files)


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "subscriber":
        asyncio.run(subscriber(sys.argv[2], "--subscribe" in sys.argv))
        return 0
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--comfy", default="/tmp/comfy", help="the build folder holding serve.sh and ComfyUI/")
    ap.add_argument("--port", type=int, default=8190)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--jobs", type=int, default=4)
    ap.add_argument("--steps", type=int, default=150)
    ap.add_argument("--delay-ms", type=int, default=30)
    ap.add_argument("--px", type=int, default=512)
    ap.add_argument("--quick", action="store_true", help="1 job of 30 steps, 1 round")
    args = ap.parse_args()
    if args.quick:
        args.jobs, args.steps, args.rounds = 1, 30, 1
    installed = os.path.join(args.comfy, "ComfyUI", "custom_nodes", NODE)
    parked = os.path.join(args.comfy, f"{NODE}.parked-by-bench")
    if not os.path.isdir(installed):
        sys.exit(f"{installed} is missing: run `python -m monitor install-node {args.comfy}/ComfyUI` first")
    found = node_listing(installed)
    had_cache = os.path.isdir(os.path.join(installed, "__pycache__"))
    tmp = tempfile.mkdtemp(prefix="relay-cost-real-")
    os.makedirs(os.path.join(tmp, "nodes", "bench_send_stamps"))
    with open(os.path.join(tmp, "nodes", "bench_send_stamps", "__init__.py"), "w") as f:
        f.write(STAMP_NODE)
    extra_yaml = os.path.join(tmp, "extra.yaml")
    with open(extra_yaml, "w") as f:
        f.write(f"bench:\n  custom_nodes: {os.path.join(tmp, 'nodes')}\n")
    runs = []
    try:
        for i, node in enumerate([True, False] * args.rounds):   # alternated: drift on a shared machine hits both
            if node and os.path.isdir(parked):
                os.rename(parked, installed)
            elif not node and os.path.isdir(installed):
                os.rename(installed, parked)
            port = args.port + i % 2
            with open(os.path.join(tmp, f"comfy-{i}.log"), "w") as log:
                proc = start_comfy(args.comfy, port, extra_yaml, log)
                try:
                    run = asyncio.run(one_run(f"http://127.0.0.1:{port}", proc.pid, node, args))
                finally:
                    stop_comfy(proc)
            runs.append(run)
            d = run["delays"]
            print(f"  run {i + 1} {'with   ' if node else 'without'} the node: CPU {run['cpu_s']:.2f} s = "
                  f"{run['cpu_s'] * 1000 / run['previews']:.2f} ms per preview ({run['previews']} previews); "
                  f"ui delay progress p50 {pct(d['progress'], .5):.2f} p99 {pct(d['progress'], .99):.2f} ms, "
                  f"preview p50 {pct(d['preview'], .5):.2f} p99 {pct(d['preview'], .99):.2f} ms; "
                  f"subscriber got {run['mon_previews']} previews, {run['mon_progress']} progress", flush=True)
    finally:
        if os.path.isdir(parked):
            os.rename(parked, installed)
        if not had_cache:
            shutil.rmtree(os.path.join(installed, "__pycache__"), ignore_errors=True)
        assert node_listing(installed) == found, "the node folder differs from how it was found"
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"real ComfyUI 0.3.64, {args.rounds} rounds x {args.jobs} jobs x {args.steps} steps, {args.px} px JPEG "
          f"preview every {args.delay_ms} ms; 'ui' sends feature_flags (type {PREVIEW} previews)")
    cpu = {}
    for node in (True, False):
        mine = [r for r in runs if r["node"] is node]
        cpu[node] = statistics.median(r["cpu_s"] * 1000 / r["previews"] for r in mine)
        prog = [x for r in mine for x in r["delays"]["progress"]]
        prev = [x for r in mine for x in r["delays"]["preview"]]
        print(f"  {'with the node   ' if node else 'without the node'}: CPU {cpu[node]:.2f} ms per preview "
              f"(median of runs), ui delay send_sync→receipt: progress p50 {pct(prog, .5):.2f} ms "
              f"p99 {pct(prog, .99):.2f} ms, preview p50 {pct(prev, .5):.2f} ms p99 {pct(prev, .99):.2f} ms; "
              f"subscriber previews {sum(r['mon_previews'] for r in mine)}/{sum(r['previews'] for r in mine)}")
    print(f"  extra CPU per relayed preview (with its progress and progress_state): {cpu[True] - cpu[False]:.3f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
