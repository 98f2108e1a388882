"""Issue 10, hardening round two: a ComfyUI that misbehaves on purpose (tests/hostile_comfy.py, its own
process) against the real app (tests/live.py), with a probe timing /healthz and /api/admin/queue from
another process the whole time: each must answer within 1 s while the abuse goes on.

 3. unreadable 2xx answers (a proxy's HTML login page...) are errors, never "queue empty"
 4. a message in thousands of fragments: assembled in linear time, the loop keeps running; over the cap: dropped
 5. floods: 30,000 ComfyUI messages; a browser sending thousands of messages on /api/run/ws (dropped, 1008)
 7. a frame declaring 200 MB is refused at its header; previews over the preview cap are dropped and counted
 8. a ComfyUI trickling its answers a byte at a time hits a deadline on the whole call (HTTP and handshake)
 9. JSON nested ~1,000 deep: in /queue the one entry is skipped (one log line), as a frame it is a bad frame
"""
from __future__ import annotations

import json
import logging
import subprocess
import sys
import time

import gevent
import psutil
import pytest
import websocket

from hostile_comfy import DEEP, LOGIN_PAGE, HostileComfy, Probe, nested, queue_entry, with_deep
from live import LiveServer, wait_for
from monitor import protocol
from monitor.comfy import ComfyBadAnswer, ComfyClient, ComfyUnavailable
from monitor.hub import ReaderThread
from monitor.listener import Listener

MB = 1 << 20
RESPONSIVE_S = 1.0   # the bound for /healthz and /api/admin/queue while the abuse goes on


@pytest.fixture
def hostile():
    h = HostileComfy()
    yield h
    h.stop()


@pytest.fixture
def server(hostile, tmp_path):
    s = LiveServer(hostile, str(tmp_path / "data"))
    yield s
    s.stop_app()


def probe(server) -> Probe:
    return Probe(server.url + "/healthz", server.url + "/api/admin/queue")


def assert_responsive(p: Probe) -> dict:
    worst = p.worst()
    assert all(v < RESPONSIVE_S for v in worst.values()), f"worst answer times while abused: {worst}"
    return worst


def ws_conn(hostile, index: int = -1) -> dict:
    return hostile.stats()[index]


def warnings(caplog, needle: str) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING and needle in r.getMessage()]


# ================================================================================================
# 3. An unreadable answer is "unknown", never "empty"

@pytest.mark.parametrize("route,method,spec", [
    ("queue", "get_queue", {"ctype": "text/html; charset=utf-8", "body": LOGIN_PAGE}),
    ("queue", "get_queue", {"body_json": [1, 2]}),
    ("queue", "get_queue", {"body_json": {"queue_running": "none", "queue_pending": []}}),
    ("queue", "get_queue", {"body_json": {"error": "sign in first"}}),
    ("queue", "get_queue", {"body": ""}),
    ("history", "get_history", {"ctype": "text/html", "body": LOGIN_PAGE}),
    ("history", "get_history", {"body_json": ["x"]}),
    ("history", "get_history", {"body_json": {"p1": "done"}}),
    ("prompt", "post_prompt", {"ctype": "text/html", "body": LOGIN_PAGE}),
    ("api_cancel", "cancel_job", {"ctype": "text/html", "body": LOGIN_PAGE}),
    ("system_stats", "system_stats", {"ctype": "text/html", "body": LOGIN_PAGE}),
    ("interrupt", "interrupt", {"ctype": "text/html", "body": LOGIN_PAGE}),
    ("queue_post", "delete_pending", {"ctype": "text/html", "body": LOGIN_PAGE}),
], ids=lambda v: v if isinstance(v, str) else "")
def test_3_unreadable_2xx_answers_raise_and_are_logged_once(hostile, caplog, route, method, spec):
    hostile.http(route, status=200, **spec)
    client = ComfyClient(hostile.url, timeout=5)
    args = {"get_queue": (), "get_history": ("p1",), "post_prompt": ({"prompt": {}},), "cancel_job": ("p1",),
            "system_stats": (), "interrupt": ("p1",), "delete_pending": (["p1"],)}[method]
    caplog.set_level(logging.INFO, logger="monitor.comfy")
    for _ in range(4):
        with pytest.raises(ComfyBadAnswer) as info:
            getattr(client, method)(*args)
    assert isinstance(info.value, ComfyUnavailable), "callers that handle 'no answer' handle this too"
    if spec.get("ctype"):
        assert "text/html" in str(info.value) and "<!DOCTYPE" in str(info.value), str(info.value)
    assert len(warnings(caplog, "unreadable")) == 1, "one log line, not one per call"


