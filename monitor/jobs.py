"""Durable records: the job store and the event log, one SQLite file in WAL mode, migrated on open."""
from __future__ import annotations

import contextlib
import datetime as _dt
import json
import logging
import os
import sqlite3
import threading
import time

from .timeutil import UTC, epoch_from_iso, iso_from_epoch, utcnow_iso

log = logging.getLogger(__name__)

STATUSES = ("queued", "running", "completed", "failed", "interrupted", "cancelled", "stalled")
TERMINAL = frozenset({"completed", "failed", "interrupted", "cancelled"})
ACTIVE = frozenset({"queued", "running"})
FINISHED = TERMINAL | {"stalled"}
SEVERITIES = ("info", "warning", "error")

# Job dict fields in API order, with their defaults. JSON_FIELDS are stored as JSON text.
JOB_DEFAULTS = {
    "id": None, "host": None, "routed": None, "source": "local", "workflow_id": None, "workflow_name": None,
    "status": "queued", "status_reason": None, "queued_at": None, "started_at": None, "finished_at": None,
    "duration_s": None, "params": {}, "seeds": [], "input_image": None, "output_dir": None, "job_folder": None,
    "outputs": [], "error": None, "prompt_excerpt": None, "node_total": None, "node_done": None,
    "number": None, "client_id": None, "graph": None, "outputs_to_execute": None, "cached_nodes": None,
    "requeued_from": None,
}
JSON_FIELDS = frozenset({"params", "seeds", "outputs", "error", "graph", "outputs_to_execute", "cached_nodes"})
TIME_FIELDS = frozenset({"queued_at", "started_at", "finished_at"})

# Append only: entry N (1-based) moves the schema from user_version N-1 to N.
MIGRATIONS: list[tuple[str, ...]] = [
    (
        """CREATE TABLE jobs (
            id TEXT PRIMARY KEY,
            source TEXT NOT NULL DEFAULT 'local',
            workflow_id TEXT, workflow_name TEXT,
            status TEXT NOT NULL, status_reason TEXT,
            queued_at TEXT NOT NULL, started_at TEXT, finished_at TEXT, duration_s REAL,
            params TEXT, seeds TEXT, input_image TEXT, output_dir TEXT, job_folder TEXT,
            outputs TEXT, error TEXT, prompt_excerpt TEXT, node_total INTEGER, node_done INTEGER,
            number REAL, client_id TEXT, graph TEXT, outputs_to_execute TEXT)""",
        "CREATE INDEX jobs_status ON jobs (status)",
        "CREATE INDEX jobs_queued_at ON jobs (queued_at)",
        """CREATE TABLE events (
            seq INTEGER PRIMARY KEY AUTOINCREMENT,
            ts TEXT NOT NULL, kind TEXT NOT NULL, severity TEXT NOT NULL,
            message TEXT NOT NULL, data TEXT)""",
    ),
    # What a restarted monitor needs to resume a running job's progress: the nodes ComfyUI said it would
    # not run (None = never heard; [] = none cached).
    ("ALTER TABLE jobs ADD COLUMN cached_nodes TEXT",),
    # Retention: a graph's stored size, so that old graphs can be dropped to a budget without reading them.
    ("ALTER TABLE jobs ADD COLUMN graph_bytes INTEGER",
     "UPDATE jobs SET graph_bytes = length(CAST(graph AS BLOB)) WHERE graph IS NOT NULL"),
    # Graphs in a table of their own: SQLite rewrites a whole row on any update, so a status change of a
    # job with a megabyte graph rewrote the megabyte. jobs.graph stays, always NULL.
    ("CREATE TABLE job_graphs (id TEXT PRIMARY KEY, graph TEXT NOT NULL)",
     "INSERT INTO job_graphs (id, graph) SELECT id, graph FROM jobs WHERE graph IS NOT NULL",
     "UPDATE jobs SET graph = NULL WHERE graph IS NOT NULL"),
    # Fleet: the ComfyUI host a job ran on. Older rows get the first configured host at startup
    # (JobStore.assign_host), since the schema cannot know its name.
    # `routed`: why the fleet sent a submission to that host.
    ("ALTER TABLE jobs ADD COLUMN host TEXT", "ALTER TABLE jobs ADD COLUMN routed TEXT"),
    # Learned durations: how long each node of a completed run took (cached ones 0 s, marked), with what
    # drives its cost, for estimates (estimate.py). Requeue: the job a new one was made from. History pages
    # sort on when a job finished: indexed, with and without a status filter (NOT IN keeps the planner on
    # the time index, see JobStore.history_page).
    ("""CREATE TABLE node_timings (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            job_id TEXT NOT NULL, host TEXT, node_id TEXT NOT NULL, class_type TEXT NOT NULL,
            cost TEXT NOT NULL, signature TEXT NOT NULL, steps REAL, pixels REAL,
            seconds REAL NOT NULL, cached INTEGER NOT NULL DEFAULT 0, recorded_at TEXT NOT NULL)""",
     "ALTER TABLE jobs ADD COLUMN requeued_from TEXT",
     "CREATE INDEX jobs_finished_order ON jobs (COALESCE(finished_at, queued_at))",
     "CREATE INDEX jobs_status_finished_order ON jobs (status, COALESCE(finished_at, queued_at))"),
]


