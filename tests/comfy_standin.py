"""A stand-in for ComfyUI 0.3.64's PromptServer for the relay node's tests: a real aiohttp server with the same
attributes and send path (`sockets`, `routes`, `client_id`, `send`, `send_sync`, `send_json`, `send_bytes`,
`encode_bytes`, a publish loop), written from the behaviour of ComfyUI's server.py, not copied from it."""
from __future__ import annotations

import asyncio
import json
import struct
import uuid
from io import BytesIO

import aiohttp
from aiohttp import web

PREVIEW_IMAGE, UNENCODED_PREVIEW_IMAGE, TEXT, PREVIEW_IMAGE_WITH_METADATA = 1, 2, 3, 4


class StandInServer:
    def __init__(self):
        self.sockets: dict[str, web.WebSocketResponse] = {}
        self.routes = web.RouteTableDef()
        self.client_id: str | None = None
        self.messages: asyncio.Queue = asyncio.Queue()
        self.loop = asyncio.get_running_loop()
        self.image_encodes = 0
        self.runner: web.AppRunner | None = None
        self.port = 0
        self.routes.get("/ws")(self._ws)

    # --- the send path ----------------------------------------------------------------------------
    async def send(self, event, data, sid=None):
        if event == UNENCODED_PREVIEW_IMAGE:
            await self.send_image(data, sid=sid)
        elif event == PREVIEW_IMAGE_WITH_METADATA:
            image, metadata = data
            await self.send_image_with_metadata(image, metadata, sid=sid)
        elif isinstance(data, (bytes, bytearray)):
            await self.send_bytes(event, data, sid)
        else:
            await self.send_json(event, data, sid)

    def _encode(self, image_data) -> tuple[str, bytes]:
        fmt, image, _max = image_data
        out = BytesIO()
        image.save(out, format=fmt, quality=95)
        self.image_encodes += 1
        return fmt, out.getvalue()

    async def send_image(self, image_data, sid=None):
        fmt, data = self._encode(image_data)
        await self.send_bytes(PREVIEW_IMAGE, struct.pack(">I", 2 if fmt == "PNG" else 1) + data, sid=sid)

    async def send_image_with_metadata(self, image_data, metadata=None, sid=None):
        fmt, data = self._encode(image_data)
        meta = json.dumps({**(metadata or {}), "image_type": "image/png" if fmt == "PNG" else "image/jpeg"}).encode()
        await self.send_bytes(PREVIEW_IMAGE_WITH_METADATA, struct.pack(">I", len(meta)) + meta + data, sid=sid)

    def encode_bytes(self, event, data):
        return bytearray(struct.pack(">I", event)) + data

    async def send_bytes(self, event, data, sid=None):
        message = self.encode_bytes(event, data)
        targets = list(self.sockets.values()) if sid is None else [self.sockets[sid]] if sid in self.sockets else []
        for ws in targets:
            await _catch(ws.send_bytes, message)

    async def send_json(self, event, data, sid=None):
        message = {"type": event, "data": data}
        targets = list(self.sockets.values()) if sid is None else [self.sockets[sid]] if sid in self.sockets else []
        for ws in targets:
            await _catch(ws.send_json, message)

    def send_sync(self, event, data, sid=None):
        self.loop.call_soon_threadsafe(self.messages.put_nowait, (event, data, sid))

    async def publish_loop(self):
        while True:
            msg = await self.messages.get()
            await self.send(*msg)

    # --- serving ------------------------------------------------------------------------------------
    async def _ws(self, request):
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        sid = request.rel_url.query.get("clientId", "") or uuid.uuid4().hex
        self.sockets.pop(sid, None)
        self.sockets[sid] = ws
        try:
            await self.send("status", {"status": {"exec_info": {"queue_remaining": 0}}, "sid": sid}, sid)
            async for _ in ws:
                pass
        finally:
            self.sockets.pop(sid, None)
        return ws

    async def start(self) -> str:
        app = web.Application()
        api = web.RouteTableDef()
        for route in self.routes:
            api.route(route.method, "/api" + route.path)(route.handler)
        app.add_routes(api)
        app.add_routes(self.routes)
        self.runner = web.AppRunner(app)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]
        self._publisher = asyncio.ensure_future(self.publish_loop())
        return f"http://127.0.0.1:{self.port}"

    async def stop(self) -> None:
        self._publisher.cancel()
        if self.runner is not None:
            await self.runner.cleanup()


async def _catch(send, message):
    try:
        await send(message)
    except (aiohttp.ClientError, ConnectionError) as exc:
        print("send error:", exc)


class Client:
    """A real WebSocket client that records every frame it receives: ("text", str) or ("binary", bytes)."""

    def __init__(self, session: aiohttp.ClientSession, url: str, client_id: str):
        self.session, self.url, self.client_id = session, url, client_id
        self.frames: list[tuple[str, object]] = []

    async def connect(self) -> "Client":
        self.ws = await self.session.ws_connect(f"{self.url}/ws?clientId={self.client_id}")
        self.reader = asyncio.ensure_future(self._read())
        await self.wait_for(lambda f: f[0] == "text" and json.loads(f[1])["type"] == "status")
        return self

    async def _read(self):
        async for msg in self.ws:
            if msg.type == aiohttp.WSMsgType.TEXT:
                self.frames.append(("text", msg.data))
            elif msg.type == aiohttp.WSMsgType.BINARY:
                self.frames.append(("binary", bytes(msg.data)))

    async def wait_for(self, match, timeout: float = 5.0):
        deadline = asyncio.get_running_loop().time() + timeout
        while asyncio.get_running_loop().time() < deadline:
            for frame in self.frames:
                if match(frame):
                    return frame
            await asyncio.sleep(0.005)
        raise AssertionError(f"{self.client_id}: no matching frame in {self.frames!r}")

    def texts(self) -> list[dict]:
        return [json.loads(p) for kind, p in self.frames if kind == "text"]

    async def close(self):
        await self.ws.close()
        self.reader.cancel()
