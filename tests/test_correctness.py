"""Job-state correctness under load (issue 9): each race found in a soak against a real ComfyUI, forced
deterministically by holding the fake ComfyUI's answer to one request while the monitor moves on."""
from __future__ import annotations

import contextlib

import gevent
import pytest
import requests

from fake_comfy import FakeComfy
from live import LiveServer, recorded_prompt, wait_for
from monitor import reconciler
from monitor.timeutil import epoch_from_iso, iso_from_epoch_ms

# Every test here runs against SQLite and PostgreSQL (conftest's `backend`).
pytestmark = pytest.mark.usefixtures("backend")


@contextlib.contextmanager
def monitor_on(fake, tmp_path, **config):
    """The real app served on loopback, watching `fake`; both stopped afterwards."""
    server = LiveServer(fake, str(tmp_path / "data"), **config)
    try:
        yield server
    finally:
        server.stop_app()
        fake.stop()


def events_of(server: LiveServer, job_id: str, kind: str | None = None) -> list[dict]:
    return [e for e in server.monitor.events.since(0, limit=100000)
            if e["data"].get("id") == job_id and (kind is None or e["kind"] == kind)]


def comfy_started_at(fake, job_id: str) -> str:
    """ComfyUI's own execution_start time for a finished prompt, as its /history keeps it."""
    messages = fake.history[job_id]["status"]["messages"]
    return iso_from_epoch_ms(next(m[1]["timestamp"] for m in messages if m[0] == "execution_start"))


def same_instant(a: str, b: str) -> bool:
    return abs(epoch_from_iso(a) - epoch_from_iso(b)) < 0.0015


def running_ids(server: LiveServer) -> list[str]:
    return [j["id"] for j in server.monitor.store.active(graph=False) if j["status"] == "running"]


def pending_ids(fake) -> list[str]:
    return [job.prompt_id for _, _, job in sorted(fake._pending, key=lambda e: (e[0], e[1]))]


# --- 1. a transition is applied once, from current state ------------------------------------------------
def test_1_a_start_seen_by_the_tracker_and_a_stale_reconcile_is_applied_once(tmp_path):
    fake = FakeComfy(paused=True)
    with monitor_on(fake, tmp_path, reconcile_interval=60) as server:
        wait_for(lambda: server.monitor.reconciled_at, what="the first reconcile")
        held = {}

        def start_it_while_the_reconciler_asks():
            # The reconciler has read its job list (job queued) and now asks /queue. Meanwhile ComfyUI
            # starts the prompt and the tracker marks it running; only then does /queue answer.
            if held or not fake._pending:
                return None
            held["id"] = pid = pending_ids(fake)[0]
            fake.resume()
            wait_for(lambda: server.monitor.store.get(pid)["status"] == "running", what="the tracker's start")
            return None

        fake.hooks[("GET", "/queue")] = start_it_while_the_reconciler_asks
        job = server.submit()
        wait_for(lambda: held, what="the held /queue")
        done = server.wait_status(job["id"], "completed")
        assert held["id"] == job["id"]
        assert len(events_of(server, job["id"], "job.started")) == 1
        # ComfyUI's execution_start time, not the moment the reconciler came by.
        assert same_instant(done["started_at"], comfy_started_at(fake, job["id"]))


# --- 2. a job running across a monitor restart ---------------------------------------------------------
def test_2_a_restart_mid_run_keeps_the_start_time_and_the_cached_nodes(tmp_path):
    fake = FakeComfy(speed=0.25)   # 01b: 4 of 9 nodes cached, a 10-step sampler; ~7 s at this speed
    with monitor_on(fake, tmp_path) as server:
        job = server.submit()
        before = wait_for(lambda: (lambda p: p if p and p.get("step") else None)(
            server.monitor.get_job(job["id"])["progress"]), what="a sampler step")
        started = server.monitor.get_job(job["id"])["started_at"]
        assert before["nodes_total"] is not None and before["cached_nodes"]

        server.restart_app()   # what the monitor learned before it went down is in the database
        after = wait_for(lambda: (lambda p: p if p and p.get("step") else None)(
            server.monitor.get_job(job["id"])["progress"]), what="a step after the restart")
        assert after["nodes_total"] == before["nodes_total"]
        assert after["cached_nodes"] == before["cached_nodes"]
        assert same_instant(after["started_at"], started)
        # The bar and the node count agree: the sampler's share, not a count that includes cached nodes.
        assert after["percent"] <= 100.0 * (after["nodes_done"] + 1) / after["nodes_total"]

        done = server.wait_status(job["id"], "completed", timeout=30)
        assert same_instant(done["started_at"], comfy_started_at(fake, job["id"]))
        assert done["node_total"] == done["node_done"] == before["nodes_total"]


