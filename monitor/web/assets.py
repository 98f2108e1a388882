"""Lighter on the wire: static files under a versioned path, cached for a year, gzipped in memory; the page's
HTML and large fragments gzipped when the client accepts it.

One version (a content hash of the whole static tree) makes the prefix: /static/v/<hash>/js/main.js. The ES
modules' relative imports resolve under the same prefix, so they are versioned too without an import map.
A request for another version (a page from before a restart) gets today's file with a short cache. Plain
/static/... stays as Flask serves it, with a short cache. WebSocket frames and /api/view images are never
compressed (images are compressed already; the hub's frames bypass this entirely)."""
from __future__ import annotations

import gzip
import hashlib
import mimetypes
import os

from flask import Blueprint, abort, current_app, request, url_for

bp = Blueprint("assets", __name__)

IMMUTABLE = "public, max-age=31536000, immutable"
SHORT_CACHE_S = 300
GZIP_MIN = 1024                                  # bytes; smaller answers go as they are
GZIP_TYPES = ("text/html", "application/json")   # dynamic answers worth compressing
GZIP_STATIC = (".js", ".css", ".svg", ".html", ".json", ".txt", ".map")


class Assets:
    """The static tree read once at start: per file its bytes, gzipped bytes (when worth it) and type."""

    def __init__(self, root: str):
        self.files: dict[str, tuple[bytes, bytes | None, str]] = {}
        digest = hashlib.sha256()
        for folder, dirs, names in os.walk(root):
            dirs.sort()
            for name in sorted(names):
                full = os.path.join(folder, name)
                rel = os.path.relpath(full, root).replace(os.sep, "/")
                with open(full, "rb") as fh:
                    data = fh.read()
                digest.update(rel.encode() + b"\0" + data + b"\0")
                packed = None
                if name.endswith(GZIP_STATIC) and len(data) >= GZIP_MIN:
                    packed = gzip.compress(data, compresslevel=9, mtime=0)
                    if len(packed) >= len(data):
                        packed = None
                kind = mimetypes.guess_type(name)[0] or "application/octet-stream"
                if kind.startswith("text/") or kind in ("application/javascript", "image/svg+xml"):
                    kind += "; charset=utf-8"
                self.files[rel] = (data, packed, kind)
        self.version = digest.hexdigest()[:12]


def _accepts_gzip() -> bool:
    """Accept-Encoding names gzip (or *) with a q above 0."""
    for part in request.headers.get("Accept-Encoding", "").split(","):
        name, *params = [p.strip() for p in part.split(";")]
        if name.lower() not in ("gzip", "*"):
            continue
        for param in params:
            key, _, value = param.partition("=")
            if key.strip().lower() == "q":
                try:
                    return float(value) > 0
                except ValueError:
                    return False
        return True
    return False


@bp.get("/static/v/<version>/<path:filename>")
def versioned(version: str, filename: str):
    assets: Assets = current_app.extensions["assets"]
    entry = assets.files.get(filename)
    if entry is None:
        abort(404)
    data, packed, kind = entry
    resp = current_app.response_class(mimetype=None)
    resp.headers["Content-Type"] = kind
    resp.headers["Vary"] = "Accept-Encoding"
    if packed is not None and _accepts_gzip():
        resp.set_data(packed)
        resp.headers["Content-Encoding"] = "gzip"
    else:
        resp.set_data(data)
    resp.headers["Cache-Control"] = IMMUTABLE if version == assets.version else f"public, max-age={SHORT_CACHE_S}"
    return resp


def asset_url(filename: str) -> str:
    """The versioned URL of a static file (templates: `asset('js/main.js')`)."""
    return url_for("assets.versioned", version=current_app.extensions["assets"].version, filename=filename)


def _compress(resp):
    if (resp.status_code != 200 or resp.direct_passthrough or resp.is_streamed
            or "Content-Encoding" in resp.headers or resp.mimetype not in GZIP_TYPES
            or request.path.startswith("/api/view")):
        return resp
    resp.vary.add("Accept-Encoding")
    data = resp.get_data()
    if len(data) < GZIP_MIN or not _accepts_gzip():
        return resp
    resp.set_data(gzip.compress(data, compresslevel=5))
    resp.headers["Content-Encoding"] = "gzip"
    return resp


def install(app) -> None:
    app.extensions["assets"] = Assets(app.static_folder)
    app.config["SEND_FILE_MAX_AGE_DEFAULT"] = SHORT_CACHE_S   # plain /static/...
    app.add_template_global(asset_url, "asset")
    app.register_blueprint(bp)
    app.after_request(_compress)
