"""Renderings kept while unchanged: per job (a job's JSON, a job's card), and whole pages of a long queue.

A long queue is listed by every poll, but between two polls usually only the running jobs changed: each
job is rendered once per version (Fleet.active_versions) and the response is joined from the pieces; a
whole page is kept while Fleet.active_key() holds, its running jobs re-rendered on every answer."""
from __future__ import annotations

from typing import Callable

KEEP_PAGES = 8   # pages (offset, limit) kept by a PageCache, the least recently asked dropped first
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


class PageCache:
    """Whole answers per page, as pieces: text, or a callable giving the text of a piece that moves with
    the clock (a running job). An answer is reused while its key (Fleet.active_key) is unchanged."""

    def __init__(self):
        self._pages: dict = {}   # page -> (key, pieces)

    def get(self, page, key, pieces: Callable[[], list]) -> str:
        entry = self._pages.pop(page, None)
        if entry is None or entry[0] != key:
            entry = (key, _merged(pieces()))
        self._pages[page] = entry   # most recently asked last
        if len(self._pages) > KEEP_PAGES:
            del self._pages[next(iter(self._pages))]
        return "".join(piece if isinstance(piece, str) else piece() for piece in entry[1])


def _merged(pieces: list) -> list:
    """Runs of adjacent texts joined into one, so an answer is a few joins however long the page."""
    out: list = []
    run: list[str] = []
    for piece in pieces:
        if isinstance(piece, str):
            run.append(piece)
            continue
        if run:
            out.append("".join(run))
            run = []
        out.append(piece)
    if run:
        out.append("".join(run))
    return out
