"""The ComfyUI listener against a real WebSocket server: flags first, bad frames survived, capped backoff."""
from __future__ import annotations

import struct
import time

import gevent
import pytest

from monitor.demo import SimComfy
from monitor.listener import Listener
from live import wait_for
import recordings


class Recorder:
    def __init__(self):
        self.texts, self.binaries, self.connects, self.disconnects = [], [], [], []

    def listener(self, url: str, client_id: str = "listener-test", **kw) -> Listener:
        return Listener(url.replace("http", "ws", 1) + "/ws", client_id,
                        on_text=lambda t, d: self.texts.append((t, d)),
                        on_binary=self.binaries.append,
                        on_connect=lambda: self.connects.append(time.time()),
                        on_disconnect=self.disconnects.append, **kw)


@pytest.fixture
def sim():
    s = SimComfy()
    s.start()
    yield s
    s.stop()


def test_feature_flags_are_the_first_frame(sim):
    rec = Recorder()
    lis = rec.listener(sim.url)
    lis.start()
    try:
        # The server only answers flags that came as the very first frame (PROTOCOL.md §4.11).
        wait_for(lambda: any(t == "feature_flags" for t, _ in rec.texts), what="the server's flags reply")
        conn = sim._table["listener-test"]
        assert conn.wants_metadata is True
    finally:
        lis.stop()


def test_bad_frames_are_counted_logged_once_per_kind_and_survived(sim, caplog):
    rec = Recorder()
    lis = rec.listener(sim.url)
    lis.start()
    try:
        wait_for(lambda: "listener-test" in sim._table, what="connection")
        conn = sim._table["listener-test"]
        good_preview = next(f.binary for f in recordings.frames("01b_happy_path_feature_flags", "submitter")
                            if f.binary and f.binary[3] == 4)
        junk = ["not json", "[1,2]", '{"type": 5}', '{"data": {}}',
                struct.pack(">I", 4), struct.pack(">II", 4, 10 ** 9) + b"{}", struct.pack(">II", 77, 1),
                "also not json"]
        for payload in junk:
            conn.send(payload)
        conn.send('{"type": "status", "data": {"status": {"exec_info": {"queue_remaining": 0}}}}')
        conn.send(good_preview)
        wait_for(lambda: rec.binaries and rec.texts and rec.texts[-1][0] == "status", what="frames after junk")
        assert lis.connected and not rec.disconnects, "junk must not cost the connection"
        assert sum(lis.bad_frames.values()) == len(junk)
        assert lis.bad_frames["text.bad_json"] == 2
        assert caplog.text.count("malformed ComfyUI frame (text.bad_json)") == 1, "logged once per kind"
        assert rec.binaries[-1].prompt_id and bytes(rec.binaries[-1].image[:2]) == b"\xff\xd8"
    finally:
        lis.stop()


def test_reconnects_with_capped_backoff_and_one_socket_per_client_id(sim):
    rec = Recorder()
    lis = rec.listener(sim.url, backoff_min=0.05, backoff_max=0.2)
    lis.start()
    try:
        wait_for(lambda: lis.connected, what="connect")
        sim.stop(abrupt=True)
        wait_for(lambda: rec.disconnects, what="disconnect noticed")
        down_since = time.time()
        gevent.sleep(1.5)  # many failed attempts: the delay must stay capped, not grow
        assert lis.attempts >= 5
        sim.start()
        wait_for(lambda: lis.connected, timeout=2, what="reconnect within the cap + margin")
        assert len(rec.connects) == 2 and time.time() - down_since < 4
        wait_for(lambda: "listener-test" in sim._table, what="registration")
        mine = [c for c in sim._conns if c.client_id == "listener-test"]
        assert len(mine) == 1, "never two sockets with one client id"
    finally:
        lis.stop()


def test_a_handler_bug_does_not_kill_the_listener(sim, caplog):
    calls = []

    def on_text(t, d):
        calls.append(t)
        raise RuntimeError("bug in a handler")

    lis = Listener(sim.ws_url, "buggy", on_text=on_text, on_binary=lambda f: None,
                   on_connect=lambda: None, on_disconnect=lambda r: None)
    lis.start()
    try:
        wait_for(lambda: "buggy" in sim._table, what="connection")
        for _ in range(3):
            sim._table["buggy"].send('{"type": "status", "data": {}}')
        wait_for(lambda: len(calls) >= 4, what="every frame handled")
        assert lis.connected and "bug in a handler" in caplog.text
    finally:
        lis.stop()


def test_a_refused_port_is_probed_so_a_restarted_comfy_is_back_fast_despite_long_backoff(sim):
    rec = Recorder()
    # Long backoff steps: without the port probe, the first retry alone would wait at least 5 s.
    lis = rec.listener(sim.url, backoff_min=10.0, backoff_max=15.0)
    lis.start()
    try:
        wait_for(lambda: lis.connected, what="connect")
        sim.stop(abrupt=True)
        wait_for(lambda: rec.disconnects, what="the drop")
        gevent.sleep(1.5)  # at least one refused probe
        sim.start()
        back = time.time()
        wait_for(lambda: lis.connected, timeout=4, what="reconnect about a second after the port opens")
        assert time.time() - back < 4
    finally:
        lis.stop()
