"""Browser fan-out for `/api/run/ws`: one broadcaster, a bounded outbox and a sender greenlet per client.

Every outgoing message is encoded once into a complete WebSocket frame (unmasked, uncompressed: valid
whatever extensions were negotiated) and the same bytes go to every client. Progress is coalesced and sent
on the tick; events, `publish()` messages and previews are sent at once.

The per-client work is one non-blocking `send` of those bytes. A client with nothing queued and nothing in
flight gets it straight from the broadcaster (what aiohttp does: no greenlet switch, no timer per frame);
whatever its socket does not take at once (a partial send, a full buffer) goes to that client's bounded
outbox, which its own sender greenlet drains with a blocking send under `send_timeout`, so a slow client
only ever stalls itself. Frames never interleave: a direct send happens only while the sender has nothing
in flight, and the unsent rest of a partial one is sent before anything else. An overflowing event outbox
drops its oldest entries: the client sees a gap in `seq` and may send `resume`.

What a client sends is bounded too: its reader yields to the loop between socket reads, and a client that
sends more than `flood_messages` within `flood_window` seconds (a page sends a handful per session) is
closed with 1008; what it still sends meanwhile is read and discarded for a while (a lingering close), so
that it gets to read the close frame instead of a connection reset.
"""
from __future__ import annotations

import json
import logging
import socket
import struct
import threading
import time
from collections import OrderedDict, deque
from itertools import count

import gevent
from gevent.event import Event
from simple_websocket import ConnectionClosed

log = logging.getLogger(__name__)

MAX_CLIENT_MESSAGE = 4096   # characters; longer client messages are ignored
FLOOD_MESSAGES = 500        # more client messages than this within FLOOD_WINDOW_S: dropped (1008)
FLOOD_WINDOW_S = 5.0
YIELD_EVERY = 64            # client messages handled between two yields to the loop
LINGER_S = 10.0             # after closing a flooding client, discard what it still sends for this long
ALL_JOBS = "all"            # {"type": "previews", "job": ...}: every job's previews (what old pages get)
MAX_JOB_ID = 200            # characters; a longer "job" in a previews message is ignored
_REMEMBERED_STATES = 512    # prompts whose last sent state is kept to skip unchanged re-sends
_TEXT, _BINARY, _PING = 0x1, 0x2, 0x9


def _header(opcode: int, size: int) -> bytes:
    if size < 126:
        return struct.pack("!BB", 0x80 | opcode, size)
    if size < 1 << 16:
        return struct.pack("!BBH", 0x80 | opcode, 126, size)
    return struct.pack("!BBQ", 0x80 | opcode, 127, size)


def _text(msg: dict) -> bytes:
    payload = json.dumps(msg, separators=(",", ":")).encode()
    return _header(_TEXT, len(payload)) + payload


_PING_FRAME = _header(_PING, 0)
_FLOOD_REASON = struct.pack("!H", 1008) + b"too many messages"
_CLOSE_FLOODING = _header(0x8, len(_FLOOD_REASON)) + _FLOOD_REASON


class _ReaderSocket:
    """Stands in for `ws.sock` under simple-websocket's reader (a greenlet under gevent). That reader
    parses whatever the socket holds and reads again at once: a socket with data waiting never blocks, so a
    client sending without pause would hold the whole process. Here it yields before every read; and once
    `linger_until` is set it reads and discards until then (or the client's EOF), then reports EOF."""

    def __init__(self, sock):
        self._real = sock
        self.linger_until: float | None = None

    def recv(self, size):
        gevent.sleep(0)
        if self.linger_until is None:
            return self._real.recv(size)
        timer = gevent.Timeout(max(0.0, self.linger_until - time.monotonic()))
        timer.start()
        try:
            scratch = bytearray(65536)
            while self._real.recv_into(scratch):
                gevent.sleep(0)
        except (OSError, gevent.Timeout) as exc:
            if isinstance(exc, gevent.Timeout) and exc is not timer:
                raise
        finally:
            timer.close()
        return b""

    def __getattr__(self, name):
        return getattr(self._real, name)


class ReaderThread(threading.Thread):
    """`thread_class` for simple-websocket (SOCK_SERVER_OPTIONS): its reader reads through a _ReaderSocket
    from its very first read. Hub.serve installs one too, but only once the session starts: a client that
    floods right after the handshake would have the reader to itself until then."""

    def __init__(self, *args, target=None, **kwargs):
        owner = getattr(target, "__self__", None)   # the simple-websocket Server whose _thread this runs
        if getattr(owner, "sock", None) is not None and not isinstance(owner.sock, _ReaderSocket):
            owner.sock = _ReaderSocket(owner.sock)
        super().__init__(*args, target=target, **kwargs)


