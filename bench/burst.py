"""Burst soak (issue #9): N jobs posted at once through the monitor, F foreign jobs straight into ComfyUI,
S browser sockets open; counts what must be zero: duplicate start events, queued jobs without a position,
gaps in the positions, polls with two running jobs, and start times that differ from ComfyUI's.

    .venv/bin/python bench/burst.py [--jobs 60] [--foreign 20] [--sockets 20] [--comfy-url URL] [--quick]

Without --comfy-url a fake ComfyUI (SimComfy with the bench engine) runs in its own process; with it, a
real ComfyUI with the `monitor_probe` custom node (shared/comfyui) is used.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import websocket

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from benchlib import Role, http_json, machine, monitor_role, sampler_prompt, wait_connected  # noqa: E402

FINISHED = {"completed", "failed", "interrupted", "cancelled", "stalled"}


def probe_prompt(seed: int, steps: int = 8, delay_ms: int = 40) -> dict:
    """The monitor_probe graph from shared/comfyui/README.md: a sampler without model weights."""
    return {"1": {"class_type": "EmptyImage", "inputs": {"width": 64, "height": 64, "batch_size": 1, "color": seed}},
            "3": {"class_type": "MonitorProbeSampler", "inputs": {
                "image": ["1", 0], "steps": steps, "delay_ms": delay_ms, "seed": seed, "fail_at_step": 0,
                "preview_px": 64, "preview_format": "JPEG"}},
            "7": {"class_type": "SaveImage", "inputs": {"images": ["3", 0], "filename_prefix": "burst"}}}


def comfy_history(comfy: str, job_id: str) -> dict:
    return http_json("GET", f"{comfy}/history/{job_id}") or {}


def job_status(mon: str, job_id: str) -> str:
    import urllib.error
    try:
        return http_json("GET", f"{mon}/api/admin/jobs/{job_id}")["status"]
    except urllib.error.HTTPError as exc:
        if exc.code == 404:   # a foreign job not adopted yet
            return "unknown"
        raise


class Viewer(threading.Thread):
    """One browser socket on /api/run/ws: counts job.started events per job."""

    def __init__(self, url: str):
        super().__init__(daemon=True)
        self.ws = websocket.create_connection(url, timeout=60)
        self.started: Counter = Counter()
        self.frames = 0
        self.stop = False

    def run(self):
        while not self.stop:
            try:
                opcode, data = self.ws.recv_data()
            except Exception:
                return
            self.frames += 1
            if opcode == websocket.ABNF.OPCODE_TEXT:
                msg = json.loads(data)
                if msg.get("type") == "event" and msg.get("kind") == "job.started":
                    self.started[msg["data"]["id"]] += 1


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--jobs", type=int, default=60)
    ap.add_argument("--foreign", type=int, default=20)
    ap.add_argument("--sockets", type=int, default=20)
    ap.add_argument("--comfy-url", help="a real ComfyUI with monitor_probe (default: a fake one)")
    ap.add_argument("--quick", action="store_true", help="smoke size: 8 jobs, 3 foreign, 3 sockets")
    args = ap.parse_args()
    if args.quick:
        args.jobs, args.foreign, args.sockets = 8, 3, 3
    print(machine())
    tmp = tempfile.mkdtemp(prefix="bench-burst-")
    upstream = None
    if args.comfy_url:
        comfy = args.comfy_url.rstrip("/")
        make_prompt = probe_prompt

        class _Url:
            port = int(comfy.rsplit(":", 1)[1])
        monitor = monitor_role(tmp, _Url)
    else:
        upstream = Role("upstream", log=os.path.join(tmp, "upstream.log"))
        comfy = f"http://127.0.0.1:{upstream.port}"
        monitor = monitor_role(tmp, upstream)

        def make_prompt(seed):
            return sampler_prompt(6, 15, seed=seed)
    mon = f"http://127.0.0.1:{monitor.port}"
    viewers = []
    try:
        wait_connected(mon)
        viewers = [Viewer(mon.replace("http", "ws", 1) + "/api/run/ws") for _ in range(args.sockets)]
        for v in viewers:
            v.start()
        polls = {"n": 0, "null_position": 0, "gaps": 0, "two_running": 0}
        seen: dict[str, str] = {}
        done = threading.Event()

        def poll():
            while not done.is_set():
                jobs = http_json("GET", mon + "/api/admin/queue")["jobs"]
                polls["n"] += 1
                queued = [j["queue_position"] for j in jobs if j["status"] == "queued"]
                polls["null_position"] += sum(1 for p in queued if p is None)
                polls["gaps"] += queued != list(range(1, len(queued) + 1))
                polls["two_running"] += sum(1 for j in jobs if j["status"] == "running") > 1
                for j in jobs:
                    seen[j["id"]] = j["status"]
                time.sleep(0.05)

        poller = threading.Thread(target=poll, daemon=True)
        poller.start()
        t0 = time.time()
        with ThreadPoolExecutor(args.jobs + args.foreign) as pool:
            mine = [pool.submit(http_json, "POST", mon + "/api/run", {"prompt": make_prompt(i + 1)})
                    for i in range(args.jobs)]
            foreign = [pool.submit(http_json, "POST", comfy + "/prompt",
                                   {"prompt": make_prompt(10_000 + i), "client_id": f"ui-{uuid.uuid4().hex[:8]}"})
                       for i in range(args.foreign)]
            answers = [f.result() for f in mine]
            foreign_ids = [f.result()["prompt_id"] for f in foreign]
        submit_s = time.time() - t0
        ids = [a["id"] for a in answers] + foreign_ids
        queued_answers = [a for a in answers if a["status"] == "queued"]
        null_at_submit = sum(1 for a in queued_answers if a.get("queue_position") is None)
        deadline = time.time() + 60 + 3 * len(ids)
        statuses = {}
        while time.time() < deadline:
            statuses = {i: job_status(mon, i) for i in ids}
            if all(s in FINISHED for s in statuses.values()) or (
                    all(s in FINISHED or s == "unknown" for s in statuses.values())
                    and all(i in comfy_history(comfy, i) for i, s in statuses.items() if s == "unknown")):
                break
            time.sleep(0.5)
        done.set()
        poller.join()
        time.sleep(1.0)   # the last events reach every socket
        dup_events = sum(max(0, n - 1) for v in viewers for n in v.started.values())
        # Foreign jobs the monitor first saw running (or saw only queued and then in /history) aside:
        # every job submitted through the monitor must have had exactly one start event on every socket.
        missing_events = sum(1 for v in viewers for a in answers
                             if statuses.get(a["id"]) == "completed" and not v.started[a["id"]])
        start_diffs = []
        for i in ids:
            if statuses.get(i) == "unknown":
                continue
            record = http_json("GET", f"{mon}/api/admin/jobs/{i}")
            entry = http_json("GET", f"{comfy}/history/{i}").get(i) or {}
            start = next((m[1].get("timestamp") for m in (entry.get("status") or {}).get("messages") or []
                          if m[0] == "execution_start"), None)
            if start is not None and record.get("started_at"):
                from monitor.timeutil import epoch_from_iso
                start_diffs.append(abs(epoch_from_iso(record["started_at"]) - start / 1000.0))
        print(f"{args.jobs} jobs through the monitor + {args.foreign} foreign, {args.sockets} sockets; "
              f"submitted in {submit_s:.1f} s, all settled after {time.time() - t0:.1f} s")
        print(f"final statuses: {dict(Counter(statuses.values()))} (unknown: foreign prompts that ComfyUI ran "
              "entirely between two of the monitor's looks at /queue)")
        print(f"submit answers without a queue position: {null_at_submit} of {len(queued_answers)} "
              f"queued ({args.jobs - len(queued_answers)} had already started)")
        print(f"queue polls: {polls['n']}; with a queued job lacking a position: {polls['null_position']}; "
              f"with gaps in the positions: {polls['gaps']}; with two running jobs: {polls['two_running']}")
        print(f"job.started events: duplicates {dup_events}, missing {missing_events} "
              f"(over {len(viewers)} sockets; missing counts jobs submitted through the monitor)")
        if start_diffs:
            print(f"started_at vs ComfyUI's execution_start: max difference {max(start_diffs) * 1000:.1f} ms "
                  f"over {len(start_diffs)} jobs with a ComfyUI timestamp")
        else:
            print("started_at vs ComfyUI's execution_start: no ComfyUI timestamps (the fake's bench engine sends none)")
    finally:
        for v in viewers:
            v.stop = True
            try:
                v.ws.close()
            except Exception:
                pass
        monitor.stop()
        if upstream is not None:
            upstream.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
