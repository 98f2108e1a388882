"""JSON API: queue, jobs, history, hosts, submit, cancel, workflows, telemetry, the /view proxy and /healthz."""
from __future__ import annotations

import functools
import json
import re
import uuid

import gevent
import gevent.lock

from flask import Blueprint, Response, current_app, jsonify, request, stream_with_context
from werkzeug.exceptions import HTTPException
from werkzeug.http import parse_options_header

from ..comfy import ComfyUnavailable
from ..jobs import STATUSES
from ..service import SubmitError
from ..workflows import ParamError, new_job_folder
from .fragments import FragmentCache, PageCache
from .security import authenticated

bp = Blueprint("api", __name__)

VIEW_TYPES = {"output", "input", "temp"}
# The only types /api/view serves, and the Content-Type it sends for each (never ComfyUI's header as is).
# No SVG or anything else that is a document: opened directly from our origin it could run script.
VIEW_MEDIA = {
    "image/png": "image/png", "image/apng": "image/apng", "image/jpeg": "image/jpeg", "image/jpg": "image/jpeg",
    "image/pjpeg": "image/jpeg", "image/webp": "image/webp", "image/gif": "image/gif", "image/avif": "image/avif",
    "image/bmp": "image/bmp", "video/mp4": "video/mp4", "video/webm": "video/webm",
    "video/quicktime": "video/quicktime",
}
_PREVIEW_RE = re.compile(r"(webp|jpeg|png);\d{1,3}")
_CHANNEL_RE = re.compile(r"rgba|rgb|a")


class ApiError(Exception):
    def __init__(self, status: int, message: str, **extra):
        super().__init__(message)
        self.status, self.message, self.extra = status, message, extra


@bp.app_errorhandler(ApiError)
def _api_error(exc: ApiError):
    return jsonify(error=exc.message, **exc.extra), exc.status


def _json_http_error(exc: HTTPException):
    """JSON errors for API paths; HTML pages keep Flask's own error pages."""
    if request.path.startswith("/api/") or request.path == "/healthz":
        return jsonify(error=exc.description or exc.name), exc.code
    return exc


def mon():
    return current_app.extensions["monitor"]


MAX_DEPTH = 64   # API-format graphs nest a few levels; deeper bodies are refused before anything walks them
_NOT_JSON = "request body must be valid JSON (Content-Type: application/json)"


def _no_constant(name: str):
    raise ValueError(f"{name} is not valid JSON")


def _too_deep(value, limit: int = MAX_DEPTH) -> bool:
    stack = [(value, 1)]
    visited = 0
    while stack:
        item, depth = stack.pop()
        visited += 1
        if visited % 5000 == 0:
            gevent.sleep(0)   # a megabyte graph is a long walk: let other requests in
        if isinstance(item, (dict, list)):
            if depth > limit:
                return True
            stack.extend((v, depth + 1) for v in (item.values() if isinstance(item, dict) else item))
    return False


def _body() -> dict:
    raw = request.get_data(cache=True)  # 413 above MAX_CONTENT_LENGTH
    if not raw.strip():
        return {}
    if not request.is_json:
        raise ApiError(400, _NOT_JSON)
    try:
        # NaN/Infinity are not JSON: stored, they would make our own API answers unparseable.
        data = json.loads(raw, parse_constant=_no_constant)
    except (ValueError, RecursionError):
        raise ApiError(400, _NOT_JSON)
    if not isinstance(data, dict):
        raise ApiError(400, "request body must be a JSON object")
    if _too_deep(data):
        raise ApiError(400, f"request body nests deeper than {MAX_DEPTH} levels")
    return data


def _submit_error(exc: SubmitError):
    payload = {"error": str(exc)}
    if exc.details:
        payload["node_errors"] = exc.details
    if exc.job:
        payload["job"] = exc.job
    return jsonify(payload), exc.status


# --- reads ------------------------------------------------------------------------------------
QUEUE_PAGE = 500    # jobs per /api/admin/queue answer unless ?limit= says otherwise (at most QUEUE_PAGE_MAX)
QUEUE_PAGE_MAX = 1000


