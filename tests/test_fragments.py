"""Per-job rendering cache: re-rendered exactly when a job's version changes, nothing kept for departed jobs,
pages of one queue polled in turn share it."""
from monitor.web.fragments import KEEP_CALLS, FragmentCache


def versions(*items):
    return [(jid, ver, (lambda jid=jid, ver=ver: {"id": jid, "v": ver})) for jid, ver in items]


def test_renders_once_per_version_and_forgets_departed_jobs():
    calls = []

    def render(job):
        calls.append(job["id"])
        return f"{job['id']}@{job['v']}"

    cache = FragmentCache()
    assert cache.render_all(versions(("a", 1), ("b", 1)), render) == ["a@1", "b@1"]
    assert cache.render_all(versions(("a", 1), ("b", 1)), render) == ["a@1", "b@1"]
    assert calls == ["a", "b"], "unchanged jobs are not rendered again"
    assert cache.render_all(versions(("b", 2), ("a", 1)), render) == ["b@2", "a@1"], "order follows the input"
    assert calls == ["a", "b", "b"]
    for _ in range(KEEP_CALLS):
        cache.render_all(versions(("b", 2)), render)
    assert set(cache._entries) == {"b"}, "a job that left the list is dropped"
    assert cache.render_all(versions(("a", 1), ("b", 2)), render) == ["a@1", "b@2"]
    assert calls == ["a", "b", "b", "a"], "a job that left and came back is rendered afresh"


def test_pages_polled_in_turn_do_not_evict_each_other():
    calls = []
    cache = FragmentCache()
    first, second = versions(("a", 1), ("b", 1)), versions(("c", 1), ("d", 1))
    for _ in range(5):
        assert cache.render_all(first, lambda job: calls.append(job["id"]) or job["id"]) == ["a", "b"]
        assert cache.render_all(second, lambda job: calls.append(job["id"]) or job["id"]) == ["c", "d"]
    assert calls == ["a", "b", "c", "d"]
