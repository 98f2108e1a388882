"""All settings in one place: read from environment variables, overridable by app.py's CLI flags."""
from __future__ import annotations

import os
from dataclasses import dataclass, field, fields, replace
from urllib.parse import urlsplit, urlunsplit

LOOPBACK_HOSTS = {"127.0.0.1", "localhost", "::1"}


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


def _csv(raw: str | None) -> frozenset[str]:
    return frozenset(p.strip() for p in (raw or "").split(",") if p.strip())


@dataclass(frozen=True)
class Config:
    comfyui_url: str = "http://127.0.0.1:8188"
    host: str = "127.0.0.1"
    port: int = 8000
    data_dir: str = "./data"
    comfyui_output_dir: str | None = None
    workflows_dir: str = "./workflows"
    instant_nodes: frozenset[str] = field(default_factory=frozenset)
    password: str | None = None
    token: str | None = None
    allow_open: bool = False
    demo: bool = False
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
            comfyui_output_dir=_env("COMFYUI_OUTPUT_DIR"),
            workflows_dir=_env("MONITOR_WORKFLOWS_DIR", cls.workflows_dir),
            instant_nodes=_csv(_env("MONITOR_INSTANT_NODES")),
            password=_env("MONITOR_PASSWORD"),
            token=_env("MONITOR_TOKEN"),
            allow_open=_env("MONITOR_ALLOW_OPEN", "0") in ("1", "true", "yes"),
        )
        return cfg.with_overrides(**overrides)

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
    @property
    def comfy_base(self) -> str:
        """The ComfyUI URL without credentials and without a trailing slash."""
        parts = urlsplit(self.comfyui_url)
        netloc = parts.hostname or ""
        if ":" in netloc:
            netloc = f"[{netloc}]"
        if parts.port:
            netloc += f":{parts.port}"
        return urlunsplit((parts.scheme, netloc, parts.path.rstrip("/"), "", ""))

    @property
    def comfy_auth(self) -> tuple[str, str] | None:
        parts = urlsplit(self.comfyui_url)
        if parts.username is None:
            return None
        from urllib.parse import unquote
        return unquote(parts.username), unquote(parts.password or "")

    @property
    def comfy_ws_url(self) -> str:
        base = self.comfy_base
        if base.startswith("https://"):
            return "wss://" + base[len("https://"):] + "/ws"
        if base.startswith("http://"):
            return "ws://" + base[len("http://"):] + "/ws"
        raise ValueError(f"COMFYUI_URL must start with http:// or https://, got {self.comfyui_url!r}")

    @property
    def is_loopback(self) -> bool:
        return self.host in LOOPBACK_HOSTS or self.host.startswith("127.")

    @property
    def db_path(self) -> str:
        return os.path.join(self.data_dir, "monitor.sqlite3")
