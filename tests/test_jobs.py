"""JobStore and EventBus against a real SQLite file in tmp_path."""
import os
import sqlite3
import stat
import subprocess
import sys
import textwrap

import pytest

from monitor.jobs import MIGRATIONS, EventBus, JobStore, StoreError
from monitor.timeutil import epoch_from_iso

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture
def db(tmp_path):
    return str(tmp_path / "data" / "monitor.sqlite3")


@pytest.fixture
def store(database):
    """Behaviour tests run against both backends; the SQLite-specific ones open `db` themselves."""
    s = JobStore(database)
    yield s
    s.close()


def job(job_id, **fields):
    return {"id": job_id, **fields}


def is_utc_iso(value):
    return isinstance(value, str) and value.endswith("+00:00") and epoch_from_iso(value) is not None


# --- jobs -------------------------------------------------------------------------------------

def test_create_fills_defaults_and_round_trips(store):
    created = store.create(job("a", params={"steps": 20, "cfg": 7.5}, seeds=[1, 2**40],
                               graph={"3": {"class_type": "KSampler", "inputs": {"seed": 1}}},
                               outputs_to_execute=["9"], number=3.0, client_id="me"))
    assert created == store.get("a", graph=False)   # create() hands back the record without the graph
    assert created["status"] == "queued" and created["source"] == "local"
    assert is_utc_iso(created["queued_at"])
    assert created["params"] == {"steps": 20, "cfg": 7.5}
    assert created["seeds"] == [1, 2**40]
    assert store.get("a")["graph"]["3"]["class_type"] == "KSampler"
    assert created["outputs_to_execute"] == ["9"]
    assert created["outputs"] == [] and created["error"] is None
    assert created["started_at"] is None and created["finished_at"] is None


def test_create_keeps_given_queued_at_and_normalises_to_utc(store):
    created = store.create(job("a", queued_at="2026-01-02T03:04:05.500000+02:00"))
    assert created["queued_at"] == "2026-01-02T01:04:05.500000+00:00"


def test_create_rejects_bad_input(store):
    with pytest.raises(ValueError):
        store.create(job("a", status="done"))
    with pytest.raises(ValueError):
        store.create(job("a", colour="red"))
    with pytest.raises(ValueError):
        store.create({"status": "queued"})
    with pytest.raises(ValueError):
        store.create(job("a", status="stalled"))
    store.create(job("a"))
    with pytest.raises(ValueError):
        store.create(job("a"))


def test_update_json_fields_and_unknown_job(store):
    store.create(job("a"))
    updated = store.update("a", outputs=[{"node_id": "9", "images": [{"filename": "x.png"}]}],
                           error={"node_title": "KSampler", "message": "boom"}, node_total=5, node_done=2)
    assert updated == store.get("a", graph=False)   # update() never reads or returns the graph
    assert updated["outputs"][0]["images"][0]["filename"] == "x.png"
    assert updated["error"]["message"] == "boom"
    assert (updated["node_total"], updated["node_done"]) == (5, 2)
    assert store.update("missing", node_done=1) is None
    with pytest.raises(ValueError):
        store.update("a", colour="red")
    with pytest.raises(ValueError):
        store.update("a", status="bogus")
    with pytest.raises(ValueError):
        store.update("a", id="b")


def test_terminal_status_derives_finished_at_and_duration(store):
    store.create(job("a"))
    store.update("a", status="running", started_at="2026-01-01T00:00:00+00:00")
    done = store.update("a", status="completed", finished_at="2026-01-01T00:00:12.500000+00:00")
    assert done["finished_at"] == "2026-01-01T00:00:12.500000+00:00"  # explicit value kept
    assert done["duration_s"] == 12.5

    store.create(job("b"))
    started = store.update("b", status="running", started_at=1_700_000_000.0)  # epoch accepted
    assert started["started_at"] == "2023-11-14T22:13:20+00:00"
    failed = store.update("b", status="failed", error={"message": "x"})
    assert is_utc_iso(failed["finished_at"])
    assert failed["duration_s"] > 0


