"""Records the relay node's traffic against a real ComfyUI 0.3.64 into tests/fixtures (same line format as the
other recordings, see tests/fixtures/comfyui-0.3.64/README.md): a 'monitor' socket subscribes to the node, then
'ui' (feature flags, as ComfyUI's frontend) and 'ui_legacy' (none) each queue a prompt with their own client id.
Needs the node installed (`python -m monitor install-node PATH`, ComfyUI restarted) and the monitor_probe node.

    python bench/record_relay.py [--url http://127.0.0.1:8188] [--out tests/fixtures/comfyui-0.3.64/11_relay_node.jsonl]
"""
from __future__ import annotations

import argparse
import base64
import copy
import json
import os
import random
import struct
import sys
import threading
import time
import uuid

import requests
import websocket

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tests"))
from recordings import posted_prompts  # noqa: E402

NAMES = {1: "PREVIEW_IMAGE", 3: "TEXT", 4: "PREVIEW_IMAGE_WITH_METADATA"}


class Recorder:
    def __init__(self, url: str, name: str, description: str):
        self.url = url.rstrip("/")
        self.lines: list[dict] = []
        self.lock = threading.Lock()
        self.t0 = time.monotonic()
        self.conns: dict[str, websocket.WebSocket] = {}
        self.readers: dict[str, threading.Thread] = {}
        self.line("scenario", name=name, description=description, comfyui_url=self.url, recorder="bench/record_relay.py")

    def line(self, kind: str, **fields) -> dict:
        with self.lock:
            entry = {"seq": len(self.lines), "t": round(time.monotonic() - self.t0, 6),
                     "wall_ms": int(time.time() * 1000), "kind": kind, **fields}
            self.lines.append(entry)
            return entry

    def open(self, conn: str, client_id: str, flags: dict | None) -> None:
        url = self.url.replace("http", "ws", 1) + f"/ws?clientId={client_id}"
        ws = websocket.create_connection(url, timeout=30)
        self.line("ws_open", conn=conn, url=url, client_id=client_id, sends_feature_flags=flags is not None)
        if flags is not None:
            msg = {"type": "feature_flags", "data": flags}
            ws.send(json.dumps(msg))
            self.line("ws_send", conn=conn, msg=msg)
        self.conns[conn] = ws
        self.readers[conn] = threading.Thread(target=self._read, args=(conn, ws), daemon=True)
        self.readers[conn].start()

    def _read(self, conn: str, ws) -> None:
        while True:
            try:
                opcode, data = ws.recv_data()
            except Exception as exc:  # noqa: BLE001 - our own close, or the server went away
                self.line("ws_closed", conn=conn, close_code=None, exception=None if conn in self.closing else str(exc))
                return
            if opcode == websocket.ABNF.OPCODE_TEXT:
                self.line("ws_text", conn=conn, msg=json.loads(data))
            elif opcode == websocket.ABNF.OPCODE_BINARY:
                self.line("ws_binary", conn=conn, binary=True, len=len(data), **decode(data),
                          b64=base64.b64encode(data).decode())
            elif opcode == websocket.ABNF.OPCODE_CLOSE:
                self.line("ws_end_frame", conn=conn, msg_type="CLOSE", data="None", extra=None)
                return

    closing: set[str] = set()

    def http(self, method: str, path: str, why: str, body=None) -> dict:
        t_request = round(time.monotonic() - self.t0, 6)
        resp = requests.request(method, self.url + path, json=body, timeout=30)
        self.line("http", method=method, path=path, request=body, why=why, t_request=t_request,
                  status=resp.status_code, content_type=resp.headers.get("Content-Type"), response=resp.json())
        return resp.json()

    def wait(self, conn: str, match, timeout: float = 120.0) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.lock:
                for line in self.lines:
                    if line.get("conn") == conn and line["kind"] == "ws_text" and match(line["msg"]):
                        return line
            time.sleep(0.02)
        raise TimeoutError(f"{conn}: nothing matched within {timeout} s")

    def close_all(self) -> None:
        for conn, ws in self.conns.items():
            self.closing.add(conn)
            ws.close()
            self.line("ws_close_sent", conn=conn)
            self.readers[conn].join(5)
        self.line("end")

    def save(self, path: str) -> None:
        with open(path, "w", encoding="utf-8") as fh:
            for line in self.lines:
                fh.write(json.dumps(line, separators=(",", ":")) + "\n")


