"""Durable records: the job store and the event log, in one SQLite file in WAL mode or in PostgreSQL
(DATABASE_URL, through db.py), migrated on open."""
from __future__ import annotations

import collections
import contextlib
import datetime as _dt
import json
import logging
import os
import sqlite3
import threading
import time

from . import db
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

# Append only: entry N (1-based) moves the schema from version N-1 to N (SQLite: PRAGMA user_version;
# PostgreSQL: the schema_version table). Written once, in SQLite's dialect: db.pg_ddl translates types and
# gives PostgreSQL tables an explicit `rowid`, so plain SQL with `?` placeholders serves both.
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
    # What must survive a restart besides jobs (the ComfyUI client ids) when the database is PostgreSQL: a
    # redeployed host starts from an empty disk. SQLite keeps them as files beside the database, as before.
    ("CREATE TABLE monitor_state (name TEXT PRIMARY KEY, value TEXT NOT NULL)",),
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


def count_active(jobs) -> dict:
    """{"total", "running", "queued"} of a list of active jobs."""
    running = sum(1 for j in jobs if j["status"] == "running")
    return {"total": len(jobs), "running": running, "queued": len(jobs) - running}


class StoreError(RuntimeError):
    """The database cannot be opened or written; the message names the path and the fix."""


class StoreUnavailable(StoreError):
    """PostgreSQL does not answer right now (restart, network): reads fall back to what is cached."""


class DataDirBusy(SystemExit):
    pass


def _lock_data_dir(data_dir: str):
    """Two monitors on one data dir would share one ComfyUI client id, and ComfyUI silently stops
    delivering to both sockets (PROTOCOL.md §2.2): refuse the second one."""
    import fcntl
    fh = open(os.path.join(data_dir, "monitor.lock"), "a+")
    try:
        fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        fh.close()
        raise DataDirBusy(f"another monitor is already using the data dir {os.path.abspath(data_dir)}; "
                          "stop it or give this one its own MONITOR_DATA_DIR")
    fh.seek(0)
    fh.truncate()
    fh.write(str(os.getpid()))
    fh.flush()
    return fh



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


def _is_integrity_error(exc: BaseException) -> bool:
    if isinstance(exc, sqlite3.IntegrityError):
        return True
    return type(exc).__module__.startswith("psycopg") and exc.__class__.__mro__ and any(
        c.__name__ == "IntegrityError" for c in type(exc).__mro__)


