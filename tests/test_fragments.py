"""Per-job rendering cache: re-rendered exactly when a job's version changes, nothing kept for departed jobs."""
from monitor.web.fragments import FragmentCache


def test_renders_once_per_version_and_forgets_departed_jobs():
    calls = []

    def versions(*items):
        return [(jid, ver, (lambda jid=jid, ver=ver: {"id": jid, "v": ver})) for jid, ver in items]

    def render(job):
        calls.append(job["id"])
        return f"{job['id']}@{job['v']}"

    cache = FragmentCache()
    assert cache.render_all(versions(("a", 1), ("b", 1)), render) == ["a@1", "b@1"]
    assert cache.render_all(versions(("a", 1), ("b", 1)), render) == ["a@1", "b@1"]
    assert calls == ["a", "b"], "unchanged jobs are not rendered again"
    assert cache.render_all(versions(("b", 2), ("a", 1)), render) == ["b@2", "a@1"], "order follows the input"
    assert calls == ["a", "b", "b"]
    cache.render_all(versions(("b", 2)), render)
    assert cache.render_all(versions(("a", 1), ("b", 2)), render) == ["a@1", "b@2"]
    assert calls == ["a", "b", "b", "a"], "a job that left and came back is rendered afresh"
