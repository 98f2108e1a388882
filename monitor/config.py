"""All settings in one place: read from environment variables, overridable by app.py's CLI flags."""
from __future__ import annotations

import functools
import os
import re
from dataclasses import dataclass, field, fields, replace
from urllib.parse import unquote, urlsplit, urlunsplit

LOOPBACK_HOSTS = {"127.0.0.1", "localhost", "::1"}
HOST_NAME_RE = re.compile(r"[A-Za-z0-9_.-]{1,32}")
MAX_DEMO_HOSTS = 16
_NAMED_ENTRY_RE = re.compile(r"([^=/:]*)=(.*)", re.S)   # NAME=URL; a URL's own "=" comes after "://"


def _env(name: str, default: str | None = None) -> str | None:
    value = os.environ.get(name)
    return value if value not in (None, "") else default


def _int(name: str, default: int) -> int:
    raw = _env(name)
    if raw is None:
        return default
    try:
        return int(raw)
    except ValueError:
        raise SystemExit(f"{name} must be an integer, got {raw!r}")


def _float(name: str, default: float, minimum: float = 0.0) -> float:
    raw = _env(name)
    if raw is None:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise SystemExit(f"{name} must be a number, got {raw!r}")
    if not value > minimum or value == float("inf"):
        raise SystemExit(f"{name} must be a number above {minimum:g}, got {raw!r}")
    return value


def _public_url(raw: str | None) -> str | None:
    if raw is None:
        return None
    try:
        parts = urlsplit(raw)
        parts.port  # noqa: B018 - raises on a malformed port
    except ValueError:
        parts = None
    if parts is None or parts.scheme not in ("http", "https") or not parts.hostname:
        raise SystemExit(f"MONITOR_PUBLIC_URL must look like https://monitor.example.com, got {raw!r}")
    return raw


def _database_url(raw: str | None) -> str | None:
    """Heroku's form: postgres://user:password@host:port/dbname, query parameters (sslmode=require) kept."""
    if raw is None:
        return None
    parts = urlsplit(raw)
    if parts.scheme not in ("postgres", "postgresql") or not (parts.hostname or "host=" in parts.query):
        raise SystemExit("DATABASE_URL must look like postgres://user:password@host:5432/dbname "
                         f"(or postgresql://…), got one starting {raw.split('://')[0]!r}://")
    return raw


@dataclass(frozen=True)
class ComfyHost:
    """One ComfyUI server of the fleet: its name and URL as configured (credentials included)."""
    name: str
    url: str

    @property
    def base(self) -> str:
        """The URL without credentials and without a trailing slash."""
        parts = urlsplit(self.url)
        netloc = parts.hostname or ""
        if ":" in netloc:
            netloc = f"[{netloc}]"
        if parts.port:
            netloc += f":{parts.port}"
        return urlunsplit((parts.scheme, netloc, parts.path.rstrip("/"), "", ""))

    @property
    def auth(self) -> tuple[str, str] | None:
        parts = urlsplit(self.url)
        if parts.username is None:
            return None
        return unquote(parts.username), unquote(parts.password or "")

    @property
    def ws_url(self) -> str:
        base = self.base
        if base.startswith("https://"):
            return "wss://" + base[len("https://"):] + "/ws"
        if base.startswith("http://"):
            return "ws://" + base[len("http://"):] + "/ws"
        raise ValueError(f"COMFYUI_URL must start with http:// or https://, got {self.url!r}")

    @property
    def is_loopback(self) -> bool:
        hostname = (urlsplit(self.url).hostname or "").lower()
        return hostname in LOOPBACK_HOSTS or hostname.startswith("127.")


