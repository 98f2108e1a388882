"""Command line client for a running monitor: `python -m monitor submit|jobs|cancel|requeue|workflows|hosts` over its
HTTP API; `install-node PATH` installs the relay node into a ComfyUI checkout (no monitor needed)."""
from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import sys
import time
from urllib.parse import quote

import requests

TERMINAL = {"completed", "failed", "interrupted", "cancelled", "stalled"}
TIMEOUT = 30.0


class CliError(Exception):
    def __init__(self, message: str, code: int = 1):
        super().__init__(message)
        self.code = code


class Api:
    def __init__(self, url: str):
        self.url = url.rstrip("/")
        self.session = requests.Session()
        token, password = os.environ.get("MONITOR_TOKEN"), os.environ.get("MONITOR_PASSWORD")
        if token:
            self.session.headers["Authorization"] = f"Bearer {token}"
        elif password:
            self.session.auth = ("admin", password)

    def call(self, method: str, path: str, body=None, params=None) -> dict:
        try:
            resp = self.session.request(method, self.url + path, json=body, params=params, timeout=TIMEOUT)
        except requests.ConnectionError as exc:
            raise CliError(f"cannot reach the monitor at {self.url} ({_reason(exc)}); is it running? "
                           "Use --url or MONITOR_URL to point elsewhere.", 2) from None
        except requests.Timeout:
            raise CliError(f"the monitor at {self.url} did not answer within {TIMEOUT:.0f} s", 2) from None
        try:
            data = resp.json()
        except ValueError:
            data = None
        if resp.status_code == 401:
            raise CliError(f"{_error_text(resp, data)} (set MONITOR_TOKEN or MONITOR_PASSWORD)")
        if resp.status_code >= 400:
            raise CliError(_error_text(resp, data))
        if not isinstance(data, dict):
            raise CliError(f"unexpected answer from {method} {path}: HTTP {resp.status_code}, not a JSON object")
        return data


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    url = getattr(args, "url", None) or os.environ.get("MONITOR_URL") or \
        f"http://127.0.0.1:{os.environ.get('MONITOR_PORT') or 8000}"
    try:
        return args.func(Api(url), args)
    except CliError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.code
    except KeyboardInterrupt:
        print("stopped waiting; the job goes on", file=sys.stderr)
        return 130


def _parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--url", default=argparse.SUPPRESS,
                        help="monitor base URL (default: $MONITOR_URL or http://127.0.0.1:$MONITOR_PORT, port 8000)")
    parser = argparse.ArgumentParser(prog="python -m monitor", parents=[common],
                                     description="Talk to a running ComfyUI monitor. Credentials come from "
                                                 "MONITOR_TOKEN (bearer) or MONITOR_PASSWORD (user admin).")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("submit", parents=[common], help="run a workflow template or an API-format prompt file")
    p.add_argument("target", help="a workflow id (see `workflows`) or a path to an API-format .json prompt")
    p.add_argument("params", nargs="*", metavar="key=value", help="template parameters; the server checks types")
    p.add_argument("--wait", action="store_true", help="follow the job until it ends; exit 0 only if it completed")
    p.add_argument("--interval", type=float, default=1.0, help="seconds between polls with --wait (default 1)")
    p.add_argument("--json", action="store_true", help="print the job record as JSON")
    p.add_argument("--host", help="the ComfyUI host to run on (see `hosts`); default: the one with the least work")
    p.set_defaults(func=cmd_submit)

    p = sub.add_parser("jobs", parents=[common], help="list active jobs (queued and running)")
    p.add_argument("--all", action="store_true", help="also list the 20 most recent finished jobs")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(func=cmd_jobs)

    p = sub.add_parser("cancel", parents=[common], help="interrupt a running job or remove a queued one")
    p.add_argument("id", help="the job (prompt) id")
    p.set_defaults(func=cmd_cancel)

    p = sub.add_parser("requeue", parents=[common], help="run a finished job's graph again")
    p.add_argument("id", help="the finished job's (prompt) id")
    p.add_argument("--new-seed", action="store_true", help="randomize every seed input")
    p.add_argument("--host", help="the ComfyUI host to run on; default: the one with the least work")
    p.set_defaults(func=cmd_requeue)

    p = sub.add_parser("workflows", parents=[common], help="list the workflow templates and their parameters")
    p.add_argument("--json", action="store_true", help="print JSON instead of a list")
    p.set_defaults(func=cmd_workflows)

    p = sub.add_parser("hosts", parents=[common], help="list the ComfyUI hosts and their state")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(func=cmd_hosts)

    p = sub.add_parser("install-node", help="install or upgrade the relay node in a ComfyUI checkout "
                                            "(live progress of jobs queued elsewhere)")
    p.add_argument("path", help="the ComfyUI folder (the one holding main.py and custom_nodes/)")
    p.set_defaults(func=cmd_install_node)

    p = sub.add_parser("migrate", help="copy a SQLite history into the PostgreSQL database of DATABASE_URL")
    p.add_argument("--from-sqlite", required=True, metavar="PATH", help="the monitor.sqlite3 file to copy from")
    p.set_defaults(func=cmd_migrate)
    return parser


