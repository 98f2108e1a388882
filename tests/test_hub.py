"""Hub + /api/run/ws end to end: a real Flask app on gevent's WSGIServer, real websocket-client clients."""
from __future__ import annotations

import base64
import gc
import json
import os
import socket
import struct
import time

import gevent
import pytest
import websocket
from flask import Flask
from gevent.pywsgi import WSGIServer

from monitor.hub import Hub
from monitor.web import ws as ws_module
from recordings import frames

HELLO = {"type": "hello", "server": {"version": "test"}, "comfy": {"connected": True, "url": None},
         "jobs": [], "last_seq": 0}


class StubMonitor:
    def __init__(self, hub):
        self.hub = hub

    def hello(self):
        return dict(HELLO)


class Harness:
    def __init__(self, **hub_kwargs):
        hub_kwargs.setdefault("tick", 0.05)
        self.hub = Hub(**hub_kwargs)
        self.hub.start()
        app = Flask(__name__)
        app.extensions["monitor"] = StubMonitor(self.hub)
        ws_module.init_app(app)
        self.server = WSGIServer(("127.0.0.1", 0), app, log=None, error_log=None)
        self.server.start()
        self.port = self.server.server_port
        self.url = f"ws://127.0.0.1:{self.port}/api/run/ws"
        self.clients = []

    def connect(self, read_hello=True, **options):
        c = websocket.create_connection(self.url, timeout=5, **options)
        self.clients.append(c)
        if read_hello:
            assert recv_json(c)["type"] == "hello"
        return c

    def raw_client(self, rcvbuf=None):
        """A handshaken socket that never reads (and so never answers pings)."""
        s = socket.socket()
        if rcvbuf:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        s.connect(("127.0.0.1", self.port))
        key = base64.b64encode(os.urandom(16)).decode()
        s.sendall((f"GET /api/run/ws HTTP/1.1\r\nHost: 127.0.0.1:{self.port}\r\nUpgrade: websocket\r\n"
                   f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n").encode())
        head = b""
        while not head.endswith(b"\r\n\r\n"):   # byte by byte: leave everything after the headers unread
            head += s.recv(1)
        assert head.startswith(b"HTTP/1.1 101")
        self.clients.append(s)
        return s

    def close(self):
        for c in self.clients:
            try:
                c.close()
            except Exception:
                pass
        self.server.stop(timeout=1)
        self.hub.stop()


@pytest.fixture
def harness():
    made = []

    def make(**hub_kwargs):
        made.append(Harness(**hub_kwargs))
        return made[-1]

    yield make
    for h in made:
        h.close()


def recv_frame(c, timeout=5.0):
    c.settimeout(timeout)
    opcode, data = c.recv_data()
    return ("text", json.loads(data)) if opcode == websocket.ABNF.OPCODE_TEXT else ("binary", data)


def recv_json(c, timeout=5.0):
    kind, data = recv_frame(c, timeout)
    assert kind == "text"
    return data


def assert_silent(c, seconds):
    with pytest.raises(websocket.WebSocketTimeoutException):
        recv_frame(c, timeout=seconds)


def wait_for(cond, timeout=5.0):
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "condition not met in time"
        gevent.sleep(0.01)


def live_pumps(hub):
    return [g for g in gc.get_objects() if isinstance(g, gevent.Greenlet) and not g.dead
            and getattr(g._run, "__func__", None) is Hub._pump and g._run.__self__ is hub]


def recorded_jpeg() -> bytes:
    raw = next(f.binary for f in frames("01b_happy_path_feature_flags", "submitter")
               if f.binary and struct.unpack(">I", f.binary[:4])[0] == 4)
    meta_len = struct.unpack(">I", raw[4:8])[0]
    return raw[8 + meta_len:]


def test_hello_comes_first(harness):
    h = harness()
    h.hub.publish_event({"seq": 1, "ts": "t", "kind": "job.queued", "severity": "info", "message": "m", "data": {}})
    c = h.connect(read_hello=False)
    assert recv_json(c) == HELLO


def test_progress_is_coalesced_and_unchanged_states_are_not_resent(harness):
    h = harness()
    c = h.connect()
    for i in range(50):   # no yield in between: all within one tick
        h.hub.set_progress("p1", {"status": "running", "percent": i})
    msg = recv_json(c)
    assert msg == {"type": "progress", "status": "running", "percent": 49, "prompt_id": "p1"}
    h.hub.set_progress("p1", {"status": "running", "percent": 49})
    assert_silent(c, 0.4)   # several ticks


def test_two_prompts_in_one_tick_are_each_sent_once(harness):
    h = harness()
    c = h.connect()
    h.hub.set_progress("p1", {"status": "running", "percent": 10})
    h.hub.set_progress("p2", {"status": "queued", "percent": 0})
    got = {m["prompt_id"]: m for m in (recv_json(c), recv_json(c))}
    assert set(got) == {"p1", "p2"} and got["p2"]["status"] == "queued"
    assert_silent(c, 0.4)


def test_idle_is_explicit_and_sent_again_after_activity(harness):
    h = harness()
    c = h.connect()
    h.hub.set_progress(None, {})
    assert recv_json(c) == {"type": "progress", "prompt_id": None, "status": "idle"}
    h.hub.set_progress("p1", {"status": "running"})
    assert recv_json(c)["prompt_id"] == "p1"
    h.hub.set_progress(None, {})
    assert recv_json(c)["status"] == "idle"


def test_events_and_messages_arrive_in_order(harness):
    h = harness()
    c = h.connect()
    for seq in range(1, 21):
        h.hub.publish_event({"seq": seq, "ts": "t", "kind": "job.queued", "severity": "info",
                             "message": f"m{seq}", "data": {}})
    h.hub.publish({"type": "comfy", "connected": False})
    got = [recv_json(c) for _ in range(21)]
    assert [m["seq"] for m in got[:20]] == list(range(1, 21))
    assert all(m["type"] == "event" for m in got[:20])
    assert got[20] == {"type": "comfy", "connected": False}


def test_preview_text_frame_then_binary_jpeg(harness):
    h = harness()
    c = h.connect()
    jpeg = recorded_jpeg()
    seq1 = h.hub.publish_preview("p1", "3", "image/jpeg", memoryview(jpeg))
    assert recv_frame(c) == ("text", {"type": "preview", "prompt_id": "p1", "node_id": "3",
                                      "mime": "image/jpeg", "seq": seq1})
    kind, data = recv_frame(c)
    assert kind == "binary" and data == jpeg and data[:2] == b"\xff\xd8"
    seq2 = h.hub.publish_preview("p1", "3", "image/jpeg", jpeg)
    assert seq2 > seq1 and recv_json(c)["seq"] == seq2


def test_previews_disabled_still_gets_progress(harness):
    h = harness()
    c = h.connect()
    c.send(json.dumps({"type": "previews", "enabled": False}))
    wait_for(lambda: h.hub.stats()["previews_off"] == 1)
    h.hub.publish_preview("p1", "3", "image/jpeg", recorded_jpeg())
    h.hub.set_progress("p1", {"status": "running", "percent": 5})
    assert recv_json(c)["type"] == "progress"
    assert_silent(c, 0.3)


def test_resume_replays_missed_events(harness):
    log = [{"seq": s, "ts": "t", "kind": "job.queued", "severity": "info", "message": "m", "data": {}}
           for s in range(1, 6)]
    h = harness(events_since=lambda seq: [e for e in log if e["seq"] > seq])
    c = h.connect()
    c.send(json.dumps({"type": "resume", "last_seq": 2}))
    assert [recv_json(c)["seq"] for _ in range(3)] == [3, 4, 5]
    # A page resumes once per connection; more resumes (a flood costs a query each) are ignored.
    ignored = h.hub.counters["messages_ignored"]
    for _ in range(50):
        c.send(json.dumps({"type": "resume", "last_seq": 0}))
    wait_for(lambda: h.hub.counters["messages_ignored"] == ignored + 50)


def test_bad_client_messages_are_ignored(harness):
    h = harness()
    c = h.connect()
    too_long = json.dumps({"type": "previews", "enabled": False, "pad": "x" * 5000})
    for junk in ("not json", "[1, 2]", '{"type": "nope"}', '{"type": "previews", "enabled": "no"}',
                 '{"type": "resume", "last_seq": "1"}', "[" * 3000, too_long):
        c.send(junk)
    c.send_binary(b"\x00\x01")
    wait_for(lambda: h.hub.counters["messages_ignored"] == 8)
    h.hub.publish_preview("p1", "3", "image/png", b"\x89PNG")   # previews still on
    assert recv_json(c)["type"] == "preview"
    assert recv_frame(c) == ("binary", b"\x89PNG")
    assert h.hub.client_count() == 1


def test_huge_client_message_closes_only_that_session(harness):
    h = harness()
    bad, good = h.connect(), h.connect()
    bad.send("x" * 100_000)
    with pytest.raises((websocket.WebSocketConnectionClosedException, ConnectionError)):
        while True:
            bad.recv()
    wait_for(lambda: h.hub.client_count() == 1)
    h.hub.set_progress("p1", {"status": "running"})
    assert recv_json(good)["prompt_id"] == "p1"


def test_pings_are_sent_and_silent_clients_dropped(harness):
    h = harness(ping_interval=0.2)
    c = h.connect()
    c.settimeout(5)
    pings = []

    def read():   # websocket-client answers each ping itself while it reads
        while True:
            opcode, _ = c.recv_data(control_frame=True)
            pings.append(opcode == websocket.ABNF.OPCODE_PING)

    reader = gevent.spawn(read)
    h.raw_client()   # never reads, so never answers
    wait_for(lambda: h.hub.counters["clients_dropped"] >= 1)
    wait_for(lambda: len(pings) >= 5)
    reader.kill()
    assert all(pings)
    assert h.hub.client_count() == 1 and h.hub.counters["clients_dropped"] == 1


def _stuck_slow_client(h):
    """A fast client with previews off, and a raw client whose socket buffers are full."""
    fast = h.connect()
    fast.send(json.dumps({"type": "previews", "enabled": False}))
    wait_for(lambda: h.hub.stats()["previews_off"] == 1)
    h.raw_client(rcvbuf=4096)
    wait_for(lambda: h.hub.client_count() == 2)
    blob = os.urandom(256 * 1024)
    for _ in range(200):   # 50 MB: far more than loopback socket buffers hold
        h.hub.publish_preview("p1", "3", "image/jpeg", blob)
        gevent.sleep(0)
    assert h.hub.client_count() == 2
    return fast


def test_stuck_client_does_not_delay_others_and_is_dropped_after_send_timeout(harness):
    h = harness(send_timeout=5.0)
    fast = _stuck_slow_client(h)
    t0 = time.monotonic()
    h.hub.set_progress("p1", {"status": "running", "percent": 1})
    assert recv_json(fast)["prompt_id"] == "p1"
    assert time.monotonic() - t0 < 2.0   # the stuck client would hold it for send_timeout
    wait_for(lambda: h.hub.client_count() == 1, timeout=15)
    assert h.hub.counters["clients_dropped"] == 1
    h.hub.set_progress("p1", {"status": "running", "percent": 2})
    assert recv_json(fast)["percent"] == 2


def test_overflowing_outbox_stays_bounded_then_client_dropped(harness):
    h = harness(max_events=16, send_timeout=60.0)
    fast = _stuck_slow_client(h)
    for seq in range(1, 101):
        h.hub.publish_event({"seq": seq, "ts": "t", "kind": "job.queued", "severity": "info",
                             "message": "m", "data": {}})
        assert h.hub.stats()["outbox_max"] <= 16
        gevent.sleep(0.001)
    assert h.hub.client_count() == 1 and h.hub.counters["clients_dropped"] == 1
    assert h.hub.counters["events_dropped"] > 0
    assert [recv_json(fast)["seq"] for _ in range(100)] == list(range(1, 101))


def test_disconnects_leave_no_clients_or_greenlets(harness):
    h = harness()
    clients = [h.connect() for _ in range(5)]
    assert h.hub.client_count() == 5 and len(live_pumps(h.hub)) == 5
    for c in clients[:3]:
        c.close()
    for c in clients[3:]:
        c.sock.close()   # vanish without a close frame
    wait_for(lambda: h.hub.client_count() == 0)
    wait_for(lambda: live_pumps(h.hub) == [])


@pytest.mark.parametrize("headers, ok", [
    ({"origin": "http://evil.example"}, False),
    ({"origin": "null"}, False),
    ({"suppress_origin": True, "header": ["Sec-Fetch-Site: cross-site"]}, False),
    ({"suppress_origin": True}, True),
    ({}, True),   # websocket-client sends Origin: http://127.0.0.1:<port>, the same origin
])
def test_origin_check_before_handshake(harness, headers, ok):
    h = harness()
    if ok:
        h.connect(**headers)
    else:
        with pytest.raises(websocket.WebSocketBadStatusException) as err:
            h.connect(**headers)
        assert err.value.status_code == 403
        assert h.hub.client_count() == 0


@pytest.mark.parametrize("origin, host, ok", [
    ("http://localhost:8000", "localhost:8000", True),
    ("http://LOCALHOST:8000", "localhost:8000", True),
    ("https://example.com", "example.com", True),
    ("https://example.com", "example.com:443", True),
    ("http://example.com:80", "example.com", True),
    ("http://[::1]:8000", "[::1]:8000", True),
    ("http://localhost:8001", "localhost:8000", False),
    ("http://example.com.evil.net", "example.com", False),
    ("http://example.com:99999", "example.com", False),
    ("file://", "localhost", False),
    ("null", "localhost", False),
])
def test_origin_allowed(origin, host, ok):
    assert ws_module.origin_allowed({"HTTP_ORIGIN": origin, "HTTP_HOST": host}) is ok


def test_a_client_choosing_a_job_gets_only_that_jobs_previews(harness):
    h = harness()
    chooser, other, old = h.connect(), h.connect(), h.connect()   # old: a page that never says (all jobs)
    chooser.send(json.dumps({"type": "previews", "job": "A"}))
    other.send(json.dumps({"type": "previews", "job": None}))
    wait_for(lambda: sorted(str(c.preview_job) for c in h.hub._clients) == ["A", "None", "all"])
    h.hub.publish_preview("B", "3", "image/png", b"\x89PNG-B")
    h.hub.publish_preview("A", "3", "image/png", b"\x89PNG-A")
    assert recv_json(chooser)["prompt_id"] == "A" and recv_frame(chooser) == ("binary", b"\x89PNG-A")
    assert [recv_json(old)["prompt_id"], recv_frame(old)[1]] == ["B", b"\x89PNG-B"]
    assert [recv_json(old)["prompt_id"], recv_frame(old)[1]] == ["A", b"\x89PNG-A"]
    assert_silent(chooser, 0.3)
    assert_silent(other, 0.1)
    # Following another job, and back to all; a bad choice is ignored and changes nothing.
    chooser.send(json.dumps({"type": "previews", "job": 7}))
    wait_for(lambda: h.hub.counters["messages_ignored"] == 1)
    chooser.send(json.dumps({"type": "previews", "job": "B"}))
    wait_for(lambda: "B" in [c.preview_job for c in h.hub._clients])
    h.hub.publish_preview("A", "3", "image/png", b"\x89PNG-A")
    h.hub.publish_preview("B", "3", "image/png", b"\x89PNG-B")
    assert recv_json(chooser)["prompt_id"] == "B" and recv_frame(chooser) == ("binary", b"\x89PNG-B")
    other.send(json.dumps({"type": "previews", "job": "all"}))
    wait_for(lambda: "None" not in [str(c.preview_job) for c in h.hub._clients])
    h.hub.publish_preview("A", "3", "image/png", b"\x89PNG-A")
    assert recv_json(other)["prompt_id"] == "A"


def test_publish_latest_reaches_clients_and_a_stuck_one_keeps_only_the_newest(harness):
    h = harness(max_events=16, send_timeout=60.0)
    fast = _stuck_slow_client(h)
    for i in range(100):   # more than the event outbox holds: the pushed fragments take none of it
        h.hub.publish_latest("fragment:gauges", {"type": "fragment", "id": "gauges", "html": str(i)})
        h.hub.publish_latest("fragment:cards", {"type": "fragment", "id": "cards", "html": str(i)})
    got = [recv_json(fast) for _ in range(200)]
    assert [m["html"] for m in got if m["id"] == "gauges"][-1] == "99"
    stuck = next(c for c in h.hub._clients if c.ws is not None and c.previews)
    assert not stuck.events and h.hub.counters["events_dropped"] == 0
    latest = {k: json.loads(f[f.index(b"{"):]) for k, f in stuck.progress.items() if isinstance(k, tuple)}
    assert {m["html"] for m in latest.values()} == {"99"} and len(latest) == 2