def test_2_a_run_that_started_while_the_monitor_was_down_follows_steps_then_history_corrects_it(tmp_path):
    fake = FakeComfy(speed=0.25)
    with monitor_on(fake, tmp_path) as server:
        reference = server.submit()   # the same graph, watched from start to end
        reference = server.wait_status(reference["id"], "completed", timeout=30)
        assert reference["node_total"] and reference["node_done"] == reference["node_total"]

        fake.pause()
        job = server.submit()
        server.stop_app()
        fake.resume()   # execution_start and execution_cached go to nobody
        wait_for(lambda: fake.running and fake.running.job.prompt_id == job["id"]
                 and fake.running.current_node, what="the run to start unobserved")
        server.start_app()
        progress = wait_for(lambda: (lambda p: p if p and p.get("step") else None)(
            server.monitor.get_job(job["id"])["progress"]), what="a step after the restart")
        # Which nodes were cached is unknown: no node total, and the bar follows the sampler's steps.
        assert progress["nodes_total"] is None and progress["nodes_uncertain"] is True
        assert progress["percent"] is None or progress["percent"] >= 100.0 * (
            progress["step"]["value"] - 1) / progress["step"]["max"] - 0.01

        done = server.wait_status(job["id"], "completed", timeout=30)
        corrected = wait_for(lambda: (lambda j: j if j["node_total"] is not None else None)(
            server.monitor.get_job(job["id"])), what="the record corrected from /history")
        assert (corrected["node_total"], corrected["node_done"]) == (reference["node_total"],) * 2
        assert corrected["cached_nodes"] == fake.history[job["id"]]["status"]["messages"][1][1]["nodes"]
        assert same_instant(corrected["started_at"], comfy_started_at(fake, job["id"]))
        assert corrected["duration_s"] > 0 and done["status"] == "completed"


# --- 3. a cancel the API refused leaves no trace ------------------------------------------------------
def test_3_a_refused_cancel_does_not_take_effect_later(tmp_path):
    fake = FakeComfy(paused=True)
    with monitor_on(fake, tmp_path) as server:
        ids = [server.submit()["id"] for _ in range(3)]
        fake.stop()
        wait_for(lambda: not server.monitor.listener.connected, what="the monitor to notice")
        resp = server.post(f"/api/admin/jobs/{ids[1]}/cancel")
        assert resp.status_code == 502 and "nothing was cancelled" in resp.json()["error"]
        fake.start()   # a restarted ComfyUI knows none of them
        for job_id in ids:
            server.wait_status(job_id, "stalled")
        records = [server.monitor.get_job(i) for i in ids]
        assert {r["status_reason"] for r in records} == {reconciler.RESTART_REASON}


def test_3_a_cancel_of_a_job_that_just_finished_reports_how_it_ended(tmp_path):
    fake = FakeComfy(paused=True)
    with monitor_on(fake, tmp_path) as server:
        foreign = fake.add_foreign()   # the monitor gets no messages for it
        server.wait_status(foreign.prompt_id, "queued")
        for greenlet in server.monitor._greenlets:   # no reconcile will notice that it ran
            greenlet.kill()
        fake.resume()
        wait_for(lambda: foreign.prompt_id in fake.history, what="ComfyUI to finish it")
        resp = server.post(f"/api/admin/jobs/{foreign.prompt_id}/cancel")
        assert resp.status_code == 409 and resp.json()["job"]["status"] == "completed"
        assert server.monitor.get_job(foreign.prompt_id)["status"] == "completed"


