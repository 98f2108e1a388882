"""HostileComfy: a ComfyUI that misbehaves on purpose; Probe: a stopwatch on the app from outside.

HostileComfy speaks HTTP and RFC 6455 by hand on raw gevent sockets, in its own process (its CPU never
counts against the app), and says what a real server never would: HTML with a 200, JSON nested 1,000 deep,
answers a byte at a time, a message in thousands of fragments, a frame declaring 200 MB, floods. Steer it
with `http(route, **answer)` and `ws(do=..., **args)` (see HostileServer._answer and _act). Probe times GETs
of the app's URLs from its own process until stopped: a stalled app loop shows as a slow answer.

    python tests/hostile_comfy.py serve            # prints "port N"
    python tests/hostile_comfy.py probe S URL...   # every S seconds until stdin closes; prints {url: [seconds]}
"""
from __future__ import annotations

import sys

if __name__ == "__main__" and sys.argv[1:2] == ["serve"]:
    from gevent import monkey

    monkey.patch_all()

import base64  # noqa: E402
import hashlib  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import struct  # noqa: E402
import subprocess  # noqa: E402
import time  # noqa: E402
import uuid  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
WS_GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
LOGIN_PAGE = ("<!DOCTYPE html><html><head><title>Sign in</title></head><body><form method=post>"
              "<input name=user><input name=password type=password></form></body></html>")
EMPTY_QUEUE = {"queue_running": [], "queue_pending": []}


def ws_frame(opcode: int, payload: bytes = b"", fin: bool = True, declared: int | None = None) -> bytes:
    """A server frame (unmasked). `declared` puts another length in the header than the payload's."""
    size = len(payload) if declared is None else declared
    b0 = (0x80 if fin else 0) | opcode
    if size < 126:
        head = struct.pack("!BB", b0, size)
    elif size < 1 << 16:
        head = struct.pack("!BBH", b0, 126, size)
    else:
        head = struct.pack("!BBQ", b0, 127, size)
    return head + payload


def text_message(size: int, kind: str = "hostile") -> bytes:
    """A valid ComfyUI-shaped JSON text message of exactly `size` bytes (padding in data.pad)."""
    head, tail = f'{{"type": "{kind}", "data": {{"pad": "'.encode(), b'"}}'
    return head + b"a" * max(0, size - len(head) - len(tail)) + tail


def preview_message(image_size: int, prompt_id: str = "p-hostile", node_id: str = "3") -> bytes:
    """A type-4 binary preview (metadata, then a 'JPEG' of `image_size` bytes)."""
    meta = json.dumps({"image_type": "image/jpeg", "prompt_id": prompt_id, "node_id": node_id}).encode()
    image = b"\xff\xd8" + b"\x00" * max(0, image_size - 2)
    return struct.pack(">II", 4, len(meta)) + meta + image


def nested(depth: int, leaf="x"):
    value = leaf
    for _ in range(depth):
        value = [value]
    return value


DEEP = "@@deep@@"


def with_deep(value, depth: int) -> str:
    """JSON text of `value` with the string DEEP replaced by a list nested `depth` deep (built as text:
    json.dumps itself would hit the recursion limit)."""
    return json.dumps(value).replace(json.dumps(DEEP), "[" * depth + '"x"' + "]" * depth)


def queue_entry(prompt_id: str, number: int = 1, graph: dict | None = None, extra: dict | None = None) -> list:
    graph = graph if graph is not None else {
        "3": {"class_type": "KSampler", "inputs": {"seed": 1, "steps": 20}, "_meta": {"title": "KSampler"}},
        "9": {"class_type": "SaveImage", "inputs": {"images": ["3", 0]}, "_meta": {"title": "Save"}}}
    return [number, prompt_id, graph, extra if extra is not None else {"client_id": "someone-else"}, ["9"]]


# ================================================================================================
# The server (its own process)

