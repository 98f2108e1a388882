"""ComfyUI job monitor: `create_app(config)` builds an isolated Flask app around one Fleet."""
from __future__ import annotations

import logging
import os

from flask import Flask

from .config import Config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
__version__ = "0.1.0"


def create_app(config: Config | None = None, *, start: bool | None = None) -> Flask:
    """Build the app. `start` (default: config.start_background) starts the listener, reconciler,
    hub and telemetry greenlets; tests that only need routes can leave them off."""
    from .fleet import Fleet
    from .web import api, assets, metrics, pages, push, security, ws

    config = config or Config.from_env()
    security.check_startup(config)
    app = Flask(__name__, template_folder=os.path.join(ROOT, "templates"),
                static_folder=os.path.join(ROOT, "static"), static_url_path="/static")
    app.config.update(MONITOR=config, TESTING=config.testing,
                      MAX_CONTENT_LENGTH=2 * 1024 * 1024)
    app.json.sort_keys = False  # keep template parameter order as declared
    monitor = Fleet(config)
    app.extensions["monitor"] = monitor
    security.install(app)
    assets.install(app)
    api.install(app)
    app.register_blueprint(pages.bp)
    app.register_blueprint(metrics.bp)
    ws.init_app(app)
    monitor.services.append(push.Pusher(app, interval=config.telemetry_interval))
    if config.start_background if start is None else start:
        monitor.start()
    return app


def configure_logging(level: str | None = None) -> None:
    logging.basicConfig(level=(level or os.environ.get("MONITOR_LOG_LEVEL", "INFO")).upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
