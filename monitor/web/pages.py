"""The /admin/queue page and the HTML fragments that htmx swaps into it.

Views render only from cached state on the Fleet facade (``current_app.extensions["monitor"]``): they never
call ComfyUI and never block. The full page includes the fragments; the same fragments are returned alone to
the page's refresh requests (``hx-swap="morph"``, so the DOM is updated in place).
"""
from __future__ import annotations

import datetime as _dt
import math
import os
from urllib.parse import urlencode

from flask import Blueprint, abort, current_app, redirect, render_template, request, url_for
from markupsafe import Markup

from monitor.timeutil import epoch_from_iso

from .auth import token_only
from .fragments import FragmentCache

bp = Blueprint("pages", __name__)

# How long (seconds) the Current Job panel shows how a job ended (unless the next one starts sooner).
OUTCOME_S = 8
# Fallback poll of the card list, in seconds (the countdown bar in the LIVE indicator).
POLL_S = 10
# Gauges refresh (seconds); the telemetry sampler itself runs every ~1.5 s.
GAUGES_POLL_S = 3


def _monitor():
    return current_app.extensions["monitor"]


# --- filters ------------------------------------------------------------------------------------------------

@bp.app_template_filter("bytes")
def format_bytes(value) -> str:
    """8375186227 → "7.8 GiB"; None → "n/a"."""
    if value is None:
        return "n/a"
    try:
        n = float(value)
    except (TypeError, ValueError):
        return "n/a"
    if not math.isfinite(n) or n < 0:
        return "n/a"
    units = ("B", "KiB", "MiB", "GiB", "TiB", "PiB")
    i = 0
    while n >= 1024 and i < len(units) - 1:
        n /= 1024.0
        i += 1
    if i == 0:
        return f"{int(n)} B"
    return f"{n:.1f} {units[i]}" if n < 100 else f"{n:.0f} {units[i]}"


@bp.app_template_filter("duration")
def format_duration(value) -> str:
    """Seconds → "12s", "1m 05s", "2h 03m"; None → "" (the template decides what to show instead)."""
    if value is None:
        return ""
    try:
        s = float(value)
    except (TypeError, ValueError):
        return ""
    if not math.isfinite(s) or s < 0:
        return ""
    s = int(round(s))
    if s < 60:
        return f"{s}s"
    m, s = divmod(s, 60)
    if m < 60:
        return f"{m}m {s:02d}s"
    h, m = divmod(m, 60)
    return f"{h}h {m:02d}m"


@bp.app_template_filter("percent")
def format_percent(value, digits: int = 0) -> str:
    """67.5 → "68%" (digits=0); None → "n/a"."""
    if value is None:
        return "n/a"
    try:
        v = float(value)
    except (TypeError, ValueError):
        return "n/a"
    if not math.isfinite(v):
        return "n/a"
    return f"{v:.{digits}f}%"


@bp.app_template_filter("clamp_pct")
def clamp_pct(value) -> float:
    """A number fit for a CSS width in percent (0-100): never anything but a float."""
    try:
        v = float(value)
    except Exception:  # None, Undefined, junk: an empty bar
        return 0.0
    if not math.isfinite(v):
        return 0.0
    return round(max(0.0, min(100.0, v)), 2)


@bp.app_template_filter("epoch")
def epoch(value) -> float:
    """An ISO 8601 time as epoch seconds (0 when unreadable): for durations between two record times."""
    try:
        return epoch_from_iso(str(value)) or 0.0
    except ValueError:
        return 0.0


