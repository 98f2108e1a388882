"""`/api/run/ws`: the browser's live feed; same-origin handshakes only, then `Hub.serve` runs the session."""
from __future__ import annotations

from flask import Blueprint, Response, current_app, request
from flask_sock import Sock

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
    mon.hub.serve(ws, mon.hello())


def init_app(app) -> None:
    # No simple-websocket ping_interval: its ping thread would write to the socket concurrently with the
    # hub's sender greenlet; the hub sends the pings (every Hub.ping_interval, 25 s) and checks the pongs.
    # Messages above max_message_size close the socket (1009); smaller junk is ignored by the hub.
    app.config.setdefault("SOCK_SERVER_OPTIONS", {"ping_interval": None, "max_message_size": 64 * 1024})
    app.register_blueprint(bp)
    sock.init_app(app)
