"""A hostile ComfyUI against the real app (issue #10 items 3, 4, 5, 7, 8, 9): stalls, memory, time to react.

Every party is its own process: the hostile server (tests/hostile_comfy.py), the monitor (the real app, as
app.py serves it), a probe timing GET /healthz and GET /api/admin/queue every 50 ms, and where needed a
browser-like WebSocket client. For each abuse this prints the probe's worst answer time while it goes on
(target: under 1 s), the monitor's RSS before and at its peak (sampled every 20 ms with psutil), how long
the monitor took to drop the hostile connection, and what it logged.

    .venv/bin/python bench/hostile.py [--items 3,4,5,7,8,9] [--quick]
"""
from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from benchlib import PYTHON, ROOT, http_json, machine, monitor_role, rss  # noqa: E402

sys.path.insert(0, os.path.join(ROOT, "tests"))
from hostile_comfy import DEEP, LOGIN_PAGE, HostileComfy, Probe, queue_entry, with_deep  # noqa: E402

MB = 1 << 20

BROWSER = r"""
import json, sys, time, websocket
url, mode, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
ws = websocket.create_connection(url, timeout=60, origin=url.replace("ws", "http", 1).rsplit("/api", 1)[0])
print("connected", flush=True)
if mode == "flood":
    t0, sent = time.time(), 0
    try:
        for i in range(n):
            ws.send('{"type":"nope","i":%d}' % i)
            sent += 1
        took = time.time() - t0
        end = time.time() + 15
        while time.time() < end:
            frame = ws.recv_frame()
            if frame.opcode == 8:
                print(f"sent {sent} in {took:.2f} s, then closed with {int.from_bytes(frame.data[:2], 'big')}",
                      flush=True)
                break
        else:
            print(f"sent {sent} in {took:.2f} s, not closed 15 s later", flush=True)
    except Exception as exc:
        print(f"sent {sent} in {time.time() - t0:.2f} s, then {type(exc).__name__}", flush=True)
else:   # watch: the biggest binary frame received within n seconds
    biggest, end = 0, time.time() + n
    ws.settimeout(1)
    while time.time() < end:
        try:
            op, data = ws.recv_data()
        except websocket.WebSocketTimeoutException:
            continue
        except Exception:
            break
        if op == 2:
            biggest = max(biggest, len(data))
    print(f"biggest binary frame {biggest}", flush=True)
"""


def connected(url: str) -> bool:
    import urllib.error
    try:
        return bool(http_json("GET", url + "/healthz")["comfy"]["connected"])
    except urllib.error.HTTPError:   # 503 while not connected
        return False


def wait_connected(url: str, timeout: float = 30.0) -> None:
    deadline = time.time() + timeout
    while not connected(url):
        if time.time() > deadline:
            raise RuntimeError("the monitor did not connect to the hostile ComfyUI")
        time.sleep(0.1)


class Run:
    """One hostile server + one monitor + RSS sampling."""

    def __init__(self, tmp: str, name: str):
        self.dir = os.path.join(tmp, name)
        os.makedirs(self.dir)
        self.hostile = HostileComfy()
        self.monitor = monitor_role(self.dir, self.hostile)
        self.url = f"http://127.0.0.1:{self.monitor.port}"
        wait_connected(self.url)
        self.rss_base = rss(self.monitor.pid)
        self.rss_peak = self.rss_base
        self._sampling = True
        self._sampler = threading.Thread(target=self._sample, daemon=True)
        self._sampler.start()

    def _sample(self):
        while self._sampling:
            try:
                self.rss_peak = max(self.rss_peak, rss(self.monitor.pid))
            except Exception:  # noqa: BLE001
                return
            time.sleep(0.02)

    def probe(self) -> Probe:
        return Probe(self.url + "/healthz", self.url + "/api/admin/queue")

    def log(self) -> str:
        with open(os.path.join(self.dir, "monitor.log"), encoding="utf-8", errors="replace") as fh:
            return fh.read()

    def memory(self) -> str:
        return (f"RSS {self.rss_base / MB:.0f} MB before, peak {self.rss_peak / MB:.0f} MB, "
                f"now {rss(self.monitor.pid) / MB:.0f} MB")

    def drop_time(self, conn_index: int = 0) -> str:
        c = self.hostile.stats()[conn_index]
        if c["closed_at"] is None or not c["actions"]:
            return "connection not dropped"
        return f"dropped {c['closed_at'] - c['actions'][-1]['started_at']:.2f} s after the abuse began"

    def close(self):
        self._sampling = False
        self.monitor.stop()
        self.hostile.stop()