# --- 4. positions at once, never two running jobs -----------------------------------------------------
def test_4_a_submitted_job_has_its_position_at_once_and_positions_never_have_gaps(tmp_path):
    fake = FakeComfy(paused=True)
    with monitor_on(fake, tmp_path, reconcile_interval=60) as server:
        positions = [server.submit()["queue_position"] for _ in range(3)]
        assert positions == [1, 2, 3]
        seen = []
        polling = True

        def poll():
            while polling:
                jobs = server.get("/api/admin/queue").json()["jobs"]
                seen.append([(j["status"], j["queue_position"]) for j in jobs])
                gevent.sleep(0.01)

        poller = gevent.spawn(poll)
        burst = [gevent.spawn(server.submit) for _ in range(12)]
        gevent.joinall(burst, raise_error=True)
        assert all(g.value["queue_position"] is not None for g in burst)
        fake.resume()
        for g in burst:
            server.wait_status(g.value["id"], "completed", timeout=60)
        polling = False
        poller.join()
        assert len(seen) > 10
        for snapshot in seen:
            queued = [pos for status, pos in snapshot if status == "queued"]
            assert queued == list(range(1, len(queued) + 1)), snapshot
            assert sum(1 for status, _ in snapshot if status == "running") <= 1, snapshot


def test_4_the_job_that_ran_before_is_settled_before_the_next_is_marked_running(tmp_path):
    fake = FakeComfy(paused=True)
    with monitor_on(fake, tmp_path, reconcile_interval=60) as server:
        # Queued from ComfyUI's own UI: the monitor learns of their starts and ends from /queue and /history.
        first = fake.add_foreign("05_interrupt")   # runs until interrupted
        second = fake.add_foreign()
        server.monitor._wake.set()
        wait_for(lambda: all(server.monitor.store.get(j.prompt_id) for j in (first, second)), what="adoption")
        fake.resume()
        server.monitor._wake.set()
        server.wait_status(first.prompt_id, "running")

        def end_the_first_while_the_reconciler_asks():
            fake.hooks.pop(("GET", "/queue"))
            fake.interrupt(first.prompt_id)
            wait_for(lambda: fake.running and fake.running.job.prompt_id == second.prompt_id,
                     what="ComfyUI to start the second")

        seen_running = []
        fake.hooks[("GET", "/queue")] = end_the_first_while_the_reconciler_asks
        fake.hooks[("GET", f"/history/{first.prompt_id}")] = lambda: seen_running.append(running_ids(server))
        server.monitor._wake.set()
        assert server.wait_status(first.prompt_id, "interrupted")["status"] == "interrupted"
        server.wait_status(second.prompt_id, "completed", timeout=30)
        assert seen_running and all(len(ids) <= 1 for ids in seen_running), seen_running
        assert len(events_of(server, second.prompt_id, "job.started")) == 1


def test_4_a_prompt_that_starts_without_telling_us_the_last_one_ended_settles_that_one_first(tmp_path):
    # Prompts posted without a client id: ComfyUI broadcasts their progress but no start or end message,
    # so the tracker learns of the end of one only when the next one's progress arrives.
    fake = FakeComfy(paused=True)
    with monitor_on(fake, tmp_path, reconcile_interval=60) as server:
        wait_for(lambda: server.monitor.reconciled_at, what="the first reconcile")
        for greenlet in server.monitor._greenlets:   # only the listener's path is under test
            greenlet.kill()
        first = fake.enqueue(recorded_prompt(), client_id=None)
        second = fake.enqueue(recorded_prompt(), client_id=None)
        seen_running = []
        fake.hooks[("GET", f"/history/{first.prompt_id}")] = lambda: seen_running.append(running_ids(server))
        fake.resume()
        server.wait_status(first.prompt_id, "completed", timeout=30)
        server.wait_status(second.prompt_id, "running")
        assert seen_running and all(len(ids) <= 1 for ids in seen_running), seen_running
        assert running_ids(server) == [second.prompt_id]


# --- 5. finished records that read right --------------------------------------------------------------
def test_5_an_external_job_settled_from_history_counts_its_nodes_like_a_local_one(tmp_path):
    fake = FakeComfy()
    with monitor_on(fake, tmp_path) as server:
        local = server.wait_status(server.submit()["id"], "completed")
        foreign = fake.add_foreign()
        external = server.wait_status(foreign.prompt_id, "completed", timeout=30)
        assert external["source"] == "external"
        assert local["node_total"] and local["node_done"] == local["node_total"]
        assert (external["node_total"], external["node_done"]) == (local["node_total"], local["node_done"])
        assert same_instant(external["started_at"], comfy_started_at(fake, foreign.prompt_id))


