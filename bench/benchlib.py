"""Shared pieces of the live benchmarks; every role runs in its own process.

    python bench/benchlib.py upstream [--engine bench|synthetic] [--paused]  # fake ComfyUI (SimComfy), gevent
    python bench/benchlib.py monitor --comfy-url URL --data-dir DIR          # the real app, as app.py serves it
    python bench/benchlib.py bcast                                           # aiohttp broadcast server (ComfyUI's stack)
    python bench/benchlib.py clients --url ws://... --n N ...                # N cheap browser-like WS clients, asyncio

Each server role prints `port N` on stdout once it listens. The harness scripts (fanout.py, slow_client.py,
api_latency.py, memory.py) start the roles with `Role`, drive them and measure the servers' CPU and RSS with
psutil from outside, so no measurement runs inside a measured process.

Timestamps: every preview's JPEG carries its upstream send time (`time.time()`, same machine) in a JPEG
comment segment (FF FE) right after SOI; progress messages are matched by step to the send-time table the
upstream keeps (`GET /bench/sendtimes/<prompt_id>`).
"""
from __future__ import annotations

import sys

_ROLE = sys.argv[1] if __name__ == "__main__" and len(sys.argv) > 1 else None
if _ROLE in ("upstream", "monitor"):
    from gevent import monkey

    monkey.patch_all()

import argparse  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import platform  # noqa: E402
import struct  # noqa: E402
import subprocess  # noqa: E402
import time  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HERE = os.path.dirname(os.path.abspath(__file__))
for _p in (ROOT, os.path.join(ROOT, "tests")):
    if _p not in sys.path:
        sys.path.insert(0, _p)

PYTHON = sys.executable
TS_LEN = 17   # "%17.6f" of time.time()


# ------------------------------------------------------------------------------------------------
# Machine, statistics

def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine() -> str:
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    try:
        load = "load avg %.2f %.2f %.2f" % os.getloadavg()
    except OSError:
        load = ""
    return (f"machine: {platform.platform()} | CPU: {cpu_model()} x{cores} cores | "
            f"{platform.python_implementation()} {platform.python_version()} | {load}")


def pct(values, q: float) -> float | None:
    if not values:
        return None
    values = sorted(values)
    return values[min(len(values) - 1, max(0, int(round(q / 100.0 * len(values))) - 1))]


def ms(value) -> str:
    return "n/a" if value is None else f"{value * 1000:.1f} ms"


# ------------------------------------------------------------------------------------------------
# Stamped previews

def base_jpeg(target: int = 30_000) -> bytes:
    """A noisy JPEG of about `target` bytes (a 512 px sampler preview is 20-40 KB)."""
    import io
    from PIL import Image
    size = 128
    data = b""
    while True:
        img = Image.effect_noise((size, size), 60).convert("RGB")
        buf = io.BytesIO()
        img.save(buf, "JPEG", quality=70)
        data = buf.getvalue()
        if len(data) >= target or size > 1024:
            return data
        size = int(size * (target / len(data)) ** 0.5) + 4


def stamp_jpeg(base: bytes, t: float | None = None) -> bytes:
    """SOI, then a COM segment holding the send time, then the rest of the JPEG (still a valid JPEG)."""
    comment = b"%17.6f" % (time.time() if t is None else t)
    return b"\xff\xd8\xff\xfe" + struct.pack(">H", 2 + len(comment)) + comment + base[2:]


def read_stamp(head: bytes, offset: int = 0) -> float | None:
    if head[offset:offset + 4] != b"\xff\xd8\xff\xfe":
        return None
    try:
        return float(head[offset + 6:offset + 6 + TS_LEN])
    except ValueError:
        return None


# ------------------------------------------------------------------------------------------------
# Orchestration helpers (harness side: plain threads, no gevent)

