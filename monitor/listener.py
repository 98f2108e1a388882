"""The one long-lived WebSocket to ComfyUI: a greenlet that connects, reads every frame itself (size-capped,
yielding to the loop), parses it and reconnects forever."""
from __future__ import annotations

import base64
import json
import logging
import random
import socket
import struct
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
MB = 1 << 20
MAX_MESSAGE = 32 * MB       # a whole message, text or binary, however fragmented (Config.max_message_mb)
MAX_PREVIEW = 8 * MB        # one preview image (Config.max_preview_mb); bigger ones are dropped and counted
HANDSHAKE_TIMEOUT = 10.0    # connect + upgrade + first frame, in all
# Callbacks and frame parsing run in this greenlet, and a socket with data waiting never blocks, so a busy
# ComfyUI (a flood of messages, a message in thousands of fragments) would hold the whole process: after
# this long without a pause, the listener lets the loop serve everybody else before it goes on.
YIELD_EVERY_S = 0.005
_RECV = 256 * 1024


class WebSocketViolation(Exception):
    """The server broke the protocol or a limit: the connection is dropped with `code` (RFC 6455 §7.4)."""

    def __init__(self, code: int, message: str):
        super().__init__(message)
        self.code = code


class Listener:
    """Owns the socket. Callbacks run in the listener greenlet, in frame order; they must not block long."""

    def __init__(self, ws_url: str, client_id: str, *, auth: tuple[str, str] | None = None,
                 on_text: Callable[[str, dict], None], on_binary: Callable[[protocol.BinaryFrame], None],
                 on_connect: Callable[[], None], on_disconnect: Callable[[str], None],
                 backoff_min: float = 1.0, backoff_max: float = 15.0, max_message: int = MAX_MESSAGE,
                 max_preview: int = MAX_PREVIEW, handshake_timeout: float = HANDSHAKE_TIMEOUT):
        self.url = f"{ws_url}?clientId={client_id}"
        self.client_id = client_id
        self.auth = auth
        self.on_text, self.on_binary = on_text, on_binary
        self.on_connect, self.on_disconnect = on_connect, on_disconnect
        self.backoff_min, self.backoff_max = backoff_min, backoff_max
        self.max_message, self.max_preview = max_message, max_preview
        self.handshake_timeout = handshake_timeout
        self.connected = False
        self.connected_since: float | None = None
        self.disconnected_at: float | None = None   # when the last connection was lost (None: never had one)
        self.last_message_at: float | None = None
        self.started_at: float | None = None
        self.last_error: str | None = None
        self.frames = 0
        self.frame_kinds: Counter[str] = Counter()   # by protocol.text_kind / binary_kind (a bounded set)
        self.connections = 0                         # successful connections (reconnects = this - 1)
        self.bad_frames: Counter[str] = Counter()
        self.previews_dropped = 0          # over max_preview
        self.violations: Counter[str] = Counter()   # connections dropped: "too_big", "protocol"
        self.attempts = 0
        self._ws: websocket.WebSocket | None = None
        self._frames: _FrameReader | None = None
        self._awake_since = time.monotonic()
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
            "disconnected_at": self.disconnected_at,
            "last_message_at": self.last_message_at,
            "started_at": self.started_at,
            "last_error": self.last_error,
            "frames": self.frames,
            "bad_frames": dict(self.bad_frames),
            "previews_dropped": self.previews_dropped,
            "dropped_connections": dict(self.violations),
            "reconnect_attempts": self.attempts,
        }

    # --- the loop -----------------------------------------------------------------------------
    def _run(self) -> None:
        delay = self.backoff_min
        abusive = False
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
                if not abusive:   # a server that breaks the limits again and again keeps backing off
                    delay = self.backoff_min
                code, abusive = 1000, False
                try:
                    self._read_loop()
                except WebSocketViolation as exc:
                    code, abusive = exc.code, True
                    self.violations["too_big" if exc.code == 1009 else "protocol"] += 1
                    self.last_error = str(exc)
                    log.warning("dropping the ComfyUI WebSocket: %s", exc)
                except Exception as exc:
                    self.last_error = f"{exc.__class__.__name__}: {exc}"
                    if not self._stopping:   # stop() closes the socket under our feet
                        log.warning("ComfyUI WebSocket lost: %s", self.last_error)
                finally:
                    self._close(code)
                    # Probe first: a restarted ComfyUI is back in seconds. Not one that broke the limits.
                    self._refused = not abusive
                    if self.connected:
                        self.connected = False
                        self.connected_since = None
                        self.disconnected_at = time.time()
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
        # UTF-8 is checked by our own decode (C, and a bad frame costs that frame, not the connection).
        ws = websocket.WebSocket(enable_multithread=False, skip_utf8_validation=True)
        # websocket-client's timeout bounds each read: a server answering the upgrade a byte at a time
        # would hold us for ever. The timer bounds the whole handshake.
        timer = gevent.Timeout(self.handshake_timeout)
        timer.start()
        try:
            ws.connect(self.url, timeout=min(10.0, self.handshake_timeout), header=header)
            # The server reads the flags only from the first frame; later ones are ignored.
            ws.send(FEATURE_FLAGS)
        except BaseException as exc:
            ws.shutdown()
            if exc is timer:
                raise TimeoutError(f"WebSocket handshake not done within {self.handshake_timeout:g} s") from None
            raise
        finally:
            timer.close()
        ws.settimeout(IDLE_PING_S)
        self._ws = ws
        self._frames = _FrameReader(ws, self)
        self.connected = True
        self.connections += 1
        self.connected_since = time.time()
        self.last_error = None
        log.info("connected to ComfyUI at %s", self.url)
        _safely(self.on_connect)

    def _read_loop(self) -> None:
        ws, frames = self._ws, self._frames
        while not self._stopping and ws is not None:
            try:
                opcode, data = frames.message()
            except socket.timeout:
                ws.ping()   # silence: a dead peer fails this send; a partly read frame stays buffered
                continue
            self.last_message_at = time.time()
            self.frames += 1
            if opcode == websocket.ABNF.OPCODE_TEXT:
                self._dispatch_text(data)
            else:
                self._dispatch_binary(data)
            self.breathe()

    def breathe(self) -> None:
        """Yield to the loop if this greenlet has run YIELD_EVERY_S without a pause."""
        if time.monotonic() - self._awake_since >= YIELD_EVERY_S:
            gevent.sleep(0)
            self._awake_since = time.monotonic()

    def _dispatch_text(self, data: bytes) -> None:
        try:
            msg_type, payload = protocol.parse_text(data)
        except protocol.ProtocolError as exc:
            self._bad(exc.kind, data)
            return
        self.frame_kinds[protocol.text_kind(msg_type)] += 1
        _safely(self.on_text, msg_type, payload)

    def _dispatch_binary(self, data: bytes) -> None:
        try:
            frame = protocol.parse_binary(data)
        except protocol.ProtocolError as exc:
            self._bad(exc.kind, data)
            return
        self.frame_kinds[protocol.binary_kind(frame.event)] += 1
        if frame.image is not None and frame.image.nbytes > self.max_preview:
            self.previews_dropped += 1
            if self.previews_dropped == 1:   # once: the counter says how many followed
                log.warning("dropping ComfyUI previews larger than %.1f MB (this one: %.1f MB)",
                            self.max_preview / MB, frame.image.nbytes / MB)
            return
        _safely(self.on_binary, frame)

    def _bad(self, kind: str, data: bytes) -> None:
        self.bad_frames[kind] += 1
        if self.bad_frames[kind] == 1:  # log once per kind, count the rest
            log.warning("ignoring malformed ComfyUI frame (%s): %r", kind, bytes(data[:80]))

    def _close(self, code: int = 1000) -> None:
        """Send a close frame and close the socket, without waiting for the server's reply: reading it
        would mean parsing whatever the server still sends (the rest of a 200 MB frame...)."""
        ws, self._ws, self._frames = self._ws, None, None
        if ws is None:
            return
        try:
            if ws.sock is not None:
                ws.sock.settimeout(1)
                ws.send_close(code)
        except Exception:
            pass
        ws.shutdown()