# --- commands ------------------------------------------------------------------------------------

def cmd_migrate(api: Api, args) -> int:
    """Runs here, not through the API: it opens both databases itself (the monitor must not be running)."""
    from .config import _database_url
    from .jobs import StoreError
    from .migrate import copy_sqlite
    url = _database_url(os.environ.get("DATABASE_URL") or None)
    if not url:
        raise CliError("set DATABASE_URL to the PostgreSQL database to copy into", 2)
    try:
        copy_sqlite(args.from_sqlite, url)
    except StoreError as exc:
        raise CliError(str(exc), 2) from None
    return 0



def cmd_submit(api: Api, args) -> int:
    params = _parse_params(args.params)
    if args.target.endswith(".json") or os.path.isfile(args.target):
        if params:
            raise CliError("key=value parameters only apply to workflow templates, not to a prompt file", 2)
        prompt = _read_prompt(args.target)
        name = os.path.splitext(os.path.basename(args.target))[0]
        body = {"prompt": prompt, "workflow_name": name}
        path = "/api/run"
    else:
        body = {"params": params}
        path = f"/api/run/{quote(args.target, safe='')}/execute"
    if args.host:
        body["host"] = args.host
    job = api.call("POST", path, body)
    if args.json:
        print(json.dumps(job, indent=2))
    else:
        line = f"submitted {job.get('id')}  workflow={job.get('workflow_name') or job.get('workflow_id') or '-'}" \
               f"  status={job.get('status')}"
        if args.host or job.get("routed"):
            line += f"  host={job.get('host')}"
        if job.get("seeds"):
            line += "  seeds=" + ",".join(str(s) for s in job["seeds"])
        print(line, flush=True)
    return _wait(api, job, args.interval) if args.wait else 0


def cmd_jobs(api: Api, args) -> int:
    queue = api.call("GET", "/api/admin/queue")
    jobs = queue.get("jobs") or []
    several = len(queue.get("hosts") or ()) > 1   # the fleet lists its hosts; one host: no column
    if args.all:
        jobs += api.call("GET", "/api/admin/history", params={"limit": 20}).get("jobs") or []
    if args.json:
        print(json.dumps({"jobs": jobs}, indent=2))
    elif not jobs:
        print("no jobs" if args.all else "no active jobs")
    else:
        rows = [("ID", "STATUS", "WORKFLOW", "QUEUED", "PROGRESS")]
        rows += [(j.get("id", "?"), j.get("status", "?"), j.get("workflow_name") or j.get("workflow_id") or "-",
                  _local_time(j.get("queued_at")), _progress_text(j)) for j in jobs]
        if several:
            rows = [(row[0], "HOST" if i == 0 else (jobs[i - 1].get("host") or "-"), *row[1:])
                    for i, row in enumerate(rows)]
        widths = [max(len(str(row[i])) for row in rows) for i in range(len(rows[0]))]
        for row in rows:
            print("  ".join(str(cell).ljust(w) for cell, w in zip(row, widths)).rstrip())
    return 0


def cmd_cancel(api: Api, args) -> int:
    job = api.call("POST", f"/api/admin/jobs/{quote(args.id, safe='')}/cancel")
    print(f"cancel requested for {job.get('id', args.id)}: status {job.get('status')}")
    return 0


def cmd_requeue(api: Api, args) -> int:
    body = {"new_seed": True} if args.new_seed else {}
    if args.host:
        body["host"] = args.host
    job = api.call("POST", f"/api/admin/jobs/{quote(args.id, safe='')}/requeue", body)
    print(f"queued {job.get('id')} from {args.id}: status {job.get('status')}")
    return 0