def parse_comfy_hosts(raw: str) -> tuple[ComfyHost, ...]:
    """COMFYUI_URL: a comma-separated list of URL or NAME=URL. A name defaults to the URL's host:port.
    SystemExit, naming the entry, for an empty entry, a bad name or URL, or a duplicate name or URL."""
    hosts: list[ComfyHost] = []
    names, bases = set(), set()
    for index, entry in enumerate((raw or "").split(","), 1):
        entry = entry.strip()
        shown = f"COMFYUI_URL entry {index} ({entry!r})"
        if not entry:
            raise SystemExit(f"COMFYUI_URL entry {index} is empty; give a comma-separated list of URL or NAME=URL, "
                             f"got {raw!r}")
        named = _NAMED_ENTRY_RE.fullmatch(entry)
        name, url = (named.group(1).strip(), named.group(2).strip()) if named else (None, entry)
        if name is not None and not HOST_NAME_RE.fullmatch(name):
            raise SystemExit(f"{shown}: a host name is 1 to 32 of A-Z a-z 0-9 _ . -, got {name!r}")
        try:
            parts = urlsplit(url)
            port = parts.port
        except ValueError:
            parts = port = None
        if (parts is None or parts.scheme not in ("http", "https") or not parts.hostname or port == 0
                or parts.query or parts.fragment):   # a query or fragment would be dropped silently
            raise SystemExit(f"{shown}: the URL must look like http://host:8188 or https://user:pass@host, "
                             f"got {url!r}")
        if name is None:
            hostname = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
            name = f"{hostname}:{port or (443 if parts.scheme == 'https' else 80)}"
        host = ComfyHost(name, url)
        if name.lower() in names:
            raise SystemExit(f"{shown}: the host name {name!r} is given twice")
        if host.base.lower() in bases:
            raise SystemExit(f"{shown}: the URL {host.base} is given twice")
        names.add(name.lower())
        bases.add(host.base.lower())
        hosts.append(host)
    return tuple(hosts)


def _csv(raw: str | None) -> frozenset[str]:
    return frozenset(p.strip() for p in (raw or "").split(",") if p.strip())


