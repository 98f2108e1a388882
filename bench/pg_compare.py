"""PostgreSQL beside SQLite in one run (issue 15): GET /api/admin/queue with 1,000 active jobs and the history
first page (/admin/history, /api/admin/history) with 100,000 finished jobs, each on both backends.

PostgreSQL: DATABASE_URL (emptied before each part), else a throwaway cluster from tests/pg.py (fsync off, as
the tests run it). The parts are bench/api_latency.py's and bench/eta.py's history part, unchanged.

    .venv/bin/python bench/pg_compare.py [--jobs 1000] [--rows 100000] [--requests 200] [--quick]
"""
from __future__ import annotations

from gevent import monkey

monkey.patch_all()

import argparse  # noqa: E402
import os  # noqa: E402
import sys  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import benchlib  # noqa: E402  (puts the repo and tests/ on sys.path)
from api_latency import measure  # noqa: E402
from eta import history_part  # noqa: E402

import pg  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--jobs", type=int, default=1000)
    ap.add_argument("--rows", type=int, default=100_000)
    ap.add_argument("--requests", type=int, default=200)
    ap.add_argument("--quick", action="store_true", help="smoke size: 30 jobs, 2,000 rows, 10 requests")
    args = ap.parse_args()
    jobs, rows, n = (30, 2_000, 10) if args.quick else (args.jobs, args.rows, args.requests)
    print(benchlib.machine())
    url = os.environ.get("DATABASE_URL") or None
    cluster = None
    if url is None:
        cluster = pg.create()
        url = cluster.url
    queue: dict[str, dict] = {}
    history: dict[str, dict] = {}
    try:
        for name, database_url in (("SQLite", None), ("PostgreSQL", url)):
            if database_url:
                pg.reset(database_url)
            print(f"\n== {name}: {jobs} queued jobs")
            queue[name] = measure(jobs, n, database_url, paths=("/api/admin/queue",))
            if database_url:
                pg.reset(database_url)
            history[name] = history_part(rows, min(n, 100), database_url)
    finally:
        if cluster is not None:
            pg.destroy(cluster)
    print(f"\nSummary, p50 / p95 ({jobs} active jobs; {rows:,} finished jobs)")
    print(f"  {'':28s} {'SQLite':>22s} {'PostgreSQL':>22s}")

    def row(label, pair):
        print(f"  {label:28s} " + " ".join(f"{benchlib.ms(pair[b][0]) + ' / ' + benchlib.ms(pair[b][1]):>22s}"
                                          for b in ("SQLite", "PostgreSQL")))
    row("GET /api/admin/queue", {b: queue[b]["/api/admin/queue"] for b in queue})
    for key in history["SQLite"]["results"]:
        row(key, {b: history[b]["results"][key] for b in history})
    for backend in ("SQLite", "PostgreSQL"):
        p95 = queue[backend]["/api/admin/queue"][1]
        first = history[backend]["results"]["first page"][1]
        print(f"  {backend}: queue p95 <= 20 ms {'met' if p95 <= 0.020 else 'MISSED'}; "
              f"history first page p95 <= 30 ms {'met' if first <= 0.030 else 'MISSED'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