def test_3_a_good_answer_ends_the_episode_and_the_next_bad_one_is_logged_again(hostile, caplog):
    client = ComfyClient(hostile.url, timeout=5)
    caplog.set_level(logging.INFO, logger="monitor.comfy")
    hostile.http("queue", ctype="text/html", body=LOGIN_PAGE)
    for _ in range(3):
        with pytest.raises(ComfyBadAnswer):
            client.get_queue()
    hostile.http("queue", body_json={"queue_running": [], "queue_pending": [queue_entry("a", 2), queue_entry("b", 1)]})
    running, pending = client.get_queue()
    assert running == [] and [e[1] for e in pending] == ["b", "a"]
    hostile.http("queue", ctype="text/html", body=LOGIN_PAGE)
    with pytest.raises(ComfyBadAnswer):
        client.get_queue()
    assert len(warnings(caplog, "unreadable")) == 2


def test_3_html_queue_keeps_jobs_and_cancel_changes_nothing(hostile, server, caplog):
    hostile.http("queue", body_json={"queue_running": [], "queue_pending": [queue_entry("ext-3", 7)]})
    wait_for(lambda: server.monitor.get_job("ext-3"), what="the external job adopted")
    p = probe(server)
    caplog.set_level(logging.INFO)
    hostile.http("queue", ctype="text/html; charset=utf-8", body=LOGIN_PAGE)
    hostile.http("history", ctype="text/html; charset=utf-8", body=LOGIN_PAGE)
    gevent.sleep(3.0)                      # about six reconciles (every 0.5 s here)
    assert server.monitor.get_job("ext-3")["status"] == "queued", "an unreadable /queue is not an empty one"
    resp = server.post("/api/admin/jobs/ext-3/cancel")
    assert resp.status_code == 502, resp.text
    assert server.monitor.get_job("ext-3")["status"] == "queued", "a cancel that could not ask changes nothing"
    assert_responsive(p)
    assert len([m for m in warnings(caplog, "unreadable") if "GET /queue" in m]) == 1, "logged once"


# ================================================================================================
# 4. Fragmented messages

def test_4_a_message_in_thousands_of_fragments_is_assembled_without_stalling_the_app(hostile, server):
    lis = server.monitor.listener
    before = lis.frames
    p = probe(server)
    t0 = time.monotonic()
    hostile.ws(do="fragments", total=12 * MB, frag=8 * 1024)     # 1,536 fragments
    wait_for(lambda: lis.frames > before, timeout=60, what="the message")
    took = time.monotonic() - t0
    worst = assert_responsive(p)
    assert lis.connected and not lis.bad_frames and not lis.violations
    print(f"12 MB in 8 KB fragments: {took:.2f} s, worst probe {worst}")


@pytest.mark.parametrize("binary", [False, True], ids=["text", "binary"])
def test_4_a_message_over_the_cap_drops_the_connection_with_one_log_line(hostile, server, caplog, binary):
    lis = server.monitor.listener
    lis.max_message = 4 * MB
    caplog.set_level(logging.INFO, logger="monitor.listener")
    p = probe(server)
    hostile.ws(do="fragments", total=16 * MB, frag=64 * 1024, binary=binary)
    conn = wait_for(lambda: ws_conn(hostile, 0)["closed_at"] and ws_conn(hostile, 0), what="the drop")
    took = conn["closed_at"] - conn["actions"][-1]["started_at"]
    assert took < 5, f"dropped {took:.2f} s after the message began"
    assert conn["close_code"] == 1009
    assert lis.violations["too_big"] == 1
    assert len(warnings(caplog, "dropping the ComfyUI WebSocket")) == 1
    assert len([m for m in warnings(caplog, "ComfyUI") if "WebSocket" in m]) == 1, "and nothing else"
    assert_responsive(p)
    wait_for(lambda: lis.connected and len(hostile.stats()) == 2, timeout=30, what="a reconnect")