class _Client:
    def __init__(self, ws, max_events: int):
        self.ws = ws
        self.events: deque = deque(maxlen=max_events)  # (seq | None, frame): hello, events, publish()
        self.progress: dict = {}                        # prompt id (or publish_latest key) -> frame, latest wins
        self.preview: bytes | None = None               # preview text frame + binary frame, latest wins
        self.partial: memoryview | None = None          # unsent rest of a direct send: goes first
        self.busy = False                               # the sender greenlet has a blocking send in flight
        self.previews = True
        self.preview_job = ALL_JOBS                     # whose previews it wants: a prompt id, ALL_JOBS or None
        self.resumed = False                            # a page resumes once, right after connecting
        self.window_start = time.monotonic()            # flood check: messages since window_start
        self.window_count = 0
        self.lost = 0                                   # events dropped since the sender last drained
        self.wake = Event()
        self.closed = False
        self.greenlet = None
        # The OS-level socket under gevent's wrapper (already non-blocking): a direct send that would block
        # raises BlockingIOError instead of waiting. None: no direct sends, the sender does them all.
        self.raw = getattr(getattr(ws, "sock", None), "_sock", None)

    def idle(self) -> bool:
        return (not self.busy and self.partial is None and not self.events and not self.progress
                and self.preview is None and not self.closed)