class Role:
    """A role subprocess; `port` is read from its first `port N` line."""

    def __init__(self, *args, stdin=False, env=None, wait_port=True, log=None):
        self.log = open(log, "w") if log else subprocess.DEVNULL
        self.proc = subprocess.Popen([PYTHON, os.path.abspath(__file__), *map(str, args)], cwd=ROOT,
                                     stdout=subprocess.PIPE, stderr=self.log,
                                     stdin=subprocess.PIPE if stdin else subprocess.DEVNULL,
                                     text=True, env={**os.environ, **(env or {})})
        self.port = None
        self.said: dict[str, str] = {}   # `key value` lines read while waiting for another key
        self._out = b""
        if wait_port:
            self.port = int(self.expect("port"))

    @property
    def pid(self) -> int:
        return self.proc.pid

    def expect(self, key: str, timeout: float = 120.0) -> str:
        """The value of the next stdout line `key value`; lines with other keys are kept for a later expect.
        Reads the pipe's bytes itself: a buffered readline could hold a second line that select never sees."""
        import select
        deadline = time.time() + timeout
        fd = self.proc.stdout.fileno()
        while key not in self.said:
            if b"\n" in self._out:
                line, self._out = self._out.split(b"\n", 1)
                parts = line.decode().strip().split(" ", 1)
                self.said[parts[0]] = parts[1] if len(parts) > 1 else ""
                continue
            ready, _, _ = select.select([fd], [], [], max(0.0, deadline - time.time()))
            if not ready:
                raise RuntimeError(f"role {self.proc.args[2:]} said no '{key}' within {timeout}s")
            chunk = os.read(fd, 65536)
            if not chunk:
                raise RuntimeError(f"role {self.proc.args[2:]} exited ({self.proc.poll()}) before '{key}'")
            self._out += chunk
        return self.said.pop(key)

    def send(self, line: str) -> None:
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def cpu_seconds(pid: int) -> float:
    import psutil
    t = psutil.Process(pid).cpu_times()
    return t.user + t.system


def rss(pid: int) -> int:
    import psutil
    return psutil.Process(pid).memory_info().rss


def http_json(method: str, url: str, body=None, timeout: float = 30.0):
    import urllib.request
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method=method,
                                 headers={"Content-Type": "application/json"} if data else {})
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        return json.loads(resp.read() or b"null")


def monitor_role(tmp: str, upstream: "Role", comfy_url: str | None = None, database_url: str | None = None) -> "Role":
    """The real app in its own process, watching `upstream` (or the hosts of `comfy_url`, a COMFYUI_URL
    list), with its data and log under `tmp`; its jobs in PostgreSQL when `database_url` is given."""
    return Role("monitor", "--comfy-url", comfy_url or f"http://127.0.0.1:{upstream.port}", "--data-dir",
                os.path.join(tmp, "data"), log=os.path.join(tmp, "monitor.log"),
                env={"DATABASE_URL": database_url} if database_url else {"DATABASE_URL": ""})


def pg_cluster(database_url: str | None):
    """(url, cluster): `database_url` as given, or a throwaway cluster from tests/pg.py when it is "pg"
    (stop it with pg_destroy); (None, None) for SQLite."""
    if database_url != "pg":
        return database_url or None, None
    sys.path.insert(0, os.path.join(ROOT, "tests"))
    import pg
    cluster = pg.create()
    return cluster.url, cluster


def pg_destroy(cluster) -> None:
    if cluster is not None:
        import pg
        pg.destroy(cluster)


def wait_connected(monitor_url: str, timeout: float = 30.0) -> None:
    """Until the monitor says it is connected to its (fake) ComfyUI."""
    import urllib.error
    deadline = time.time() + timeout
    while True:
        try:   # /healthz answers 503 until ComfyUI is connected: that is the wait, not an error
            if http_json("GET", monitor_url + "/healthz").get("comfy", {}).get("connected"):
                return
        except urllib.error.HTTPError as exc:
            if exc.code != 503:
                raise
        if time.time() > deadline:
            raise RuntimeError("the monitor did not connect to the fake ComfyUI")
        time.sleep(0.1)