def job_status(r: Run, pid: str) -> str | None:
    import urllib.error
    try:
        return http_json("GET", f"{r.url}/api/admin/jobs/{pid}")["status"]
    except urllib.error.HTTPError:
        return None


def wait_adopted(r: Run, pid: str, timeout: float = 15.0) -> None:
    deadline = time.time() + timeout
    while job_status(r, pid) is None:
        if time.time() > deadline:
            raise RuntimeError(f"{pid} was not adopted")
        time.sleep(0.2)


def cancel(r: Run, pid: str, timeout: float = 60.0):
    """The HTTP status of POST .../cancel, or a sentence when none came within `timeout`."""
    import urllib.error
    import urllib.request
    req = urllib.request.Request(f"{r.url}/api/admin/jobs/{pid}/cancel", method="POST", headers={"Origin": r.url})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status
    except urllib.error.HTTPError as exc:
        return exc.code
    except OSError as exc:
        return f"no answer within {timeout:g} s ({type(exc).__name__})"


def worst(probe: Probe) -> str:
    w = probe.worst()
    return ", ".join(f"{u.split('/', 3)[-1]} worst {v * 1000:.0f} ms" for u, v in w.items())


def lines(log: str, pattern: str) -> int:
    return len(re.findall(pattern, log))


def item3(tmp, quick):
    r = Run(tmp, "item3")
    try:
        r.hostile.http("queue", body_json={"queue_running": [], "queue_pending": [queue_entry("ext-3", 7)]})
        wait_adopted(r, "ext-3")
        probe = r.probe()
        r.hostile.http("queue", status=200, ctype="text/html; charset=utf-8", body=LOGIN_PAGE)
        r.hostile.http("history", status=200, ctype="text/html; charset=utf-8", body=LOGIN_PAGE)
        time.sleep(4 if quick else 10)   # several reconciles (every 3 s)
        status = job_status(r, "ext-3")
        answer = cancel(r, "ext-3")
        after = job_status(r, "ext-3")
        print(f"item 3  /queue answers an HTML login page with 200: queued job after {4 if quick else 10} s: "
              f"{status}; cancel answered {answer}, job then {after}; {lines(r.log(), 'queue')} log lines about "
              f"/queue; {worst(probe)}")
    finally:
        r.close()


def item4(tmp, quick):
    total = (16 if quick else 64) * MB
    r = Run(tmp, "item4")
    try:
        probe = r.probe()
        t0 = time.time()
        r.hostile.ws(do="fragments", total=total, frag=64 * 1024)
        took = time.time() - t0
        time.sleep(0.5)
        print(f"item 4  {total // MB} MB text message in 64 KB fragments: sent in {took:.1f} s; {r.drop_time()}; "
              f"{worst(probe)}; {r.memory()}; log lines: {lines(r.log(), 'WebSocket')}")
    finally:
        r.close()


def item5(tmp, quick):
    n = 20_000 if quick else 100_000
    r = Run(tmp, "item5")
    try:
        probe = r.probe()
        t0 = time.time()
        r.hostile.ws(do="flood", n=n, msg='{"type": "progress", "data": {"value": 1, "max": 20, '
                                          '"prompt_id": "p-flood", "node": "3"}}')
        sent = time.time() - t0
        time.sleep(1)
        print(f"item 5  {n} progress messages from ComfyUI: sent in {sent:.1f} s; {worst(probe)}")
        probe = r.probe()
        ws_url = r.url.replace("http", "ws", 1) + "/api/run/ws"
        b = subprocess.Popen([PYTHON, "-c", BROWSER, ws_url, "flood", str(n)], stdout=subprocess.PIPE, text=True)
        b.stdout.readline()
        out, _ = b.communicate(timeout=600)
        print(f"item 5  a browser sending {n} messages on /api/run/ws: {out.strip()}; {worst(probe)}; "
              f"hub {http_json('GET', r.url + '/bench/stats')['hub']}")
    finally:
        r.close()


