"""The HTTP server (one factory for app.py and the tests): gevent's WSGIServer with a deadline on request heads,
a bound on connections that have not authenticated yet, and the descriptor soft limit raised."""
from __future__ import annotations

import logging
import socket
import time
from collections import OrderedDict

import gevent
import gevent.pool
from gevent.pywsgi import WSGIHandler, WSGIServer

try:
    import resource
except ImportError:   # Windows: no descriptor limit to raise
    resource = None

log = logging.getLogger(__name__)

# The WSGI environ key under which the handler offers `trust()`: web/security.py calls it once a request on the
# connection has passed the Host check and authenticated (or needs no credentials).
TRUST_KEY = "monitor.trust_connection"
LOCAL_ADDR_KEY = "monitor.local_addr"


class HeadTimeout(TimeoutError):
    """The request line + headers did not arrive within the deadline."""


class Gate:
    """The connections not yet trusted, oldest first. Above the limit the oldest one that is not inside the
    application (waiting for a request head, or discarding a body) is dropped to make room; when every one
    is inside the application the new connection is closed at once."""

    def __init__(self, limit: int):
        self.limit = max(1, int(limit))
        self._pending: OrderedDict[MonitorHandler, None] = OrderedDict()
        self.dropped = 0
        self._logged_at = -60.0

    @property
    def pending(self) -> int:
        return len(self._pending)

    def admit(self, handler: "MonitorHandler") -> bool:
        while len(self._pending) >= self.limit:
            victim = next((h for h in self._pending if not h.in_app), None)
            if victim is None:
                self._count_drop()
                return False
            self._pending.pop(victim, None)
            victim.drop()
            self._count_drop()
        self._pending[handler] = None
        return True

    def leave(self, handler: "MonitorHandler") -> None:
        self._pending.pop(handler, None)

    def _count_drop(self) -> None:
        self.dropped += 1
        now = time.monotonic()
        if now - self._logged_at >= 60:   # a flood would otherwise be a flood of log lines too
            log.warning("more than %d unauthenticated connections at once (MONITOR_MAX_UNAUTHENTICATED): "
                        "closing the oldest waiting ones; %d closed so far", self.limit, self.dropped)
            self._logged_at = now


class MonitorHandler(WSGIHandler):
    """Each request head must arrive within `server.header_timeout` (one deadline for the line and all
    headers, so a client trickling bytes gains nothing; it also ends idle keep-alive connections). Until the
    connection is trusted every socket read and write also times out after that long; trust lifts that,
    before a WebSocket upgrade takes the socket over."""

    in_app = False
    _deadline = None
    _greenlet = None

    def handle(self):
        gate: Gate = self.server.gate
        if not gate.admit(self):
            self._close_now()
            return
        self._greenlet = gevent.getcurrent()
        self.socket.settimeout(self.server.header_timeout)
        try:   # answers go out at once: Nagle's wait for an ACK cost each keep-alive request 40 ms
            self.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except (OSError, AttributeError):
            pass   # not TCP (a Unix socket)
        try:
            super().handle()
        except OSError:
            pass   # a peer gone or timed out while we sent an error answer: nothing to log, the socket is closed
        finally:
            gate.leave(self)

    def trust(self) -> None:
        if self.server.gate is not None:
            self.server.gate.leave(self)
        sock = self.__dict__.get("socket")
        if sock is not None:
            sock.settimeout(None)

    def drop(self) -> None:
        """Called by the gate from another connection's greenlet: end this connection and wait until its
        `handle` has closed the socket, so that the descriptor is free before the new connection proceeds."""
        if self._greenlet is not None and not self._greenlet.dead:
            self._greenlet.kill(block=True, timeout=1.0)

    def _close_now(self) -> None:
        for closeable in (self.rfile, self.socket):   # the read file holds a reference to the socket
            try:
                closeable.close()
            except OSError:
                pass

    # --- the head deadline -------------------------------------------------------------------------------
    def read_requestline(self):
        self._stop_deadline()
        self._deadline = gevent.Timeout.start_new(self.server.header_timeout, HeadTimeout)
        return super().read_requestline()

    def read_request(self, raw_requestline):
        try:
            return super().read_request(raw_requestline)
        finally:
            self._stop_deadline()

    def handle_one_request(self):
        try:
            return super().handle_one_request()
        finally:
            self._stop_deadline()

    def _stop_deadline(self) -> None:
        if self._deadline is not None:
            self._deadline.close()
            self._deadline = None

    def run_application(self):
        self.in_app = True
        try:
            super().run_application()
        finally:
            self.in_app = False

    def get_environ(self):
        env = super().get_environ()
        env[TRUST_KEY] = self.trust
        try:
            env[LOCAL_ADDR_KEY] = self.socket.getsockname()[0]
        except (OSError, IndexError, TypeError):
            pass
        return env

    # --- quiet ends: a timed-out client is not a server error ----------------------------------------------
    def _handle_client_error(self, ex):
        if isinstance(ex, TimeoutError):
            return None   # close without an answer
        return super()._handle_client_error(ex)

    def handle_error(self, t, v, tb):
        if isinstance(v, TimeoutError):
            self.close_connection = True
            return
        super().handle_error(t, v, tb)


class MonitorServer(WSGIServer):
    handler_class = MonitorHandler

    def __init__(self, listener, application, *, header_timeout: float, max_unauthenticated: int, **kw):
        self.header_timeout = float(header_timeout)
        self.gate = Gate(max_unauthenticated)
        # A pool, so that stop() also ends keep-alive connections and WebSockets, not just the listener.
        kw.setdefault("spawn", gevent.pool.Pool())
        super().__init__(listener, application, **kw)


def make_server(app, host: str | None = None, port: int | None = None, **kw) -> MonitorServer:
    """The server for `app`, on `host`:`port` (default: the app's config). Not started."""
    config = app.config["MONITOR"]
    kw.setdefault("log", None)
    return MonitorServer((config.host if host is None else host, config.port if port is None else port), app,
                         header_timeout=config.header_timeout, max_unauthenticated=config.max_unauthenticated,
                         **kw)


def raise_fd_limit(target: int = 65536) -> tuple[int, int]:
    """Raise the open-file soft limit towards `target`, as far as the hard limit allows. Returns (old, new)."""
    if resource is None:
        return 0, 0
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = target if hard == resource.RLIM_INFINITY else min(target, hard)
    if soft != resource.RLIM_INFINITY and soft < want:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
            return soft, want
        except (ValueError, OSError) as exc:
            log.warning("could not raise the open-file limit from %d to %d: %s", soft, want, exc)
    return soft, soft