def sampler_prompt(steps: int, delay_ms: int, seed: int = 1, fail_at: int = 0, text: str | None = None) -> dict:
    """A small text-to-image graph; the fake runs its sampler `steps` steps, `delay_ms` apart."""
    sampler = "MonitorProbeSampler" if fail_at else "KSampler"
    inputs = {"model": ["1", 0], "positive": ["2", 0], "negative": ["2", 0], "latent_image": ["4", 0],
              "seed": seed, "steps": steps, "cfg": 7.0, "sampler_name": "euler", "scheduler": "normal",
              "denoise": 1.0, "delay_ms": delay_ms}
    if fail_at:
        inputs["fail_at_step"] = fail_at
    return {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "bench.safetensors"}},
        "2": {"class_type": "CLIPTextEncode", "inputs": {"text": text or f"bench {seed}", "clip": ["1", 1]}},
        "4": {"class_type": "EmptyLatentImage", "inputs": {"width": 512, "height": 512, "batch_size": 1}},
        "3": {"class_type": sampler, "inputs": inputs, "_meta": {"title": "KSampler"}},
        "6": {"class_type": "VAEDecode", "inputs": {"samples": ["3", 0], "vae": ["1", 2]}},
        "7": {"class_type": "SaveImage", "inputs": {"images": ["6", 0], "filename_prefix": "bench/out"}},
    }