def _int_arg(name: str, default: int, lo: int, hi: int) -> int:
    raw = request.args.get(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ApiError(400, f"{name} must be an integer, got {raw[:40]!r}")
    if not lo <= value <= hi:
        raise ApiError(400, f"{name} must be between {lo} and {hi}")
    return value


@bp.get("/api/admin/queue")
def queue():
    offset = _int_arg("offset", 0, 0, 10**9)
    limit = _int_arg("limit", QUEUE_PAGE, 1, QUEUE_PAGE_MAX)
    pages = current_app.extensions.setdefault("queue_json_pages", PageCache())
    text = pages.get((offset, limit), mon().active_key(), lambda: _queue_pieces(offset, limit))
    return Response(text, mimetype="application/json")


def _queue_pieces(offset: int, limit: int) -> list:
    """A queue page as PageCache pieces: running jobs as callables (their elapsed time moves), the rest text."""
    def dumps(job: dict) -> str:
        return json.dumps(job, separators=(",", ":"))
    fragments = current_app.extensions.setdefault("queue_json_fragments", FragmentCache())
    versions = mon().active_versions(offset, limit)
    texts = fragments.render_all(versions, dumps)
    volatile = mon().volatile_ids()
    counts = mon().active_counts()
    if len(mon().hosts) > 1:   # a fleet names its hosts; one host answers as before
        counts["hosts"] = [host.name for host in mon().hosts]
    pieces: list = [dumps({**counts, "offset": offset, "limit": limit})[:-1] + ',"jobs":[']
    for index, ((job_id, _, build), text) in enumerate(zip(versions, texts)):
        if index:
            pieces.append(",")
        pieces.append((lambda build=build: dumps(build())) if job_id in volatile else text)
    pieces.append("]}")
    return pieces


@bp.get("/api/admin/jobs/<job_id>")
def job(job_id: str):
    found = mon().get_job(job_id)
    if found is None:
        raise ApiError(404, f"no job with id {job_id!r}")
    return jsonify(found)


@bp.get("/api/admin/history")
def history():
    raw_limit = request.args.get("limit", "50")
    try:
        limit = int(raw_limit)
    except ValueError:
        raise ApiError(400, f"limit must be an integer, got {raw_limit!r}")
    if not 1 <= limit <= 500:
        raise ApiError(400, "limit must be between 1 and 500")
    status = request.args.get("status") or None
    if status is not None and status not in STATUSES:
        raise ApiError(400, f"unknown status {status!r}; one of: {', '.join(sorted(STATUSES))}")
    return jsonify(jobs=mon().history(limit=limit, status=status))


@bp.get("/api/admin/events")
def events():
    try:
        since = int(request.args.get("since", "0"))
    except ValueError:
        raise ApiError(400, "since must be an integer event seq")
    return jsonify(events=mon().events.since(since, limit=500), last_seq=mon().events.last_seq())


@bp.get("/api/admin/hosts")
def hosts():
    return jsonify(hosts=mon().hosts_state())


@bp.get("/api/admin/telemetry")
def telemetry():
    return jsonify(mon().telemetry.snapshot())


@bp.get("/api/run/workflows")
def workflows():
    return jsonify(workflows=[w.summary() for w in mon().workflows.values()])


@bp.get("/healthz")
def healthz():
    m = mon()
    if m.standby:   # another monitor holds the database's lease: this one waits to take over
        return jsonify({"ok": False, "status": "standby"}), 503
    comfy = m.comfy_state()
    try:
        m.store.get("healthz-probe")
        db_ok = m.store.available
    except Exception:
        db_ok = False
    ok = db_ok and comfy["connected"]   # several hosts: connected while any one is
    body = {"ok": ok}
    if not db_ok:
        body["status"] = "database down"
    if authenticated():   # a supervisor without credentials learns only ok / not ok
        body.update({"db": "ok" if db_ok else "error",
                     "comfy": {k: comfy.get(k) for k in ("connected", "since", "last_message_at", "listener_age_s",
                                                         "reconciled_at", "relay")}})
        if len(m.hosts) > 1:   # several: each host's connection, relay node and last error
            body["hosts"] = [{k: h.get(k) for k in ("name", "connected", "relay", "error")} for h in m.hosts_state()]
    return jsonify(body), 200 if ok else 503


# --- jobs in / out ----------------------------------------------------------------------------
SUBMIT_WAIT_S = 30.0


def submission_slot(view):
    """At most MONITOR_MAX_SUBMISSIONS submissions are parsed, checked and posted at once: each holds the
    loop for a while with a large graph, and sixty at once would stall every other request."""
    @functools.wraps(view)
    def wrapper(*args, **kwargs):
        slots = current_app.extensions.get("submission_slots")
        if slots is None:
            slots = current_app.extensions["submission_slots"] = gevent.lock.BoundedSemaphore(
                current_app.config["MONITOR"].max_submissions)
        if not slots.acquire(timeout=SUBMIT_WAIT_S):
            raise ApiError(503, "too many submissions in progress; try again in a moment")
        try:
            return view(*args, **kwargs)
        finally:
            slots.release()
    return wrapper


@bp.post("/api/run")
@submission_slot
def run_prompt():
    body = _body()
    prompt = body.get("prompt")
    _validate_graph(prompt)
    name = body.get("workflow_name")
    if name is not None and not isinstance(name, str):
        raise ApiError(400, "workflow_name must be a string")
    params = body.get("params")
    if params is not None and not isinstance(params, dict):
        raise ApiError(400, "params must be an object")
    try:
        job = mon().submit(prompt, workflow_name=name, params=params, host=_host(body))
    except SubmitError as exc:
        return _submit_error(exc)
    return jsonify(job), 201


@bp.post("/api/run/<workflow_id>/execute")
@submission_slot
def run_workflow(workflow_id: str):
    wf = mon().workflows.get(workflow_id)
    if wf is None:
        raise ApiError(404, f"unknown workflow {workflow_id!r}")
    body = _body()
    params = body.get("params", {})
    if not isinstance(params, dict):
        raise ApiError(400, "params must be an object")
    host = _host(body)
    prompt_id = str(uuid.uuid4())
    folder = new_job_folder(workflow_id, prompt_id)
    try:
        rendered = wf.render(params, folder)
    except ParamError as exc:
        raise ApiError(400, str(exc))
    try:
        job = mon().submit(rendered.prompt, workflow_id=workflow_id, workflow_name=wf.name,
                           params=rendered.params, seeds=rendered.seeds, job_folder=folder,
                           prompt_id=prompt_id, host=host)
    except SubmitError as exc:
        return _submit_error(exc)
    return jsonify(job), 201


@bp.post("/api/admin/jobs/<job_id>/cancel")
def cancel(job_id: str):
    try:
        job = mon().cancel(job_id)
    except KeyError:
        raise ApiError(404, f"no job with id {job_id!r}")
    except SubmitError as exc:
        return _submit_error(exc)
    return jsonify(job)


@bp.post("/api/admin/jobs/<job_id>/requeue")
@submission_slot
def requeue(job_id: str):
    body = _body()
    new_seed = body.get("new_seed", False)
    if not isinstance(new_seed, bool):
        raise ApiError(400, "new_seed must be true or false")
    try:
        job = mon().requeue(job_id, new_seed=new_seed, host=_host(body))
    except KeyError:
        raise ApiError(404, f"no job with id {job_id!r}")
    except SubmitError as exc:
        return _submit_error(exc)
    return jsonify(job), 201


def _host(body: dict) -> str | None:
    host = body.get("host")
    if host is not None and not isinstance(host, str):
        raise ApiError(400, "host must be a string: the name of a configured ComfyUI host")
    return host


def _validate_graph(prompt) -> None:
    if not isinstance(prompt, dict) or not prompt:
        raise ApiError(400, "prompt must be a non-empty API-format graph object: {node_id: {class_type, inputs}}")
    for node_id, node in prompt.items():
        if not isinstance(node, dict) or not isinstance(node.get("class_type"), str):
            raise ApiError(400, f"node {node_id!r} must be an object with a string class_type")
        if not isinstance(node.get("inputs", {}), dict):
            raise ApiError(400, f"node {node_id!r}: inputs must be an object")


# --- /view proxy --------------------------------------------------------------------------------
def _check_name(value: str, what: str, allow_sep: bool) -> str:
    if "\\" in value or any(ord(c) < 0x20 or ord(c) == 0x7F for c in value):
        raise ApiError(400, f"{what} contains a forbidden character")
    if value.startswith("/") or re.match(r"^[A-Za-z]:", value):
        raise ApiError(400, f"{what} must be a relative name")
    parts = value.split("/")
    if any(p in ("..", ".") for p in parts):
        raise ApiError(400, f"{what} must not contain '..' or '.' segments")
    if not allow_sep and len(parts) > 1:
        raise ApiError(400, f"{what} must not contain path separators")
    return value


def _media_type(header: str) -> str | None:
    """Our Content-Type for an upstream one, or None: exactly one media type (`image/png, text/html` is two),
    parameters dropped, from VIEW_MEDIA only."""
    if "," in header:
        return None
    media, _ = parse_options_header(header)
    return VIEW_MEDIA.get(media.strip().lower())


@bp.get("/api/view")
def view():
    args = request.args
    filename = args.get("filename", "")
    if not filename:
        raise ApiError(400, "filename is required")
    _check_name(filename, "filename", allow_sep=False)
    subfolder = _check_name(args.get("subfolder", ""), "subfolder", allow_sep=True) if args.get("subfolder") else ""
    comfy = mon().comfy   # the first host's, unless the file is on another (a job's "host")
    if args.get("host"):
        host = mon().by_name.get(args["host"])
        if host is None:
            raise ApiError(400, f"unknown host {args['host'][:40]!r}")
        comfy = host.comfy
    kind = args.get("type", "output")
    if kind not in VIEW_TYPES:
        raise ApiError(400, f"type must be one of {sorted(VIEW_TYPES)}")
    params = {"filename": filename, "subfolder": subfolder, "type": kind}
    if args.get("preview"):
        if not _PREVIEW_RE.fullmatch(args["preview"]):
            raise ApiError(400, "preview must look like webp;75 or jpeg;80")
        params["preview"] = args["preview"]
    if args.get("channel"):
        if not _CHANNEL_RE.fullmatch(args["channel"]):
            raise ApiError(400, "channel must be rgba, rgb or a")
        params["channel"] = args["channel"]
    try:
        upstream = comfy.view(params)
    except ComfyUnavailable:
        raise ApiError(502, "ComfyUI is not reachable")
    if upstream.status_code != 200:
        upstream.close()
        status = upstream.status_code if upstream.status_code in (400, 403, 404) else 502
        raise ApiError(status, f"ComfyUI answered {upstream.status_code} for this file")
    ctype = _media_type(upstream.headers.get("Content-Type", ""))
    if ctype is None:
        upstream.close()
        shown = upstream.headers.get("Content-Type", "")[:80] or "unknown type"
        raise ApiError(415, f"refusing to serve {shown!r}: only images and videos")

    def body():
        try:
            yield from upstream.iter_content(chunk_size=64 * 1024)
        except ComfyUnavailable as exc:   # cut off at the body's deadline: end the stream, quietly
            current_app.logger.warning("/api/view: %s", exc)
        finally:
            upstream.close()

    headers = {"Content-Type": ctype, "X-Content-Type-Options": "nosniff",
               "Cache-Control": "private, max-age=3600", "Content-Disposition": "inline",
               # Opened on its own, a file is never a document of our origin (defence in depth).
               "Content-Security-Policy": "sandbox"}
    if upstream.headers.get("Content-Length"):
        headers["Content-Length"] = upstream.headers["Content-Length"]
    return Response(stream_with_context(body()), headers=headers)


def install(app) -> None:
    app.register_blueprint(bp)
    app.register_error_handler(HTTPException, _json_http_error)