def test_cancelled_while_queued_gets_finished_at_but_no_duration(store):
    store.create(job("a"))
    cancelled = store.update("a", status="cancelled")
    assert is_utc_iso(cancelled["finished_at"]) and cancelled["duration_s"] is None


def test_terminal_states_are_sticky(store):
    for status in ("completed", "failed", "interrupted", "cancelled"):
        store.create(job(status))
        store.update(status, status="running", started_at="2026-01-01T00:00:00+00:00")
        final = store.update(status, status=status)
        for other in ("running", "queued", "stalled", "completed" if status != "completed" else "failed"):
            again = store.update(status, status=other, status_reason="late", node_done=99)
            assert again == final
            assert store.get(status, graph=False) == final
        # Non-status changes to a finished job are still allowed (late outputs, for instance).
        assert store.update(status, outputs=[{"node_id": "9"}])["outputs"] == [{"node_id": "9"}]


def test_stalled_needs_a_reason_and_can_be_settled_later(store):
    store.create(job("a"))
    store.update("a", status="running", started_at="2026-01-01T00:00:00+00:00")
    with pytest.raises(ValueError):
        store.update("a", status="stalled")
    stalled = store.update("a", status="stalled", status_reason="ComfyUI restarted")
    # When the monitor decided, so that history sorts it where it happened and shows how long it ran.
    assert stalled["status"] == "stalled" and stalled["finished_at"] and stalled["duration_s"] > 0
    settled = store.update("a", status="completed", finished_at="2026-01-01T00:01:00+00:00")
    assert settled["status"] == "completed"
    assert settled["status_reason"] is None
    assert settled["duration_s"] == 60.0
    assert store.update("a", status="stalled", status_reason="x")["status"] == "completed"


def test_stalled_job_can_be_reattached(store):
    store.create(job("a"))
    store.update("a", status="stalled", status_reason="not in /queue")
    again = store.update("a", status="running", started_at="2026-01-01T00:00:00+00:00")
    assert (again["status"], again["status_reason"], again["finished_at"]) == ("running", None, None)


def test_a_stall_decision_time_is_not_taken_as_the_real_end(store):
    store.create(job("a"))
    store.update("a", status="running", started_at="2026-01-01T00:00:00+00:00")
    store.update("a", status="stalled", status_reason="lost")
    # Settled later without an end time of its own: it ends now, not when it was declared stalled.
    done = store.update("a", status="failed")
    assert done["finished_at"] > "2026-11-01"


def test_transition_applies_only_from_the_current_state(store):
    store.create(job("a"))
    first = store.transition("a", {"queued"}, status="running", started_at="2026-01-01T00:00:05+00:00")
    assert first["status"] == "running"
    # A second caller holding a stale "queued" copy: nothing happens, not even the start time.
    assert store.transition("a", {"queued"}, status="running", started_at="2026-01-01T00:00:09+00:00") is None
    assert store.get("a")["started_at"] == "2026-01-01T00:00:05+00:00"
    assert store.transition("missing", {"queued"}, status="running") is None


def test_a_start_time_never_moves_forward(store):
    store.create(job("a"))
    store.update("a", status="running", started_at="2026-01-01T00:00:05+00:00")
    store.update("a", started_at="2026-01-01T00:00:09+00:00")
    assert store.get("a")["started_at"] == "2026-01-01T00:00:05+00:00"
    store.update("a", started_at="2026-01-01T00:00:02+00:00")   # ComfyUI's own, earlier: taken
    assert store.get("a")["started_at"] == "2026-01-01T00:00:02+00:00"


def schema_1_database(path, insert: str):
    """A database as the first release wrote it, holding the one row `insert` adds."""
    conn = sqlite3.connect(path)
    for statement in MIGRATIONS[0]:
        conn.execute(statement)
    conn.execute("PRAGMA user_version=1")
    conn.execute(insert)
    conn.commit()
    conn.close()
    return path