class _FrameReader:
    """Whole data messages off the socket, read by hand rather than by websocket-client, which joins
    fragments by repeated concatenation (quadratic), reads any declared length in full and never lets
    the loop run. Here the declared length is checked against the cap before a payload byte is read,
    fragments are assembled in one bytearray, and the listener breathes while big payloads come in.
    All state lives here, so a socket timeout in the middle of a frame loses nothing."""

    def __init__(self, ws: websocket.WebSocket, listener: Listener):
        self.ws, self.sock, self.listener = ws, ws.sock, listener
        self.buf = bytearray()
        self.parts: bytearray | None = None   # the fragmented message being assembled
        self.opcode = 0

    def message(self) -> tuple[int, bytes | bytearray]:
        """(opcode, payload) of the next text or binary message; pings are answered on the way."""
        while True:
            fin, opcode, payload = self._frame()
            if opcode == websocket.ABNF.OPCODE_PING:
                self.ws.pong(payload)
            elif opcode == websocket.ABNF.OPCODE_CLOSE:
                code = struct.unpack("!H", payload[:2])[0] if len(payload) >= 2 else None
                raise ConnectionError(f"server closed the connection ({code})")
            elif opcode == websocket.ABNF.OPCODE_CONT:
                if self.parts is None:
                    raise WebSocketViolation(1002, "a continuation frame without a message to continue")
                self.parts += payload
                if fin:
                    data, self.parts = self.parts, None
                    return self.opcode, data
            elif opcode in (websocket.ABNF.OPCODE_TEXT, websocket.ABNF.OPCODE_BINARY):
                if self.parts is not None:
                    raise WebSocketViolation(1002, "a new message inside a fragmented one")
                if fin:
                    return opcode, payload
                self.parts, self.opcode = bytearray(payload), opcode
            # pongs: nothing to do
            self.listener.breathe()

    def _frame(self) -> tuple[bool, int, bytes]:
        self._fill(2)
        b0, b1 = self.buf[0], self.buf[1]
        fin, opcode, size, head = bool(b0 & 0x80), b0 & 0x0F, b1 & 0x7F, 2
        if b1 & 0x80:
            raise WebSocketViolation(1002, "a masked frame from the server")
        if b0 & 0x70:
            raise WebSocketViolation(1002, "reserved bits set, no extension was negotiated")
        if size == 126:
            self._fill(4)
            size, head = struct.unpack_from("!H", self.buf, 2)[0], 4
        elif size == 127:
            self._fill(10)
            size, head = struct.unpack_from("!Q", self.buf, 2)[0], 10
        if opcode >= 0x8:
            if opcode not in (0x8, 0x9, 0xA) or size > 125 or not fin:
                raise WebSocketViolation(1002, f"a bad control frame (opcode {opcode}, {size} bytes)")
        elif opcode > 0x2:
            raise WebSocketViolation(1002, f"unknown opcode {opcode}")
        else:
            total = size + (len(self.parts) if opcode == 0 and self.parts is not None else 0)
            limit = self.listener.max_message
            if total > limit:
                raise WebSocketViolation(1009, f"a message of over {limit / MB:g} MB "
                                               f"({total / MB:.1f} MB so far; limit MONITOR_MAX_MESSAGE_MB)")
        self._fill(head + size)
        with memoryview(self.buf) as view:
            payload = bytes(view[head:head + size])
        if len(self.buf) == head + size:
            self.buf = bytearray()   # do not keep a big frame's allocation around
        else:
            del self.buf[:head + size]
        return fin, opcode, payload

    def _fill(self, n: int) -> None:
        while len(self.buf) < n:
            chunk = self.sock.recv(min(max(n - len(self.buf), 65536), _RECV))
            if not chunk:
                raise ConnectionError("server closed the connection")
            self.buf += chunk
            self.listener.breathe()


def _safely(fn, *args) -> None:
    """A bug in a handler must never kill the listener: log it with its traceback and go on."""
    try:
        fn(*args)
    except Exception:
        log.exception("handler %s failed", getattr(fn, "__name__", fn))