# ================================================================================================
# 5. Floods

def test_5_a_flood_of_comfy_messages_does_not_starve_the_app(hostile, server):
    lis = server.monitor.listener
    before = lis.frames
    p = probe(server)
    n = 30_000
    hostile.ws(do="flood", n=n, msg=json.dumps({"type": "progress", "data": {
        "value": 1, "max": 20, "prompt_id": "p-flood", "node": "3"}}))
    wait_for(lambda: lis.frames >= before + n, timeout=120, what="every message handled")
    assert_responsive(p)
    assert lis.connected


BROWSER_FLOOD = r"""
import sys, websocket
url, n = sys.argv[1], int(sys.argv[2])
ws = websocket.create_connection(url, timeout=30)
sent = 0   # at once, without waiting for hello: the reader must yield from its very first read
try:
    for i in range(n):
        ws.send('{"type":"nope","i":%d}' % i)
        sent += 1
    while True:
        ws.recv()
except Exception as exc:
    print(f"sent {sent} status {ws.close_status if hasattr(ws, 'close_status') else None} {type(exc).__name__}",
          flush=True)
"""


def test_5_a_flooding_browser_is_closed_with_1008_and_the_others_stay(server):
    hub = server.monitor.hub
    assert server.app.config["SOCK_SERVER_OPTIONS"].get("thread_class") is ReaderThread, \
        "web/ws.py must pass thread_class=hub.ReaderThread in SOCK_SERVER_OPTIONS (else the reader of a " \
        "client that floods before its session starts never yields)"
    watcher = websocket.create_connection(server.url.replace("http", "ws", 1) + "/api/run/ws", timeout=10)
    watcher.recv()
    wait_for(lambda: hub.client_count() == 1, what="the watcher")
    p = probe(server)
    flooder = subprocess.run([sys.executable, "-c", BROWSER_FLOOD, server.url.replace("http", "ws", 1) + "/api/run/ws",
                              "20000"], capture_output=True, text=True, timeout=120)
    assert_responsive(p)
    assert "sent 20000" in flooder.stdout, \
        "it could send all the while (the server lingers): no reset\n" + flooder.stderr
    assert hub.counters["clients_flooding"] == 1
    assert hub.counters["messages_ignored"] <= hub.flood_messages + 1000, "its messages stopped counting"
    wait_for(lambda: hub.client_count() == 1, what="only the flooder gone")
    hub.publish({"type": "comfy", "connected": True, "probe": 5})
    while json.loads(watcher.recv()).get("probe") != 5:
        pass
    watcher.close()


def test_5_the_flooder_reads_close_code_1008(server):
    ws = websocket.create_connection(server.url.replace("http", "ws", 1) + "/api/run/ws", timeout=10)
    ws.recv()
    for i in range(server.monitor.hub.flood_messages + 5):
        ws.send('{"type":"nope"}')
    ws.settimeout(10)
    frames = []
    with pytest.raises((websocket.WebSocketConnectionClosedException, ConnectionError)):
        while True:
            frames.append(ws.recv_frame())
    close = [f for f in frames if f.opcode == websocket.ABNF.OPCODE_CLOSE]
    assert close and int.from_bytes(close[0].data[:2], "big") == 1008


# ================================================================================================
# 7. Size limits

class PeakRSS:
    """The process's RSS sampled every 10 ms from a real thread (it sees what a stalled loop would hide)."""

    def __init__(self):
        self.base = self.peak = psutil.Process().memory_info().rss
        self._on = True
        self._job = gevent.get_hub().threadpool.spawn(self._run)

    def _run(self):
        me = psutil.Process()
        while self._on:
            self.peak = max(self.peak, me.memory_info().rss)
            time.sleep(0.01)

    def stop(self) -> int:
        self._on = False
        self._job.get()
        return self.peak - self.base


