"""`/api/run/ws`: the browser's live feed; same-origin handshakes only, then `Hub.serve` runs the session."""
from __future__ import annotations

import socket

from flask import Blueprint, Response, current_app, request
from flask_sock import Sock

from ..hub import ReaderThread
from .security import origin_allowed

bp = Blueprint("ws", __name__)
sock = Sock()

@bp.before_request
def _before_handshake():
    if not origin_allowed(request.environ):
        return Response("cross-origin WebSocket refused\n", status=403, mimetype="text/plain")
    # Previews are JPEG/PNG: deflating them again per client costs CPU and a zlib context per socket
    # for nothing. Without the offer simple-websocket negotiates no extension.
    request.environ.pop("HTTP_SEC_WEBSOCKET_EXTENSIONS", None)
    return None


@sock.route("/api/run/ws", bp=bp)
def run_ws(ws):
    mon = current_app.extensions["monitor"]
    try:
        mon.hub.serve(ws, mon.hello())
    finally:
        # The session is over (the close handshake done, or the peer gone): the server closes the TCP
        # connection first (RFC 6455 §7.1.1). Without this the WSGI server keeps it open, waiting for
        # another HTTP request that never comes, until the browser gives up on it.
        ws.thread.join(timeout=1.0)   # its reader sends the close reply, if one is due
        _end_connection(request.environ)


def _end_connection(environ) -> None:
    """Under gevent's WSGI server: FIN to the client now, and no further "request" read from what it may
    still send (a late frame would otherwise be answered with an HTTP 400 on a dead socket)."""
    if not environ.get("SERVER_SOFTWARE", "").startswith("gevent"):
        return
    stream = environ.get("wsgi.input")   # for an upgrade request: the connection's own read file
    raw = stream.rfile if not hasattr(stream, "raw") and hasattr(stream, "rfile") else stream
    conn = getattr(getattr(raw, "raw", None), "_sock", None)   # found the way simple-websocket finds it
    if conn is not None:
        try:
            conn.shutdown(socket.SHUT_RDWR)   # ws.sock is a dup (closed by its reader): this ends the TCP
        except OSError:
            pass
    try:
        raw.close()   # gevent's handler sees its read file closed and closes the connection
    except Exception:  # noqa: BLE001 - best effort on a connection that is over anyway
        pass


def init_app(app) -> None:
    # No simple-websocket ping_interval: its ping thread would write to the socket concurrently with the
    # hub's sender greenlet; the hub sends the pings (every Hub.ping_interval, 25 s) and checks the pongs.
    # Messages above max_message_size close the socket (1009); smaller junk is ignored by the hub.
    # thread_class: the reader that yields and counts from the very first frame (Hub.serve starts later).
    app.config.setdefault("SOCK_SERVER_OPTIONS", {"ping_interval": None, "max_message_size": 64 * 1024,
                                                  "thread_class": ReaderThread})
    app.register_blueprint(bp)
    sock.init_app(app)
