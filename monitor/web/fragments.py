"""Per-job renderings (a job's JSON, a job's card) kept while the job is unchanged.

A long queue is listed by every poll, but between two polls usually only the running job changed: each
job is rendered once per version (Fleet.active_versions) and the response is joined from the pieces."""
from __future__ import annotations

from typing import Callable

KEEP_CALLS = 8   # an entry not listed by this many calls in a row is dropped (a job that left the queue)


class FragmentCache:
    def __init__(self):
        self._entries: dict[str, list] = {}   # job id -> [version, text, number of the call that last listed it]
        self._calls = 0

    def render_all(self, versions, render: Callable[[dict], str]) -> list[str]:
        """`versions`: [(id, version, build)], as Fleet.active_versions() gives them; `render(job)`
        turns a built job dict into text. Returns the texts in order. Entries stay while any of the last
        KEEP_CALLS calls listed them: pollers of different pages of a long queue (offset/limit) share
        the cache instead of evicting each other's jobs, and jobs that left the list are dropped."""
        self._calls += 1
        call, entries, out = self._calls, self._entries, []
        for job_id, version, build in versions:
            hit = entries.get(job_id)
            if hit is None or hit[0] != version:
                hit = entries[job_id] = [version, render(build()), call]
            else:
                hit[2] = call
            out.append(hit[1])
        if len(entries) > len(out):
            oldest = call - KEEP_CALLS
            self._entries = {k: e for k, e in entries.items() if e[2] > oldest}
        return out
