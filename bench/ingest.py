"""Ingest benchmark: replay every recorded frame through protocol parsing and the Tracker on one core.

Run: .venv/bin/python bench/ingest.py [--seconds 3]. Prints messages/s for parse + handle, and for
parse + handle + state() of every changed prompt after each message (what the service does).
"""
from __future__ import annotations

import argparse
import base64
import json
import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [ROOT, os.path.join(ROOT, "tests")]

from monitor.protocol import parse_binary, parse_text  # noqa: E402
from monitor.tracker import Tracker  # noqa: E402
from recordings import load, posted_prompts, scenario_names  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from benchlib import machine  # noqa: E402


def streams() -> list[tuple[list, list]]:
    """One (registrations, frames) stream per recorded socket; frames are raw str / bytes."""
    out = []
    for name in scenario_names():
        registrations = [(p["response"]["prompt_id"], p["request"]["prompt"]) for p in posted_prompts(name)]
        by_conn: dict[str, list] = {}
        for line in load(name):
            if line["kind"] == "ws_text":
                by_conn.setdefault(line["conn"], []).append(json.dumps(line["msg"]))
            elif line["kind"] == "ws_binary":
                by_conn.setdefault(line["conn"], []).append(base64.b64decode(line["b64"]))
        out += [(registrations, frames) for frames in by_conn.values()]
    return out


def replay(all_streams, with_state: bool) -> int:
    count = 0
    for registrations, frames in all_streams:
        tracker = Tracker(set())
        for pid, graph in registrations:
            tracker.register(pid, graph)
        for raw in frames:
            if isinstance(raw, str):
                tracker.handle(*parse_text(raw))
            else:
                tracker.handle_preview(parse_binary(raw))
            if with_state:
                for pid in tracker.pop_dirty():
                    tracker.state(pid)
        count += len(frames)
    return count


def measure(all_streams, with_state: bool, seconds: float) -> float:
    replay(all_streams, with_state)  # warm-up
    done, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        done += replay(all_streams, with_state)
    return done / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=3.0, help="measuring time per variant")
    args = parser.parse_args()
    print(machine())
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
    all_streams = streams()
    frames = sum(len(f) for _, f in all_streams)
    print(f"corpus:  {frames} frames from {len(all_streams)} recorded sockets, one core")
    for label, with_state in (("parse + handle", False), ("parse + handle + state() per change", True)):
        print(f"{label:38s} {measure(all_streams, with_state, args.seconds):>10,.0f} msg/s")


if __name__ == "__main__":
    main()