def decode(raw: bytes) -> dict:
    event, word = struct.unpack(">II", raw[:8])
    out = {"event_type": event, "image_type": word}
    if event == 4:
        meta = json.loads(raw[8:8 + word])
        image = raw[8 + word:]
        out["decoded"] = {"event": NAMES[4], "metadata_len": word, "metadata": meta, "image_offset": 8 + word,
                          "image_len": len(image), "image_magic_hex": image[:4].hex()}
    elif event == 1:
        out["decoded"] = {"event": NAMES[1], "image_format": {1: "JPEG", 2: "PNG"}.get(word), "image_offset": 8,
                          "image_len": len(raw) - 8, "image_magic_hex": raw[8:12].hex()}
    elif event == 3:
        out["decoded"] = {"event": NAMES[3], "node_id_len": word, "node_id": raw[8:8 + word].decode(),
                          "text": raw[8 + word:].decode()}
    return out


def run_prompt(rec: Recorder, conn: str, client_id: str, seed: int, workflow_name: str) -> str:
    recorded = posted_prompts("01b_happy_path_feature_flags")[0]["request"]
    body = copy.deepcopy(recorded)
    body["client_id"] = client_id
    body["prompt"]["3"]["inputs"].update(seed=seed, steps=10, delay_ms=150)
    body["extra_data"]["extra_pnginfo"]["workflow"]["name"] = workflow_name
    rec.http("GET", "/queue", "before submit")
    answer = rec.http("POST", "/prompt", "submit", body)
    pid = answer["prompt_id"]
    rec.wait(conn, lambda m: m["type"] == "progress" and m["data"].get("value") == 5)
    rec.http("GET", "/queue", "mid-run")
    rec.http("GET", f"/history/{pid}", "mid-run")
    rec.wait(conn, lambda m: m["type"] in ("execution_success", "execution_error")
             and m["data"].get("prompt_id") == pid)
    rec.wait("monitor", lambda m: m["type"] == "executing" and m["data"].get("node") is None
             and m["data"].get("prompt_id") == pid, timeout=10)
    time.sleep(0.3)
    rec.http("GET", "/queue", "after completion")
    rec.http("GET", f"/history/{pid}", "after completion")
    return pid


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--url", default="http://127.0.0.1:8188")
    ap.add_argument("--out", default=os.path.join(ROOT, "tests", "fixtures", "comfyui-0.3.64", "11_relay_node.jsonl"))
    args = ap.parse_args()
    rec = Recorder(args.url, "11_relay_node",
                   "The relay node (monitor/comfy_node) installed: 'monitor' subscribes with POST "
                   "/monitor/relay/subscribe, then 'ui' (feature_flags, as ComfyUI's frontend) and 'ui_legacy' (no "
                   "feature_flags) each post a prompt with their own client_id. 'monitor' receives both prompts' "
                   "messages and previews (relayed, unchanged) besides the broadcasts.")
    tag = uuid.uuid4().hex[:12]
    mon, ui, legacy = f"mon-{tag}", f"ui-{tag}", f"legacy-{tag}"
    rec.open("monitor", mon, {"supports_preview_metadata": True})
    rec.wait("monitor", lambda m: m["type"] == "feature_flags")
    info = rec.http("GET", "/monitor/relay", "probe the node")
    if "version" not in info:
        print("no relay node in this ComfyUI", file=sys.stderr)
        return 1
    rec.http("POST", "/monitor/relay/subscribe", "subscribe", {"client_id": mon})
    rec.open("ui", ui, {"supports_preview_metadata": True, "supports_manager_v4_ui": True})
    rec.wait("ui", lambda m: m["type"] == "feature_flags")
    rec.open("ui_legacy", legacy, None)
    rec.wait("ui_legacy", lambda m: m["type"] == "status")
    time.sleep(0.3)
    seed = random.randint(1000, 10 ** 9)
    run_prompt(rec, "ui", ui, seed, "relay_ui")
    run_prompt(rec, "ui_legacy", legacy, seed + 1, "relay_legacy")
    rec.http("GET", "/monitor/relay", "after the runs")
    rec.close_all()
    rec.save(args.out)
    print(f"wrote {len(rec.lines)} lines to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
