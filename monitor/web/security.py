"""Secure by default: known Host values only, credentials when listening beyond loopback, same-origin checks
for state changes, and a strict Content-Security-Policy."""
from __future__ import annotations

import base64
import functools
import hmac
import ipaddress
import logging
import socket
from urllib.parse import quote, urlsplit

from flask import current_app, g, jsonify, redirect, request

from . import auth
from .server import LOCAL_ADDR_KEY, TRUST_KEY

log = logging.getLogger(__name__)

# No inline script or style anywhere: autoescaping is no longer the only XSS layer. `blob:` images are the
# live previews; `connect-src 'self'` also covers the page's same-origin WebSocket.
CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' blob:; connect-src 'self'; "
       "object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'")
SAFE_METHODS = ("GET", "HEAD", "OPTIONS")
# Reachable without credentials: the sign-in flow, the static files it needs, and /healthz (which then says
# only ok / not ok).
OPEN_ENDPOINTS = {"static", "assets.versioned", "auth.signin_form", "auth.signin", "auth.signout", "auth.session", "api.healthz"}
WILDCARD_HOSTS = {"0.0.0.0", "::", "", "*"}


class InsecureConfig(SystemExit):
    """Raised at start-up when the app would listen beyond loopback without credentials."""


def check_startup(config) -> None:
    for entry in config.allowed_hosts:
        try:
            name, _ = split_host(entry)
        except ValueError:
            name = None
        if not name:
            raise SystemExit(f"MONITOR_ALLOWED_HOSTS: {entry!r} is not a host name or host:port")
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


# --- Host ------------------------------------------------------------------------------------------------
def split_host(value: str) -> tuple[str | None, int | None]:
    """"Name:port" → (lower-case name without brackets or a trailing dot, port or None). ValueError if
    malformed."""
    if any(c in value for c in "/?#@\\ \t\r\n"):
        raise ValueError(f"not a host: {value!r}")
    parts = urlsplit("//" + value)
    name = (parts.hostname or "").rstrip(".") or None
    return name, parts.port


def _ip(value: str):
    try:
        ip = ipaddress.ip_address(value.split("%", 1)[0])
    except ValueError:
        return None
    if ip.version == 6 and ip.ipv4_mapped is not None:   # ::ffff:a.b.c.d from a dual-stack socket
        return ip.ipv4_mapped
    return ip


def is_loopback_name(name: str | None) -> bool:
    if not name:
        return False
    if name == "localhost":
        return True
    ip = _ip(name)
    return ip is not None and ip.is_loopback


@functools.lru_cache(maxsize=8)
def _extra_hosts(allowed: frozenset, public_url: str | None) -> tuple:
    entries = [split_host(e) for e in allowed]
    if public_url:
        entries.append((split_host(urlsplit(public_url).netloc.rpartition("@")[2])[0], None))
    return tuple(entries)


@functools.lru_cache(maxsize=1)
def _own_names() -> frozenset:
    name = socket.gethostname().lower().rstrip(".")
    return frozenset({name, name + ".local"}) if name else frozenset()


def host_allowed(config, environ) -> bool:
    """DNS rebinding: a page on an attacker's name that resolves to us sends that name as Host (and a
    matching Origin). Known names only: loopback names and addresses and the listen address on the
    listening port; when listening on all interfaces, also the address the connection arrived on and this
    machine's host name; plus MONITOR_ALLOWED_HOSTS and the host of MONITOR_PUBLIC_URL on any port.
    Loopback names and addresses are accepted on any port (see below)."""
    raw = environ.get("HTTP_HOST")
    if raw is None:
        return True   # HTTP/1.0 without Host: not a browser, so nothing to rebind
    try:
        name, port = split_host(raw)
    except ValueError:
        return False
    if not name:
        return False
    for entry_name, entry_port in _extra_hosts(config.allowed_hosts, config.public_url):
        if name == entry_name and (entry_port is None or entry_port == port):
            return True
    if is_loopback_name(name):
        # On any port: a rebinding page sends its own name, never a loopback one, and a port forward
        # (ssh -L 9000:localhost:8000, docker -p 9000:8000) makes browsers send another port.
        return True
    scheme_port = 443 if environ.get("wsgi.url_scheme") == "https" else 80
    try:
        listen_port = int(environ.get("SERVER_PORT") or 0)
    except ValueError:
        return False
    if (port or scheme_port) != listen_port:
        return False
    bound = config.host.strip("[]").lower()
    if bound not in WILDCARD_HOSTS:
        return name == bound or (_ip(name) is not None and _ip(name) == _ip(bound))
    local = _ip(environ.get(LOCAL_ADDR_KEY) or "")
    return (local is not None and _ip(name) == local) or name in _own_names()


def _misdirected(environ):
    raw = str(environ.get("HTTP_HOST", ""))[:100]
    port = environ.get("SERVER_PORT", "")
    resp = jsonify(error=f"unknown Host {raw!r}: this monitor answers to localhost and 127.0.0.1 and to "
                         f"its listen address on port {port}. If browsers reach it by another name or port "
                         f"(a reverse proxy, a tunnel), add that to MONITOR_ALLOWED_HOSTS, e.g. "
                         f"MONITOR_ALLOWED_HOSTS={raw}")
    resp.status_code = 421
    return resp


# --- credentials -----------------------------------------------------------------------------------------
def credentials_ok(config, environ) -> bool:
    if not (config.password or config.token):
        return True
    header = environ.get("HTTP_AUTHORIZATION", "")
    if not header:
        return auth.session_ok(config, environ)
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


def authenticated() -> bool:
    """This request carried valid credentials (or none are configured). Set by the guard."""
    return bool(g.get("monitor_authenticated", False))


def _unauthenticated(config):
    if (auth.token_only(config) and request.method == "GET" and not request.path.startswith("/api/")
            and "HX-Request" not in request.headers):
        target = request.path + ("?" + request.query_string.decode("latin-1") if request.query_string else "")
        return redirect("/signin?next=" + quote(target, safe="/"), 303)
    resp = jsonify(error="authentication required")
    resp.status_code = 401
    # Basic only where a password can answer it: a browser asks for one on this header.
    resp.headers["WWW-Authenticate"] = ('Basic realm="ComfyUI monitor"' if config.password
                                        else 'Bearer realm="ComfyUI monitor"')
    return resp


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


def _cross_site():
    resp = jsonify(error="cross-site request refused")
    resp.status_code = 403
    return resp


def install(app) -> None:
    app.register_blueprint(auth.bp)

    @app.before_request
    def _guard():
        config = current_app.config["MONITOR"]
        environ = request.environ
        if not host_allowed(config, environ):
            return _misdirected(environ)
        ok = credentials_ok(config, environ)
        g.monitor_authenticated = ok
        if ok:
            trust = environ.get(TRUST_KEY)   # web/server.py: this connection no longer counts as anonymous
            if trust is not None:
                trust()
        elif request.endpoint not in OPEN_ENDPOINTS and not (
                request.endpoint == "metrics.metrics" and config.metrics_public):
            return _unauthenticated(config)
        if request.method not in SAFE_METHODS and not origin_allowed(environ):
            return _cross_site()
        return None

    @app.after_request
    def _headers(resp):
        resp.headers.setdefault("X-Content-Type-Options", "nosniff")
        resp.headers.setdefault("Referrer-Policy", "same-origin")
        resp.headers.setdefault("X-Frame-Options", "DENY")
        resp.headers.setdefault("Content-Security-Policy", CSP)
        return resp