def test_7_a_frame_declaring_200_mb_is_refused_at_its_header(hostile, server, caplog):
    lis = server.monitor.listener
    caplog.set_level(logging.INFO, logger="monitor.listener")
    rss = PeakRSS()
    p = probe(server)
    hostile.ws(do="frame", size=200 * MB)
    grown = rss.stop()
    conn = wait_for(lambda: ws_conn(hostile, 0)["closed_at"] and ws_conn(hostile, 0), what="the drop")
    took = conn["closed_at"] - conn["actions"][-1]["started_at"]
    assert took < 2, f"dropped {took:.2f} s after the header"
    assert conn["sent"] < 100 * MB, "most of it was never read"
    assert grown < 64 * MB, f"RSS grew {grown / MB:.0f} MB"
    assert lis.violations["too_big"] == 1 and len(warnings(caplog, "dropping the ComfyUI WebSocket")) == 1
    assert_responsive(p)


def test_7_previews_over_the_cap_are_dropped_and_counted(hostile, server, caplog):
    lis = server.monitor.listener
    caplog.set_level(logging.INFO, logger="monitor.listener")
    browser = websocket.create_connection(server.url.replace("http", "ws", 1) + "/api/run/ws", timeout=10)
    browser.recv()
    wait_for(lambda: server.monitor.hub.client_count() == 1, what="the browser")
    hostile.ws(do="preview", size=12 * MB)     # under the message cap (32 MB), over the preview cap (8 MB)
    hostile.ws(do="preview", size=12 * MB)
    hostile.ws(do="preview", size=30_000)
    browser.settimeout(10)
    sizes = []
    while not sizes:
        opcode, data = browser.recv_data()
        if opcode == websocket.ABNF.OPCODE_BINARY:
            sizes.append(len(data))
    assert sizes == [30_000], "only the small one reached the browser"
    assert lis.previews_dropped == 2 and lis.status()["previews_dropped"] == 2
    assert len(warnings(caplog, "previews larger than")) == 1
    assert lis.connected
    browser.close()


# ================================================================================================
# 8. Trickling answers: a deadline on the whole call

def test_8_a_trickling_http_answer_hits_the_total_deadline(hostile):
    hostile.http("queue", trickle=0.2, body_json={"queue_running": [], "queue_pending": []})
    client = ComfyClient(hostile.url, timeout=1.0)
    t0 = time.monotonic()
    with pytest.raises(ComfyUnavailable) as info:
        client.get_queue()
    took = time.monotonic() - t0
    assert took < 4, f"gave up after {took:.1f} s, not about 1 s (a byte every 0.2 s never trips a per-read timeout)"
    assert "within 1 s" in str(info.value)


def test_8_a_trickling_view_body_hits_its_deadline(hostile):
    hostile.http("view", ctype="image/png", trickle=0.2, body="\x89PNG" + "x" * 200)
    client = ComfyClient(hostile.url, timeout=5.0, view_body_timeout=1.0)
    resp = client.view({"filename": "a.png"})
    t0 = time.monotonic()
    with pytest.raises(ComfyUnavailable):
        for _ in resp.iter_content(chunk_size=64 * 1024):
            pass
    assert time.monotonic() - t0 < 4


def test_8_cancel_against_a_trickling_comfy_answers_within_the_deadline(hostile, server):
    hostile.http("queue", body_json={"queue_running": [], "queue_pending": [queue_entry("ext-8", 7)]})
    wait_for(lambda: server.monitor.get_job("ext-8"), what="the external job adopted")
    server.monitor.comfy.timeout = 1.5   # Config.comfy_timeout in production (10 s)
    hostile.http("queue", trickle=0.5, body_json={"queue_running": [], "queue_pending": [queue_entry("ext-8", 7)]})
    p = probe(server)
    t0 = time.monotonic()
    resp = server.post("/api/admin/jobs/ext-8/cancel")
    took = time.monotonic() - t0
    assert resp.status_code == 502 and took < 6, (resp.status_code, took)
    assert server.monitor.get_job("ext-8")["status"] == "queued"
    assert_responsive(p)