class HostileServer:
    def __init__(self, host: str = "127.0.0.1", port: int = 0):
        from gevent.server import StreamServer
        self.routes: dict[str, dict] = {}
        self.conns: list[dict] = []
        self.server = StreamServer((host, port), self._handle)

    def serve_forever(self) -> None:
        self.server.start()
        print(f"port {self.server.server_port}", flush=True)
        self.server.serve_forever()

    # --- HTTP ---
    def _handle(self, sock, _addr) -> None:
        try:
            while True:
                req = _read_request(sock)
                if req is None:
                    return
                method, path, headers, body = req
                if path.split("?")[0] == "/ws" and headers.get("upgrade", "").lower() == "websocket":
                    self._websocket(sock, headers)
                    return
                self._answer(sock, method, path, body)
        except OSError:
            pass
        finally:
            sock.close()

    def _answer(self, sock, method: str, path: str, body: bytes) -> None:
        route = path.split("?")[0]
        if route == "/_hostile/http":
            spec = json.loads(body)
            self.routes[spec.pop("route")] = spec
            return _send(sock, 200, "application/json", b"{}")
        if route == "/_hostile/ws":
            action = json.loads(body)
            import gevent
            jobs = [gevent.spawn(self._act, c, dict(action)) for c in self.conns if c["closed_at"] is None]
            gevent.joinall(jobs)
            return _send(sock, 200, "application/json", json.dumps({"conns": len(jobs)}).encode())
        if route == "/_hostile/stats":
            stats = [{k: v for k, v in c.items() if k != "sock"} for c in self.conns]
            return _send(sock, 200, "application/json", json.dumps(stats).encode())
        key = _route_key(method, route)
        spec = self.routes.get(key)
        if spec is None:
            status, ctype, payload = _default(key, route, body)
            return _send(sock, status, ctype, payload)
        payload = (json.dumps(spec["body_json"]).encode() if "body_json" in spec
                   else spec.get("body", "").encode())
        _send(sock, spec.get("status", 200), spec.get("ctype", "application/json"), payload,
              trickle=spec.get("trickle"))

    # --- WebSocket ---
    def _websocket(self, sock, headers) -> None:
        import gevent
        spec = self.routes.get("ws", {})
        accept = base64.b64encode(hashlib.sha1((headers["sec-websocket-key"] + WS_GUID).encode()).digest())
        if spec.get("status", 101) != 101:
            return _send(sock, spec["status"], spec.get("ctype", "text/html"), spec.get("body", "").encode())
        head = (b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                b"Sec-WebSocket-Accept: " + accept + b"\r\n\r\n")
        if spec.get("trickle"):
            for i in range(len(head)):
                sock.sendall(head[i:i + 1])
                gevent.sleep(spec["trickle"])
        else:
            sock.sendall(head)
        conn = {"id": len(self.conns), "opened_at": time.time(), "closed_at": None, "sent": 0,
                "actions": [], "received": 0, "sock": sock}
        self.conns.append(conn)
        sock.sendall(ws_frame(0x1, json.dumps({"type": "status", "data": {"status": {
            "exec_info": {"queue_remaining": 0}}, "sid": "hostile"}}).encode()))
        try:
            while True:   # read the client's frames: flags, pings, close; EOF is the peer dropping us
                hdr = _recv_exact(sock, 2)
                size = hdr[1] & 0x7F
                if size == 126:
                    size = struct.unpack("!H", _recv_exact(sock, 2))[0]
                elif size == 127:
                    size = struct.unpack("!Q", _recv_exact(sock, 8))[0]
                mask = _recv_exact(sock, 4) if hdr[1] & 0x80 else b""
                payload = _recv_exact(sock, size)
                conn["received"] += 1
                opcode = hdr[0] & 0x0F
                if opcode == 0x9:
                    data = bytes(b ^ mask[i % 4] for i, b in enumerate(payload)) if mask else payload
                    _safe_sendall(conn, ws_frame(0xA, data))
                elif opcode == 0x8:
                    data = bytes(b ^ mask[i % 4] for i, b in enumerate(payload)) if mask else payload
                    conn["close_code"] = struct.unpack("!H", data[:2])[0] if len(data) >= 2 else None
        except OSError:
            pass
        finally:
            conn["closed_at"] = time.time()

    def _act(self, conn: dict, action: dict) -> None:
        action["started_at"] = time.time()
        conn["actions"].append(action)
        kind = action["do"]
        try:
            if kind == "fragments":    # one message of `total` bytes in `frag`-byte fragments
                opcode = 0x2 if action.get("binary") else 0x1
                msg = (preview_message(action["total"] - 60) if action.get("binary")
                       else text_message(action["total"]))
                view, frag = memoryview(msg), action["frag"]
                chunks = []
                for off in range(0, len(view), frag):
                    first, last = off == 0, off + frag >= len(view)
                    chunks.append(ws_frame(opcode if first else 0x0, bytes(view[off:off + frag]), fin=last))
                    if len(chunks) >= 64:
                        _safe_sendall(conn, b"".join(chunks))
                        chunks = []
                _safe_sendall(conn, b"".join(chunks))
            elif kind == "flood":      # `n` copies of one text message, as fast as the socket takes them
                frame = ws_frame(0x1, action["msg"].encode())
                batch = frame * max(1, (1 << 20) // len(frame))
                per = len(batch) // len(frame)
                left = action["n"]
                while left > 0:
                    k = min(per, left)
                    _safe_sendall(conn, batch if k == per else frame * k)
                    left -= k
            elif kind == "frame":      # one frame declaring `size` bytes; its payload streamed until cut off
                size, opcode = action["size"], 0x2 if action.get("binary") else 0x1
                _safe_sendall(conn, ws_frame(opcode, b"", declared=size))
                chunk = b"a" * (1 << 20)
                sent = 0
                while sent < size:
                    piece = chunk if size - sent >= len(chunk) else chunk[:size - sent]
                    _safe_sendall(conn, piece)
                    sent += len(piece)
            elif kind == "preview":    # one binary preview of `size` image bytes
                image = preview_message(action["size"], action.get("prompt_id", "p-hostile"))
                _safe_sendall(conn, ws_frame(0x2, image))
            elif kind == "text":       # one text frame, as given
                _safe_sendall(conn, ws_frame(0x1, action["payload"].encode()))
            elif kind == "close":
                conn["sock"].close()
        except OSError as exc:
            action["error"] = f"{type(exc).__name__}: {exc}"
        action["ended_at"] = time.time()


def _safe_sendall(conn: dict, data: bytes) -> None:
    conn["sock"].sendall(data)
    conn["sent"] += len(data)


def _route_key(method: str, route: str) -> str:
    if route == "/queue":
        return "queue" if method == "GET" else "queue_post"
    if route.startswith("/history"):
        return "history"
    if route.startswith("/api/jobs") and route.endswith("/cancel"):
        return "api_cancel"
    if route.startswith("/api/jobs"):
        return "api_jobs"
    return route.strip("/").replace("/", "_")


def _default(key: str, route: str, body: bytes) -> tuple[int, str, bytes]:
    js = "application/json"
    if key == "queue":
        return 200, js, json.dumps(EMPTY_QUEUE).encode()
    if key == "history":
        return 200, js, b"{}"
    if key == "system_stats":
        return 200, js, json.dumps({"system": {"comfyui_version": "0.3.64-hostile"}, "devices": []}).encode()
    if key == "prompt":
        sent = json.loads(body or b"{}")
        return 200, js, json.dumps({"prompt_id": sent.get("prompt_id") or str(uuid.uuid4()), "number": 1,
                                    "node_errors": {}}).encode()
    if key in ("interrupt", "queue_post"):
        return 200, "application/octet-stream", b""
    return 404, "text/plain", b"404: Not Found"


def _read_request(sock):
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(4096)
        if not chunk:
            return None
        data += chunk
        if len(data) > 1 << 16:
            raise OSError("request head too long")
    head, _, rest = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    method, path, _ = lines[0].split(" ", 2)
    headers = {}
    for line in lines[1:]:
        k, _, v = line.partition(":")
        headers[k.strip().lower()] = v.strip()
    need = int(headers.get("content-length") or 0)
    while len(rest) < need:
        chunk = sock.recv(65536)
        if not chunk:
            return None
        rest += chunk
    return method, path, headers, rest[:need]


def _send(sock, status: int, ctype: str, payload: bytes, trickle: float | None = None) -> None:
    head = (f"HTTP/1.1 {status} X\r\nContent-Type: {ctype}\r\nContent-Length: {len(payload)}\r\n\r\n").encode()
    if not trickle:
        sock.sendall(head + payload)
        return
    import gevent
    sock.sendall(head)
    for i in range(len(payload)):
        sock.sendall(payload[i:i + 1])
        gevent.sleep(trickle)


def _recv_exact(sock, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        chunk = sock.recv(min(n - len(buf), 1 << 16))
        if not chunk:
            raise OSError("peer closed")
        buf += chunk
    return bytes(buf)


# ================================================================================================
# The harness side (test process): start it, steer it

class HostileComfy:
    """The hostile server in a subprocess; `url` for the app's COMFYUI_URL."""

    def __init__(self):
        self.proc = subprocess.Popen([sys.executable, os.path.abspath(__file__), "serve"],
                                     stdout=subprocess.PIPE, text=True)
        line = self.proc.stdout.readline().split()
        if not line or line[0] != "port":
            raise RuntimeError("the hostile server did not start")
        self.port = int(line[1])
        self.url = f"http://127.0.0.1:{self.port}"

    def _post(self, path: str, body: dict, timeout: float = 600):
        import requests
        resp = requests.post(self.url + path, json=body, timeout=timeout)
        resp.raise_for_status()
        return resp.json()

    def http(self, route: str, **spec) -> None:
        self._post("/_hostile/http", {"route": route, **spec})

    def ws(self, timeout: float = 600, **action) -> dict:
        return self._post("/_hostile/ws", action, timeout=timeout)

    def stats(self) -> list[dict]:
        import requests
        return requests.get(self.url + "/_hostile/stats", timeout=30).json()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


class Probe:
    """Times GETs of `urls` in turn, from its own process, until `stop()`; returns {url: [seconds]}."""

    def __init__(self, *urls: str, interval: float = 0.05):
        self.urls = urls
        self.proc = subprocess.Popen([sys.executable, os.path.abspath(__file__), "probe", str(interval), *urls],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        if self.proc.stdout.readline().strip() != "probing":
            raise RuntimeError("the probe did not start")

    def stop(self) -> dict[str, list[float]]:
        out, _ = self.proc.communicate("", timeout=120)
        return json.loads(out.strip().splitlines()[-1])

    def worst(self) -> dict[str, float]:
        return {u: max(v) if v else float("inf") for u, v in self.stop().items()}


def _probe(interval: float, urls: list[str]) -> None:
    import http.client
    import threading
    from urllib.parse import urlsplit
    times: dict[str, list[float]] = {u: [] for u in urls}
    done = threading.Event()

    def watch_stdin():
        sys.stdin.read()
        done.set()
    threading.Thread(target=watch_stdin, daemon=True).start()
    print("probing", flush=True)
    while not done.is_set():
        for url in urls:
            parts = urlsplit(url)
            t0 = time.perf_counter()
            try:
                conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=120)
                conn.request("GET", parts.path or "/")
                conn.getresponse().read()
                conn.close()
            except OSError:
                pass
            times[url].append(time.perf_counter() - t0)
        done.wait(interval)
    try:
        print(json.dumps(times), flush=True)
    except BrokenPipeError:   # the test failed before reading it
        pass


if __name__ == "__main__":
    if sys.argv[1] == "serve":
        HostileServer().serve_forever()
    elif sys.argv[1] == "probe":
        _probe(float(sys.argv[2]), sys.argv[3:])