class Hub:
    def __init__(self, tick=0.15, ping_interval=25.0, max_events=256, send_timeout=10.0, events_since=None,
                 flood_messages=FLOOD_MESSAGES, flood_window=FLOOD_WINDOW_S, linger=LINGER_S):
        self.tick = tick
        self.flood_messages, self.flood_window, self.linger = flood_messages, flood_window, linger
        self.ping_interval = ping_interval
        self.max_events = max_events
        self.send_timeout = send_timeout
        self.events_since = events_since    # callable(seq) -> [event dict] after seq, oldest first
        self.counters = {"events_dropped": 0, "clients_dropped": 0, "messages_ignored": 0, "clients_flooding": 0}
        self._clients: set[_Client] = set()
        self._dirty: dict = {}              # prompt id (None = idle) -> latest state since the last tick
        self._sent: OrderedDict = OrderedDict()   # prompt id -> last broadcast progress frame
        self._preview_seq = count(1)
        self._ticker = None

    def start(self):
        if self._ticker is None:
            self._ticker = gevent.spawn(self._tick_loop)

    def stop(self):
        if self._ticker is not None:
            self._ticker.kill()
            self._ticker = None
        for c in tuple(self._clients):
            self._drop(c, "hub stopped")

    def client_count(self) -> int:
        return len(self._clients)

    def stats(self) -> dict:
        return {"clients": len(self._clients),
                "previews_off": sum(not c.previews for c in self._clients),
                "outbox_max": max((len(c.events) for c in self._clients), default=0), **self.counters}

    # --- producers (call from greenlets of this process; not thread-safe) ---

    def set_progress(self, prompt_id: str | None, state: dict):
        self._dirty[prompt_id] = state

    def publish_event(self, event: dict):
        self._enqueue(event.get("seq"), _text({"type": "event", **event}))

    def publish(self, message: dict):
        self._enqueue(None, _text(message))

    def publish_latest(self, key: str, message: dict) -> None:
        """Like publish(), but latest wins per `key` (the page's pushed fragments, web/push.py): a client
        that is behind gets only the newest, in the progress slot, and it takes no room among its events."""
        frame = _text(message)
        for c in tuple(self._clients):
            if c.idle() and self._send_now(c, frame):
                continue
            c.progress[("latest", key)] = frame
            c.wake.set()

    def publish_preview(self, prompt_id, node_id, mime, image: bytes | memoryview) -> int:
        seq = next(self._preview_seq)
        targets = self._preview_targets(prompt_id)
        if targets:
            pair = b"".join((
                _text({"type": "preview", "prompt_id": prompt_id, "node_id": node_id, "mime": mime, "seq": seq}),
                _header(_BINARY, memoryview(image).nbytes), image))
            for c in targets:
                if not (c.idle() and self._send_now(c, pair)):
                    c.preview = pair
                    c.wake.set()
        return seq

    def _send_now(self, c: _Client, frame: bytes) -> bool:
        """Try to hand `frame` to an idle client's socket without blocking. True when it is taken care of
        (sent, or partly sent with the rest left for the sender, or the client dropped); False when the
        socket took nothing and the caller should queue it."""
        raw = c.raw
        if raw is None:
            return False
        try:
            sent = raw.send(frame)
        except BlockingIOError:
            return False
        except OSError as exc:
            self._drop(c, f"send failed: {exc}")
            return True
        if sent < len(frame):
            c.partial = memoryview(frame)[sent:]
            c.wake.set()
        return True

    # --- sessions ---

    def serve(self, ws, hello: dict) -> None:
        try:   # like aiohttp: no Nagle delay for a small frame sent after a large one
            ws.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except (AttributeError, OSError):
            pass
        reader_sock = getattr(ws, "sock", None)
        if reader_sock is not None and not isinstance(reader_sock, _ReaderSocket):
            reader_sock = ws.sock = _ReaderSocket(reader_sock)
        c = _Client(ws, self.max_events)
        c.events.append((None, _text({"type": "hello", **hello})))
        c.wake.set()
        self._clients.add(c)
        c.greenlet = gevent.spawn(self._pump, c)
        flooded = False
        try:
            handled = 0
            while not c.closed:
                # A dropped client's socket is shut down, which ends receive(); the timeout is a backstop.
                data = ws.receive(timeout=5.0)
                if data is None:
                    continue
                if self._flooding(c):
                    flooded = True
                    self._drop_flooder(c, reader_sock)
                    break
                self._on_message(c, data)
                handled += 1
                if handled % YIELD_EVERY == 0:   # receive() does not yield while messages are buffered
                    gevent.sleep(0)
        except ConnectionClosed:
            pass
        finally:
            self._drop(c)
            c.greenlet.kill()
        if flooded and getattr(ws, "thread", None) is not None:
            ws.thread.join(timeout=self.linger + 1.0)   # the reader lingers; the caller then ends the TCP

    def _flooding(self, c: _Client) -> bool:
        now = time.monotonic()
        if now - c.window_start > self.flood_window:
            c.window_start, c.window_count = now, 0
        c.window_count += 1
        return c.window_count > self.flood_messages

    def _drop_flooder(self, c: _Client, reader_sock: _ReaderSocket | None) -> None:
        """Close with 1008, then stop reading its messages: the reader only discards bytes until the
        client closes too (it has read the close frame and our FIN) or `linger` runs out."""
        self.counters["clients_flooding"] += 1
        if c.raw is not None and not c.busy and c.partial is None:   # never inside another frame
            try:
                c.raw.send(_CLOSE_FLOODING)
            except OSError:
                pass
        if reader_sock is not None:
            reader_sock.linger_until = time.monotonic() + self.linger
        self._drop(c, f"more than {self.flood_messages} messages within {self.flood_window:g} s",
                   how=socket.SHUT_WR if reader_sock is not None else socket.SHUT_RDWR)

    def _on_message(self, c: _Client, data):
        msg = None
        if isinstance(data, str) and len(data) <= MAX_CLIENT_MESSAGE:
            try:
                msg = json.loads(data)
            except (ValueError, RecursionError):
                pass
        kind = msg.get("type") if isinstance(msg, dict) else None
        if kind == "previews":
            if not self._choose_previews(c, msg):
                self.counters["messages_ignored"] += 1
        elif kind == "resume" and type(msg.get("last_seq")) is int and not c.resumed:
            # Once per session: each resume costs an events query, so a flood of them is ignored.
            c.resumed = True
            self._resume(c, msg["last_seq"])
        else:
            self.counters["messages_ignored"] += 1

    # --- preview selection: each page says whose previews it shows ---

    def _preview_targets(self, prompt_id) -> list[_Client]:
        return [c for c in self._clients
                if c.previews and (c.preview_job == ALL_JOBS or (prompt_id is not None and c.preview_job == prompt_id))]

    def _choose_previews(self, c: _Client, msg: dict) -> bool:
        """{"type": "previews", "enabled": bool, "job": prompt id | null | "all"}, either field alone: False
        (ignored) when neither is valid. A pending preview the client no longer wants is dropped."""
        enabled, job = msg.get("enabled"), msg.get("job", ...)
        valid_job = job is None or (isinstance(job, str) and 0 < len(job) <= MAX_JOB_ID)
        if not isinstance(enabled, bool) and not valid_job:
            return False
        if isinstance(enabled, bool):
            c.previews = enabled
        if valid_job and job != c.preview_job:
            c.preview_job = job
            c.preview = None
        if not c.previews:
            c.preview = None
        return True

    def _resume(self, c: _Client, last_seq: int):
        if self.events_since is None:
            return
        try:
            missed = [(e["seq"], _text({"type": "event", **e})) for e in self.events_since(last_seq)]
        except Exception:
            log.exception("events_since(%s) failed", last_seq)
            return
        if missed:
            top = max(seq for seq, _ in missed)
            queued = [(seq, f) for seq, f in c.events if seq is None or seq > top]
            c.events.clear()
            c.events.extend(missed + queued)   # maxlen keeps the newest
            c.wake.set()

    def _enqueue(self, seq, frame: bytes):
        for c in tuple(self._clients):
            if c.idle() and self._send_now(c, frame):
                continue
            if len(c.events) == self.max_events:
                self.counters["events_dropped"] += 1
                c.lost += 1
                if c.lost > self.max_events:   # a whole outbox lost without draining: it is not keeping up
                    self._drop(c, "outbox overflow")
                    continue
            c.events.append((seq, frame))
            c.wake.set()

    def _tick_loop(self):
        while True:
            gevent.sleep(self.tick)
            try:
                self._flush_progress()
            except Exception:
                log.exception("hub tick failed")

    def _flush_progress(self):
        dirty, self._dirty = self._dirty, {}
        out = {}
        for pid, state in dirty.items():
            msg = {"type": "progress", **state, "prompt_id": pid}
            if pid is None:
                msg["status"] = "idle"
            try:
                frame = _text(msg)
            except (TypeError, ValueError):
                log.exception("progress state for %s is not JSON", pid)
                continue
            if self._sent.get(pid) != frame:
                self._sent[pid] = frame
                self._sent.move_to_end(pid)
                out[pid] = frame
        if not out:
            return
        if any(pid is not None for pid in out):
            self._sent.pop(None, None)   # so that the next idle is sent again
        while len(self._sent) > _REMEMBERED_STATES:
            self._sent.popitem(last=False)
        blob = None
        for c in tuple(self._clients):
            if c.idle():
                if blob is None:
                    blob = b"".join(out.values())
                if self._send_now(c, blob):
                    continue
            c.progress.update(out)
            c.wake.set()

    def _pump(self, c: _Client):
        """The only writer of data frames and pings on this client's socket."""
        why = None
        next_ping = time.monotonic() + self.ping_interval if self.ping_interval else float("inf")
        try:
            while not c.closed:
                c.wake.wait(min(max(0.0, next_ping - time.monotonic()), 3600.0))
                c.wake.clear()
                frames = [f for _, f in c.events]
                if c.partial is not None:
                    frames.insert(0, c.partial)
                    c.partial = None
                c.events.clear()
                c.lost = 0
                frames.extend(c.progress.values())
                c.progress.clear()
                if c.preview is not None:
                    frames.append(c.preview)
                    c.preview = None
                if time.monotonic() >= next_ping:
                    if not c.ws.pong_received:
                        why = "no pong"
                        return
                    c.ws.pong_received = False   # simple-websocket sets it again when the pong arrives
                    frames.append(_PING_FRAME)
                    next_ping = time.monotonic() + self.ping_interval
                if frames and not c.closed:
                    self._send_blocking(c, frames[0] if len(frames) == 1 else b"".join(frames))
        except gevent.Timeout:
            why = "send timed out"
        except OSError as exc:
            why = f"send failed: {exc}"
        finally:
            self._drop(c, why)

    def _send_blocking(self, c: _Client, data) -> None:
        """The sender's send: a non-blocking try first (no timer when the socket takes it all), then a
        cooperative sendall of the rest under `send_timeout`."""
        sent = 0
        if c.raw is not None:
            try:
                sent = c.raw.send(data)
            except BlockingIOError:
                sent = 0
            if sent == len(data):
                return
        c.busy = True
        try:
            with gevent.Timeout(self.send_timeout):
                c.ws.sock.sendall(memoryview(data)[sent:] if sent else data)
        finally:
            c.busy = False

    def _drop(self, c: _Client, why: str | None = None, how: int = socket.SHUT_RDWR):
        """Forget a client; with a reason, also shut its socket (`how`) so that its session ends now."""
        if c.closed:
            return
        c.closed = True
        self._clients.discard(c)
        c.wake.set()
        if why:
            self.counters["clients_dropped"] += 1
            log.info("dropping WebSocket client: %s", why)
            try:
                c.ws.sock.shutdown(how)
            except OSError:
                pass