CHECKPOINT_WAL_BYTES = 8 * 1024 * 1024     # a checkpoint starts in a worker thread once the WAL is this big
CHECKPOINT_WAL_MAX = 128 * 1024 * 1024    # past this, the writer checkpoints itself


def _start_os_thread(target) -> None:
    """An OS thread even under gevent's monkey patching (a greenlet would hold the loop while in C)."""
    try:
        from gevent import monkey
        start = monkey.get_original("_thread", "start_new_thread")
    except ImportError:
        import _thread
        start = _thread.start_new_thread
    start(target, ())


class StoreError(RuntimeError):
    """The database cannot be opened or written; the message names the path and the fix."""


class RawJSON(str):
    """A value already serialised (e.g. a large graph the caller also posts): stored as is."""


def _dumps(value) -> str:
    if isinstance(value, RawJSON):
        return str(value)
    return json.dumps(value, separators=(",", ":"), default=str)


def _timestamp(value) -> str | None:
    """Normalise to UTC ISO with +00:00, so that timestamps sort as text."""
    if value is None or value == "":
        return None
    if isinstance(value, (int, float)):
        return iso_from_epoch(float(value))
    parsed = _dt.datetime.fromisoformat(value)  # ValueError on garbage
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return parsed.astimezone(UTC).isoformat()


def _check_status(status) -> None:
    if status not in STATUSES:
        raise ValueError(f"unknown job status {status!r}; expected one of {', '.join(STATUSES)}")


def _row_to_job(row: sqlite3.Row, names=tuple(JOB_DEFAULTS)) -> dict:
    job = {}
    for name in names:
        value = row[name]
        job[name] = json.loads(value) if name in JSON_FIELDS and value is not None else value
    return job


# Every column but the graph (often tens of KB of JSON): for lists that never show it.
_BRIEF_NAMES = tuple(n for n in JOB_DEFAULTS if n != "graph")
_BRIEF_COLUMNS = ", ".join(_BRIEF_NAMES)