def test_schema_2_adds_cached_nodes_to_an_existing_database(tmp_path):
    path = schema_1_database(tmp_path / "old.sqlite3", "INSERT INTO jobs (id, status, queued_at) VALUES "
                                                       "('old', 'running', '2026-01-01T00:00:00+00:00')")
    store = JobStore(path)
    try:
        assert store.get("old")["cached_nodes"] is None
        assert store.update("old", cached_nodes=["1", "2"])["cached_nodes"] == ["1", "2"]
    finally:
        store.close()


def test_active_order(store):
    store.create(job("q-late", number=7.0, queued_at="2026-01-01T00:00:01+00:00"))
    store.create(job("q-early", number=5.0, queued_at="2026-01-01T00:00:05+00:00"))
    store.create(job("q-nonum-1", queued_at="2026-01-01T00:00:00+00:00"))
    store.create(job("q-nonum-2", queued_at="2026-01-01T00:00:09+00:00"))
    store.create(job("r", number=9.0))
    store.update("r", status="running")
    store.create(job("done"))
    store.update("done", status="completed")
    assert [j["id"] for j in store.active()] == ["r", "q-early", "q-late", "q-nonum-1", "q-nonum-2"]


def test_history_order_limit_and_filter(store):
    store.create(job("old", queued_at="2026-01-01T00:00:00+00:00"))
    store.update("old", status="completed", finished_at="2026-01-01T00:10:00+00:00")
    store.create(job("new", queued_at="2026-01-01T00:01:00+00:00"))
    store.update("new", status="failed", finished_at="2026-01-01T00:20:00+00:00")
    store.create(job("stalled", queued_at="2026-01-01T00:15:00+00:00"))
    # Declared stalled 00:12: sorted by when the monitor decided, not by when it was queued.
    store.update("stalled", status="stalled", status_reason="lost", finished_at="2026-01-01T00:12:00+00:00")
    store.create(job("still-queued"))
    assert [j["id"] for j in store.history()] == ["new", "stalled", "old"]
    assert [j["id"] for j in store.history(limit=2)] == ["new", "stalled"]
    assert [j["id"] for j in store.history(status="completed")] == ["old"]
    assert [j["id"] for j in store.history(status="stalled")] == ["stalled"]
    for bad in ("queued", "running", "done"):
        with pytest.raises(ValueError):
            store.history(status=bad)


def test_records_survive_reopen_and_migrations_are_idempotent(db):
    first = JobStore(db)
    first.create(job("a", params={"x": 1}))
    first.update("a", status="running", started_at="2026-01-01T00:00:00+00:00")
    expected = first.get("a")
    first.close()
    for _ in range(2):
        again = JobStore(db)
        assert again.get("a") == expected
        again.close()
    with sqlite3.connect(db) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == len(MIGRATIONS)
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        indexes = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='index'")}
        assert {"jobs_status", "jobs_queued_at"} <= indexes


def test_newer_schema_is_refused(db):
    JobStore(db).close()
    with sqlite3.connect(db) as conn:
        conn.execute(f"PRAGMA user_version={len(MIGRATIONS) + 1}")
    with pytest.raises(StoreError, match="newer"):
        JobStore(db)


def test_data_dir_created(tmp_path):
    path = tmp_path / "a" / "b" / "monitor.sqlite3"
    JobStore(str(path)).close()
    assert path.is_file()


def test_data_dir_under_a_regular_file_is_a_store_error(tmp_path):
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("x")
    with pytest.raises(StoreError) as info:
        JobStore(str(blocker / "data" / "monitor.sqlite3"))
    assert str(blocker) in str(info.value) and "MONITOR_DATA_DIR" in str(info.value)


def test_data_dir_that_is_a_file_is_a_store_error(tmp_path):
    blocker = tmp_path / "data"
    blocker.write_text("x")
    with pytest.raises(StoreError, match="data"):
        JobStore(str(blocker / "monitor.sqlite3"))


