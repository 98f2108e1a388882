"""Secure by default: credentials when listening beyond loopback, same-origin checks for state changes."""
from __future__ import annotations

import base64
import hmac
import logging
from urllib.parse import urlsplit

from flask import current_app, jsonify, request

log = logging.getLogger(__name__)


class InsecureConfig(SystemExit):
    """Raised at start-up when the app would listen beyond loopback without credentials."""


def check_startup(config) -> None:
    if config.is_loopback or config.password or config.token:
        return
    if config.allow_open:
        log.warning("!!! MONITOR_ALLOW_OPEN=1: serving %s WITHOUT any credentials. Anyone who can reach "
                    "this port can see and cancel jobs. !!!", config.host)
        return
    raise InsecureConfig(
        f"Refusing to listen on {config.host} without credentials. Set MONITOR_PASSWORD (HTTP Basic, "
        "user 'admin') or MONITOR_TOKEN (Authorization: Bearer), or listen on 127.0.0.1 "
        "(MONITOR_HOST). MONITOR_ALLOW_OPEN=1 overrides this check.")


def credentials_ok(config, environ) -> bool:
    if not (config.password or config.token):
        return True
    header = environ.get("HTTP_AUTHORIZATION", "")
    scheme, _, value = header.partition(" ")
    if config.token and scheme.lower() == "bearer":
        return hmac.compare_digest(value.strip().encode(), config.token.encode())
    if config.password and scheme.lower() == "basic":
        try:
            user, _, password = base64.b64decode(value.strip()).decode("utf-8").partition(":")
        except (ValueError, UnicodeDecodeError):
            return False
        # Compare both, always, so timing does not reveal which half was wrong.
        ok_user = hmac.compare_digest(user.encode(), b"admin")
        ok_pass = hmac.compare_digest(password.encode(), config.password.encode())
        return ok_user and ok_pass
    return False


_DEFAULT_PORTS = {"http": 80, "ws": 80, "https": 443, "wss": 443}


def origin_allowed(environ) -> bool:
    """True for non-browser clients (no Origin) and same-origin requests; False for `Origin: null`,
    `Sec-Fetch-Site: cross-site` and any Origin whose host:port differs from the request's Host."""
    if environ.get("HTTP_SEC_FETCH_SITE", "").lower() == "cross-site":
        return False
    origin = environ.get("HTTP_ORIGIN")
    if origin is None:
        return True
    try:
        o = urlsplit(origin)
        h = urlsplit("//" + environ.get("HTTP_HOST", ""))
        default = _DEFAULT_PORTS.get(o.scheme)
        return (default is not None and bool(o.hostname) and o.hostname == h.hostname
                and (o.port or default) == (h.port or default))
    except ValueError:   # a malformed port
        return False


def install(app) -> None:
    @app.before_request
    def _guard():
        config = current_app.config["MONITOR"]
        if request.endpoint == "api.healthz":  # for process supervisors; reveals no job data
            return None
        if not credentials_ok(config, request.environ):
            resp = jsonify(error="authentication required")
            resp.status_code = 401
            resp.headers["WWW-Authenticate"] = 'Basic realm="ComfyUI monitor"'
            return resp
        if request.method not in ("GET", "HEAD", "OPTIONS") and not origin_allowed(request.environ):
            resp = jsonify(error="cross-site request refused")
            resp.status_code = 403
            return resp
        return None

    @app.after_request
    def _headers(resp):
        resp.headers.setdefault("X-Content-Type-Options", "nosniff")
        resp.headers.setdefault("Referrer-Policy", "same-origin")
        resp.headers.setdefault("X-Frame-Options", "DENY")
        return resp