def item7(tmp, quick):
    r = Run(tmp, "item7")
    try:
        size = (50 if quick else 200) * MB
        probe = r.probe()
        r.hostile.ws(do="frame", size=size)
        time.sleep(0.5)
        print(f"item 7  one text frame declaring {size // MB} MB: {r.drop_time()}; {worst(probe)}; {r.memory()}")
        wait_connected(r.url)
        ws_url = r.url.replace("http", "ws", 1) + "/api/run/ws"
        b = subprocess.Popen([PYTHON, "-c", BROWSER, ws_url, "watch", "6"], stdout=subprocess.PIPE, text=True)
        b.stdout.readline()
        time.sleep(0.5)
        psize = (20 if quick else 100) * MB
        probe = r.probe()
        r.rss_base = r.rss_peak = rss(r.monitor.pid)
        r.hostile.ws(do="preview", size=psize)
        out, _ = b.communicate(timeout=120)
        print(f"item 7  a {psize // MB} MB preview: browser saw {out.strip()}; {worst(probe)}; {r.memory()}")
        wait_connected(r.url)
        b = subprocess.Popen([PYTHON, "-c", BROWSER, ws_url, "watch", "4"], stdout=subprocess.PIPE, text=True)
        b.stdout.readline()
        time.sleep(0.5)
        r.hostile.ws(do="preview", size=12 * MB)
        out, _ = b.communicate(timeout=120)
        print(f"item 7  a 12 MB preview: browser saw {out.strip()}")
    finally:
        r.close()


def item8(tmp, quick):
    r = Run(tmp, "item8")
    try:
        queue = {"queue_running": [], "queue_pending": [queue_entry("ext-8", 7)]}
        r.hostile.http("queue", body_json=queue)
        wait_adopted(r, "ext-8")
        r.hostile.http("queue", trickle=1.0, body_json=queue)
        probe = r.probe()
        t0 = time.time()
        outcome = cancel(r, "ext-8", timeout=20 if quick else 70)
        print(f"item 8  /queue trickling 1 byte/s: cancel answered {outcome} after {time.time() - t0:.1f} s; "
              f"{worst(probe)}")
    finally:
        r.close()


def item9(tmp, quick):
    r = Run(tmp, "item9")
    try:
        deep = queue_entry("ext-deep", 8, extra={"client_id": "x", "junk": DEEP})
        queue = {"queue_running": [], "queue_pending": [queue_entry("ext-ok", 7), deep]}
        r.hostile.http("queue", body=with_deep(queue, 980))
        probe = r.probe()
        time.sleep(4 if quick else 10)
        ids = [pid for pid in ("ext-ok", "ext-deep") if job_status(r, pid)]
        log = r.log()
        r.hostile.ws(do="text", payload='{"type": "progress", "data": {"x": ' + "[" * 5000 + "]" * 5000 + "}}")
        r.hostile.ws(do="text", payload='{"type": "executed", "data": {"prompt_id": "p", "node": "9", "output": '
                     + "[" * 600 + "]" * 600 + "}}")
        time.sleep(1)
        print(f"item 9  /queue with an entry nested 980 deep next to a good one: adopted {ids}; "
              f"{lines(log, 'Traceback')} tracebacks, {lines(log, 'RecursionError')} RecursionError lines in the log; "
              f"deep WS frames: still connected {connected(r.url)}; {worst(probe)}")
    finally:
        r.close()


ITEMS = {"3": item3, "4": item4, "5": item5, "7": item7, "8": item8, "9": item9}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--items", default="3,4,5,7,8,9")
    ap.add_argument("--quick", action="store_true", help="smaller abuse: 16 MB, 20,000 messages, 50 MB frame")
    args = ap.parse_args()
    print(machine())
    tmp = tempfile.mkdtemp(prefix="bench-hostile-")
    for item in args.items.split(","):
        ITEMS[item.strip()](tmp, args.quick)
    return 0


if __name__ == "__main__":
    sys.exit(main())
