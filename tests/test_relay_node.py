"""The relay node (monitor/comfy_node) inside a stand-in PromptServer (tests/comfy_standin.py): real aiohttp
server, real WebSocket clients on loopback, messages sent through the server's own publish loop."""
from __future__ import annotations

import asyncio
import json
import logging

import aiohttp
import pytest
from PIL import Image

from comfy_standin import PREVIEW_IMAGE_WITH_METADATA, TEXT, UNENCODED_PREVIEW_IMAGE, Client, StandInServer
from monitor.comfy_node import relay as node
from monitor.comfy_node.gauges import parse_nvidia

DONE = ("done", {"end": True}, None)   # a broadcast that closes every script: all clients have seen it all


def script(image):
    """What ComfyUI sends while the UI's prompt runs: to the UI only, plus broadcasts in between."""
    return [
        ("status", {"status": {"exec_info": {"queue_remaining": 1}}}, None),
        ("execution_start", {"prompt_id": "p1", "timestamp": 1}, "ui"),
        ("executing", {"node": "3", "display_node": "3", "prompt_id": "p1"}, "ui"),
        ("progress", {"value": 1, "max": 2, "prompt_id": "p1", "node": "3"}, "ui"),
        (UNENCODED_PREVIEW_IMAGE, ("JPEG", image, None), "ui"),
        (PREVIEW_IMAGE_WITH_METADATA, (("PNG", image, None), {"node_id": "3", "prompt_id": "p1"}), "ui"),
        (TEXT, b"\x00\x00\x00\x014width: 8", None),
        ("progress", {"value": 2, "max": 2, "prompt_id": "p1", "node": "3"}, "ui"),
        ("executed", {"node": "7", "output": {"images": []}, "prompt_id": "p1"}, "ui"),
        ("execution_success", {"prompt_id": "p1", "timestamp": 2}, "ui"),
        ("executing", {"node": None, "prompt_id": "p1"}, "ui"),
    ]


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 30))


async def scenario(body, *, relay=True, subscribe=("mon",), clients=("ui", "mon")):
    server = StandInServer()
    installed = node.install(server) if relay else None
    url = await server.start()
    async with aiohttp.ClientSession() as session:
        conns = {cid: await Client(session, url, cid).connect() for cid in clients}
        for cid in subscribe:
            async with session.post(f"{url}/monitor/relay/subscribe", json={"client_id": cid}) as resp:
                assert resp.status == 200, await resp.text()
        try:
            return await body(server, installed, conns, session, url)
        finally:
            for c in conns.values():
                await c.close()
            await server.stop()


async def play(server, conns, messages):
    for msg in messages + [DONE]:
        server.send_sync(*msg)
    for c in conns.values():
        await c.wait_for(lambda f: f[0] == "text" and json.loads(f[1])["type"] == "done")


def after_greeting(client):
    return [f for f in client.frames if not (f[0] == "text" and json.loads(f[1])["type"] == "status"
                                               and "sid" in json.loads(f[1])["data"])]


def test_ui_gets_exactly_what_it_got_without_the_node_and_subscribers_get_it_too():
    image = Image.new("RGB", (16, 16), (200, 30, 30))

    async def body(server, installed, conns, session, url):
        await play(server, conns, script(image))
        return after_greeting(conns["ui"]), after_greeting(conns["mon"]), server.image_encodes

    ui_plain, mon_plain, encodes_plain = run(scenario(body, relay=False, subscribe=()))
    ui_relay, mon_relay, encodes_relay = run(scenario(body))
    assert ui_relay == ui_plain                     # same frames, same bytes, same order
    assert encodes_relay == encodes_plain == 2      # each preview encoded once, whoever receives it
    # Without the node the monitor sees only broadcasts; with it, everything, in the UI's order.
    assert [json.loads(p)["type"] for k, p in mon_plain if k == "text"] == ["status", "done"]
    assert mon_relay == ui_relay


def test_broadcasts_are_not_duplicated_and_a_subscribers_own_messages_are_not_relayed():
    async def body(server, installed, conns, session, url):
        await play(server, conns, [("status", {"n": 1}, None), ("progress", {"prompt_id": "m1"}, "mon"),
                                   ("progress", {"prompt_id": "m2"}, "mon2")])
        return {cid: [m for m in c.texts() if "sid" not in m["data"]] for cid, c in conns.items()}

    seen = run(scenario(body, subscribe=("mon", "mon2"), clients=("ui", "mon", "mon2")))
    assert seen["ui"] == [{"type": "status", "data": {"n": 1}}, {"type": "done", "data": {"end": True}}]
    assert [m["data"].get("prompt_id") for m in seen["mon"]] == [None, "m1", None]
    assert [m["data"].get("prompt_id") for m in seen["mon2"]] == [None, "m2", None]


def test_relay_reaches_subscribers_even_when_the_original_client_is_gone():
    async def body(server, installed, conns, session, url):
        await play(server, conns, [("progress", {"prompt_id": "script"}, "no-socket-client")])
        return conns["mon"].texts()

    assert {"type": "progress", "data": {"prompt_id": "script"}} in run(scenario(body))


