"""Token-only mode in a browser: a sign-in page that exchanges MONITOR_TOKEN for a signed, expiring, HttpOnly,
SameSite=Strict session cookie; sign-out; `/api/session` for the sign-in page's own check."""
from __future__ import annotations

import hashlib
import hmac
from urllib.parse import urlsplit

from flask import Blueprint, current_app, jsonify, redirect, render_template, request, url_for
from itsdangerous import BadSignature, URLSafeTimedSerializer

bp = Blueprint("auth", __name__)

DEFAULT_NEXT = "/admin/queue"
_SALT = "monitor.session"


def token_only(config) -> bool:
    return bool(config.token) and not config.password


def cookie_name(environ) -> str:
    # Cookies are shared by every port of a host: monitors on two ports must not overwrite each other's.
    port = "".join(c for c in str(environ.get("SERVER_PORT", "")) if c.isdigit())
    return f"monitor_session_{port or 'default'}"


def _serializer(config) -> URLSafeTimedSerializer:
    # Derived from the token: a restart keeps everyone signed in, and a new token signs everyone out.
    key = hmac.new(config.token.encode(), b"comfyui-monitor session cookie v1", hashlib.sha256).digest()
    return URLSafeTimedSerializer(key, salt=_SALT)


def session_ok(config, environ) -> bool:
    """A valid, unexpired session cookie (token-only mode)."""
    if not token_only(config):
        return False
    from werkzeug.http import parse_cookie
    value = parse_cookie(environ.get("HTTP_COOKIE", "")).get(cookie_name(environ))
    if not value:
        return False
    try:
        data = _serializer(config).loads(value, max_age=int(config.session_hours * 3600))
    except BadSignature:   # also SignatureExpired
        return False
    return data == {"v": 1}


def token_matches(config, candidate: str) -> bool:
    return hmac.compare_digest(candidate.encode("utf-8", "replace"), config.token.encode())


def _secure_cookie(config) -> bool:
    """Secure wherever the browser keeps it: HTTPS, and loopback over plain HTTP (Chromium and Firefox treat
    http://localhost and 127.0.0.1 as secure contexts). Not on plain HTTP to a LAN address: the browser would
    drop the cookie and sign-in could never work, and the token itself crossed that same plain channel."""
    from .security import is_loopback_name, split_host
    if request.scheme == "https" or (config.public_url or "").startswith("https://"):
        return True
    try:
        return is_loopback_name(split_host(request.environ.get("HTTP_HOST", ""))[0])
    except ValueError:
        return False


def safe_next(value: str | None) -> str:
    """Only a path on this site: never another host (`//evil`, `/\\evil`, `https://…`)."""
    if not value or not value.startswith("/") or value.startswith(("//", "/\\")):
        return DEFAULT_NEXT
    parts = urlsplit(value)
    if parts.scheme or parts.netloc or any(ord(c) < 0x20 or c == "\\" for c in value):
        return DEFAULT_NEXT
    return value


def _config():
    return current_app.config["MONITOR"]


def _page(status: int = 200, error: str | None = None, next_url: str = DEFAULT_NEXT):
    resp = current_app.make_response(render_template("signin.html", error=error, next_url=next_url))
    resp.status_code = status
    resp.headers["Cache-Control"] = "no-store"
    return resp


@bp.get("/signin")
def signin_form():
    config = _config()
    if not token_only(config):
        return jsonify(error="no sign-in page: this monitor does not use token sign-in"), 404
    next_url = safe_next(request.args.get("next"))
    if session_ok(config, request.environ):
        return redirect(next_url, 303)
    return _page(next_url=next_url)


@bp.post("/signin")
def signin():
    config = _config()
    if not token_only(config):
        return jsonify(error="no sign-in page: this monitor does not use token sign-in"), 404
    next_url = safe_next(request.form.get("next"))
    token = request.form.get("token")
    if not token:
        return _page(400, "Enter the access token (MONITOR_TOKEN).", next_url)
    if not token_matches(config, token):
        resp = _page(401, "That token is not right.", next_url)
        resp.headers["WWW-Authenticate"] = 'Bearer realm="ComfyUI monitor"'
        return resp
    resp = redirect(next_url, 303)
    max_age = int(config.session_hours * 3600)
    resp.set_cookie(cookie_name(request.environ), _serializer(config).dumps({"v": 1}), max_age=max_age,
                    path="/", secure=_secure_cookie(config), httponly=True, samesite="Strict")
    return resp


@bp.post("/signout")
def signout():
    resp = redirect(url_for("auth.signin_form"), 303)
    resp.delete_cookie(cookie_name(request.environ), path="/", secure=_secure_cookie(_config()), httponly=True,
                       samesite="Strict")
    return resp


@bp.get("/api/session")
def session():
    """Whether this browser is signed in. The sign-in page asks it with a same-site fetch, which carries the
    SameSite=Strict cookie that a navigation arriving from another site does not."""
    from .security import authenticated
    return jsonify(signed_in=authenticated(), mode="token" if token_only(_config()) else None)