def test_database_path_that_is_a_directory_is_a_store_error(tmp_path):
    (tmp_path / "monitor.sqlite3").mkdir()
    with pytest.raises(StoreError, match="not a regular file"):
        JobStore(str(tmp_path / "monitor.sqlite3"))


def test_read_only_data_dir_is_a_store_error(tmp_path):
    data = tmp_path / "ro"
    data.mkdir()
    data.chmod(stat.S_IRUSR | stat.S_IXUSR)
    try:
        if os.access(data, os.W_OK):
            pytest.skip("running as root: chmod does not make a directory read-only")
        with pytest.raises(StoreError, match="not writable"):
            JobStore(str(data / "monitor.sqlite3"))
    finally:
        data.chmod(stat.S_IRWXU)


# --- events -----------------------------------------------------------------------------------

def test_emit_since_last_seq_and_on_event(store):
    seen = []
    bus = EventBus(store, on_event=seen.append)
    assert bus.last_seq() == 0 and bus.since(0) == []
    first = bus.emit("job.queued", "queued a", data={"job_id": "a"})
    bus.on_event = None  # may be reassigned after construction
    bus.emit("comfy.disconnected", "lost ComfyUI", severity="warning")
    bus.on_event = seen.append
    third = bus.emit("job.failed", "a failed", severity="error")
    assert [e["seq"] for e in seen] == [first["seq"], third["seq"]]
    assert seen[0] == first
    assert set(first) == {"seq", "ts", "kind", "severity", "message", "data"}
    assert is_utc_iso(first["ts"]) and first["data"] == {"job_id": "a"}
    assert bus.since(0) == [first, bus.since(first["seq"])[0], third]
    assert [e["seq"] for e in bus.since(first["seq"])] == [first["seq"] + 1, third["seq"]]
    assert [e["seq"] for e in bus.since(0, limit=1)] == [first["seq"]]
    assert bus.since(third["seq"]) == []
    assert bus.last_seq() == third["seq"]


def test_emit_validates_severity_and_survives_a_broken_subscriber(store):
    def broken(event):
        raise RuntimeError("subscriber bug")

    bus = EventBus(store, on_event=broken)
    with pytest.raises(ValueError):
        bus.emit("job.queued", "x", severity="fatal")
    assert bus.emit("anything.goes", "x")["seq"] == 1


def test_seq_is_monotonic_across_trimming_and_reopen(db):
    store = JobStore(db)
    bus = EventBus(store, keep=5)
    seqs = [bus.emit("job.queued", f"e{i}")["seq"] for i in range(12)]
    assert seqs == list(range(1, 13))
    kept = bus.since(0)
    assert [e["seq"] for e in kept] == list(range(8, 13))
    # A cursor is a seq, not a list index: it stays valid after trimming.
    assert [e["seq"] for e in bus.since(9)] == [10, 11, 12]
    assert [e["seq"] for e in bus.since(3)] == list(range(8, 13))
    store.close()

    store = JobStore(db)
    bus = EventBus(store, keep=5)
    assert bus.last_seq() == 12
    assert bus.emit("job.started", "after reopen")["seq"] == 13
    store.close()


def test_seq_not_reused_after_every_row_is_deleted(store):
    bus = EventBus(store)
    bus.emit("a", "a")
    bus.emit("b", "b")
    with store._write() as conn:
        conn.execute("DELETE FROM events")
    assert bus.last_seq() == 2
    assert bus.emit("c", "c")["seq"] == 3


def test_trim_is_batched_and_bounded(store):
    bus = EventBus(store, keep=100)  # trims every 10 emits
    for i in range(1000):
        bus.emit("job.queued", str(i))
        assert len(bus.since(0, limit=10_000)) < 110
    assert bus.last_seq() == 1000


# --- crash safety -----------------------------------------------------------------------------