def cmd_workflows(api: Api, args) -> int:
    workflows = api.call("GET", "/api/run/workflows").get("workflows") or []
    if args.json:
        print(json.dumps({"workflows": workflows}, indent=2))
        return 0
    if not workflows:
        print("no workflows (put <id>.json templates in the workflows folder)")
    for wf in workflows:
        print(f"{wf.get('id')}  {wf.get('name') or ''}".rstrip())
        if wf.get("description"):
            print(f"    {wf['description']}")
        for name, spec in (wf.get("parameters") or {}).items():
            detail = spec.get("type", "?")
            if "choices" in spec:
                detail += " " + "|".join(str(c) for c in spec["choices"])
            if spec.get("min") is not None or spec.get("max") is not None:
                detail += f" {spec.get('min', '')}..{spec.get('max', '')}"
            default = "required" if "default" not in spec else f"default {json.dumps(spec['default'])}"
            print(f"    {name}: {detail}, {default}")
    return 0


def cmd_hosts(api: Api, args) -> int:
    hosts = api.call("GET", "/api/admin/hosts").get("hosts") or []
    if args.json:
        print(json.dumps({"hosts": hosts}, indent=2))
        return 0
    rows = [("NAME", "URL", "STATE", "RUNNING", "PENDING", "ERROR")]
    for h in hosts:
        queue = h.get("queue") or {}
        state = f"connected since {_local_time(h.get('since'))}" if h.get("connected") else "disconnected"
        rows.append((h.get("name", "?"), h.get("url", "?"), state, queue.get("running", "-"),
                     queue.get("pending", "-"), h.get("error") or ""))
    widths = [max(len(str(row[i])) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(str(cell).ljust(w) for cell, w in zip(row, widths)).rstrip())
    return 0


def cmd_install_node(api: Api, args) -> int:
    from .install_node import InstallError, install
    try:
        for line in install(args.path):
            print(line)
    except InstallError as exc:
        raise CliError(str(exc)) from None
    return 0


# --- helpers -------------------------------------------------------------------------------------

def _wait(api: Api, job: dict, interval: float) -> int:
    job_id, last = job.get("id"), None
    while True:
        status = job.get("status")
        line = f"{status}  {_progress_text(job)}".rstrip()
        if line != last:
            print(line, flush=True)
            last = line
        if status in TERMINAL:
            break
        time.sleep(interval)
        job = api.call("GET", f"/api/admin/jobs/{quote(job_id, safe='')}")
    if status == "completed":
        return 0
    reason = job.get("status_reason") or _error_message(job.get("error"))
    print(f"job {job_id} ended {status}" + (f": {reason}" if reason else ""), file=sys.stderr)
    return 1


def _parse_params(pairs: list[str]) -> dict:
    params = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise CliError(f"parameters are key=value, got {pair!r}", 2)
        params[key] = value
    return params


def _read_prompt(path: str) -> dict:
    try:
        with open(path, encoding="utf-8") as fh:
            doc = json.load(fh)
    except (OSError, ValueError) as exc:
        raise CliError(f"cannot read {path}: {exc}", 2) from None
    if isinstance(doc, dict) and isinstance(doc.get("prompt"), dict):
        doc = doc["prompt"]
    if not isinstance(doc, dict) or not doc:
        raise CliError(f"{path} does not hold an API-format prompt (an object of nodes)", 2)
    return doc


def _progress_text(job: dict) -> str:
    status, progress = job.get("status"), job.get("progress") or {}
    if status == "queued":
        pos = job.get("queue_position")
        return f"#{pos} in queue" if pos else ""
    if status == "running":
        parts = []
        if progress.get("percent") is not None:
            parts.append(f"{progress['percent']:.0f}%")
        if progress.get("node_title"):
            parts.append(str(progress["node_title"]))
        step = progress.get("step") or {}
        if step.get("max"):
            parts.append(f"step {step.get('value')}/{step['max']}")
        return "  ".join(parts)
    if job.get("duration_s") is not None:
        return f"{job['duration_s']:.1f}s"
    return ""


def _local_time(iso: str | None) -> str:
    if not iso:
        return "-"
    try:
        return _dt.datetime.fromisoformat(iso).astimezone().strftime("%Y-%m-%d %H:%M:%S")
    except ValueError:
        return iso


def _error_text(resp, data) -> str:
    if not isinstance(data, dict) or "error" not in data:
        text = (resp.text or "").strip().splitlines()
        return f"HTTP {resp.status_code}" + (f": {text[0][:200]}" if text else "")
    return _error_message(data["error"]) or f"HTTP {resp.status_code}"


def _error_message(error) -> str:
    if isinstance(error, dict):
        message = error.get("message") or error.get("type") or ""
        return f"{message}: {error['details']}" if error.get("details") else message
    return "" if error is None else str(error)


def _reason(exc: Exception) -> str:
    text = str(exc)
    return "connection refused" if "refused" in text.lower() else text[:200]
