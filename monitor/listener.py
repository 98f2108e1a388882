"""The one long-lived WebSocket to ComfyUI: a greenlet that connects, parses every frame and reconnects forever."""
from __future__ import annotations

import base64
import json
import logging
import random
import socket
import time
from collections import Counter
from typing import Callable
from urllib.parse import urlsplit

import gevent
import websocket  # websocket-client

from . import protocol

log = logging.getLogger(__name__)

FEATURE_FLAGS = json.dumps({"type": "feature_flags", "data": {"supports_preview_metadata": True}})
# ComfyUI (aiohttp) sends no pings of its own; a long silent node is normal, so silence alone never
# means a dead link. After this much silence we ping: a dead peer then fails the send.
IDLE_PING_S = 20.0
PROBE_S = 1.0


class Listener:
    """Owns the socket. Callbacks run in the listener greenlet, in frame order; they must not block long."""

    def __init__(self, ws_url: str, client_id: str, *, auth: tuple[str, str] | None = None,
                 on_text: Callable[[str, dict], None], on_binary: Callable[[protocol.BinaryFrame], None],
                 on_connect: Callable[[], None], on_disconnect: Callable[[str], None],
                 backoff_min: float = 1.0, backoff_max: float = 15.0):
        self.url = f"{ws_url}?clientId={client_id}"
        self.client_id = client_id
        self.auth = auth
        self.on_text, self.on_binary = on_text, on_binary
        self.on_connect, self.on_disconnect = on_connect, on_disconnect
        self.backoff_min, self.backoff_max = backoff_min, backoff_max
        self.connected = False
        self.connected_since: float | None = None
        self.last_message_at: float | None = None
        self.started_at: float | None = None
        self.last_error: str | None = None
        self.frames = 0
        self.bad_frames: Counter[str] = Counter()
        self.attempts = 0
        self._ws: websocket.WebSocket | None = None
        self._greenlet: gevent.Greenlet | None = None
        self._stopping = False
        self._refused = False

    # --- lifecycle ----------------------------------------------------------------------------
    def start(self) -> None:
        self.started_at = time.time()
        self._stopping = False
        self._greenlet = gevent.spawn(self._run)

    def stop(self) -> None:
        self._stopping = True
        self._close()
        if self._greenlet is not None:
            self._greenlet.kill(block=True, timeout=5)
            self._greenlet = None

    def wait_connected(self, timeout: float) -> bool:
        deadline = time.time() + timeout
        while not self.connected and time.time() < deadline:
            gevent.sleep(0.02)
        return self.connected

    def status(self) -> dict:
        return {
            "connected": self.connected,
            "connected_since": self.connected_since,
            "last_message_at": self.last_message_at,
            "started_at": self.started_at,
            "last_error": self.last_error,
            "frames": self.frames,
            "bad_frames": dict(self.bad_frames),
            "reconnect_attempts": self.attempts,
        }

    # --- the loop -----------------------------------------------------------------------------
    def _run(self) -> None:
        delay = self.backoff_min
        while not self._stopping:
            try:
                self._connect()
            except Exception as exc:  # refused, DNS, TLS, handshake status...
                self.last_error = f"{exc.__class__.__name__}: {exc}"
                self._refused = isinstance(exc, ConnectionRefusedError)
                self.attempts += 1
                if self.attempts <= 3 or self.attempts % 20 == 0:
                    log.warning("ComfyUI WebSocket %s unreachable (attempt %d): %s",
                                self.url, self.attempts, self.last_error)
            else:
                self.attempts = 0
                delay = self.backoff_min
                try:
                    self._read_loop()
                except Exception as exc:
                    self.last_error = f"{exc.__class__.__name__}: {exc}"
                    log.warning("ComfyUI WebSocket lost: %s", self.last_error)
                finally:
                    self._close()
                    self._refused = True  # probe first: a restarted ComfyUI is back in seconds
                    if self.connected:
                        self.connected = False
                        self.connected_since = None
                        _safely(self.on_disconnect, self.last_error or "closed")
            if self._stopping:
                break
            # Full jitter keeps many monitors from hammering a restarting server in lockstep.
            self._pause(random.uniform(self.backoff_min / 2, delay))
            delay = min(self.backoff_max, delay * 2)

    def _pause(self, seconds: float) -> None:
        """Wait out one backoff step. While ComfyUI's port refuses connections (it is down or
        restarting), look at the port every PROBE_S: a refused TCP connect costs nothing, and a ComfyUI
        that comes back is then reconnected within about a second instead of a whole step (up to
        backoff_max). A server that accepts TCP but fails the handshake waits the full backoff."""
        deadline = time.monotonic() + seconds
        while not self._stopping:
            left = deadline - time.monotonic()
            if left <= 0:
                return
            gevent.sleep(min(PROBE_S, left))
            if self._refused and self._port_open():
                return

    def _port_open(self) -> bool:
        parts = urlsplit(self.url)
        port = parts.port or (443 if parts.scheme == "wss" else 80)
        try:
            socket.create_connection((parts.hostname, port), timeout=1).close()
            return True
        except OSError:
            return False

    def _connect(self) -> None:
        self._close()  # never two sockets with one client id: the server orphans both
        header = []
        if self.auth:
            token = base64.b64encode(f"{self.auth[0]}:{self.auth[1]}".encode()).decode()
            header.append(f"Authorization: Basic {token}")
        # UTF-8 is checked by our own decode (C, and a bad frame costs that frame, not the connection);
        # websocket-client's own check is pure Python per text frame and drops the connection.
        ws = websocket.create_connection(self.url, timeout=10, header=header, enable_multithread=False,
                                         skip_utf8_validation=True)
        # The server reads the flags only from the first frame; later ones are ignored.
        ws.send(FEATURE_FLAGS)
        ws.settimeout(IDLE_PING_S)
        self._ws = ws
        self.connected = True
        self.connected_since = time.time()
        self.last_error = None
        log.info("connected to ComfyUI at %s", self.url)
        _safely(self.on_connect)

    def _read_loop(self) -> None:
        ws = self._ws
        while not self._stopping and ws is not None:
            try:
                opcode, data = ws.recv_data(control_frame=False)
            except websocket.WebSocketTimeoutException:
                ws.ping()
                continue
            if opcode == websocket.ABNF.OPCODE_CLOSE or (opcode is None and not data):
                raise ConnectionError("server closed the connection")
            self.last_message_at = time.time()
            self.frames += 1
            if opcode == websocket.ABNF.OPCODE_TEXT:
                self._dispatch_text(data)
            elif opcode == websocket.ABNF.OPCODE_BINARY:
                self._dispatch_binary(data)

    def _dispatch_text(self, data: bytes) -> None:
        try:
            text = data.decode("utf-8")
            msg_type, payload = protocol.parse_text(text)
        except UnicodeDecodeError:
            self._bad("text.bad_utf8", data)
            return
        except protocol.ProtocolError as exc:
            self._bad(exc.kind, data)
            return
        _safely(self.on_text, msg_type, payload)

    def _dispatch_binary(self, data: bytes) -> None:
        try:
            frame = protocol.parse_binary(data)
        except protocol.ProtocolError as exc:
            self._bad(exc.kind, data)
            return
        _safely(self.on_binary, frame)

    def _bad(self, kind: str, data: bytes) -> None:
        self.bad_frames[kind] += 1
        if self.bad_frames[kind] == 1:  # log once per kind, count the rest
            log.warning("ignoring malformed ComfyUI frame (%s): %r", kind, bytes(data[:80]))

    def _close(self) -> None:
        ws, self._ws = self._ws, None
        if ws is not None:
            try:
                ws.close(timeout=1)
            except Exception:
                pass


def _safely(fn, *args) -> None:
    """A bug in a handler must never kill the listener: log it with its traceback and go on."""
    try:
        fn(*args)
    except Exception:
        log.exception("handler %s failed", getattr(fn, "__name__", fn))