class JobStore:
    def __init__(self, path):
        self.path = os.path.abspath(os.fspath(path))
        self._lock = threading.RLock()  # looked up at call time, so gevent's when patched
        self._generation = 0            # bumped by every write: a cached read is valid while unchanged
        self._active_brief: tuple[int, list[dict]] | None = None
        self._checkpointing = False   # a WAL checkpoint is running in an OS thread
        self._conn = self._open()

    # --- connection -----------------------------------------------------------------------------
    def _open(self) -> sqlite3.Connection:
        directory = os.path.dirname(self.path)
        hint = "set MONITOR_DATA_DIR (or --data-dir) to a writable directory"
        try:
            os.makedirs(directory, exist_ok=True)
        except OSError as exc:
            raise StoreError(f"cannot create data directory {directory}: {exc.strerror or exc}; {hint}") from exc
        if not os.access(directory, os.W_OK | os.X_OK):
            raise StoreError(f"data directory {directory} is not writable; {hint}")
        if os.path.exists(self.path) and not os.path.isfile(self.path):
            raise StoreError(f"job database {self.path} exists but is not a regular file; remove it or {hint}")
        try:
            conn = sqlite3.connect(self.path, timeout=5.0, isolation_level=None, check_same_thread=False)
            conn.row_factory = sqlite3.Row
            conn.execute("PRAGMA busy_timeout=5000")
            # A new database gives pages freed by retention back to the file system (incremental_vacuum in
            # prune_step); this only takes effect before the first table exists.
            conn.execute("PRAGMA auto_vacuum=INCREMENTAL")
            mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            if mode.lower() != "wal":
                raise sqlite3.OperationalError(f"could not enable WAL mode (got {mode})")
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.execute(f"PRAGMA journal_size_limit={64 * 1024 * 1024}")   # the WAL file shrinks back
            # Checkpoints (copying the WAL into the database, with fsyncs) run in a worker thread rather than
            # in the commit of whichever greenlet wrote last (see _after_commit).
            conn.execute("PRAGMA wal_autocheckpoint=0")
            self._migrate(conn)
        except sqlite3.Error as exc:
            raise StoreError(f"cannot open job database {self.path}: {exc}; check that the file and "
                             f"its directory are writable, or {hint}") from exc
        return conn

    @staticmethod
    def _migrate(conn: sqlite3.Connection) -> None:
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        if version > len(MIGRATIONS):
            raise sqlite3.DatabaseError(f"schema version {version} is newer than this app "
                                        f"(knows {len(MIGRATIONS)}); upgrade the app")
        for number in range(version + 1, len(MIGRATIONS) + 1):
            conn.execute("BEGIN IMMEDIATE")
            try:
                for statement in MIGRATIONS[number - 1]:
                    conn.execute(statement)
                conn.execute(f"PRAGMA user_version={number}")
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            log.info("job database migrated to schema version %d", number)

    @contextlib.contextmanager
    def _write(self):
        """One short write transaction under the store lock."""
        with self._lock:
            self._generation += 1
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                yield self._conn
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
            finally:
                self._generation += 1
            self._conn.execute("COMMIT")
            self._after_commit()

    def _query(self, sql: str, params=()) -> list[sqlite3.Row]:
        with self._lock:
            return self._conn.execute(sql, params).fetchall()

    def close(self) -> None:
        with self._lock:
            for _ in range(1000):   # a checkpoint still copying: let it finish (at most 10 s)
                if not self._checkpointing:
                    break
                time.sleep(0.01)
            self._conn.close()

    def _after_commit(self) -> None:
        try:
            wal = os.path.getsize(self.path + "-wal")
        except OSError:
            return
        if wal < CHECKPOINT_WAL_BYTES:
            return
        if not self._checkpointing:
            self._checkpointing = True   # cleared by the worker itself
            _start_os_thread(self._checkpoint)
        elif wal > CHECKPOINT_WAL_MAX:
            # Writes outpace the worker: copy here, so that the WAL cannot grow without bound.
            self._conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()

    def _checkpoint(self) -> None:
        """PASSIVE: never waits for or blocks a writer. Its own connection: sqlite3 releases the GIL
        while it copies and syncs, so the event loop runs meanwhile."""
        try:
            conn = sqlite3.connect(self.path, timeout=5.0, isolation_level=None)
            try:
                conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
            finally:
                conn.close()
        except sqlite3.Error as exc:
            log.warning("WAL checkpoint failed (tried again after more writes): %s", exc)
        finally:
            self._checkpointing = False

    # --- jobs -----------------------------------------------------------------------------------
    @staticmethod
    def _check_fields(fields: dict) -> None:
        unknown = set(fields) - set(JOB_DEFAULTS)
        if unknown:
            raise ValueError(f"unknown job fields: {', '.join(sorted(unknown))}")

    @staticmethod
    def _settle(job: dict, explicit: dict) -> None:
        """Validate the merged record and derive finished_at / duration_s for terminal states."""
        _check_status(job["status"])
        if job["status"] == "stalled" and not job["status_reason"]:
            raise ValueError("status 'stalled' requires a status_reason")
        for name in TIME_FIELDS:
            job[name] = _timestamp(job[name])
        if job["status"] in ACTIVE:
            job["finished_at"] = job["duration_s"] = None
        else:  # terminal, or stalled: when the monitor decided
            if not job["finished_at"]:
                job["finished_at"] = utcnow_iso()
            if job["started_at"] and "duration_s" not in explicit:
                elapsed = epoch_from_iso(job["finished_at"]) - epoch_from_iso(job["started_at"])
                job["duration_s"] = round(max(0.0, elapsed), 3)

    @staticmethod
    def _columns(job: dict) -> tuple[dict, str | None]:
        """The jobs table's columns for these fields, and the graph's JSON (serialised once) for job_graphs
        (_put_graph); None when the fields hold no graph or a null one."""
        columns = {k: (None if v is None else _dumps(v)) if k in JSON_FIELDS else v
                   for k, v in job.items() if k != "graph"}
        graph_json = None if job.get("graph") is None else _dumps(job["graph"])
        if "graph" in job:
            columns["graph_bytes"] = None if graph_json is None else len(graph_json.encode())
        return columns, graph_json

    @staticmethod
    def _put_graph(conn, job_id, graph_json: str | None) -> None:
        if graph_json is None:
            conn.execute("DELETE FROM job_graphs WHERE id = ?", (job_id,))
        else:
            conn.execute("INSERT OR REPLACE INTO job_graphs (id, graph) VALUES (?, ?)", (job_id, graph_json))

    def _with_graphs(self, jobs: list[dict]) -> list[dict]:
        """Fill in each job's `graph` from job_graphs (one query per 500 jobs)."""
        for start in range(0, len(jobs), 500):
            chunk = jobs[start:start + 500]
            rows = self._query(f"SELECT id, graph FROM job_graphs WHERE id IN ({', '.join('?' for _ in chunk)})",
                               tuple(j["id"] for j in chunk))
            graphs = {r["id"]: r["graph"] for r in rows}
            for job in chunk:
                raw = graphs.get(job["id"])
                job["graph"] = json.loads(raw) if raw is not None else None
        return jobs

    def create(self, job: dict) -> dict:
        """Insert a new job; ValueError on unknown fields, a bad status or an existing id."""
        self._check_fields(job)
        if not job.get("id"):
            raise ValueError("a job needs an id")
        record = {**JOB_DEFAULTS, **job}
        for name in ("params", "seeds", "outputs"):  # fresh containers, never the shared defaults
            if name not in job:
                record[name] = type(JOB_DEFAULTS[name])()
        record["queued_at"] = record["queued_at"] or utcnow_iso()
        self._settle(record, job)
        columns, graph_json = self._columns(record)
        sql = (f"INSERT INTO jobs ({', '.join(columns)}) "
               f"VALUES ({', '.join('?' for _ in columns)})")
        try:
            with self._write() as conn:
                conn.execute(sql, tuple(columns.values()))
                if graph_json is not None:
                    self._put_graph(conn, record["id"], graph_json)
        except sqlite3.IntegrityError as exc:
            raise ValueError(f"job {record['id']!r} already exists") from exc
        record.pop("graph", None)   # as update(): without the graph, which the caller has
        return json.loads(json.dumps(record, default=str))   # as stored (JSON round-tripped), same shape as get(graph=False)

    def update(self, job_id, **fields) -> dict | None:
        """Change some fields; None if the job is unknown. Finished jobs keep their status (see below).
        Returns the record without its graph: neither read nor rewritten unless `graph` is among the
        fields (a graph can be megabytes; a running job is updated on every node output)."""
        return self._change(job_id, None, fields)[1]

    def transition(self, job_id, allowed_from, **fields) -> dict | None:
        """Change the job only if its status, read in the same write transaction, is one of
        `allowed_from`: the new record, or None when the job is unknown or in another state. Callers
        that saw a possibly stale copy use this, so that a transition is applied once, from current state."""
        applied, job = self._change(job_id, frozenset(allowed_from), fields)
        return job if applied else None

    def _change(self, job_id, allowed_from, fields) -> tuple[bool, dict | None]:
        self._check_fields(fields)
        if "id" in fields:
            raise ValueError("a job's id cannot change")
        if "status" in fields:
            _check_status(fields["status"])
        with self._write() as conn:
            row = conn.execute(f"SELECT {_BRIEF_COLUMNS} FROM jobs WHERE id = ?", (job_id,)).fetchone()
            if row is None:
                return False, None
            current = _row_to_job(row, _BRIEF_NAMES)
            if allowed_from is not None and current["status"] not in allowed_from:
                return False, current
            new_status = fields.get("status", current["status"])
            # Terminal states are sticky; a stalled job may still be settled (or re-attached) later.
            if current["status"] in TERMINAL and new_status != current["status"]:
                log.warning("job %s is %s; refusing to change it to %s", job_id, current["status"], new_status)
                return False, current
            record = {**current, **fields}
            if current["status"] == "stalled" and new_status != "stalled":
                if "status_reason" not in fields:
                    record["status_reason"] = None
                if "finished_at" not in fields:  # the stall's decision time is not when it ended
                    record["finished_at"] = None
            started = _timestamp(fields.get("started_at"))
            if started and current["started_at"] and epoch_from_iso(current["started_at"]) < epoch_from_iso(started):
                record["started_at"] = current["started_at"]  # a start time never moves forward
            self._settle(record, fields)
            changed = {k: v for k, v in record.items() if k != "id" and (k in fields or v != current.get(k))}
            if changed:
                columns, graph_json = self._columns(changed)
                assignments = ", ".join(f"{name} = ?" for name in columns)
                conn.execute(f"UPDATE jobs SET {assignments} WHERE id = ?", (*columns.values(), job_id))
            if "graph" in changed:
                self._put_graph(conn, job_id, graph_json)
        record.pop("graph", None)
        return True, json.loads(_dumps(record))   # as get() would return it (JSON round trip)

    def status(self, job_id) -> str | None:
        """Just the status (None if unknown): what per-message checks need, without parsing a record."""
        rows = self._query("SELECT status FROM jobs WHERE id = ?", (job_id,))
        return rows[0]["status"] if rows else None

    def get(self, job_id, graph: bool = True) -> dict | None:
        if not graph:
            rows = self._query(f"SELECT {_BRIEF_COLUMNS} FROM jobs WHERE id = ?", (job_id,))
            return _row_to_job(rows[0], _BRIEF_NAMES) if rows else None
        job = self.get(job_id, graph=False)
        return self._with_graphs([job])[0] if job else None

    def assign_host(self, name: str) -> int:
        """Give jobs recorded before the fleet (no host) to `name`, the first configured host."""
        with self._write() as conn:
            return conn.execute("UPDATE jobs SET host = ? WHERE host IS NULL", (name,)).rowcount

    @property
    def generation(self) -> int:
        """Bumped by every write: what a cache of this store's reads is keyed on."""
        return self._generation

    def active(self, graph: bool = True, shared: bool = False) -> list[dict]:
        """Queued and running jobs: running first, then queued by ComfyUI's number, then queued_at.
        graph=False leaves the `graph` key out (neither read nor parsed): for lists and status checks.
        shared=True (with graph=False): the cached dicts themselves, not copies, for callers that only read."""
        if graph:
            rows = self._query(
                f"SELECT {_BRIEF_COLUMNS} FROM jobs WHERE status IN ('running', 'queued') "
                "ORDER BY status = 'running' DESC, number IS NULL, number, queued_at, rowid")
            return self._with_graphs([_row_to_job(r, _BRIEF_NAMES) for r in rows])
        # The brief list is what the queue API, the cards and the reconciler read, often and unchanged
        # between writes: parsed once per store generation, handed out as shallow copies.
        with self._lock:
            cached = self._active_brief
            if cached is None or cached[0] != self._generation:
                rows = self._conn.execute(
                    f"SELECT {_BRIEF_COLUMNS} FROM jobs WHERE status IN ('running', 'queued') "
                    "ORDER BY status = 'running' DESC, number IS NULL, number, queued_at, rowid").fetchall()
                cached = self._active_brief = (self._generation, [_row_to_job(r, _BRIEF_NAMES) for r in rows])
        return list(cached[1]) if shared else [dict(job) for job in cached[1]]

    def history(self, limit=50, status=None, graph: bool = True) -> list[dict]:
        """Finished jobs (terminal or stalled), newest first; graph=False as for active()."""
        limit = max(0, int(limit))
        if status is None:   # NOT IN: walks the time index (see history_page)
            where, params = "status NOT IN ('queued', 'running')", ()
        elif status in FINISHED:
            where, params = "status = ?", (status,)
        else:
            raise ValueError(f"history status must be one of {', '.join(sorted(FINISHED))}, got {status!r}")
        rows = self._query(
            f"SELECT {_BRIEF_COLUMNS} FROM jobs WHERE {where} "
            "ORDER BY COALESCE(finished_at, queued_at) DESC, rowid DESC LIMIT ?", (*params, limit))
        jobs = [_row_to_job(r, _BRIEF_NAMES) for r in rows]
        return self._with_graphs(jobs) if graph else jobs

    def history_versions(self, limit=50, status=None, before: str | None = None) -> tuple[list[tuple], str | None]:
        """One page of finished jobs, newest first, after the cursor `before` (from the previous page), as
        (id, version) pairs (the version changes whenever what a row shows does), and the next page's cursor
        or None. Keyset paging on an index: as fast on the thousandth page as on the first; reads no JSON.
        ValueError for a bad status or cursor."""
        limit = max(1, int(limit))
        if status is None:
            # Not "status IN (finished)": that would pick the status index and sort every finished row.
            where, params = "status NOT IN ('queued', 'running')", []
        elif status in FINISHED:
            where, params = "status = ?", [status]
        else:
            raise ValueError(f"history status must be one of {', '.join(sorted(FINISHED))}, got {status!r}")
        if before:
            at, sep, rowid = before.rpartition("|")
            if not sep or not rowid.isdigit():
                raise ValueError(f"bad history cursor {before[:60]!r}")
            where += " AND (COALESCE(finished_at, queued_at) < ? OR (COALESCE(finished_at, queued_at) = ? AND rowid < ?))"
            params += [at, at, int(rowid)]
        rows = self._query(
            "SELECT id, status, finished_at, started_at, duration_s, status_reason, length(outputs), length(error), "
            "host, workflow_name, source, rowid AS row_id, COALESCE(finished_at, queued_at) AS at FROM jobs "
            f"WHERE {where} ORDER BY COALESCE(finished_at, queued_at) DESC, rowid DESC LIMIT ?", (*params, limit + 1))
        more = len(rows) > limit
        rows = rows[:limit]
        cursor = f"{rows[-1]['at']}|{rows[-1]['row_id']}" if more and rows else None
        return [(r["id"], tuple(r)[1:11]) for r in rows], cursor

    def history_page(self, limit=50, status=None, before: str | None = None) -> tuple[list[dict], str | None]:
        """As history_versions, with the job records (no graphs)."""
        versions, cursor = self.history_versions(limit, status, before)
        jobs = [self.get(job_id, graph=False) for job_id, _ in versions]
        return [j for j in jobs if j is not None], cursor

    # --- learned durations ----------------------------------------------------------------------
    TIMINGS_KEEP = 200_000   # node timing rows kept (newest); a few hundred thousand is a few tens of MB

    def record_timings(self, job_id: str, rows: list[dict]) -> None:
        if not rows:
            return
        now = utcnow_iso()
        with self._write() as conn:
            conn.executemany(
                "INSERT INTO node_timings (job_id, host, node_id, class_type, cost, signature, steps, pixels, "
                "seconds, cached, recorded_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [(job_id, r["host"], r["node_id"], r["class_type"], r["cost"], r["signature"], r.get("steps"),
                  r.get("pixels"), r["seconds"], 1 if r["cached"] else 0, now) for r in rows])
            last = conn.execute("SELECT MAX(id) FROM node_timings").fetchone()[0] or 0
            if last > self.TIMINGS_KEEP:
                conn.execute("DELETE FROM node_timings WHERE id <= ?", (last - self.TIMINGS_KEEP,))

    def timings(self, limit: int = 50_000) -> list[dict]:
        """The newest recorded node timings, oldest first (what an Estimator is loaded with)."""
        rows = self._query("SELECT * FROM (SELECT job_id, host, node_id, class_type, cost, signature, steps, "
                           "pixels, seconds, cached, id FROM node_timings ORDER BY id DESC LIMIT ?) ORDER BY id",
                           (int(limit),))
        return [dict(r) for r in rows]