def test_8_a_trickling_websocket_handshake_hits_its_deadline(hostile):
    hostile.http("ws", trickle=0.3)
    failures = []
    lis = Listener(hostile.url.replace("http", "ws", 1) + "/ws", "trickle-test", on_text=lambda t, d: None,
                   on_binary=lambda f: None, on_connect=lambda: None, on_disconnect=lambda r: None,
                   backoff_min=30, backoff_max=30, handshake_timeout=1.0)
    t0 = time.monotonic()
    lis.start()
    try:
        wait_for(lambda: lis.last_error, timeout=10, what="the handshake given up")
        failures.append(time.monotonic() - t0)
    finally:
        lis.stop()
    assert failures[0] < 4 and "handshake" in lis.last_error and not lis.connected, (failures, lis.last_error)


# ================================================================================================
# 9. Deep nesting

def test_9_a_queue_entry_nested_980_deep_is_skipped_with_one_log_line(hostile, server, caplog):
    caplog.set_level(logging.INFO)
    deep = queue_entry("ext-deep", 8, extra={"client_id": "x", "junk": DEEP})
    hostile.http("queue", body=with_deep({"queue_running": [], "queue_pending": [queue_entry("ext-ok", 7), deep]}, 980))
    wait_for(lambda: server.monitor.get_job("ext-ok"), what="the good entry adopted")
    gevent.sleep(2.0)   # several reconciles
    assert server.monitor.get_job("ext-deep") is None
    assert len(warnings(caplog, "skipping entry ext-deep")) == 1
    assert not [r for r in caplog.records if r.exc_info], "no tracebacks"


def test_9_deeply_nested_frames_are_bad_frames_and_the_connection_stays(hostile, server):
    lis = server.monitor.listener
    hostile.ws(do="text", payload='{"type": "progress", "data": {"x": ' + "[" * 5000 + "]" * 5000 + "}}")
    hostile.ws(do="text", payload='{"type": "executed", "data": {"prompt_id": "p", "node": "9", "output": {"x": '
               + "[" * 600 + "]" * 600 + "}}}")
    wait_for(lambda: sum(lis.bad_frames.values()) >= 2, what="both counted")
    assert lis.bad_frames["text.too_deep"] == 2 and lis.connected


@pytest.mark.parametrize("depth,ok", [(98, True), (99, False), (600, False), (5000, False)])   # + 2 around
def test_9_parse_text_is_depth_limited(depth, ok):
    raw = '{"type": "x", "data": {"v": ' + "[" * depth + "]" * depth + "}}"
    if ok:
        assert protocol.parse_text(raw)[0] == "x"
    else:
        with pytest.raises(protocol.ProtocolError) as info:
            protocol.parse_text(raw)
        assert info.value.kind == "text.too_deep"


def test_9_load_json_prunes_only_the_deep_part():
    text = json.dumps({"a": [1, nested(300)], "b": {"c": "[[[[ not brackets \\\" [[["}, "d": [[[]]]})
    value, pruned = protocol.load_json(text, prune=True, max_depth=10)
    assert pruned == 1 and value["b"]["c"].startswith("[[[[") and value["d"] == [[[]]]
    assert protocol.contains_too_deep(value["a"]) and not protocol.contains_too_deep(value["b"])
    with pytest.raises(protocol.ProtocolError) as info:
        protocol.load_json(text, max_depth=10)
    assert info.value.kind == "json.too_deep"
    with pytest.raises(protocol.ProtocolError) as info:
        protocol.load_json(b"<html>" + b"[" * 2000)
    assert info.value.kind == "json.invalid"


def test_9_the_depth_check_costs_less_than_parsing():
    entry = queue_entry("x", 1, extra={"extra_pnginfo": {"workflow": {"nodes": [
        {"id": i, "widgets_values": [1, 'a "[b', [1, 2]], "properties": {"a": {"b": [1]}}} for i in range(200)]}}})
    raw = json.dumps({"queue_running": [], "queue_pending": [entry] * 200}).encode()
    t0 = time.perf_counter()
    for _ in range(3):
        protocol.load_json(raw)
    checked = time.perf_counter() - t0
    t0 = time.perf_counter()
    for _ in range(3):
        json.loads(raw)
    plain = time.perf_counter() - t0
    assert checked < plain * 3, (checked, plain)   # wide: about 1.3x on a quiet machine