def _row_to_job(row, names=tuple(JOB_DEFAULTS)) -> dict:
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
        """`path`: the SQLite file, or a postgres:// / postgresql:// URL (DATABASE_URL)."""
        self._pg_url = path if db.is_postgres_url(path) else None
        self.path = db.redact(path) if self._pg_url else os.path.abspath(os.fspath(path))
        self._lock = threading.RLock()  # looked up at call time, so gevent's when patched
        self._generation = 0            # bumped by every write: a cached read is valid while unchanged
        self._active_brief: tuple[int, list[dict]] | None = None
        self._history_seen: dict[tuple, list[dict]] = {}
        self._written: dict[str, tuple[int, dict]] = {}    # PostgreSQL: records written since the last active read
        # PostgreSQL down: writes waiting, in order, for the background writer (work, then-callback, retried)
        self._pending: collections.deque = collections.deque()
        self._draining = False
        self._next_probe = 0.0        # PostgreSQL down: reads try the server again from this time on
        self._checkpointing = False   # a WAL checkpoint is running in an OS thread
        self._available = True
        self._closing = False
        self._lease = None            # PostgreSQL: db.PgLease; SQLite: the data-dir lock file
        self._lease_held = self._pg_url is None
        if self._pg_url:
            self._pool = db.PgPool(self._pg_url)
            self._conn = self._open_pg()
        else:
            self._conn = self._open()

    @property
    def shared(self) -> bool:
        """True when other monitors may open the same database (PostgreSQL): they wait for the lease."""
        return self._pg_url is not None

    @property
    def available(self) -> bool:
        """False while PostgreSQL does not answer (writes wait and retry meanwhile); SQLite always True."""
        return self._available

    # --- connection -----------------------------------------------------------------------------
    def _open_pg(self):
        try:
            conn = db.PgConnection(self._pg_url)
        except Exception as exc:
            raise StoreError(f"cannot connect to PostgreSQL at {self.path}: {' '.join(str(exc).split())}; check "
                             "DATABASE_URL (postgres://user:password@host:port/dbname[?sslmode=require])") from exc
        try:
            self._migrate_pg(conn)
        except BaseException:
            conn.close()
            raise
        return conn

    @staticmethod
    def _migrate_pg(conn) -> None:
        conn.execute("BEGIN")
        try:
            conn.execute("SELECT pg_advisory_xact_lock(?)", (db.MIGRATE_KEY,))   # one migrating monitor at a time
            version = db.pg_schema_version(conn)
            if version > len(MIGRATIONS):
                raise StoreError(f"the PostgreSQL database has schema version {version}, newer than this app "
                                 f"(knows {len(MIGRATIONS)}); upgrade the app")
            for number in range(version + 1, len(MIGRATIONS) + 1):
                for statement in MIGRATIONS[number - 1]:
                    conn.execute(db.pg_ddl(statement))
                conn.execute("UPDATE schema_version SET version = ?", (number,))
                log.info("job database migrated to schema version %d", number)
            conn.execute("COMMIT")
        except BaseException:
            try:
                conn.execute("ROLLBACK")
            except Exception:  # noqa: BLE001 - the connection itself failed
                pass
            raise

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
        """One short write transaction under the store lock (no retry: see _transact)."""
        with self._lock:
            self._generation += 1
            conn = self._writer()
            conn.execute("BEGIN" if self._pg_url else "BEGIN IMMEDIATE")
            try:
                yield conn
            except BaseException:
                try:
                    conn.execute("ROLLBACK")
                except Exception:  # noqa: BLE001 - PostgreSQL went away mid-transaction
                    if not self._pg_url:
                        raise
                raise
            finally:
                self._generation += 1
            conn.execute("COMMIT")
            self._after_commit()

    def _writer(self):
        if self._conn is None:   # PostgreSQL: lost, reconnect
            self._conn = db.PgConnection(self._pg_url)
        return self._conn

    def _transact(self, work):
        """Run `work(conn, retried)` in one write transaction and return its result. With PostgreSQL, a lost
        or unreachable server is retried until it answers (the calling greenlet waits, the loop runs; the
        store lock keeps writes in order); `retried` is True on a second try, when the first may have
        committed before its answer was lost."""
        if not self._pg_url:
            with self._write() as conn:
                return work(conn, False)
        attempt = 0
        with self._lock:
            while True:
                done, result = self._attempt(work, attempt > 0)
                if done:
                    return result
                db.sleep(db.backoff(attempt))
                attempt += 1

    def _attempt(self, work, retried: bool) -> tuple[bool, object]:
        """One try of a PostgreSQL write: (True, result), or (False, None) when the server is lost or not
        answering (noted: the views serve memory until it answers). Anything else, or any failure while
        closing, raises."""
        try:
            with self._write() as conn:
                result = work(conn, retried)
        except Exception as exc:
            if not db.pg_retryable(exc) or self._closing:
                raise
            self._lost(exc, "write")
            return False, None
        self._back()
        return True, result

    def _lost(self, exc, what: str) -> None:
        if self._conn is not None and (what == "write" or self._conn.broken):
            self._conn.close()
            self._conn = None
        if self._available:
            log.warning("PostgreSQL is not answering (%s: %s); writes wait and are retried, the views serve "
                        "what they last read", what, str(exc).strip().splitlines()[0] if str(exc).strip() else exc)
        self._available = False

    def _back(self) -> None:
        if not self._available:
            log.warning("PostgreSQL answers again")
        self._available = True

    # --- writes that never wait for a down PostgreSQL (the listener's) ------------------------------
    def _deferred(self) -> bool:
        """PostgreSQL is down, or writes are still queued behind it: a new write joins the queue (order is
        kept) and reads are answered from memory, which is newer than the database meanwhile."""
        return self._pg_url is not None and (not self._available or bool(self._pending))

    def _try_write(self, work) -> tuple[bool, object]:
        """(True, result) when written now (SQLite always, as `_transact`); (False, None) when PostgreSQL is
        down or did not answer this once: the caller queues the write with `_enqueue` instead of waiting."""
        if not self._pg_url:
            return True, self._transact(work)
        if self._deferred():
            return False, None
        return self._attempt(work, False)

    def _enqueue(self, work, then=None) -> None:
        """Write later, in order, retrying until PostgreSQL answers; `then(result)` once it is stored. The
        work runs with retried=True: an earlier try may have committed before its answer was lost."""
        self._generation += 1   # the views re-read (from memory) what this write changes
        self._pending.append((work, then))
        if not self._draining:
            self._draining = True
            threading.Thread(target=self._drain, name="store-writer", daemon=True).start()   # a greenlet under gevent

    def _write_soon(self, work, then=None):
        """Written now if the database answers, else queued: the caller never waits for a down server.
        Returns the result, or None when queued."""
        done, result = self._try_write(work)
        if not done:
            self._enqueue(work, then)
            return None
        if then is not None:
            then(result)
        return result

    def _drain(self) -> None:
        attempt = 0
        try:
            while self._pending and not self._closing:
                work, then = self._pending[0]
                try:
                    done, result = self._attempt(work, True)
                except Exception as exc:  # noqa: BLE001 - the writer must outlive any one write
                    if db.pg_retryable(exc):   # only while closing: it stays queued, counted below
                        break
                    log.exception("a queued database write failed and was dropped")
                    self._pending.popleft()
                    continue
                if not done:
                    db.sleep(db.backoff(attempt))
                    attempt += 1
                    continue
                attempt = 0
                self._pending.popleft()
                if then is not None:
                    try:
                        then(result)
                    except Exception:  # noqa: BLE001
                        log.exception("after a queued database write")
        finally:
            self._draining = False

    def _query(self, sql: str, params=()) -> list:
        if not self._pg_url:
            with self._lock:
                return self._conn.execute(sql, params).fetchall()
        if self._pending:
            raise StoreUnavailable(f"writes to PostgreSQL at {self.path} are still queued")
        if not self._available and time.monotonic() < self._next_probe:
            raise StoreUnavailable(f"PostgreSQL at {self.path} is not answering")
        try:
            rows = self._pool.query(sql, params)
        except Exception as exc:
            if not db.pg_retryable(exc):
                raise
            self._lost(exc, "read")
            self._next_probe = time.monotonic() + 1.0   # a read tries the server at most once a second meanwhile
            raise StoreUnavailable(f"PostgreSQL at {self.path} is not answering: {exc}") from exc
        self._back()
        return rows

    def pending_writes(self) -> int:
        """Writes queued while PostgreSQL does not answer (always 0 with SQLite)."""
        return len(self._pending)

    def close(self, grace: float = 0.0) -> None:
        """Release the database. With PostgreSQL down and writes still queued, first wait up to `grace`
        seconds (cooperatively) for it to come back and take them: a restart during a short outage loses
        nothing. (Heroku allows 30 s between SIGTERM and SIGKILL.)"""
        if self._pending and grace > 0:
            log.warning("%d database writes are waiting for PostgreSQL; shutdown waits up to %g s for them",
                        len(self._pending), grace)
            deadline = time.monotonic() + grace
            while self._pending and time.monotonic() < deadline:
                db.sleep(0.1)
            if not self._pending:
                log.info("the queued database writes were stored")
        self._closing = True   # a write waiting for PostgreSQL gives up (within one backoff step), so does the queue
        if self._pending:
            log.warning("%d database writes were still waiting for PostgreSQL at shutdown and are not stored",
                        len(self._pending))
        with self._lock:
            for _ in range(1000):   # a checkpoint still copying: let it finish (at most 10 s)
                if not self._checkpointing:
                    break
                time.sleep(0.01)
            if self._conn is not None:
                self._conn.close()
            if self._pg_url:
                self._pool.close()
            self.release_lease()

    # --- one active monitor per database ----------------------------------------------------------
    def try_lease(self) -> bool:
        """Take the lease that makes this monitor the active one: SQLite locks the data dir (a second monitor
        is refused: DataDirBusy), PostgreSQL takes an advisory lock on a connection of its own (a second monitor
        waits: False until the first exits). Idempotent."""
        if not self._pg_url:
            if self._lease is None:
                self._lease = _lock_data_dir(os.path.dirname(self.path))
            return True
        if self._lease is None:
            self._lease = db.PgLease(self._pg_url)
        try:
            self._lease_held = self._lease.try_acquire()
        except Exception as exc:  # noqa: BLE001 - unreachable: not ours (yet)
            if not db.pg_retryable(exc):
                raise
            self._lease_held = False
        return self._lease_held

    def lease_held(self) -> bool:
        """Checked now (PostgreSQL: the lease connection still answers)."""
        if not self._pg_url:
            return self._lease is not None
        self._lease_held = self._lease is not None and self._lease.held()
        return self._lease_held

    def release_lease(self) -> None:
        if self._lease is not None:
            if self._pg_url:
                self._lease.release()
            else:
                self._lease.close()
            self._lease = None
        self._lease_held = not self._pg_url

    # --- state that must survive a restart -----------------------------------------------------
    def kept_value(self, name: str, make) -> str:
        """A named value made once and kept for good (e.g. a ComfyUI client id): SQLite keeps it in a file
        `name` beside the database, as before; PostgreSQL in monitor_state (a redeployed host has an empty disk)."""
        if not self._pg_url:
            path = os.path.join(os.path.dirname(self.path), name)
            try:
                with open(path, encoding="utf-8") as fh:
                    value = fh.read().strip()
                if value:
                    return value
            except FileNotFoundError:
                pass
            value = make()
            with open(path, "w", encoding="utf-8") as fh:
                fh.write(value)
            return value
        value = make()

        def keep(conn, retried):
            conn.execute("INSERT INTO monitor_state (name, value) VALUES (?, ?) ON CONFLICT (name) DO NOTHING",
                         (name, value))
            return conn.execute("SELECT value FROM monitor_state WHERE name = ?", (name,)).fetchone()[0]
        return self._transact(keep)

    def _after_commit(self) -> None:
        if self._pg_url:
            return
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
            conn.execute("INSERT INTO job_graphs (id, graph) VALUES (?, ?) "
                         "ON CONFLICT (id) DO UPDATE SET graph = excluded.graph", (job_id, graph_json))

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
        def insert(conn, retried):
            if retried and conn.execute("SELECT 1 FROM jobs WHERE id = ?", (record["id"],)).fetchone():
                return   # the first try committed; its answer was lost
            try:
                conn.execute(sql, tuple(columns.values()))
            except Exception as exc:
                if _is_integrity_error(exc):
                    raise ValueError(f"job {record['id']!r} already exists") from exc
                raise
            if graph_json is not None:
                self._put_graph(conn, record["id"], graph_json)
        if self._write_soon(insert) is None and self._pg_url:
            log.info("job %s is recorded once PostgreSQL answers", record["id"])
        record.pop("graph", None)   # as update(): without the graph, which the caller has
        return self._wrote(json.loads(json.dumps(record, default=str)))   # as stored (JSON round-tripped), same shape as get(graph=False)

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
        done, result = self._try_write(lambda conn, retried: self._change_in(conn, job_id, allowed_from, fields))
        if not done:
            return self._change_later(job_id, allowed_from, fields)
        applied, job = result
        return applied, (self._wrote(job) if applied and job else job)

    def _change_later(self, job_id, allowed_from, fields) -> tuple[bool, dict | None]:
        """PostgreSQL is down: decide on the record held in memory, queue the write with the times decided
        now (a job that finished during the outage keeps its real finished_at), and answer from memory.
        (False, None) for a job not held in memory: the write is queued all the same."""
        try:
            current = json.loads(_dumps(self._remembered(job_id)))
        except StoreUnavailable:
            current = None
        if current is None:
            self._enqueue(lambda conn, retried: self._change_in(conn, job_id, allowed_from, fields))
            return False, None
        applied, record = self._decide(job_id, current, allowed_from, fields)
        if not applied:
            return False, record
        resolved = dict(fields)
        for name in ("finished_at", "started_at"):
            if record.get(name) and name not in fields and record[name] != current.get(name):
                resolved[name] = record[name]
        self._enqueue(lambda conn, retried: self._change_in(conn, job_id, allowed_from, resolved))
        record.pop("graph", None)
        return True, self._wrote(json.loads(_dumps(record)))

    def _wrote(self, job: dict) -> dict:
        """PostgreSQL: keep what was written, so that the views show it while the server is down."""
        if self._pg_url:
            self._written[job["id"]] = (self._generation, dict(job))
        return job

    def _from_memory(self, cached: list[dict]) -> list[dict]:
        """The last active list read, with the records written since, in the store's run order."""
        jobs = {job["id"]: job for job in cached}
        for job_id, (_, job) in self._written.items():
            if job["status"] in ACTIVE:
                jobs[job_id] = job
            else:
                jobs.pop(job_id, None)
        return sorted(jobs.values(), key=lambda j: (j["status"] != "running", j.get("number") is None,
                                                     j.get("number") or 0, j.get("queued_at") or ""))

    def _change_in(self, conn, job_id, allowed_from, fields) -> tuple[bool, dict | None]:
        row = conn.execute(f"SELECT {_BRIEF_COLUMNS} FROM jobs WHERE id = ?", (job_id,)).fetchone()
        if row is None:
            return False, None
        current = _row_to_job(row, _BRIEF_NAMES)
        applied, record = self._decide(job_id, current, allowed_from, fields)
        if not applied:
            return False, current
        changed = {k: v for k, v in record.items() if k != "id" and (k in fields or v != current.get(k))}
        if changed:
            columns, graph_json = self._columns(changed)
            assignments = ", ".join(f"{name} = ?" for name in columns)
            conn.execute(f"UPDATE jobs SET {assignments} WHERE id = ?", (*columns.values(), job_id))
        if "graph" in changed:
            self._put_graph(conn, job_id, graph_json)
        record.pop("graph", None)
        return True, json.loads(_dumps(record))   # as get() would return it (JSON round trip)

    def _decide(self, job_id, current: dict, allowed_from, fields) -> tuple[bool, dict]:
        """(applied, the new record) for `fields` on `current`; (False, current) when refused."""
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
        return True, record

    def status(self, job_id) -> str | None:
        """Just the status (None if unknown): what per-message checks need, without parsing a record."""
        try:
            rows = self._query("SELECT status FROM jobs WHERE id = ?", (job_id,))
        except StoreUnavailable:
            return self._remembered(job_id)["status"]
        return rows[0]["status"] if rows else None

    def get(self, job_id, graph: bool = True) -> dict | None:
        if not graph:
            try:
                rows = self._query(f"SELECT {_BRIEF_COLUMNS} FROM jobs WHERE id = ?", (job_id,))
            except StoreUnavailable:
                return dict(self._remembered(job_id))
            return _row_to_job(rows[0], _BRIEF_NAMES) if rows else None
        job = self.get(job_id, graph=False)
        if job and self._deferred():
            return {**job, "graph": None}
        return self._with_graphs([job])[0] if job else None

    def _remembered(self, job_id) -> dict:
        """PostgreSQL is down: an active job as last read (the views keep working), else StoreUnavailable."""
        if job_id in self._written:
            return self._written[job_id][1]
        for job in (self._active_brief or (0, []))[1]:
            if job["id"] == job_id:
                return job
        raise StoreUnavailable(f"PostgreSQL at {self.path} is not answering")

    def assign_host(self, name: str) -> int:
        """Give jobs recorded before the fleet (no host) to `name`, the first configured host."""
        return self._transact(lambda conn, retried: conn.execute(
            "UPDATE jobs SET host = ? WHERE host IS NULL", (name,)).rowcount)

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
        # PostgreSQL: readers do not take the store lock (a writer may be waiting for the server); a monitor
        # without the lease reads afresh (the active one writes), and one that lost the server serves the cache.
        generation = self._generation
        cached = self._active_brief
        if cached is None or cached[0] != generation or not self._lease_held:
            try:
                rows = self._query(f"SELECT {_BRIEF_COLUMNS} FROM jobs WHERE status IN ('running', 'queued') "
                                   "ORDER BY status = 'running' DESC, number IS NULL, number, queued_at, rowid")
            except StoreUnavailable:
                if cached is None:
                    raise
                return [dict(job) for job in self._from_memory(cached[1])]
            cached = self._active_brief = (generation, [_row_to_job(r, _BRIEF_NAMES) for r in rows])
            if self._written:
                self._written = {k: v for k, v in self._written.items() if v[0] > generation}
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
        key = (limit, status, graph)
        try:
            rows = self._query(
                f"SELECT {_BRIEF_COLUMNS} FROM jobs WHERE {where} "
                "ORDER BY COALESCE(finished_at, queued_at) DESC, rowid DESC LIMIT ?", (*params, limit))
            jobs = [_row_to_job(r, _BRIEF_NAMES) for r in rows]
            jobs = self._with_graphs(jobs) if graph else jobs
        except StoreUnavailable:
            if key not in self._history_seen:
                raise
            return [dict(job) for job in self._history_seen[key]]
        if self._pg_url:
            if len(self._history_seen) > 16:
                self._history_seen.clear()
            self._history_seen[key] = jobs
            return [dict(job) for job in jobs]
        return jobs

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

        def work(conn, retried):
            if retried:   # an earlier try may have committed before its answer was lost: one run, once
                conn.execute("DELETE FROM node_timings WHERE job_id = ?", (job_id,))
            for r in rows:
                conn.execute(
                    "INSERT INTO node_timings (job_id, host, node_id, class_type, cost, signature, steps, pixels, "
                    "seconds, cached, recorded_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (job_id, r["host"], r["node_id"], r["class_type"], r["cost"], r["signature"], r.get("steps"),
                     r.get("pixels"), r["seconds"], 1 if r["cached"] else 0, now))
            last = conn.execute("SELECT MAX(id) FROM node_timings").fetchone()[0] or 0
            if last > self.TIMINGS_KEEP:
                conn.execute("DELETE FROM node_timings WHERE id <= ?", (last - self.TIMINGS_KEEP,))
        self._write_soon(work)

    def timings(self, limit: int = 50_000) -> list[dict]:
        """The newest recorded node timings, oldest first (what an Estimator is loaded with)."""
        rows = self._query("SELECT * FROM (SELECT job_id, host, node_id, class_type, cost, signature, steps, "
                           "pixels, seconds, cached, id FROM node_timings ORDER BY id DESC LIMIT ?) AS newest ORDER BY id",
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
        def delete(conn, retried):
            ids = [r[0] for r in conn.execute(f"SELECT id FROM jobs WHERE {_FINISHED_SQL} "
                                              f"ORDER BY {_AGE_SQL}, rowid LIMIT ?", (min(batch, excess),))]
            marks = ", ".join("?" for _ in ids)
            conn.execute(f"DELETE FROM job_graphs WHERE id IN ({marks})", ids)
            return conn.execute(f"DELETE FROM jobs WHERE id IN ({marks})", ids).rowcount
        done["deleted"] = store._transact(delete)
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
        def drop(conn, retried):
            marks = ", ".join("?" for _ in old)
            conn.execute(f"DELETE FROM job_graphs WHERE id IN ({marks})", old)
            return conn.execute(f"UPDATE jobs SET graph_bytes = NULL WHERE id IN ({marks})", old).rowcount
        done["graphs_dropped"] = store._transact(drop)
        return done
    # Nothing left to drop: hand freed pages back, a few megabytes at a time (a no-op unless the database
    # was created with auto_vacuum=INCREMENTAL, as new ones are). PostgreSQL's autovacuum does its own.
    if store.shared:
        return done
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
        self._last_emitted = 0
        self._trim(self.last_seq())

    def emit(self, kind, message, severity="info", data=None) -> dict:
        if severity not in SEVERITIES:
            raise ValueError(f"severity must be one of {', '.join(SEVERITIES)}, got {severity!r}")
        event = {"seq": None, "ts": utcnow_iso(), "kind": str(kind), "severity": severity,
                 "message": str(message), "data": data if data is not None else {}}
        values = (event["ts"], event["kind"], severity, event["message"], _dumps(event["data"]))

        def insert(conn, retried):
            if retried:   # an earlier try may have committed: one event, once
                row = conn.execute("SELECT seq FROM events WHERE ts = ? AND kind = ? AND message = ? AND data = ?",
                                   (values[0], values[1], values[3], values[4])).fetchone()
                if row is not None:
                    return row[0]
            return conn.execute("INSERT INTO events (ts, kind, severity, message, data) VALUES (?, ?, ?, ?, ?) "
                                "RETURNING seq", values).fetchone()[0]
        # PostgreSQL down: stored (and handed to subscribers, with its seq) once it answers.
        self.store._write_soon(insert, lambda seq: self._stored(event, seq))
        return event

    def _stored(self, event: dict, seq: int) -> None:
        event["seq"] = seq
        self._last_emitted = max(self._last_emitted, event["seq"])
        self._since_trim += 1
        if self._since_trim >= self._trim_every:
            self._trim(event["seq"])
        callback = self.on_event
        if callback is not None:
            try:
                callback(event)
            except Exception:  # a broken subscriber must not break the emitter (the listener)
                log.exception("on_event failed for event %s", event["seq"])

    def _trim(self, last: int) -> None:
        self._since_trim = 0
        if last > self.keep:
            self.store._write_soon(lambda conn, retried: conn.execute(
                "DELETE FROM events WHERE seq <= ?", (last - self.keep,)))

    def since(self, seq, limit=500) -> list[dict]:
        """Events with seq greater than the cursor, oldest first."""
        try:
            rows = self.store._query(
                "SELECT seq, ts, kind, severity, message, data FROM events WHERE seq > ? ORDER BY seq LIMIT ?",
                (int(seq or 0), max(0, int(limit))))
        except StoreUnavailable:
            return []   # a reconnecting page replays them once the database answers
        return [{"seq": r["seq"], "ts": r["ts"], "kind": r["kind"], "severity": r["severity"],
                 "message": r["message"], "data": json.loads(r["data"]) if r["data"] else {}} for r in rows]

    def last_seq(self) -> int:
        """The last seq ever issued (kept by SQLite's AUTOINCREMENT, or PostgreSQL's identity sequence, even
        when its row was trimmed)."""
        if self.store.shared:
            try:
                last = db.pg_last_sequence(self.store._pool, "events", "seq")
            except Exception as exc:  # noqa: BLE001
                if not db.pg_retryable(exc):
                    raise
                last = self._last_emitted
            self._last_emitted = max(self._last_emitted, last)
            return self._last_emitted
        rows = self.store._query("SELECT seq FROM sqlite_sequence WHERE name = 'events'")
        return int(rows[0]["seq"]) if rows else 0