VACUUM_PAGES = 512    # pages (4 KiB) handed back per prune step
BATCH_BYTES = 4 * 1024 * 1024   # graphs dropped per prune step, at most (one graph always)
_FINISHED_SQL = "status IN ({})".format(", ".join(f"'{s}'" for s in sorted(FINISHED)))
_AGE_SQL = "COALESCE(finished_at, queued_at)"


def prune_step(store: "JobStore", *, keep_days: float, keep_jobs: int, graph_budget: int, batch: int = 200,
               now: float | None = None) -> dict:
    """One small batch of retention work on finished jobs; call again while it reports work done.
    Jobs older than `keep_days`, and the oldest beyond `graph_budget` bytes of graphs, lose their graph
    (the summary stays); beyond `keep_jobs` finished jobs, the oldest are deleted."""
    import time as _time
    cutoff = iso_from_epoch((now if now is not None else _time.time()) - keep_days * 86400.0)
    done = {"deleted": 0, "graphs_dropped": 0}
    excess = store._query(f"SELECT COUNT(*) AS n FROM jobs WHERE {_FINISHED_SQL}")[0]["n"] - keep_jobs
    if excess > 0:
        with store._write() as conn:
            ids = [r[0] for r in conn.execute(f"SELECT id FROM jobs WHERE {_FINISHED_SQL} "
                                              f"ORDER BY {_AGE_SQL}, rowid LIMIT ?", (min(batch, excess),))]
            marks = ", ".join("?" for _ in ids)
            conn.execute(f"DELETE FROM job_graphs WHERE id IN ({marks})", ids)
            done["deleted"] = conn.execute(f"DELETE FROM jobs WHERE id IN ({marks})", ids).rowcount
        return done
    old, size = [], 0
    for row in store._query(f"SELECT id, graph_bytes FROM jobs WHERE {_FINISHED_SQL} AND graph_bytes IS NOT NULL "
                            f"AND {_AGE_SQL} < ? LIMIT ?", (cutoff, batch)):
        old.append(row["id"])
        size += row["graph_bytes"] or 0
        if size >= BATCH_BYTES:   # freeing megabytes of pages is what takes time in one transaction
            break
    if not old:
        total = 0
        for row in store._query(f"SELECT id, graph_bytes FROM jobs WHERE {_FINISHED_SQL} AND graph_bytes IS NOT NULL "
                                f"ORDER BY {_AGE_SQL} DESC, rowid DESC"):
            total += row["graph_bytes"] or 0
            if total > graph_budget:
                old.append(row["id"])
                size += row["graph_bytes"] or 0
                if len(old) >= batch or size >= BATCH_BYTES:
                    break
    if old:
        with store._write() as conn:
            marks = ", ".join("?" for _ in old)
            conn.execute(f"DELETE FROM job_graphs WHERE id IN ({marks})", old)
            done["graphs_dropped"] = conn.execute(
                f"UPDATE jobs SET graph_bytes = NULL WHERE id IN ({marks})", old).rowcount
        return done
    # Nothing left to drop: hand freed pages back, a few megabytes at a time (a no-op unless the database
    # was created with auto_vacuum=INCREMENTAL, as new ones are).
    free = store._query("PRAGMA freelist_count")[0][0]
    if free and store._query("PRAGMA auto_vacuum")[0][0] == 2:
        with store._lock:
            # executescript steps the pragma to the end (execute() would free a single page).
            store._conn.executescript(f"PRAGMA incremental_vacuum({min(free, VACUUM_PAGES)});")
        done["pages_freed"] = max(0, free - store._query("PRAGMA freelist_count")[0][0])
    return done