class Clients:
    """N clients split over `procs` processes (one asyncio loop each), driven as one."""

    def __init__(self, url: str, n: int, mode: str, *, duration: float, warmup: float = 1.0,
                 slow_at: float | None = None, out: str, log=None, procs: int | None = None):
        procs = procs or CLIENT_PROCS
        procs = max(1, min(procs, n // 50 or 1))
        self.outs, self.roles = [], []
        for k in range(procs):
            count = n // procs + (1 if k < n % procs else 0)
            self.outs.append(f"{out}.{k}")
            args = ["clients", "--url", url, "--n", count, "--first", sum(n // procs + (1 if j < n % procs else 0)
                                                                          for j in range(k)),
                    "--mode", mode, "--duration", duration, "--warmup", warmup, "--out", self.outs[-1]]
            if slow_at is not None:
                args += ["--slow-at", slow_at]
            self.roles.append(Role(*args, stdin=True, wait_port=False, log=f"{log}.{k}" if log else None))
        for role in self.roles:
            role.expect("ready", timeout=60 + n * 0.2)

    def send(self, line: str) -> None:
        for role in self.roles:
            role.send(line)

    def expect(self, key: str, timeout: float = 60.0) -> str:
        return [role.expect(key, timeout) for role in self.roles][0]

    def stop(self) -> None:
        for role in self.roles:
            role.stop()

    def results(self) -> dict:
        merged: dict = {}
        for path in self.outs:
            with open(path) as fh:
                res = json.load(fh)
            if not merged:
                merged = res
                merged["clients_cpu"] = [res["clients_cpu_s"] / max(1e-9, res["clients_wall_s"])]
                continue
            for key in ("preview_delays", "preview_at", "progress"):
                merged[key] += res[key]
            for key, value in res["counts"].items():
                merged["counts"][key] += value
            merged["n"] += res["n"]
            merged["open"] += res["open"]
            merged["clients_cpu"].append(res["clients_cpu_s"] / max(1e-9, res["clients_wall_s"]))
        return merged


CLIENT_PROCS = 2


def start_clients(url: str, n: int, mode: str, **kw) -> Clients:
    return Clients(url, n, mode, **kw)


# ------------------------------------------------------------------------------------------------
# Role: fake ComfyUI upstream (SimComfy: the recorded protocol) with a paced, stamping engine

def role_upstream(argv) -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--engine", choices=("bench", "synthetic"), default="bench")
    ap.add_argument("--paused", action="store_true", help="take no prompt from the queue (API bench)")
    ap.add_argument("--preview-bytes", type=int, default=30_000)
    ap.add_argument("--hosts", type=int, default=1, help="this many fake ComfyUIs in the process (a fleet)")
    args = ap.parse_args(argv)

    import gevent
    from flask import jsonify
    from monitor.demo import CHECK, Engine, Preview, SimComfy, SyntheticEngine

    sendtimes: dict[str, dict[int, float]] = {}

    class BenchEngine(Engine):
        """Sampler steps on an absolute 1/rate schedule: progress_state, a stamped preview, progress."""

        def __init__(self):
            self.jpeg = base_jpeg(args.preview_bytes)

        def run(self, job, run):
            pid, prompt = job.prompt_id, job.prompt
            table = sendtimes.setdefault(pid, {})
            while len(sendtimes) > 64:
                sendtimes.pop(next(iter(sendtimes)))
            nid = next((k for k, v in prompt.items() if "Sampler" in v.get("class_type", "")), "3")
            inputs = prompt.get(nid, {}).get("inputs", {})
            steps, interval = int(inputs.get("steps", 20)), int(inputs.get("delay_ms", 50)) / 1000.0
            yield 0, {"type": "execution_start", "data": {"prompt_id": pid}}
            yield 0, {"type": "execution_cached", "data": {"nodes": [], "prompt_id": pid}}
            yield 0, {"type": "executing", "data": {"node": nid, "display_node": nid, "prompt_id": pid}}
            t0 = time.time()
            for step in range(1, steps + 1):
                yield max(0.0, t0 + step * interval - time.time()), CHECK
                yield 0, {"type": "progress_state", "data": {"prompt_id": pid, "nodes": {nid: {
                    "value": step, "max": steps, "state": "running", "node_id": nid, "prompt_id": pid,
                    "display_node_id": nid, "parent_node_id": None, "real_node_id": nid}}}}
                yield 0, Preview(stamp_jpeg(self.jpeg), nid)
                table[step] = time.time()
                yield 0, {"type": "progress", "data": {"value": step, "max": steps, "prompt_id": pid,
                                                       "node": nid}}
            yield 0, {"type": "executed", "data": {"node": "7", "display_node": "7", "prompt_id": pid, "output": {
                "images": [{"filename": "bench_00001_.png", "subfolder": "bench", "type": "output"}]}}}

    ports = []
    for _ in range(args.hosts):
        engine = BenchEngine() if args.engine == "bench" else \
            SyntheticEngine(step_s=0.0, time_scale=0.0, preview_size=64, seed=1)
        sim = SimComfy(engine, paused=args.paused)
        sim.app.add_url_rule("/bench/sendtimes/<pid>", "bench_sendtimes",
                             lambda pid: jsonify({str(k): v for k, v in sendtimes.get(pid, {}).items()}))
        sim.start()
        ports.append(sim.port)
    print(f"port {ports[0]}", flush=True)
    print(f"ports {','.join(map(str, ports))}", flush=True)
    gevent.wait()


# ------------------------------------------------------------------------------------------------
# Role: the monitor, exactly as app.py builds and serves it, plus a read-only /bench/stats route

def role_monitor(argv) -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--comfy-url", required=True)
    ap.add_argument("--data-dir", required=True)
    ap.add_argument("--port", type=int, default=0)
    args = ap.parse_args(argv)

    import logging

    import gevent
    from flask import jsonify
    from monitor import configure_logging, create_app
    from monitor.config import Config
    from monitor.web.server import make_server

    configure_logging(os.environ.get("MONITOR_LOG_LEVEL", "WARNING"))
    config = Config.from_env(comfyui_url=args.comfy_url, data_dir=args.data_dir, port=args.port,
                             host="127.0.0.1", workflows_dir=os.path.join(ROOT, "workflows"))
    app = create_app(config)
    mon = app.extensions["monitor"]

    @app.get("/bench/stats")
    def _bench_stats():
        import psutil
        hub = mon.hub
        clients = list(hub._clients)
        return jsonify(
            hub=hub.stats(), rss=psutil.Process().memory_info().rss,
            outbox_bytes=sorted((_outbox_bytes(c) for c in clients), reverse=True)[:5],
            tracker_prompts=len(mon.tracker._prompts), tracker_active=len(mon.tracker.active()),
            lingering=len(mon._finished), store_active=len(mon.store.active()))

    @app.get("/bench/statuses")
    def _bench_statuses():
        rows = mon.store._query("SELECT id, status FROM jobs")
        return jsonify({r["id"]: r["status"] for r in rows})

    profile = os.environ.get("BENCH_PROFILE")   # a path: cProfile the whole run, written when terminated
    if profile:
        import cProfile
        import signal
        profiler = cProfile.Profile()
        profiler.enable()

        def dump(*_):
            profiler.disable()
            profiler.dump_stats(profile)
            os._exit(0)
        gevent.signal_handler(signal.SIGTERM, dump)
    server = make_server(app)   # exactly as app.py serves it
    server.start()
    logging.getLogger("monitor").info("bench monitor on %d", server.server_port)
    print(f"port {server.server_port}", flush=True)
    gevent.wait()


def _outbox_bytes(c) -> int:
    """Bytes this client's outbox refers to (events, coalesced progress, the latest preview)."""
    return (sum(len(f) for _, f in c.events) + sum(len(f) for f in c.progress.values())
            + (len(c.preview) if c.preview is not None else 0)
            + (len(getattr(c, "partial", None) or b"")))


# ------------------------------------------------------------------------------------------------
# Role: aiohttp broadcast server: what ComfyUI does for a prompt posted without client id

def role_bcast(argv) -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--preview-bytes", type=int, default=30_000)
    args = ap.parse_args(argv)

    import asyncio

    from aiohttp import web

    jpeg = base_jpeg(args.preview_bytes)
    sockets: dict[str, web.WebSocketResponse] = {}
    table: dict[int, float] = {}

    async def ws_handler(request):
        ws = web.WebSocketResponse()   # ComfyUI's server.py: default options
        await ws.prepare(request)
        sid = request.query.get("clientId") or os.urandom(8).hex()
        sockets[sid] = ws
        try:
            await ws.send_str(json.dumps({"type": "status", "data": {"sid": sid}}))
            async for _ in ws:
                pass
        finally:
            sockets.pop(sid, None)
        return ws

    async def send(message) -> None:
        # ComfyUI's PromptServer.send for sid=None: every socket in turn, awaiting each send.
        method = "send_bytes" if isinstance(message, bytes) else "send_str"
        for ws in list(sockets.values()):
            try:
                await getattr(ws, method)(message)
            except Exception:
                pass

    async def run(steps: int, interval: float, pid: str, table: dict) -> None:
        t0 = time.time()
        for step in range(1, steps + 1):
            await asyncio.sleep(max(0.0, t0 + step * interval - time.time()))
            table[step] = time.time()
            await send(json.dumps({"type": "progress", "data": {"value": step, "max": steps, "prompt_id": pid,
                                                                "node": "3"}}))
            await send(struct.pack(">II", 1, 1) + stamp_jpeg(jpeg))   # type 1 preview, JPEG

    async def start(request):
        body = await request.json()
        table.clear()
        for k in range(int(body.get("streams", 1))):   # several prompts streaming at once (a fleet's hosts)
            asyncio.get_running_loop().create_task(run(int(body["steps"]), float(body["interval"]), f"bcast{k}",
                                                       table if k == 0 else {}))
        return web.json_response({"clients": len(sockets)})

    async def sendtimes(request):
        return web.json_response({str(k): v for k, v in table.items()})

    app = web.Application()
    app.router.add_get("/ws", ws_handler)
    app.router.add_post("/bench/start", start)
    app.router.add_get("/bench/sendtimes", sendtimes)

    async def main():
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0, backlog=2048)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]
        print(f"port {port}", flush=True)
        await asyncio.Event().wait()

    asyncio.run(main())


