"""Worst gevent loop lag while the telemetry sampler runs against a slow nvidia-smi.

A fake nvidia-smi (a real subprocess, 2 GPUs, SLOW seconds per call) is put first on PATH; the
sampler runs for DURATION seconds while a probe greenlet sleeps 5 ms at a time and records how late
it wakes up. Target: worst lag <= 20 ms. The same probe first runs without the sampler for the same
time, so the machine's own noise (other processes, a shared CPU) can be told apart from the sampler's;
and a greenlet trace hook measures the sampler greenlet's longest run between two yields, i.e. the
longest the sampler itself ever held the loop.

    .venv/bin/python bench/loop_lag.py [--duration 15] [--slow 1.5] [--check]
"""
from gevent import monkey

monkey.patch_all()

import argparse  # noqa: E402
import os  # noqa: E402
import platform  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402

import gevent  # noqa: E402
import greenlet  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from monitor.config import Config  # noqa: E402
from monitor.telemetry import Telemetry  # noqa: E402

TARGET_MS = 20.0
PROBE_S = 0.005
CSV = ("0, GPU-1f6b6bd1, 37, 24564, 6141, 18423, 550.54.15, NVIDIA GeForce RTX 4090, [N/A], Disabled, Disabled, 61\n"
       "1, GPU-7a2f2d0e, 92, 81559, 70144, 11415, 550.54.15, NVIDIA H100 80GB HBM3, 1654022012345, Disabled, Disabled, 48\n")


def cpu_model():
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--duration", type=float, default=15.0)
    ap.add_argument("--slow", type=float, default=1.5, help="seconds each nvidia-smi call takes")
    ap.add_argument("--interval", type=float, default=1.5)
    ap.add_argument("--check", action="store_true", help=f"exit 1 if the worst lag exceeds {TARGET_MS} ms")
    args = ap.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        smi = os.path.join(tmp, "nvidia-smi")
        with open(smi, "w") as fh:
            fh.write(f"#!/bin/sh\necho $$ >> {tmp}/calls\nsleep {args.slow}\ncat <<'CSV'\n{CSV}CSV\n")
        os.chmod(smi, 0o755)
        os.environ["PATH"] = tmp + os.pathsep + os.environ["PATH"]

        tel = Telemetry(Config(data_dir=tmp), interval=args.interval)
        baseline, lags = [], []

        def probe(into):
            while True:
                t0 = time.perf_counter()
                gevent.sleep(PROBE_S)
                into.append(max(0.0, time.perf_counter() - t0 - PROBE_S))

        prober = gevent.spawn(probe, baseline)
        gevent.sleep(args.duration)
        prober.kill()
        slices, entered = [], [None]

        def trace(event, args):  # how long the sampler greenlet runs each time it is switched in
            if event in ("switch", "throw"):
                origin, target = args
                now = time.perf_counter()
                if origin is tel._greenlet and entered[0] is not None:
                    slices.append(now - entered[0])
                    entered[0] = None
                if target is tel._greenlet:
                    entered[0] = now

        prober = gevent.spawn(probe, lags)
        greenlet.settrace(trace)
        tel.start()
        gevent.sleep(args.duration)
        greenlet.settrace(None)
        tel.stop()
        prober.kill()
        with open(os.path.join(tmp, "calls")) as fh:
            calls = len(fh.read().split())
        gpu = tel.snapshot()["gpu"]

    def figures(values):
        values = sorted(values)
        return (values[-1] * 1000, values[int(len(values) * 0.99) - 1] * 1000, values[len(values) // 2] * 1000)

    worst, p99, p50 = figures(lags)
    b_worst, b_p99, b_p50 = figures(baseline)
    print(f"machine: {platform.platform()}; CPU: {cpu_model()} x{os.cpu_count()}; "
          f"Python {platform.python_version()} ({platform.python_implementation()})")
    print(f"sampler: interval {args.interval} s, nvidia-smi {args.slow} s/call, {calls} calls in "
          f"{args.duration:g} s, GPUs seen: {[d['name'] for d in gpu['devices']]}, stale={gpu['stale']}")
    print(f"sampler greenlet: {len(slices)} runs on the loop, longest {max(slices) * 1000:.2f} ms")
    print(f"baseline, no sampler, {len(baseline)} probes: worst {b_worst:.2f} ms, p99 {b_p99:.2f} ms, p50 {b_p50:.2f} ms")
    print(f"with the sampler, {len(lags)} probes of {PROBE_S * 1000:g} ms: worst {worst:.2f} ms, p99 {p99:.2f} ms, p50 {p50:.2f} ms (target worst <= {TARGET_MS:g} ms: "
          f"{'OK' if worst <= TARGET_MS else 'MISSED'})")
    return 1 if args.check and worst > TARGET_MS else 0


if __name__ == "__main__":
    sys.exit(main())