def test_a_subscription_ends_with_its_socket():
    async def body(server, installed, conns, session, url):
        async with session.get(f"{url}/monitor/relay") as resp:
            assert await resp.json() == {"version": node.VERSION, "subscribers": 1}
        await conns["mon"].close()
        for _ in range(200):
            if "mon" not in server.sockets:
                break
            await asyncio.sleep(0.01)
        async with session.get(f"{url}/api/monitor/relay") as resp:   # also under /api, as ComfyUI serves it
            assert (await resp.json())["subscribers"] == 0
        # Reconnecting with the same id is not enough: the monitor subscribes again on every connect.
        again = await Client(session, url, "mon").connect()
        await play(server, {"ui": conns["ui"], "mon": again}, [("progress", {"prompt_id": "p"}, "ui")])
        before = [m["type"] for m in again.texts()]
        async with session.post(f"{url}/monitor/relay/subscribe", json={"client_id": "mon"}) as resp:
            assert resp.status == 200
        again.frames.clear()
        await play(server, {"ui": conns["ui"], "mon": again}, [("progress", {"prompt_id": "q"}, "ui")])
        await again.close()
        return before, again.texts()

    before, after = run(scenario(body))
    assert "progress" not in before
    assert {"type": "progress", "data": {"prompt_id": "q"}} in after


def test_subscribe_refuses_bad_input_with_json():
    async def body(server, installed, conns, session, url):
        answers = []
        for payload in (b"not json", b'{"client_id": 5}', b'{"client_id": "nobody-connected"}', b"[]"):
            async with session.post(f"{url}/monitor/relay/subscribe", data=payload) as resp:
                answers.append((resp.status, (await resp.json())["error"]))
        return answers

    answers = run(scenario(body, subscribe=()))
    assert [status for status, _ in answers] == [400, 400, 409, 400]
    assert all(isinstance(message, str) and message for _, message in answers)


def test_a_raising_relay_leaves_comfyuis_send_working(caplog):
    async def body(server, installed, conns, session, url):
        def broken(sid):
            raise RuntimeError("boom")
        installed.targets = broken
        await play(server, conns, [("progress", {"prompt_id": "a"}, "ui"), (TEXT, b"xx", "ui"),
                                   ("progress", {"prompt_id": "b"}, "ui")])
        return conns["ui"].texts(), [f for f in conns["ui"].frames if f[0] == "binary"], conns["mon"].texts()

    with caplog.at_level(logging.WARNING, logger="comfyui_monitor_relay"):
        ui_texts, ui_binary, mon_texts = run(scenario(body))
    assert [m["data"].get("prompt_id") for m in ui_texts if m["type"] == "progress"] == ["a", "b"]
    assert ui_binary == [("binary", b"\x00\x00\x00\x03xx")]
    assert not [m for m in mon_texts if m["type"] == "progress"]
    failures = [r for r in caplog.records if "failed (logged once)" in r.getMessage()]
    assert len(failures) == 2   # once per kind (send_json, send_bytes), not once per message


def test_a_subscriber_that_fails_to_receive_does_not_stop_the_others():
    async def body(server, installed, conns, session, url):
        async def dead(payload, **kw):
            raise ConnectionResetError("gone")
        server.sockets["mon"].send_str = dead   # the socket breaks between the liveness check and the send
        await play(server, {k: conns[k] for k in ("ui", "mon2")}, [("progress", {"prompt_id": "a"}, "ui")])
        return conns["ui"].texts(), conns["mon2"].texts()

    ui, mon2 = run(scenario(body, subscribe=("mon", "mon2"), clients=("ui", "mon", "mon2")))
    assert {"type": "progress", "data": {"prompt_id": "a"}} in ui
    assert {"type": "progress", "data": {"prompt_id": "a"}} in mon2


def test_a_comfyui_without_the_hook_points_is_left_alone(caplog):
    class Other:
        routes = None
        sockets: dict = {}

        async def send(self, *a):
            pass

    server = Other()
    with caplog.at_level(logging.WARNING, logger="comfyui_monitor_relay"):
        assert node.install(server) is None
        assert node.install(None) is None
    assert not hasattr(server, "send_json") and not hasattr(server, "_monitor_relay")
    assert len([r for r in caplog.records if "relay not installed" in r.getMessage()]) == 2


def test_installed_twice_hooks_once():
    async def body():
        server = StandInServer()
        first, second = node.install(server), node.install(server)
        return first is second and len(list(server.routes)) == 4   # /ws + the node's three
    assert run(body())


def test_telemetry_is_served_from_a_cache_in_the_monitors_shape():
    async def body(server, installed, conns, session, url):
        installed.gauges.nvidia = lambda: (parse_nvidia("0, NVIDIA H200, 37, 1024, 143771, 41\n"
                                                        "1, NVIDIA H200, [N/A], 2048, 143771, [N/A]\n"), None)
        installed.gauges.interval = 0.05
        for _ in range(200):
            async with session.get(f"{url}/monitor/telemetry") as resp:
                snap = await resp.json()
            if snap["sampled_at"]:
                return snap
            assert snap["cpu"]["reason"] == "warming up"
            await asyncio.sleep(0.02)
        raise AssertionError("never sampled")

    snap = run(scenario(body, subscribe=()))
    assert set(snap) >= {"sampled_at", "cpu", "ram", "disk", "gpu", "thresholds"}
    assert 0 <= snap["cpu"]["percent"] <= 100 and snap["ram"]["total"] > 0
    assert snap["disk"]["percent"] is None and snap["disk"]["reason"]   # no ComfyUI output folder here
    first, second = snap["gpu"]["devices"]
    assert first == {"index": 0, "name": "NVIDIA H200", "load_percent": 37.0, "memory_used": 1024 << 20,
                     "memory_total": 143771 << 20, "memory_percent": 0.7, "temperature_c": 41.0, "reason": None}
    assert second["load_percent"] is None and second["temperature_c"] is None
    assert "load" in second["reason"] and "temperature" in second["reason"]


@pytest.mark.parametrize("text", ["", "garbage", "0, x, 1, 2\n"])
def test_unreadable_nvidia_smi_lines_are_skipped(text):
    assert parse_nvidia(text) == []
