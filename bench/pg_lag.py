"""Worst gevent loop lag while `SELECT pg_sleep(1)` runs on another greenlet (PostgreSQL through DATABASE_URL or
a throwaway cluster from tests/pg.py). Target: worst lag <= 20 ms.

    .venv/bin/python bench/pg_lag.py [--queries 5]
"""
from gevent import monkey

monkey.patch_all()

import argparse  # noqa: E402
import os  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402

import gevent  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [ROOT, os.path.join(ROOT, "tests")]
from monitor.jobs import JobStore  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--queries", type=int, default=5)
    args = ap.parse_args()
    cluster = None
    url = os.environ.get("DATABASE_URL")
    if not url:
        import pg
        cluster = pg.create()
        url = cluster.url
    try:
        store = JobStore(url)
        store._query("SELECT 1")   # the reader connection is made before measuring (connect is timed apart)
        from psycopg import waiting
        worst, stop = [0.0], []

        def probe():
            while not stop:
                t = time.perf_counter()
                gevent.sleep(0.005)
                worst[0] = max(worst[0], time.perf_counter() - t - 0.005)
        g = gevent.spawn(probe)
        started = time.perf_counter()
        for _ in range(args.queries):
            gevent.spawn(store._query, "SELECT pg_sleep(1)").join()
        took = time.perf_counter() - started
        stop.append(1)
        g.join()
        store.close()
        print(f"psycopg wait function: {waiting.wait.__name__}")
        print(f"{args.queries} x pg_sleep(1) in {took:.2f} s; worst loop lag {worst[0] * 1000:.1f} ms (target 20 ms)")
    finally:
        if cluster is not None:
            pg.destroy(cluster)


if __name__ == "__main__":
    main()