@bp.app_template_filter("utc_text")
def utc_text(value) -> str:
    """The fallback text of a <time> element (the page rewrites it in the viewer's local time)."""
    if not value:
        return ""
    try:
        parsed = _dt.datetime.fromisoformat(str(value))
    except ValueError:
        return str(value)
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=_dt.timezone.utc)
    return parsed.astimezone(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


@bp.app_template_filter("short_id")
def short_id(value, n: int = 8) -> str:
    value = "" if value is None else str(value)
    return value if len(value) <= n else value[:n] + "…"


# ComfyUI's /view can re-encode an image smaller and lighter for thumbnails ("format;quality").
THUMB_PREVIEW = "webp;75"


@bp.app_template_global("view_url")
def view_url(image, thumb: bool = False, host: str | None = None) -> str | None:
    """The /api/view proxy URL of an image ref ({filename, subfolder, type}) or of a bare input filename;
    `thumb` asks ComfyUI for its lighter preview encoding; `host` names the host that has the file (a page
    watching several hosts; one host needs none)."""
    if not image:
        return None
    if isinstance(image, str):
        image = {"filename": image, "subfolder": "", "type": "input"}
    if not isinstance(image, dict) or not image.get("filename"):
        return None
    params = {
        "filename": str(image.get("filename") or ""),
        "subfolder": str(image.get("subfolder") or ""),
        "type": str(image.get("type") or "output"),
    }
    if thumb:
        params["preview"] = THUMB_PREVIEW
    if host:
        params["host"] = str(host)
    return f"/api/view?{urlencode(params)}"


@bp.app_template_global("output_thumb")
def output_thumb(job: dict, host: str | None = None) -> str | None:
    """The thumbnail URL of a job's newest output image (latest node first), None if it has none."""
    # A running job's live outputs are the newest (the record gets them in batches): never back to an older one.
    progress = job.get("progress") or {}
    outputs = list((progress.get("outputs") if isinstance(progress, dict) else None) or job.get("outputs") or [])
    for out in reversed(outputs):
        for img in reversed((out or {}).get("images") or []):
            url = view_url(img, thumb=True, host=host)
            if url:
                return url
    return None


@bp.app_template_global("job_thumb")
def job_thumb(job: dict, host: str | None = None) -> str | None:
    """Output image if there is one (latest node first), else the input image, else None (placeholder)."""
    return output_thumb(job, host) or view_url(job.get("input_image"), thumb=True, host=host)


@bp.app_template_global("output_folder")
def output_folder(job: dict) -> str | None:
    """Where a job's files are: its recorded output folder, else the folder of its saved outputs (under the
    configured ComfyUI output directory, or named relative to ComfyUI's output folder); None if unknown."""
    if job.get("output_dir"):
        return str(job["output_dir"])
    progress = job.get("progress") if isinstance(job.get("progress"), dict) else {}
    for out in (progress.get("outputs") or job.get("outputs") or []):
        for img in (out or {}).get("images") or []:
            if isinstance(img, dict) and img.get("type") == "output":
                sub = str(img.get("subfolder") or "").strip("/")
                root = current_app.config["MONITOR"].comfyui_output_dir
                if root and not _host_is_remote(job):
                    return os.path.join(root, sub) if sub else root
                return f"ComfyUI output/{sub}" if sub else "ComfyUI output folder"
    return None


def _host_is_remote(job: dict) -> bool:
    """The configured output directory is the first host's: other hosts' files live elsewhere."""
    hosts = getattr(_monitor(), "hosts", None) or ()
    return bool(hosts) and job.get("host") not in (None, hosts[0].name)


@bp.app_template_global("job_reason")
def job_reason(job: dict) -> str | None:
    """A finished job's one-line reason: its error's message (first line), else its status reason."""
    error = job.get("error") if isinstance(job.get("error"), dict) else {}
    text = error.get("message") if not error.get("partial") else None
    if job.get("status") == "failed" and text:
        where = error.get("node_title") or error.get("node_type")
        text = f"{where}: {text}" if where else text
    text = text or job.get("status_reason")
    if not isinstance(text, str) or not text.strip():
        return None
    line = text.strip().splitlines()[0]
    return line if len(line) <= 160 else line[:159] + "…"


@bp.app_template_global("sparkline")
def sparkline(points, width: int = 100, height: int = 24, lo: float = 0.0, hi: float = 100.0) -> str:
    """SVG polyline points ("x,y x,y …") for a history of [t, v] pairs; only numbers, never user text."""
    pts = []
    for item in points or []:
        try:
            t, v = item[0], item[1]
            t = epoch_from_iso(t) if isinstance(t, str) else float(t)
            if v is None:
                continue
            v = float(v)
        except (TypeError, ValueError, IndexError, KeyError):
            continue
        if math.isfinite(t) and math.isfinite(v):
            pts.append((t, v))
    if len(pts) < 2:
        return ""
    t0, t1 = pts[0][0], pts[-1][0]
    span_t = (t1 - t0) or 1.0
    span_v = (hi - lo) or 1.0
    out = []
    for t, v in pts:
        x = (t - t0) / span_t * width
        y = height - (max(lo, min(hi, v)) - lo) / span_v * height
        out.append(f"{x:.1f},{y:.1f}")
    return " ".join(out)


@bp.app_template_global("level")
def level(pct, thresholds=None) -> str:
    """"na" | "ok" | "warm" | "hot" for a gauge colour (thresholds from the snapshot: warm 65, hot 85)."""
    if pct is None:
        return "na"
    try:
        v = float(pct)
    except (TypeError, ValueError):
        return "na"
    th = thresholds or {}
    warm, hot = th.get("warm", 65), th.get("hot", 85)
    if v >= hot:
        return "hot"
    if v >= warm:
        return "warm"
    return "ok"


@bp.app_template_global("is_scalar")
def is_scalar(value) -> bool:
    return value is None or isinstance(value, (str, int, float, bool))


# --- data helpers -------------------------------------------------------------------------------------------

RECENT_N = 20       # finished jobs in the Recent section
HISTORY_PAGE = 50   # rows per /admin/history page ("load more" fetches the next)


ROWS_CACHED = 2000  # rendered history rows kept (finished jobs rarely change: a page is mostly cache hits)


def _several_hosts() -> bool:
    return len(getattr(_monitor(), "hosts", ())) > 1


def _history_rows(status=None, before=None, limit=HISTORY_PAGE, cls="hrow") -> tuple[list[Markup], str | None]:
    """Rendered rows of one history page, each rendered once per version of its job."""
    from collections import OrderedDict
    cache = current_app.extensions.setdefault("history_rows", OrderedDict())
    several = _several_hosts()
    versions, cursor = _monitor().history_versions(limit=limit, status=status, before=before)
    macro = current_app.jinja_env.get_template("_job_row.html").module.job_row
    out = []
    for job_id, version, build in versions:
        key = (job_id, cls, several)
        hit = cache.get(key)
        if hit is None or hit[0] != version:
            hit = cache[key] = (version, str(macro(build(), several, cls=cls)))
            if len(cache) > ROWS_CACHED:
                cache.popitem(last=False)
        else:
            cache.move_to_end(key)
        # Markup: the output of our own autoescaped macro, not user data.
        out.append(Markup(hit[1]))
    return out, cursor


def _recent_context() -> dict:
    rows, _ = _history_rows(limit=RECENT_N, cls="recent-item")
    return {"recent": rows}

CARDS_MAX = 100   # cards on the page; a longer queue says how many more there are (the API pages them all)


def _cards() -> list[Markup]:
    """Each active job's card, in queue order (Fleet.active_versions is already ordered: running
    first, then queued in run order), rendered once per job version; the first CARDS_MAX only."""
    cache = current_app.extensions.setdefault("card_fragments", FragmentCache())
    env = current_app.jinja_env
    card = env.get_template("_card.html")
    multi = _multi_host()
    # Markup: each piece is the output of our own autoescaped template, not user data.
    return [Markup(html) for html in cache.render_all(_monitor().card_versions(CARDS_MAX),
                                                       lambda job: card.render(job=job, multi_host=multi))]


def _multi_host() -> bool:
    """Several ComfyUI hosts: the page shows a row per host, a panel per running job and host badges."""
    return len(_monitor().hosts) > 1


def _hosts() -> list[dict]:
    try:
        return _monitor().host_views()
    except Exception:  # the host rows then say nothing rather than take the page down
        current_app.logger.exception("host_views failed")
        return []


def _outcomes() -> list[dict]:
    """Jobs that ended less than OUTCOME_S ago on a host where nothing runs since, each with "outcome_left_s"."""
    try:
        jobs = _monitor().recent_outcomes(OUTCOME_S)
    except Exception:   # a nicety: the panel then says "No jobs running" at once
        current_app.logger.exception("recent_outcomes failed")
        return []
    now = _dt.datetime.now(_dt.timezone.utc).timestamp()
    for job in jobs:
        job["outcome_left_s"] = round(max(0.5, OUTCOME_S - (now - (epoch_from_iso(job["finished_at"]) or now))), 1)
    return jobs


def _runs() -> dict:
    """The run panels' context: every running job, the outcomes of jobs that just ended on the other hosts,
    and the hosts that are down (their jobs wait for them)."""
    return {"runs": _monitor().running_jobs(), "outcomes": _outcomes(),
            "down_hosts": {host.name for host in _monitor().hosts if not host.listener.connected}}


def _single() -> dict:
    """One host's Current Job context: the running job, else how the last one ended (for OUTCOME_S)."""
    current = _monitor().current_job()
    outcomes = [] if current else _outcomes()
    return {"current": current, "outcome": outcomes[0] if outcomes else None}


def _newest(runs: list[dict]) -> dict | None:
    """The running job that started last: where the Preview points until the viewer picks a panel."""
    def started(job):
        return (job.get("progress") or {}).get("started_at") or job.get("started_at") or ""
    return max(runs, key=started) if runs else None


def _telemetry() -> dict | None:
    tel = getattr(_monitor(), "telemetry", None)
    if tel is None:
        return None
    try:
        return tel.snapshot()
    except Exception:  # a broken sampler must not take the page down: the gauges then say "n/a"
        current_app.logger.exception("telemetry snapshot failed")
        return None


def _comfy_state() -> dict:
    try:
        return _monitor().comfy_state() or {}
    except Exception:
        current_app.logger.exception("comfy_state failed")
        return {}


def _relay_off() -> set[str] | None:
    """Hosts without the relay node (their external jobs show start and end only); None when unknown."""
    hosts = getattr(_monitor(), "hosts", None)
    return None if hosts is None else {h.name for h in hosts if not getattr(h, "relay", False)}


def _context(**extra) -> dict:
    ctx = {"poll_s": POLL_S, "gauges_poll_s": GAUGES_POLL_S,
           "signout": token_only(current_app.config["MONITOR"]), "relay_off": _relay_off(),
           "multi_host": _multi_host()}
    ctx.update(extra)
    return ctx


def _fragment(template: str, **ctx):
    return _no_store(_html(template, **ctx))


# --- routes -------------------------------------------------------------------------------------------------

@bp.get("/")
def index():
    return redirect(url_for("pages.queue_page"))


@bp.get("/admin/queue")
def queue_page():
    if _multi_host():
        live = dict(_runs(), hosts=_hosts())
        live["current"] = _newest(live["runs"])
    else:
        live = dict(_single(), telemetry=_telemetry())
    resp = current_app.make_response(render_template(
        "queue.html",
        **_context(cards=_cards(), total=_monitor().active_counts()["total"], comfy=_comfy_state(),
                   **_recent_context(), **live),
    ))
    resp.headers["Cache-Control"] = "no-store"
    return resp


def _html(template: str, **ctx) -> str:
    return render_template(template, **_context(**ctx))


# The fragments that the page refreshes, by element id: also rendered by web/push.py for the socket.
def cards_html() -> str:
    return _html("_cards.html", cards=_cards(), total=_monitor().active_counts()["total"])


def current_html() -> str:
    return _html("_current.html", **(_runs() if _multi_host() else _single()))


def gauges_html() -> str:
    if _multi_host():
        return _html("_gauges.html", hosts=_hosts())
    return _html("_gauges.html", telemetry=_telemetry())


FRAGMENTS = {"gauges": gauges_html, "cards": cards_html, "current": current_html}


def _no_store(html: str):
    resp = current_app.make_response(html)
    resp.headers["Cache-Control"] = "no-store"
    return resp


@bp.get("/admin/queue/cards")
def queue_cards():
    return _no_store(cards_html())


@bp.get("/admin/queue/current")
def queue_current():
    return _no_store(current_html())


@bp.get("/admin/queue/gauges")
def queue_gauges():
    return _no_store(gauges_html())


@bp.get("/admin/queue/recent")
def queue_recent():
    return _fragment("_recent.html", **_recent_context())


def _history_args() -> tuple[str | None, str | None]:
    from monitor.jobs import FINISHED
    status = request.args.get("status") or None
    if status is not None and status not in FINISHED:
        abort(400, f"unknown status {status[:40]!r}; one of {', '.join(sorted(FINISHED))}")
    return status, request.args.get("before") or None


def _history_data(status, before) -> dict:
    from monitor.jobs import FINISHED
    try:
        rows, cursor = _history_rows(status, before)
    except ValueError as exc:   # a cursor that is not one we made
        abort(400, str(exc))
    return {"rows": rows, "cursor": cursor, "status": status, "statuses": sorted(FINISHED)}


@bp.get("/admin/history")
def history_page():
    return _fragment("history.html", **_history_data(*_history_args()))


@bp.get("/admin/history/rows")
def history_rows():
    return _fragment("_history_rows.html", **_history_data(*_history_args()))


@bp.get("/admin/jobs/<job_id>/overlay")
def job_overlay(job_id: str):
    job = _monitor().get_job(job_id)
    if job is None:
        resp = _fragment("_overlay.html", job=None, job_id=job_id)
        resp.status_code = 404
        return resp
    return _fragment("_overlay.html", job=job, job_id=job_id)
