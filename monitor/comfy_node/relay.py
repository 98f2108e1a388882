"""The relay: hooks PromptServer.send_json / send_bytes so that a message addressed to one client is also
delivered, unchanged and encoded once, to every subscribed monitor socket; adds the /monitor/* routes.
Imports only the standard library and what ComfyUI's own requirements install (aiohttp, psutil)."""
from __future__ import annotations

import json
import logging
import time

from aiohttp import web

from . import gauges

VERSION = "1.0.0"
MAX_SUBSCRIBERS = 16
MAX_CLIENT_ID = 256
log = logging.getLogger("comfyui_monitor_relay")


class Relay:
    """State of one server's relay. `subscribers`: client id → the socket that was open when it subscribed;
    a subscription ends with that socket (closed, or replaced by a new socket under the same id)."""

    def __init__(self, server):
        self.server = server
        self.subscribers: dict[str, object] = {}
        self.relayed = 0
        self._logged: set[str] = set()
        self.gauges = gauges.Sampler()

    # --- subscriptions ---------------------------------------------------------------------------
    def live(self) -> dict:
        """The subscriptions whose socket is still open; the others are dropped."""
        sockets = getattr(self.server, "sockets", {})
        for cid, ws in list(self.subscribers.items()):
            if sockets.get(cid) is not ws or getattr(ws, "closed", False):
                del self.subscribers[cid]
        return self.subscribers

    def subscribe(self, client_id) -> tuple[int, dict]:
        if not isinstance(client_id, str) or not 0 < len(client_id) <= MAX_CLIENT_ID:
            return 400, {"error": f"client_id must be a string of 1-{MAX_CLIENT_ID} characters"}
        ws = self.server.sockets.get(client_id)
        if ws is None or getattr(ws, "closed", False):
            return 409, {"error": "no open WebSocket with that client id: connect to /ws?clientId=... first"}
        live = self.live()
        if client_id not in live and len(live) >= MAX_SUBSCRIBERS:
            return 429, {"error": f"at most {MAX_SUBSCRIBERS} subscribers"}
        live[client_id] = ws
        return 200, {"version": VERSION, "client_id": client_id, "subscribers": len(live)}

    def targets(self, sid) -> list:
        """Sockets a message for `sid` is relayed to: none for a broadcast or a subscriber's own message."""
        if sid is None or not self.subscribers or sid in self.subscribers:
            return []
        return [ws for cid, ws in self.live().items() if cid != sid]

    # --- the hooks ---------------------------------------------------------------------------------
    def wrap(self, original_json, original_bytes):
        async def send_json(event, data, sid=None):
            await original_json(event, data, sid)   # the original recipient first, exactly as before
            try:
                targets = self.targets(sid)
                if targets:
                    text = json.dumps({"type": event, "data": data})   # encoded once for every subscriber
                    for ws in targets:
                        await self._deliver(ws.send_str, text)
            except Exception as exc:  # noqa: BLE001 - the relay must never break ComfyUI's send
                self.once("send_json", exc)

        async def send_bytes(event, data, sid=None):
            await original_bytes(event, data, sid)
            try:
                targets = self.targets(sid)
                if targets:
                    message = self.server.encode_bytes(event, data)   # previews arrive encoded: never re-encoded
                    for ws in targets:
                        await self._deliver(ws.send_bytes, message)
            except Exception as exc:  # noqa: BLE001
                self.once("send_bytes", exc)
        return send_json, send_bytes

    async def _deliver(self, send, payload) -> None:
        try:
            await send(payload)
            self.relayed += 1
        except Exception as exc:  # noqa: BLE001 - a subscriber that went away between the check and the send
            self.once(f"deliver.{type(exc).__name__}", exc)

    def once(self, kind: str, exc: BaseException) -> None:
        """Log an error once per kind (a broken hook would otherwise log on every message)."""
        if kind not in self._logged:
            self._logged.add(kind)
            log.warning("[monitor relay] %s failed (logged once): %s: %s", kind, type(exc).__name__, exc)

    # --- routes -------------------------------------------------------------------------------------
    async def get_relay(self, request):
        return web.json_response({"version": VERSION, "subscribers": len(self.live())})

    async def post_subscribe(self, request):
        try:
            body = await request.json()
        except Exception:  # noqa: BLE001 - any unreadable body
            return web.json_response({"error": "body must be JSON: {\"client_id\": ...}"}, status=400)
        status, answer = self.subscribe(body.get("client_id") if isinstance(body, dict) else None)
        if status == 200:
            log.info("[monitor relay] %s subscribed (%d subscriber(s))", answer["client_id"], answer["subscribers"])
        return web.json_response(answer, status=status)

    async def get_telemetry(self, request):
        return web.json_response(self.gauges.snapshot(time.time()))


HOOKS = ("send_json", "send_bytes", "encode_bytes", "sockets", "routes")


def install(server) -> Relay | None:
    """Hook `server` (PromptServer.instance). Anything missing (another ComfyUI): one log line, no hook."""
    missing = [name for name in HOOKS if server is None or not hasattr(server, name)]
    if missing:
        log.warning("[monitor relay] this ComfyUI lacks PromptServer.%s: relay not installed", ", ".join(missing))
        return None
    if getattr(server, "_monitor_relay", None) is not None:
        return server._monitor_relay   # loaded twice (two copies installed): hook once
    try:
        relay = Relay(server)
        routes = server.routes
        routes.get("/monitor/relay")(relay.get_relay)
        routes.post("/monitor/relay/subscribe")(relay.post_subscribe)
        routes.get("/monitor/telemetry")(relay.get_telemetry)
        server.send_json, server.send_bytes = relay.wrap(server.send_json, server.send_bytes)   # last: all or nothing
        server._monitor_relay = relay
    except Exception as exc:  # noqa: BLE001 - never break ComfyUI's start
        log.warning("[monitor relay] could not install: %s: %s", type(exc).__name__, exc)
        return None
    log.info("[monitor relay] %s installed: GET /monitor/relay, POST /monitor/relay/subscribe, "
             "GET /monitor/telemetry", VERSION)
    return relay
