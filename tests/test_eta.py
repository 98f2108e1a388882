"""Whole-job ETA and requeue, end to end: the real app on loopback watching a simulated ComfyUI."""
from __future__ import annotations

import copy
import json

import pytest

from fake_comfy import FakeComfy
from live import LiveServer, wait_for
from monitor.demo import DEMO_PROMPT, SyntheticEngine


@pytest.fixture
def server(tmp_path):
    # 20 steps of 50 ms: a run lasts about a second (plus the slow classes' delays).
    fake = FakeComfy(default=SyntheticEngine(step_s=0.05, time_scale=1.0, seed=3))
    srv = LiveServer(fake, str(tmp_path / "data"))
    try:
        yield srv
    finally:
        srv.stop_app()
        fake.stop()


def prompt(seed: int) -> dict:
    graph = copy.deepcopy(DEMO_PROMPT)
    graph["5"]["inputs"]["seed"] = seed
    graph["5"]["inputs"]["steps"] = 20
    return graph


def queue_entry(srv, job_id):
    return next((j for j in srv.get("/api/admin/queue").json()["jobs"] if j["id"] == job_id), None)


def test_first_run_says_unknown_second_run_has_a_whole_job_eta_and_queued_jobs_a_start(server):
    first = server.submit(prompt(1))
    seen = wait_for(lambda: (queue_entry(server, first["id"]) or {}).get("status") == "running"
                    and queue_entry(server, first["id"]), what="the first run")
    assert seen["eta_s"] is None and seen["eta_basis"] == "no history yet"
    server.wait_status(first["id"], "completed")

    second = server.submit(prompt(2))
    third = server.submit(prompt(3))
    running = wait_for(lambda: (e := queue_entry(server, second["id"])) and e["status"] == "running"
                       and e["eta_s"] is not None and e, what="an ETA on the second run")
    assert "past run" in running["eta_basis"] or "rate" in running["eta_basis"]
    assert 0 < running["eta_s"] < 30
    queued = queue_entry(server, third["id"])
    assert queued["status"] == "queued"
    assert queued["starts_in_s"] is not None and queued["done_in_s"] > queued["starts_in_s"]
    detail = server.get(f"/api/admin/jobs/{third['id']}").json()
    assert {"eta_s", "eta_basis", "starts_in_s", "done_in_s"} <= set(detail)
    host = server.monitor.hosts[0]
    assert host.estimated_wait_s() is not None and host.estimated_wait_s() >= queued["eta_s"]
    # The browser socket's hello carries the same estimate on each active job's state.
    hello = server.monitor.hello()
    states = {s["prompt_id"]: s for s in hello["jobs"]}
    assert states[third["id"]]["estimate"]["starts_in_s"] is not None
    server.wait_status(third["id"], "completed")
    assert server.monitor.hosts[0].estimated_wait_s() == 0.0


def test_requeue_local_job_with_a_new_seed(server):
    job = server.submit(prompt(7))
    server.wait_status(job["id"], "completed")
    resp = server.post(f"/api/admin/jobs/{job['id']}/requeue", json={"new_seed": True})
    assert resp.status_code == 201, resp.text
    again = resp.json()
    assert again["requeued_from"] == job["id"] and again["id"] != job["id"]
    done = server.wait_status(again["id"], "completed")
    assert done["seeds"] != [7]
    same = server.post(f"/api/admin/jobs/{job['id']}/requeue").json()
    assert server.monitor.store.get(same["id"])["graph"]["5"]["inputs"]["seed"] == 7


def test_requeue_external_job_takes_its_graph_from_history(server):
    foreign = server.fake.add_foreign(SyntheticEngine(step_s=0.01, seed=1), prompt=prompt(11))
    server.wait_status(foreign.prompt_id, "completed")
    assert server.monitor.store.get(foreign.prompt_id)["source"] == "external"
    # Retention dropped its graph: ComfyUI's /history still has it.
    server.monitor.store.update(foreign.prompt_id, graph=None)
    resp = server.post(f"/api/admin/jobs/{foreign.prompt_id}/requeue")
    assert resp.status_code == 201, resp.text
    assert server.monitor.store.get(resp.json()["id"])["graph"]["5"]["inputs"]["seed"] == 11


