"""Issue 14, "Lighter on the wire", over HTTP: versioned static files cached for a year and gzipped, plain
/static/ with a short cache, the page's HTML and large fragments gzipped when accepted (Vary), /api/view
images and small answers never; the hub's latest-wins slot for pushed fragments."""
from __future__ import annotations

import gzip
import re

import requests

PLAIN = {"Accept-Encoding": "identity"}
GZIP = {"Accept-Encoding": "gzip, deflate"}


def _raw(server, path, headers):
    resp = requests.get(server.url + path, headers=headers, timeout=10, stream=True)
    body = resp.raw.read(decode_content=False)
    return resp, body


def test_the_page_links_versioned_static_files_that_are_immutable_and_gzipped(live_server):
    page = live_server.get("/admin/queue").text
    urls = re.findall(r'(?:src|href)="(/static/[^"]+)"', page)
    assert urls and all(re.match(r"/static/v/[0-9a-f]{12}/", u) for u in urls), urls
    main = next(u for u in urls if u.endswith("/js/main.js"))
    resp, body = _raw(live_server, main, GZIP)
    assert resp.status_code == 200
    assert resp.headers["Cache-Control"] == "public, max-age=31536000, immutable"
    assert resp.headers["Content-Encoding"] == "gzip" and "Accept-Encoding" in resp.headers["Vary"]
    plain, raw = _raw(live_server, main, PLAIN)
    assert "Content-Encoding" not in plain.headers
    assert gzip.decompress(body) == raw and len(body) < len(raw)
    assert raw == open("static/js/main.js", "rb").read()
    assert plain.headers["Content-Type"].startswith("text/javascript") or \
        plain.headers["Content-Type"].startswith("application/javascript")
    # the modules' relative imports resolve under the same version
    prefix = main[: -len("js/main.js")]
    state = live_server.get(prefix + "js/state.js")
    assert state.status_code == 200 and state.headers["Cache-Control"].endswith("immutable")
    assert live_server.get(prefix + "js/no-such.js").status_code == 404
    assert live_server.get(prefix + "../monitor/config.py").status_code == 404


def test_another_version_and_plain_static_get_a_short_cache(live_server):
    old = live_server.get("/static/v/000000000000/js/main.js")
    assert old.status_code == 200 and "immutable" not in old.headers["Cache-Control"]
    plain = live_server.get("/static/js/main.js")
    assert plain.status_code == 200
    assert re.search(r"max-age=\d+", plain.headers.get("Cache-Control", "")) and \
        "immutable" not in plain.headers["Cache-Control"]


def test_the_page_and_large_fragments_are_gzipped_only_when_accepted(live_server):
    resp, body = _raw(live_server, "/admin/queue", GZIP)
    assert resp.headers.get("Content-Encoding") == "gzip" and "Accept-Encoding" in resp.headers["Vary"]
    assert b"<html" in gzip.decompress(body)
    plain, raw = _raw(live_server, "/admin/queue", PLAIN)
    assert "Content-Encoding" not in plain.headers and b"<html" in raw
    gauges, body = _raw(live_server, "/admin/queue/gauges", GZIP)
    assert gauges.headers.get("Content-Encoding") == "gzip"
    assert gzip.decompress(body).lstrip().startswith(b"<section")
    refused, _ = _raw(live_server, "/admin/queue", {"Accept-Encoding": "gzip;q=0"})
    assert "Content-Encoding" not in refused.headers


def test_preview_images_are_never_gzipped(live_server):
    job = live_server.submit()
    done = live_server.wait_status(job["id"], "completed", timeout=30)
    img = next(i for o in done["outputs"] for i in o["images"])
    resp = requests.get(live_server.url + "/api/view", headers=GZIP, timeout=10,
                        params={k: img[k] for k in ("filename", "subfolder", "type")})
    assert resp.status_code == 200, resp.text[:200]
    assert "Content-Encoding" not in resp.headers