def test_5_a_job_that_finished_while_the_monitor_was_down_counts_its_nodes(tmp_path):
    fake = FakeComfy(speed=0.5)
    with monitor_on(fake, tmp_path) as server:
        local = server.wait_status(server.submit()["id"], "completed", timeout=30)
        job = server.submit()
        server.wait_status(job["id"], "running")
        server.stop_app()
        wait_for(lambda: job["id"] in fake.history, timeout=30, what="ComfyUI to finish it")
        server.start_app()
        done = server.wait_status(job["id"], "completed")
        assert (done["node_total"], done["node_done"]) == (local["node_total"], local["node_done"])
        assert same_instant(done["started_at"], comfy_started_at(fake, job["id"]))


def test_5_stalled_jobs_record_when_the_monitor_decided(tmp_path):
    fake = FakeComfy(paused=True)
    with monitor_on(fake, tmp_path) as server:
        older = server.wait_status(server.submit()["id"], "queued")
        fake.resume()
        server.wait_status(older["id"], "completed")
        fake.pause()
        lost = server.submit()
        fake.stop()
        fake.start()   # a restarted ComfyUI has forgotten it
        stalled = server.wait_status(lost["id"], "stalled")
        assert stalled["finished_at"] and stalled["finished_at"] >= stalled["queued_at"]
        history = server.get("/api/admin/history").json()["jobs"]
        assert [j["id"] for j in history][:2] == [lost["id"], older["id"]]


def test_5_a_queued_job_deleted_in_comfyui_by_someone_else_is_cancelled_with_the_reason(tmp_path):
    fake = FakeComfy(paused=True)
    with monitor_on(fake, tmp_path) as server:
        mine = server.submit()
        foreign = fake.add_foreign()
        wait_for(lambda: server.monitor.store.get(foreign.prompt_id), what="adoption")
        wait_for(lambda: server.monitor.reconciled_at and server.monitor._seen_pending.get(mine["id"]) is not None,
                 what="both seen pending")
        # As ComfyUI's own UI does it: POST /queue {"delete": [...]}, straight to ComfyUI.
        requests.post(fake.url + "/queue", json={"delete": [mine["id"], foreign.prompt_id]}, timeout=5)
        for job_id in (mine["id"], foreign.prompt_id):
            job = server.wait_status(job_id, {"cancelled", "stalled"})
            assert (job["status"], job["status_reason"]) == ("cancelled", reconciler.REMOVED_REASON)
            assert job["finished_at"]


def test_a_job_wrongly_declared_stalled_takes_the_state_comfyui_reports_and_says_why(tmp_path):
    fake = FakeComfy(speed=0.2)   # about 10 s of run
    with monitor_on(fake, tmp_path) as server:
        job = server.submit()
        server.wait_status(job["id"], "running")
        lies = {"left": 2}

        def empty_queue():   # a broken proxy answering "nothing queued" twice
            if lies["left"] <= 0:
                return None
            lies["left"] -= 1
            return fake.app.response_class('{"queue_running": [], "queue_pending": []}',
                                           mimetype="application/json")

        fake.hooks[("GET", "/queue")] = empty_queue
        server.wait_status(job["id"], "stalled")
        done = server.wait_status(job["id"], "completed", timeout=30)
        assert "marked stalled" in done["status_reason"]
        kinds = [e["kind"] for e in events_of(server, job["id"])]
        assert kinds.index("job.stalled") < kinds.index("job.recovered") < kinds.index("job.completed")


def test_a_foreign_prompt_that_ran_between_two_looks_at_the_queue_is_recorded_from_history(tmp_path):
    fake = FakeComfy()
    with monitor_on(fake, tmp_path) as server:
        wait_for(lambda: server.monitor.reconciled_at, what="the first reconcile")
        held = {}

        def queue_after_it_finished():   # /queue answers only once the prompt is over: never listed
            if "id" in held:
                wait_for(lambda: held["id"] in fake.history, what="ComfyUI to finish it")

        fake.hooks[("GET", "/queue")] = queue_after_it_finished
        foreign = fake.add_foreign()
        held["id"] = foreign.prompt_id
        job = server.wait_status(foreign.prompt_id, "completed")
        assert job["source"] == "external" and job["node_total"] and job["node_done"] == job["node_total"]
        assert same_instant(job["started_at"], comfy_started_at(fake, foreign.prompt_id))
        assert [e["kind"] for e in events_of(server, foreign.prompt_id)] == ["job.completed"]
