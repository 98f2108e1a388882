"""ComfyUI's HTTP API as the monitor uses it: one requests session, Basic auth from the URL, short timeouts."""
from __future__ import annotations

import logging
from dataclasses import dataclass, field

import requests

log = logging.getLogger(__name__)


class ComfyUnavailable(RuntimeError):
    """ComfyUI could not be reached (connection refused, timeout, TLS failure)."""


class ComfyRejected(RuntimeError):
    """ComfyUI answered with an error status; `status` and `body` say what it said."""

    def __init__(self, status: int, body, message: str):
        super().__init__(message)
        self.status = status
        self.body = body


@dataclass
class Features:
    """What the connected server supports, probed rather than guessed from its version."""
    jobs_api: bool = False
    cancel_api: bool = False
    version: str | None = None
    probed: bool = False
    extra: dict = field(default_factory=dict)

    def as_dict(self) -> dict:
        return {"jobs_api": self.jobs_api, "cancel_api": self.cancel_api, "version": self.version}


class ComfyClient:
    def __init__(self, base_url: str, auth: tuple[str, str] | None = None, timeout: float = 10.0):
        self.base = base_url.rstrip("/")
        self.timeout = timeout
        self.session = requests.Session()
        if auth:
            self.session.auth = auth
        self.features = Features()

    # --- plumbing -----------------------------------------------------------------------------
    def _request(self, method: str, path: str, *, timeout: float | None = None, **kw) -> requests.Response:
        try:
            return self.session.request(method, self.base + path, timeout=timeout or self.timeout, **kw)
        except requests.RequestException as exc:
            raise ComfyUnavailable(f"{method} {path}: {exc.__class__.__name__}: {exc}") from exc

    def _json(self, method: str, path: str, **kw):
        resp = self._request(method, path, **kw)
        if resp.status_code >= 400:
            body = _safe_json(resp)
            raise ComfyRejected(resp.status_code, body, f"{method} {path} answered {resp.status_code}")
        return _safe_json(resp)

    # --- reads --------------------------------------------------------------------------------
    def get_queue(self) -> tuple[list[list], list[list]]:
        """(running, pending) entries, each [number, prompt_id, prompt, extra_data, outputs_to_execute].

        Pending entries come back in heap order: sorted here by number (lower runs first)."""
        data = self._json("GET", "/queue") or {}
        running = [e for e in data.get("queue_running") or [] if _valid_entry(e)]
        pending = [e for e in data.get("queue_pending") or [] if _valid_entry(e)]
        pending.sort(key=lambda e: (e[0] if isinstance(e[0], (int, float)) else 0))
        return running, pending

    def get_history(self, prompt_id: str) -> dict | None:
        data = self._json("GET", f"/history/{requests.utils.quote(prompt_id, safe='')}") or {}
        entry = data.get(prompt_id) if isinstance(data, dict) else None
        return entry if isinstance(entry, dict) else None

    def system_stats(self, timeout: float = 5.0) -> dict:
        return self._json("GET", "/system_stats", timeout=timeout) or {}

    def probe_features(self) -> Features:
        """GET /api/jobs and POST /api/jobs/cancel with no ids have no side effects (NEWER_COMFYUI.md §4)."""
        feats = Features(probed=True)
        try:
            stats = self.system_stats()
            feats.version = (stats.get("system") or {}).get("comfyui_version")
        except (ComfyRejected, ComfyUnavailable, AttributeError):
            pass
        try:
            resp = self._request("GET", "/api/jobs", params={"limit": 1}, timeout=5)
            body = _safe_json(resp)
            feats.jobs_api = resp.status_code == 200 and isinstance(body, dict) and "jobs" in body
        except ComfyUnavailable:
            pass
        try:
            resp = self._request("POST", "/api/jobs/cancel", json={"job_ids": []}, timeout=5)
            body = _safe_json(resp)
            feats.cancel_api = resp.status_code == 200 and isinstance(body, dict) and "cancelled" in body
        except ComfyUnavailable:
            pass
        self.features = feats
        return feats

    # --- writes -------------------------------------------------------------------------------
    def post_prompt(self, body: dict) -> dict:
        """POST /prompt. Raises ComfyRejected (with ComfyUI's JSON body) on 4xx/5xx."""
        return self._json("POST", "/prompt", json=body) or {}

    def interrupt(self, prompt_id: str | None = None) -> None:
        self._request("POST", "/interrupt", json={"prompt_id": prompt_id} if prompt_id else {})

    def delete_pending(self, prompt_ids: list[str]) -> None:
        self._request("POST", "/queue", json={"delete": list(prompt_ids)})

    def cancel_job(self, prompt_id: str) -> bool:
        """Newer servers' cancel endpoint: True when ComfyUI interrupted or dequeued the job."""
        body = self._json("POST", f"/api/jobs/{requests.utils.quote(prompt_id, safe='')}/cancel")
        return bool(isinstance(body, dict) and body.get("cancelled"))

    def view(self, params: dict, timeout: float = 30.0) -> requests.Response:
        """A streamed GET /view; the caller closes the response."""
        return self._request("GET", "/view", params=params, stream=True, timeout=timeout)


def _safe_json(resp: requests.Response):
    if not resp.content:
        return None
    try:
        return resp.json()
    except ValueError:
        return None


def _valid_entry(entry) -> bool:
    return (isinstance(entry, (list, tuple)) and len(entry) >= 5 and isinstance(entry[1], str)
            and isinstance(entry[2], dict))
