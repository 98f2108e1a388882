"""The monitor with the relay node: the real app against the fake ComfyUI honouring the node's routes (CI), and
the traffic recorded from a real ComfyUI 0.3.64 with the node installed (11_relay_node)."""
from __future__ import annotations

import base64
import json

import gevent
import pytest
import websocket

from fake_comfy import FakeComfy, ReplayEngine
from live import LiveServer, wait_for
from monitor.comfy import ComfyClient
from monitor.protocol import parse_binary
from monitor.telemetry import RemoteTelemetry
from monitor.tracker import Tracker
from recordings import load, posted_prompts
from test_e2e import JPEG, Browser

RECORDING = "11_relay_node"


def ui_socket(fake: FakeComfy, client_id: str, metadata: bool = True) -> websocket.WebSocket:
    """A second client as ComfyUI's own UI: its own client id, feature flags first."""
    ws = websocket.create_connection(f"{fake.ws_url}?clientId={client_id}", timeout=10)
    if metadata:
        ws.send(json.dumps({"type": "feature_flags", "data": {"supports_preview_metadata": True}}))
    return ws


def read_all(ws: websocket.WebSocket, seconds: float = 0.5) -> list:
    ws.settimeout(seconds)
    out = []
    try:
        while True:
            opcode, data = ws.recv_data()
            out.append(json.loads(data) if opcode == websocket.ABNF.OPCODE_TEXT else bytes(data))
    except (websocket.WebSocketTimeoutException, OSError):
        return out


@pytest.fixture
def relay_server(tmp_path):
    fake = FakeComfy(relay=True, speed=1)
    server = LiveServer(fake, str(tmp_path / "data"))
    yield fake, server
    server.stop_app()
    fake.stop(abrupt=False)


def test_a_job_queued_by_another_client_gets_steps_and_previews_through_the_relay(relay_server):
    fake, server = relay_server
    wait_for(lambda: server.monitor.relay, what="the relay subscription")
    assert fake.relay_subscribers.keys() == {server.monitor.client_id}
    assert server.get("/healthz").json()["comfy"]["relay"] is True
    assert server.get("/api/admin/hosts").json()["hosts"][0]["relay"] is True

    ui = ui_socket(fake, "comfy-ui-tab")
    browser = Browser(server)
    browser.read_until(lambda f: isinstance(f, dict) and f.get("type") == "hello")
    foreign = fake.add_foreign(ReplayEngine(RECORDING, conn="ui", prompt=0, speed=1), client_id="comfy-ui-tab")
    stepped = browser.read_until(lambda f: isinstance(f, dict) and f.get("type") == "progress"
                                 and f.get("prompt_id") == foreign.prompt_id and f.get("step"))
    assert stepped["step"]["max"] == 10 and stepped["node_title"] and stepped["status"] == "running"
    queue = server.get("/api/admin/queue").json()
    (job,) = [j for j in queue["jobs"] if j["id"] == foreign.prompt_id]
    assert job["source"] == "external" and job["progress"]["node_id"]
    header = browser.read_until(lambda f: isinstance(f, dict) and f.get("type") == "preview")
    image = browser.read_until(lambda f: True)
    assert header["prompt_id"] == foreign.prompt_id and image[:2] == JPEG
    browser.read_until(lambda f: isinstance(f, dict) and f.get("type") == "progress"
                       and f.get("prompt_id") == foreign.prompt_id and f.get("status") == "completed", timeout=30)
    final = server.wait_status(foreign.prompt_id, {"completed", "failed", "interrupted", "stalled"}, timeout=30)
    assert final["status"] == "completed" and final["source"] == "external"
    progress = [m for m in browser.messages("progress") if m.get("prompt_id") == foreign.prompt_id]
    assert any(m.get("eta_s") is not None for m in progress) and any(m.get("it_per_s") for m in progress)
    percents = [m["percent"] for m in progress if m["percent"] is not None]
    assert percents == sorted(percents) and percents[-1] == 100
    # The UI that queued it got its own frames as ever: the relay copies, it does not divert.
    frames = read_all(ui)
    assert any(isinstance(f, dict) and f["type"] == "execution_success" for f in frames)
    assert any(isinstance(f, bytes) and f[:4] == b"\x00\x00\x00\x04" for f in frames)
    ui.close()
    browser.close()


def test_without_the_node_external_jobs_say_how_to_get_live_progress(fake_comfy, live_server):
    wait_for(lambda: live_server.monitor.comfy.features.probed, what="the feature probe")
    gevent.sleep(0.2)
    assert live_server.monitor.relay is False
    assert live_server.get("/healthz").json()["comfy"]["relay"] is False
    assert live_server.get("/api/admin/hosts").json()["hosts"][0]["relay"] is False
    foreign = fake_comfy.add_foreign(ReplayEngine("05_interrupt", speed=10), client_id="comfy-ui-tab")
    live_server.wait_status(foreign.prompt_id, "running")
    html = live_server.get("/admin/queue/current").text
    assert "Install the relay node for live progress of jobs queued elsewhere" in html
    assert live_server.monitor.get_job(foreign.prompt_id)["progress"]["step"] is None   # nothing relayed
    fake_comfy.interrupt(foreign.prompt_id)