def test_requeue_refuses_unknown_graphs_active_jobs_and_bad_bodies(server):
    store = server.monitor.store
    store.create({"id": "gone-1", "host": server.monitor.hosts[0].name, "status": "completed"})
    resp = server.post("/api/admin/jobs/gone-1/requeue")
    assert resp.status_code == 409 and "not known" in resp.json()["error"]
    assert server.post("/api/admin/jobs/nope/requeue").status_code == 404
    assert server.post("/api/admin/jobs/gone-1/requeue", json={"new_seed": "yes"}).status_code == 400
    server.fake.pause()
    job = server.submit(prompt(5))
    resp = server.post(f"/api/admin/jobs/{job['id']}/requeue")
    assert resp.status_code == 409 and "still" in resp.json()["error"]
    server.fake.resume()


def test_requeue_validation_errors_come_back_as_400(server):
    job = server.submit(prompt(8))
    server.wait_status(job["id"], "completed")
    server.fake.answer_next_post(400, {"error": {"type": "prompt_outputs_failed_validation",
                                                 "message": "Prompt outputs failed validation"},
                                       "node_errors": {"5": {"errors": [{"message": "Value too big",
                                                                         "details": "steps"}]}}})
    resp = server.post(f"/api/admin/jobs/{job['id']}/requeue")
    assert resp.status_code == 400 and "KSampler" in resp.json()["error"]


def test_history_pages_filter_and_escape(server):
    store = server.monitor.store
    host = server.monitor.hosts[0].name
    for i in range(60):
        store.create({"id": f"h{i:03d}", "host": host, "status": "failed" if i % 3 == 0 else "completed",
                      "workflow_name": "<b>x</b>" if i == 59 else f"wf {i}",
                      "queued_at": f"2026-01-01T00:{i:02d}:00+00:00", "finished_at": f"2026-01-01T00:{i:02d}:30+00:00",
                      "error": {"message": "boom <script>"} if i % 3 == 0 else None})
    jobs, cursor = store.history_page(limit=25)
    assert [j["id"] for j in jobs] == [f"h{i:03d}" for i in range(59, 34, -1)]
    more, cursor2 = store.history_page(limit=25, before=cursor)
    assert [j["id"] for j in more] == [f"h{i:03d}" for i in range(34, 9, -1)]
    last, end = store.history_page(limit=25, before=cursor2)
    assert len(last) == 10 and end is None
    failed, _ = store.history_page(limit=100, status="failed")
    assert {j["status"] for j in failed} == {"failed"} and len(failed) == 20
    page = server.get("/admin/history")
    assert page.status_code == 200
    assert "&lt;b&gt;x&lt;/b&gt;" in page.text and "<b>x</b>" not in page.text
    assert "<script>" not in page.text.split("</head>")[1].replace("<script src", "")
    assert page.text.count('class="hrow') == 50
    assert "Load more" in page.text
    rows = server.get("/admin/history/rows", params={"status": "failed"})
    assert rows.status_code == 200 and rows.text.count('class="hrow') == 20 and "Load more" not in rows.text
    assert server.get("/admin/history/rows", params={"status": "nonsense"}).status_code == 400
    assert server.get("/admin/history/rows", params={"before": "garbage"}).status_code == 400
    # Paging by the cursor the page gives for "load more".
    nxt = server.get("/admin/history/rows", params={"before": cursor})
    assert nxt.text.count('class="hrow') == 35


def test_migration_adds_timings_and_keeps_jobs(tmp_path):
    from monitor.jobs import MIGRATIONS, JobStore
    store = JobStore(tmp_path / "db.sqlite3")
    assert store._query("PRAGMA user_version")[0][0] == len(MIGRATIONS)
    plan = " ".join(str(r[3]) for r in store._query(
        "EXPLAIN QUERY PLAN SELECT id FROM jobs WHERE status NOT IN ('queued', 'running') "
        "ORDER BY COALESCE(finished_at, queued_at) DESC, rowid DESC LIMIT 50"))
    assert "jobs_finished_order" in plan and "TEMP B-TREE" not in plan
    store.close()
    json.dumps(plan)


def test_a_learned_workflow_weighs_its_percent_by_expected_node_times(server):
    """After one completed run the next run's nodes get their learned times as shares of the percent."""
    first = server.submit(prompt(1))
    server.wait_status(first["id"], "completed", timeout=60)
    second = server.submit(prompt(2))
    tracker = server.monitor.tracker
    wait_for(lambda: (tracker._prompts.get(second["id"]) and tracker._prompts[second["id"]].weights),
             what="the second run to be weighed")
    weights = tracker._prompts[second["id"]].weights
    assert set(weights) == set(tracker.nodes_to_run(second["id"]))
    sampler = max(weights, key=weights.get)
    assert DEMO_PROMPT[sampler]["class_type"] == "KSampler"   # the 20 steps outweigh the rest
    server.wait_status(second["id"], "completed", timeout=60)