@dataclass(frozen=True)
class Config:
    comfyui_url: str = "http://127.0.0.1:8188"
    host: str = "127.0.0.1"
    port: int = 8000
    data_dir: str = "./data"
    database_url: str | None = None        # postgres://… (DATABASE_URL): PostgreSQL instead of SQLite in data_dir
    comfyui_output_dir: str | None = None
    workflows_dir: str = "./workflows"
    instant_nodes: frozenset[str] = field(default_factory=frozenset)
    password: str | None = None
    token: str | None = None
    allow_open: bool = False
    demo: bool = False
    demo_hosts: int = 1                    # --demo: how many simulated ComfyUIs (gpu1..gpuN with more than one)
    # Network hardening (web/server.py, web/security.py, web/auth.py).
    allowed_hosts: frozenset[str] = field(default_factory=frozenset)   # extra Host values, "name" or "name:port"
    public_url: str | None = None          # how browsers reach us through a proxy: its host is allowed too
    header_timeout: float = 10.0           # seconds for a request line + headers (and each read/write before auth)
    max_unauthenticated: int = 128         # connections open at once that have not authenticated yet
    session_hours: float = 168.0           # token mode: lifetime of the sign-in cookie
    # What ComfyUI may send and how long it may take (listener.py, comfy.py).
    max_message_mb: float = 32.0           # one WebSocket message, however fragmented: bigger drops the connection
    max_preview_mb: float = 8.0            # one preview image: bigger ones are dropped and counted
    comfy_timeout: float = 10.0            # seconds in all for one ComfyUI HTTP call, and for the WS handshake
    # Retention of finished jobs (jobs.prune_step), and how many submissions are parsed at once.
    keep_days: float = 30.0                # older finished jobs keep their summary and lose their graph
    keep_jobs: int = 20000                 # beyond this many finished jobs, the oldest are deleted
    keep_graphs_mb: float = 256.0          # graphs of finished jobs kept, newest first, up to this size
    max_submissions: int = 2               # POST /api/run and execute handled at once; more wait (then 503)
    metrics_public: bool = False           # GET /metrics without credentials (for a scraper inside a trusted network)
    shutdown_grace_s: float = 10.0         # PostgreSQL down at shutdown: wait this long for queued writes
    # Timings, exposed for tests; users rarely change them.
    reconcile_interval: float = 3.0
    hub_tick: float = 0.15
    telemetry_interval: float = 1.5
    reconnect_min: float = 1.0
    reconnect_max: float = 15.0   # a refused port is probed every second meanwhile (listener.py)
    start_background: bool = True
    testing: bool = False

    @classmethod
    def from_env(cls, **overrides) -> "Config":
        cfg = cls(
            comfyui_url=_env("COMFYUI_URL", cls.comfyui_url),
            host=_env("MONITOR_HOST", cls.host),
            # PORT first: the convention of PaaS hosts that read the Procfile.
            port=_int("PORT", _int("MONITOR_PORT", cls.port)),
            data_dir=_env("MONITOR_DATA_DIR", cls.data_dir),
            database_url=_database_url(_env("DATABASE_URL")),
            comfyui_output_dir=_env("COMFYUI_OUTPUT_DIR"),
            workflows_dir=_env("MONITOR_WORKFLOWS_DIR", cls.workflows_dir),
            instant_nodes=_csv(_env("MONITOR_INSTANT_NODES")),
            password=_env("MONITOR_PASSWORD"),
            token=_env("MONITOR_TOKEN"),
            allow_open=_env("MONITOR_ALLOW_OPEN", "0") in ("1", "true", "yes"),
            allowed_hosts=frozenset(h.lower() for h in _csv(_env("MONITOR_ALLOWED_HOSTS"))),
            public_url=_public_url(_env("MONITOR_PUBLIC_URL")),
            header_timeout=_float("MONITOR_HEADER_TIMEOUT", cls.header_timeout),
            max_unauthenticated=max(1, _int("MONITOR_MAX_UNAUTHENTICATED", cls.max_unauthenticated)),
            session_hours=_float("MONITOR_SESSION_HOURS", cls.session_hours),
            max_message_mb=_float("MONITOR_MAX_MESSAGE_MB", cls.max_message_mb),
            max_preview_mb=_float("MONITOR_MAX_PREVIEW_MB", cls.max_preview_mb),
            comfy_timeout=_float("MONITOR_COMFY_TIMEOUT", cls.comfy_timeout),
            keep_days=_float("MONITOR_KEEP_DAYS", cls.keep_days),
            keep_jobs=max(1, _int("MONITOR_KEEP_JOBS", cls.keep_jobs)),
            keep_graphs_mb=_float("MONITOR_KEEP_GRAPHS_MB", cls.keep_graphs_mb, minimum=-1e-9),
            max_submissions=max(1, _int("MONITOR_MAX_SUBMISSIONS", cls.max_submissions)),
            demo_hosts=_int("MONITOR_DEMO_HOSTS", cls.demo_hosts),
            metrics_public=_env("MONITOR_METRICS_PUBLIC", "0") in ("1", "true", "yes"),
            shutdown_grace_s=_float("MONITOR_SHUTDOWN_GRACE_S", cls.shutdown_grace_s, minimum=-1e-9),
        )
        cfg = cfg.with_overrides(**overrides)
        if not 1 <= cfg.demo_hosts <= MAX_DEMO_HOSTS:
            raise SystemExit(f"MONITOR_DEMO_HOSTS (--demo-hosts) must be 1 to {MAX_DEMO_HOSTS}, got {cfg.demo_hosts}")
        cfg.comfy_hosts  # noqa: B018 - a bad COMFYUI_URL list refuses to start here
        return cfg

    def with_overrides(self, **overrides) -> "Config":
        known = {f.name for f in fields(self)}
        unknown = set(overrides) - known
        if unknown:
            raise TypeError(f"unknown config keys: {sorted(unknown)}")
        clean = {k: v for k, v in overrides.items() if v is not None}
        if "instant_nodes" in clean and not isinstance(clean["instant_nodes"], frozenset):
            clean["instant_nodes"] = frozenset(clean["instant_nodes"])
        return replace(self, **clean)

    # --- derived values -------------------------------------------------------------------------
    @functools.cached_property
    def comfy_hosts(self) -> tuple[ComfyHost, ...]:
        """The ComfyUI servers watched, in configured order (SystemExit for a bad list)."""
        return parse_comfy_hosts(self.comfyui_url)

    # The first host's URL parts: everything a single-host setup reads.
    @property
    def comfy_base(self) -> str:
        """The first ComfyUI URL without credentials and without a trailing slash."""
        return self.comfy_hosts[0].base

    @property
    def comfy_auth(self) -> tuple[str, str] | None:
        return self.comfy_hosts[0].auth

    @property
    def comfy_ws_url(self) -> str:
        return self.comfy_hosts[0].ws_url

    @property
    def is_loopback(self) -> bool:
        return self.host in LOOPBACK_HOSTS or self.host.startswith("127.")

    @property
    def db_path(self) -> str:
        return os.path.join(self.data_dir, "monitor.sqlite3")

    @property
    def database(self) -> str:
        """What the job store opens: DATABASE_URL when set, else the SQLite file in the data dir."""
        return self.database_url or self.db_path
