"""Worst gevent loop lag while `SELECT pg_sleep(1)` runs on another greenlet (PostgreSQL through DATABASE_URL or
a throwaway cluster from tests/pg.py). Target: worst lag <= 20 ms. The same probe first runs as long with no
query at all (the baseline: what the machine itself costs the loop), so a loaded machine's lag is told apart.

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

        def probed(work):
            lags, stop = [], []

            def probe():
                while not stop:
                    t = time.perf_counter()
                    gevent.sleep(0.005)
                    lags.append(time.perf_counter() - t - 0.005)
            g = gevent.spawn(probe)
            started = time.perf_counter()
            work()
            took = time.perf_counter() - started
            stop.append(1)
            g.join()
            lags.sort()
            return took, lags

        def show(what, took, lags):
            over = sum(1 for x in lags if x > 0.020)
            print(f"{what} ({took:.2f} s): loop lag p50 {lags[len(lags) // 2] * 1000:.2f} ms, p99 "
                  f"{lags[int(len(lags) * 0.99)] * 1000:.2f} ms, worst {lags[-1] * 1000:.1f} ms; "
                  f"{over} of {len(lags)} probes late by > 20 ms")
            return lags[-1]

        print(f"psycopg wait function: {waiting.wait.__name__}")
        for _ in range(2):
            base = show("baseline, no query", *probed(lambda: gevent.sleep(args.queries)))
            worst = show(f"{args.queries} x pg_sleep(1) on another greenlet",
                         *probed(lambda: [gevent.spawn(store._query, "SELECT pg_sleep(1)").join()
                                          for _ in range(args.queries)]))
            print(f"  worst with queries {worst * 1000:.1f} ms vs baseline {base * 1000:.1f} ms (target 20 ms: "
                  f"{'met' if worst <= 0.020 else 'MISSED'})")
        store.close()
    finally:
        if cluster is not None:
            pg.destroy(cluster)


if __name__ == "__main__":
    main()
