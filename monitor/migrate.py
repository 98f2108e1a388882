"""`python -m monitor migrate --from-sqlite PATH`: copy a SQLite job history (jobs, graphs, events and the
client ids kept beside it) into the PostgreSQL database of DATABASE_URL. Idempotent: rows already there stay."""
from __future__ import annotations

import os
import sqlite3

from . import db
from .jobs import JobStore, StoreError

BATCH = 500


def copy_sqlite(source: str, target_url: str, *, log=print) -> dict:
    """Copy every row the target lacks; returns the rows copied per table."""
    if not os.path.isfile(source):
        raise StoreError(f"no SQLite database at {source}")
    JobStore(source).close()   # brings the source to the current schema (it is opened as the monitor would)
    target = JobStore(target_url)
    try:
        if not target.try_lease():
            raise StoreError("a monitor is running on the PostgreSQL database; stop it before migrating")
        src = sqlite3.connect(f"file:{os.path.abspath(source)}?mode=ro", uri=True)
        try:
            done = {
                "jobs": _copy(src, target, "jobs", "id", "rowid"),
                "job_graphs": _copy(src, target, "job_graphs", "id", "rowid"),
                "events": _copy(src, target, "events", "seq", "seq"),
            }
        finally:
            src.close()
        # The events' identity continues after the copied seqs, so a seq is never issued twice.
        target._transact(lambda conn, retried: conn.execute(
            "SELECT setval(pg_get_serial_sequence('events', 'seq'), GREATEST((SELECT COALESCE(MAX(seq), 0) "
            "FROM events), COALESCE(pg_sequence_last_value(pg_get_serial_sequence('events', 'seq')), 0), 1))"))
        kept = 0
        directory = os.path.dirname(os.path.abspath(source))
        for name in sorted(os.listdir(directory)):
            if name == "client_id" or name.startswith("client_id."):
                with open(os.path.join(directory, name), encoding="utf-8") as fh:
                    value = fh.read().strip()
                if value:
                    kept += target._transact(lambda conn, retried, n=name, v=value: conn.execute(
                        "INSERT INTO monitor_state (name, value) VALUES (?, ?) ON CONFLICT (name) DO NOTHING",
                        (n, v)).rowcount)
        done["monitor_state"] = kept
    finally:
        target.close()
    log(f"copied from {source} to {db.redact(target_url)}: " + ", ".join(f"{n} {k}" for k, n in done.items()))
    return done


def _copy(src: sqlite3.Connection, target: JobStore, table: str, key: str, order: str) -> int:
    """Rows in the source's insertion order, so that the target's rowid keeps the history's order."""
    names = [r[1] for r in src.execute(f"PRAGMA table_info({table})")]
    columns = ", ".join(names)
    marks = ", ".join("?" for _ in names)
    sql = f"INSERT INTO {table} ({columns}) VALUES ({marks}) ON CONFLICT ({key}) DO NOTHING"
    copied, last = 0, None
    while True:
        if last is None:
            rows = src.execute(f"SELECT {order}, {columns} FROM {table} ORDER BY {order} LIMIT ?", (BATCH,)).fetchall()
        else:
            rows = src.execute(f"SELECT {order}, {columns} FROM {table} WHERE {order} > ? ORDER BY {order} LIMIT ?",
                               (last, BATCH)).fetchall()
        if not rows:
            return copied
        last = rows[-1][0]

        def insert(conn, retried, rows=rows):
            return sum(conn.execute(sql, row[1:]).rowcount for row in rows)
        copied += target._transact(insert)