def test_the_subscription_is_renewed_on_every_reconnect(relay_server):
    fake, server = relay_server
    wait_for(lambda: server.monitor.relay, what="the first subscription")
    fake.stop(abrupt=True)    # a restarted ComfyUI forgets every subscription
    wait_for(lambda: not server.monitor.listener.connected, what="the disconnect")
    assert server.monitor.relay is False
    fake.start()
    wait_for(lambda: server.monitor.relay, timeout=15, what="the new subscription")
    assert fake.relay_subscribers.keys() == {server.monitor.client_id}
    ui = ui_socket(fake, "comfy-ui-tab")
    foreign = fake.add_foreign(ReplayEngine(RECORDING, conn="ui", prompt=0, speed=0), client_id="comfy-ui-tab")
    final = server.wait_status(foreign.prompt_id, {"completed", "failed", "interrupted", "stalled"}, timeout=30)
    assert final["status"] == "completed" and final["node_done"] == final["node_total"]
    ui.close()


# --- the recording from a real ComfyUI 0.3.64 with the node installed ------------------------------------------

def _frames(conn: str) -> list:
    out = []
    for line in load(RECORDING):
        if line.get("conn") == conn and line["kind"] == "ws_text":
            out.append(("text", line["msg"]))
        elif line.get("conn") == conn and line["kind"] == "ws_binary":
            out.append(("binary", base64.b64decode(line["b64"])))
    return out


def _mine(frames: list, pid: str) -> list:
    """The frames of one prompt's run: from its execution_start to its final executing {node: null}."""
    start = next(i for i, (k, m) in enumerate(frames) if k == "text" and m["type"] == "execution_start"
                 and m["data"]["prompt_id"] == pid)
    end = next(i for i, (k, m) in enumerate(frames) if k == "text" and m["type"] == "executing"
               and m["data"].get("node") is None and m["data"].get("prompt_id") == pid)
    return frames[start:end + 1]


def test_recorded_relay_delivers_each_clients_frames_unchanged_and_in_order():
    ui_pid, legacy_pid = (p["response"]["prompt_id"] for p in posted_prompts(RECORDING))
    monitor = _frames("monitor")
    assert _mine(monitor, ui_pid) == _mine(_frames("ui"), ui_pid)
    assert _mine(monitor, legacy_pid) == _mine(_frames("ui_legacy"), legacy_pid)
    kinds = {m[:4] for k, m in _mine(monitor, ui_pid) if k == "binary"} | \
            {m[:4] for k, m in _mine(monitor, legacy_pid) if k == "binary"}
    assert kinds >= {b"\x00\x00\x00\x04", b"\x00\x00\x00\x01"}   # both preview kinds were relayed


def test_recorded_relay_traffic_gives_the_monitor_full_progress_of_both_external_prompts():
    ui_pid, legacy_pid = (p["response"]["prompt_id"] for p in posted_prompts(RECORDING))
    tracker = Tracker(set())
    steps, previews = {}, {}
    for kind, payload in _frames("monitor"):
        if kind == "text":
            tracker.handle(payload["type"], payload["data"])
            for pid in tracker.pop_dirty():
                state = tracker.state(pid)
                if state and state.get("step"):
                    steps.setdefault(pid, []).append(state["step"]["value"])
        else:
            frame = parse_binary(payload)
            preview = tracker.handle_preview(frame) if frame.event in (1, 4) else None
            if preview is not None:
                previews.setdefault(preview.prompt_id, []).append(frame.event)
    for pid in (ui_pid, legacy_pid):
        assert tracker.state(pid)["status"] == "completed"
        assert steps[pid] == sorted(steps[pid]) and steps[pid][-1] == 10
    assert previews == {ui_pid: [4] * 10, legacy_pid: [1] * 10}   # type 1 goes to the prompt then running


# --- telemetry from the node ----------------------------------------------------------------------------------

NODE_SNAPSHOT = {
    "sampled_at": "2026-11-28T22:00:00+00:00", "interval_s": 2.0, "source": "relay_node",
    "cpu": {"percent": 12.5, "count": 64, "reason": None},
    "ram": {"used": 2 << 30, "total": 64 << 30, "percent": 3.1, "limited_by": None, "reason": None},
    "disk": {"path": "/comfy/output", "of": "comfyui_output_dir", "used": 1 << 30, "total": 4 << 30,
             "percent": 25.0, "reason": None},
    "gpu": {"source": "nvidia-smi", "stale": False, "stale_since": None, "sampled_at": "2026-11-28T22:00:00+00:00",
            "reason": None, "devices": [{"index": 0, "name": "NVIDIA H200", "load_percent": 97.0,
                                         "memory_used": 80 << 30, "memory_total": 140 << 30, "memory_percent": 57.1,
                                         "temperature_c": 71.0, "reason": None}]},
    "thresholds": {"warm": 65, "hot": 85}}


def test_remote_gauges_come_from_the_node_and_fall_back_to_system_stats():
    with_node = FakeComfy(relay=True, relay_telemetry=NODE_SNAPSHOT)
    without = FakeComfy(relay=True)   # the node answers 404 for telemetry, like an old node or none
    try:
        remote = RemoteTelemetry(ComfyClient(with_node.url), interval=1)
        remote.sample()
        snap = remote.sample()
        assert snap["source"] == "relay_node" and snap["cpu"]["percent"] == 12.5
        (gpu,) = snap["gpu"]["devices"]
        assert (gpu["load_percent"], gpu["temperature_c"]) == (97.0, 71.0)
        assert [p[1] for p in gpu["history"]["load"]] == [97.0, 97.0]
        fallback = RemoteTelemetry(ComfyClient(without.url), interval=1).sample()
        assert fallback["source"] == "system_stats" and fallback["cpu"]["percent"] is None
    finally:
        with_node.stop(abrupt=False)
        without.stop(abrupt=False)