class EventBus:
    """Append-only event log with a monotonic seq (never reused), trimmed to the last `keep` rows."""

    def __init__(self, store: JobStore, keep=10000, on_event=None):
        if int(keep) < 1:
            raise ValueError("keep must be at least 1")
        self.store = store
        self.keep = int(keep)
        self.on_event = on_event
        # Trim in batches: at most keep + trim_every - 1 rows are ever kept.
        self._trim_every = max(1, min(100, self.keep // 10))
        self._since_trim = 0
        self._trim(self.last_seq())

    def emit(self, kind, message, severity="info", data=None) -> dict:
        if severity not in SEVERITIES:
            raise ValueError(f"severity must be one of {', '.join(SEVERITIES)}, got {severity!r}")
        event = {"seq": None, "ts": utcnow_iso(), "kind": str(kind), "severity": severity,
                 "message": str(message), "data": data if data is not None else {}}
        with self.store._write() as conn:
            cursor = conn.execute(
                "INSERT INTO events (ts, kind, severity, message, data) VALUES (?, ?, ?, ?, ?)",
                (event["ts"], event["kind"], severity, event["message"], _dumps(event["data"])))
            event["seq"] = cursor.lastrowid
        self._since_trim += 1
        if self._since_trim >= self._trim_every:
            self._trim(event["seq"])
        callback = self.on_event
        if callback is not None:
            try:
                callback(event)
            except Exception:  # a broken subscriber must not break the emitter (the listener)
                log.exception("on_event failed for event %s", event["seq"])
        return event

    def _trim(self, last: int) -> None:
        self._since_trim = 0
        if last > self.keep:
            with self.store._write() as conn:
                conn.execute("DELETE FROM events WHERE seq <= ?", (last - self.keep,))

    def since(self, seq, limit=500) -> list[dict]:
        """Events with seq greater than the cursor, oldest first."""
        rows = self.store._query(
            "SELECT seq, ts, kind, severity, message, data FROM events WHERE seq > ? ORDER BY seq LIMIT ?",
            (int(seq or 0), max(0, int(limit))))
        return [{"seq": r["seq"], "ts": r["ts"], "kind": r["kind"], "severity": r["severity"],
                 "message": r["message"], "data": json.loads(r["data"]) if r["data"] else {}} for r in rows]

    def last_seq(self) -> int:
        """The last seq ever issued (kept by SQLite's AUTOINCREMENT even when its row was trimmed)."""
        rows = self.store._query("SELECT seq FROM sqlite_sequence WHERE name = 'events'")
        return int(rows[0]["seq"]) if rows else 0
