"""Loads the recorded ComfyUI 0.3.64 traffic (tests/fixtures/comfyui-0.3.64, copied from shared/fixtures)."""
from __future__ import annotations

import base64
import json
import os
from dataclasses import dataclass
from functools import lru_cache

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures", "comfyui-0.3.64")


def scenario_names() -> list[str]:
    return sorted(f[:-len(".jsonl")] for f in os.listdir(FIXTURES) if f.endswith(".jsonl"))


@lru_cache(maxsize=None)
def load(name: str) -> tuple[dict, ...]:
    """All lines of one recording, parsed. `name` may omit the .jsonl suffix."""
    if not name.endswith(".jsonl"):
        name += ".jsonl"
    with open(os.path.join(FIXTURES, name), encoding="utf-8") as fh:
        return tuple(json.loads(line) for line in fh if line.strip())


@dataclass(frozen=True)
class Frame:
    """One WebSocket frame as received by a recorded socket."""
    conn: str
    t: float
    text: str | None = None      # the raw JSON text of a text frame
    binary: bytes | None = None  # the whole binary frame, headers included

    @property
    def msg(self) -> dict | None:
        return None if self.text is None else json.loads(self.text)


def frames(name: str, conn: str) -> list[Frame]:
    """Frames received by socket `conn`, in exact arrival order."""
    out = []
    for line in load(name):
        if line.get("conn") != conn:
            continue
        if line["kind"] == "ws_text":
            out.append(Frame(conn, line["t"], text=json.dumps(line["msg"])))
        elif line["kind"] == "ws_binary":
            out.append(Frame(conn, line["t"], binary=base64.b64decode(line["b64"])))
    return out


def http(name: str, method: str | None = None, path_prefix: str = "") -> list[dict]:
    return [l for l in load(name) if l["kind"] == "http"
            and (method is None or l["method"] == method) and l["path"].startswith(path_prefix)]


def posted_prompts(name: str) -> list[dict]:
    """The successful POST /prompt exchanges of a recording: request body and response."""
    return [l for l in http(name, "POST", "/prompt") if l.get("status") == 200]
