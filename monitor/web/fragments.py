"""Per-job renderings (a job's JSON, a job's card) kept while the job is unchanged.

A long queue is listed by every poll, but between two polls usually only the running job changed: each
job is rendered once per version (Fleet.active_versions) and the response is joined from the pieces."""
from __future__ import annotations

from typing import Callable


class FragmentCache:
    def __init__(self):
        self._entries: dict[str, tuple[tuple, str]] = {}

    def render_all(self, versions, render: Callable[[dict], str]) -> list[str]:
        """`versions`: [(id, version, build)], as Fleet.active_versions() gives them; `render(job)`
        turns a built job dict into text. Returns the texts in order; entries of jobs that left the
        list are dropped, so the cache holds only the active jobs."""
        fresh: dict[str, tuple[tuple, str]] = {}
        out = []
        for job_id, version, build in versions:
            hit = self._entries.get(job_id)
            if hit is None or hit[0] != version:
                hit = (version, render(build()))
            fresh[job_id] = hit
            out.append(hit[1])
        self._entries = fresh
        return out