# ------------------------------------------------------------------------------------------------
# Role: N browser-like WebSocket clients in one asyncio process, parsing as little as possible

def role_clients(argv) -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--url", required=True, help="ws://host:port/path")
    ap.add_argument("--n", type=int, required=True)
    ap.add_argument("--first", type=int, default=0, help="index of this process's first client")
    ap.add_argument("--mode", choices=("monitor", "comfy"), required=True)
    ap.add_argument("--duration", type=float, required=True, help="seconds recorded after the warm-up")
    ap.add_argument("--warmup", type=float, default=1.0)
    ap.add_argument("--slow-at", type=float, default=None,
                    help="client 0 stops reading this many seconds after 'go'; the run then lasts until 'stop'")
    ap.add_argument("--out", required=True)
    args = ap.parse_args(argv)

    import asyncio
    import base64
    import socket
    from urllib.parse import urlsplit

    url = urlsplit(args.url)
    slow = args.slow_at is not None and args.first == 0   # client 0 is the one that stops reading
    host, port, path = url.hostname, url.port, url.path or "/"
    image_offset = 0 if args.mode == "monitor" else 8   # ComfyUI's type-1 header: 8 bytes
    head_need = image_offset + 6 + TS_LEN
    window = [float("inf"), float("inf")]   # record receipts inside [start, end)
    preview_delays: list[float] = []
    preview_at: list[float] = []            # receipt times (slow-client windows)
    progress: list[tuple[int, int, float]] = []  # (client, step, receipt time)
    counts = {"frames": 0, "text": 0, "binary": 0, "previews": 0, "progress": 0, "pings": 0,
              "bytes": 0, "closed": 0, "compressed": 0}

    class Client(asyncio.Protocol):
        def __init__(self, index: int):
            self.index = index
            self.transport = None
            self.handshake = bytearray()
            self.open = asyncio.get_running_loop().create_future()
            self.hbuf = b""
            self.remaining = 0       # payload bytes still to come for the current frame
            self.opcode = 0
            self.collect: bytearray | None = None
            self.collect_need = 0

        def connection_made(self, transport):
            self.transport = transport
            key = base64.b64encode(os.urandom(16)).decode()
            transport.write((f"GET {path}?clientId=bench{self.index} HTTP/1.1\r\nHost: {host}:{port}\r\n"
                             "Upgrade: websocket\r\nConnection: Upgrade\r\n"
                             f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
                             f"Origin: http://{host}:{port}\r\n"
                             + ("Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n"
                                if args.mode == "monitor" else "")   # browsers offer it; the monitor declines
                             + "\r\n").encode())

        def connection_lost(self, exc):
            counts["closed"] += 1
            if not self.open.done():
                self.open.set_exception(ConnectionError(f"client {self.index}: {exc or 'closed'}"))

        def data_received(self, data: bytes):
            now = time.time()
            if self.handshake is not None:
                self.handshake += data
                end = self.handshake.find(b"\r\n\r\n")
                if end < 0:
                    return
                head, data = bytes(self.handshake[:end]), bytes(self.handshake[end + 4:])
                self.handshake = None
                if b" 101 " not in head.split(b"\r\n", 1)[0]:
                    self.open.set_exception(ConnectionError(head.split(b"\r\n", 1)[0].decode()))
                    return
                self.open.set_result(True)
            record = window[0] <= now < window[1]
            if record:
                counts["bytes"] += len(data)
            pos, n = 0, len(data)
            while pos < n:
                if self.remaining:
                    take = min(self.remaining, n - pos)
                    if self.collect is not None and len(self.collect) < self.collect_need:
                        self.collect += data[pos:pos + min(take, self.collect_need - len(self.collect))]
                    pos += take
                    self.remaining -= take
                    if not self.remaining:
                        self.frame_done(now, record)
                    continue
                # a frame header (2-10 bytes; server frames are unmasked)
                chunk = self.hbuf + data[pos:pos + 10]
                if len(chunk) < 2:
                    self.hbuf, pos = chunk, n
                    continue
                b0, b1 = chunk[0], chunk[1]
                size, hl = b1 & 0x7F, 2
                if size == 126:
                    hl = 4
                elif size == 127:
                    hl = 10
                if len(chunk) < hl:
                    self.hbuf, pos = chunk, n
                    continue
                if hl == 4:
                    size = struct.unpack_from(">H", chunk, 2)[0]
                elif hl == 10:
                    size = struct.unpack_from(">Q", chunk, 2)[0]
                pos += hl - len(self.hbuf)
                self.hbuf = b""
                if b0 & 0x40:
                    counts["compressed"] += 1
                self.opcode = b0 & 0x0F
                self.collect = bytearray()
                self.collect_need = size if self.opcode != 2 else min(size, head_need)
                self.remaining = size
                if not size:
                    self.frame_done(now, record)

        def frame_done(self, now: float, record: bool):
            op, body = self.opcode, self.collect
            self.collect = None
            if op == 9:   # ping: answer with a masked pong (the hub drops clients that never pong)
                mask = os.urandom(4)
                self.transport.write(bytes((0x8A, 0x80 | len(body))) + mask
                                     + bytes(b ^ mask[i % 4] for i, b in enumerate(body)))
                counts["pings"] += 1
                return
            if op == 8:
                self.transport.close()
                return
            if not record or (self.index == 0 and slow):
                return   # the slow client's own receipts are not the others' latency
            counts["frames"] += 1
            if op == 2:
                counts["binary"] += 1
                ts = read_stamp(bytes(body), image_offset)
                if ts is not None:
                    counts["previews"] += 1
                    preview_delays.append(now - ts)
                    preview_at.append(now)
            elif op == 1:
                counts["text"] += 1
                if b'"type":"progress"' in body[:24] or b'"type": "progress"' in body[:24]:
                    msg = json.loads(body)
                    if args.mode == "monitor":
                        step = (msg.get("step") or {}).get("value")
                    else:
                        step = (msg.get("data") or {}).get("value")
                    if isinstance(step, int):
                        counts["progress"] += 1
                        progress.append((self.index, step, now))

    async def connect(i: int, sem) -> Client:
        loop = asyncio.get_running_loop()
        async with sem:
            for attempt in range(20):
                sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                if i == 0 and slow:
                    # A small receive buffer (no autotuning), so that a client that stops reading
                    # fills up within seconds, not after 32 MB.
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 32 * 1024)
                sock.setblocking(False)
                try:
                    await loop.sock_connect(sock, (host, port))
                    _, client = await loop.create_connection(lambda: Client(i), sock=sock)
                    await asyncio.wait_for(client.open, 30)
                    return client
                except (OSError, ConnectionError, asyncio.TimeoutError):
                    sock.close()
                    await asyncio.sleep(0.05 * (attempt + 1))
            raise ConnectionError(f"client {i} could not connect")

    async def main():
        import resource
        sem = asyncio.Semaphore(64)
        clients = await asyncio.gather(*(connect(i, sem) for i in range(args.first, args.first + args.n)))
        print(f"ready {len(clients)}", flush=True)
        loop = asyncio.get_running_loop()
        line = await loop.run_in_executor(None, sys.stdin.readline)   # "go"
        go = time.time()
        window[0] = go + args.warmup
        window[1] = go + args.warmup + args.duration if args.slow_at is None else float("inf")
        r0 = resource.getrusage(resource.RUSAGE_SELF)
        slow_paused_at = None
        if args.slow_at is not None:
            await asyncio.sleep(args.slow_at)
        if slow:
            clients[0].transport.pause_reading()
            slow_paused_at = time.time()
        if args.slow_at is not None:
            print(f"paused {slow_paused_at or time.time()}", flush=True)
            await loop.run_in_executor(None, sys.stdin.readline)   # "stop"
            window[1] = time.time()
        else:
            await asyncio.sleep(max(0.0, window[1] - time.time()))
        r1 = resource.getrusage(resource.RUSAGE_SELF)
        cpu = (r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime)
        wall = time.time() - go
        with open(args.out, "w") as fh:
            json.dump({"n": args.n, "window": window, "counts": counts, "preview_delays": preview_delays,
                       "preview_at": preview_at, "progress": progress, "clients_cpu_s": cpu,
                       "clients_wall_s": wall, "slow_paused_at": slow_paused_at,
                       "open": sum(1 for c in clients if not c.transport.is_closing())}, fh)
        print("done", flush=True)
        for c in clients:
            c.transport.abort()
        del line

    asyncio.run(main())


ROLES = {"upstream": role_upstream, "monitor": role_monitor, "bcast": role_bcast, "clients": role_clients}

if __name__ == "__main__":
    ROLES[sys.argv[1]](sys.argv[2:])