WRITER = textwrap.dedent("""
    import sys
    sys.path.insert(0, sys.argv[2])
    from monitor.jobs import EventBus, JobStore
    store = JobStore(sys.argv[1])
    bus = EventBus(store, keep=1000)
    i = 0
    while True:
        store.create({"id": f"job-{i}", "params": {"i": i, "pad": "x" * 500}})
        store.update(f"job-{i}", status="running", started_at="2026-01-01T00:00:00+00:00")
        bus.emit("job.started", f"job-{i}", data={"i": i})
        print(i, flush=True)
        i += 1
""")


def test_kill_9_mid_burst_leaves_a_consistent_database(db):
    JobStore(db).close()
    proc = subprocess.Popen([sys.executable, "-c", WRITER, db, ROOT], stdout=subprocess.PIPE, text=True)
    committed = -1
    try:
        while committed < 300:
            line = proc.stdout.readline()
            assert line, "writer exited early"
            committed = int(line)
    finally:
        proc.kill()  # SIGKILL: no cleanup, no checkpoint, possibly mid-transaction
        proc.wait()
        proc.stdout.close()
    assert proc.returncode == -9
    assert os.path.getsize(db + "-wal") > 0  # recovery has to replay a WAL left behind by the crash

    store = JobStore(db)
    assert store._query("PRAGMA integrity_check")[0][0] == "ok"
    for i in range(committed + 1):
        record = store.get(f"job-{i}")
        assert record is not None and record["status"] == "running" and record["params"]["i"] == i
    bus = EventBus(store)
    events = bus.since(0, limit=100_000)
    seqs = [e["seq"] for e in events]
    assert seqs == sorted(seqs) and len(seqs) >= committed + 1
    assert bus.emit("job.queued", "after crash")["seq"] > seqs[-1]
    store.close()


def test_wal_checkpoints_run_in_a_worker_thread_not_in_the_writer(tmp_path):
    import time
    store = JobStore(tmp_path / "db.sqlite3")
    try:
        assert store._query("PRAGMA wal_autocheckpoint")[0][0] == 0   # commits never checkpoint themselves
        graph = {"1": {"class_type": "SaveImage", "inputs": {"pad": "x" * 1_000_000}}}
        for i in range(12):   # 12 MB: past the threshold that starts a checkpoint
            store.create({"id": f"j{i}", "status": "queued", "graph": graph})
        # A checkpoint copies what the WAL held when it began; writes that landed meanwhile wait for the
        # next commit to start another (on a loaded machine all 12 may land during the first).
        deadline = time.time() + 30
        while os.path.getsize(tmp_path / "db.sqlite3") < 10_000_000 and time.time() < deadline:
            time.sleep(0.05)
            if not store._checkpointing:
                store.update("j0", node_done=1)
        assert os.path.getsize(tmp_path / "db.sqlite3") >= 10_000_000, "the WAL was copied into the database"
    finally:
        store.close()
    assert not store._checkpointing


def test_graphs_move_to_their_own_table_and_a_status_change_does_not_rewrite_them(tmp_path):
    path = schema_1_database(tmp_path / "old.sqlite3", "INSERT INTO jobs (id, status, queued_at, graph) VALUES "
                             "('old', 'queued', '2026-01-01T00:00:00+00:00', '{\"1\": {\"class_type\": \"SaveImage\"}}')")
    store = JobStore(path)
    try:
        assert store.get("old")["graph"] == {"1": {"class_type": "SaveImage"}}
        assert store._query("SELECT graph, graph_bytes FROM jobs")[0][:] == (None, len('{"1": {"class_type": "SaveImage"}}'))
        big = {"1": {"class_type": "SaveImage", "inputs": {"pad": "x" * 2_000_000}}}
        store.create({"id": "big", "status": "queued", "graph": big})
        pages = store._query("PRAGMA page_count")[0][0]
        for _ in range(20):   # would add 2 MB of rewritten row each time with the graph in the row
            store.update("big", node_done=1)
        store._query("PRAGMA wal_checkpoint(TRUNCATE)")
        assert store._query("PRAGMA page_count")[0][0] - pages < 100
        assert store.get("big")["graph"] == big and store.active()[0]["graph"] is not None
    finally:
        store.close()
