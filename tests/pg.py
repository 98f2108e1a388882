"""A throwaway PostgreSQL cluster for the tests and benches (Debian's postgresql package): a temp dir, a free
loopback port, no system service. `python tests/pg.py start` prints `URL DIR`; `python tests/pg.py stop DIR`.
initdb refuses to run as root, so as root the server runs as the `postgres` user (runuser)."""
from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import sys
import tempfile

URL_VAR = "MONITOR_TEST_DATABASE_URL"


def _bindir() -> str:
    for candidate in sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True):
        if os.path.exists(os.path.join(candidate, "initdb")):
            return candidate
    found = shutil.which("initdb")
    if found:
        return os.path.dirname(found)
    raise RuntimeError("PostgreSQL is not installed (apt-get install postgresql)")


def _run(args: list[str], **kw) -> subprocess.CompletedProcess:
    if os.geteuid() == 0:
        args = ["runuser", "-u", "postgres", "--"] + args
    return subprocess.run(args, check=True, capture_output=True, text=True, **kw)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Cluster:
    def __init__(self, directory: str, port: int):
        self.directory, self.port = directory, port
        self.bindir = _bindir()

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/monitor_test"

    def start(self) -> None:
        """Start (or restart after stop()) the server; returns when it accepts connections."""
        _run([os.path.join(self.bindir, "pg_ctl"), "-D", self.data, "-l", os.path.join(self.directory, "log"),
              "-w", "-t", "30", "-o", f"-p {self.port} -k {self.directory} -c listen_addresses=127.0.0.1 "
              "-c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=200", "start"])

    def stop(self, mode: str = "fast") -> None:
        _run([os.path.join(self.bindir, "pg_ctl"), "-D", self.data, "-m", mode, "-w", "stop"])

    @property
    def data(self) -> str:
        return os.path.join(self.directory, "data")

    def psql(self, sql: str, db: str = "postgres") -> str:
        return _run([os.path.join(self.bindir, "psql"), "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres",
                     "-d", db, "-At", "-c", sql]).stdout


def create(directory: str | None = None) -> Cluster:
    directory = directory or tempfile.mkdtemp(prefix="monitor-pg-")
    if os.geteuid() == 0:
        shutil.chown(directory, "postgres", "postgres")
    os.chmod(directory, 0o755)   # the server's socket dir, reachable by the test process
    cluster = Cluster(directory, _free_port())
    _run([os.path.join(cluster.bindir, "initdb"), "-D", cluster.data, "-A", "trust", "-U", "postgres",
          "-E", "UTF8", "--no-sync"])
    cluster.start()
    cluster.psql("CREATE DATABASE monitor_test")
    return cluster


def destroy(cluster: Cluster) -> None:
    try:
        cluster.stop("immediate")
    except subprocess.CalledProcessError:
        pass
    shutil.rmtree(cluster.directory, ignore_errors=True)


def reset(url: str) -> None:
    """An empty database for the next test: other sessions ended, every table dropped."""
    import psycopg
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                     "WHERE datname = current_database() AND pid <> pg_backend_pid()")
        conn.execute("DROP SCHEMA public CASCADE")
        conn.execute("CREATE SCHEMA public")


def main(argv: list[str]) -> int:
    if argv[:1] == ["start"]:
        cluster = create()
        print(cluster.url, cluster.directory)
        return 0
    if argv[:1] == ["stop"] and len(argv) == 2:
        with open(os.path.join(argv[1], "data", "postmaster.pid")) as fh:
            fh.readline()
            fh.readline()
            fh.readline()
            port = int(fh.readline())
        destroy(Cluster(argv[1], port))
        return 0
    print("usage: python tests/pg.py start | stop DIR", file=sys.stderr)
    return 2


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
