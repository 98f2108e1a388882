"""Pushes the queue page's slower parts over its socket while viewers are connected, so that a page with a
live socket does not poll: the gauges fragment once per telemetry sample, the cards and Current Job
fragments when what they show changed. Each is rendered once for every viewer, sent only when it differs
from the last one sent, latest wins (Hub.publish_latest). The page polls them only while its socket is down."""
from __future__ import annotations

import logging
import time

import gevent

from . import pages

log = logging.getLogger(__name__)

JOBS_EVERY_S = 2.0   # cards and Current Job: rendered and compared at most this often


class Pusher:
    def __init__(self, app, interval: float, jobs_every: float = JOBS_EVERY_S):
        self.app = app
        self.interval = max(0.25, float(interval))
        self.jobs_every = jobs_every
        self._sent: dict[str, str] = {}   # fragment id -> the HTML last pushed
        self._jobs_at = 0.0
        self._viewers = 0
        self._greenlet = None

    def start(self) -> "Pusher":
        if self._greenlet is None:
            self._greenlet = gevent.spawn(self._loop)
        return self

    def stop(self) -> None:
        if self._greenlet is not None:
            self._greenlet.kill(block=False)
            self._greenlet = None

    def _loop(self):
        while True:
            gevent.sleep(self.interval)
            try:
                self.step()
            except Exception:
                log.exception("pushing the page's fragments failed")

    def step(self) -> None:
        hub = self.app.extensions["monitor"].hub
        viewers, before = hub.client_count(), self._viewers
        self._viewers = viewers
        if not viewers:
            self._sent.clear()
            return
        ids = ["gauges"]
        now = time.monotonic()
        if viewers > before:
            # A page that just connected may have missed a change made since it was rendered.
            self._sent.pop("cards", None)
            self._sent.pop("current", None)
            self._jobs_at = 0.0
        if now - self._jobs_at >= self.jobs_every:
            self._jobs_at = now
            ids += ["cards", "current"]
        # url_for needs a request: fragments link to the same paths for every viewer.
        with self.app.test_request_context("/admin/queue"):
            for fid in ids:
                html = pages.FRAGMENTS[fid]()
                if self._sent.get(fid) != html:
                    self._sent[fid] = html
                    hub.publish_latest("fragment:" + fid, {"type": "fragment", "id": fid, "html": html})
