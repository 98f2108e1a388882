"""Each bench/ script runs at its smallest size and prints its figure lines (no timing asserts: CI machines
are too noisy for that; the figures themselves live in bench/RESULTS.md)."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

SCRIPTS = [
    ("fanout.py", ["--quick"], ["machine:", "monitor  previews p50", "aiohttp  previews p50",
                                "CPU ratio", "summary: 20 |"]),
    ("slow_client.py", ["--quick"], ["machine:", "others' previews without the stall", "p99 ratio stalled/calm",
                                     "slow client's outbox held by the hub"]),
    ("api_latency.py", ["--quick"], ["machine:", "GET /api/admin/queue", "GET /admin/queue/cards"]),
    ("memory.py", ["--quick"], ["machine:", "final states: 150 jobs, 150 as expected, 0 wrong", "RSS growth"]),
    ("ingest.py", ["--seconds", "0.3"], ["msg/s"]),
    ("loop_lag.py", ["--duration", "1", "--slow", "0.3", "--interval", "0.5"], ["machine:", "with the sampler"]),
    ("burst.py", ["--quick"], ["machine:", "duplicates 0, missing 0", "with two running jobs: 0"]),
    ("fleet.py", ["--quick"], ["machine:", "monitor  server CPU", "aiohttp  server CPU",
                               "relay CPU per delivered frame: monitor/aiohttp", "2 hosts x 10 jobs submitted",
                               "GET /api/admin/queue ", "GET /api/admin/queue?limit=1000"]),
]


@pytest.mark.parametrize("script,args,expected", SCRIPTS, ids=[s[0] for s in SCRIPTS])
def test_bench_script_quick(script, args, expected):
    path = os.path.join(ROOT, "bench", script)
    # A clean environment: no gevent patching inherited from this test process matters (new process).
    proc = subprocess.run([sys.executable, path, *args], cwd=ROOT, capture_output=True, text=True, timeout=90)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    for needle in expected:
        assert needle in proc.stdout, f"{needle!r} not in output:\n{proc.stdout[-3000:]}"
