"""Entry point: patch gevent first, build the app, serve it on gevent's own WSGI server.

    python app.py [--host H] [--port P] [--comfy-url URL] [--data-dir DIR] [--demo]
"""
from gevent import monkey

monkey.patch_all()

import argparse  # noqa: E402
import logging  # noqa: E402
import signal  # noqa: E402
import sys  # noqa: E402

import gevent  # noqa: E402

from monitor import configure_logging, create_app  # noqa: E402
from monitor.config import Config  # noqa: E402
from monitor.jobs import StoreError  # noqa: E402
from monitor.web.server import make_server, raise_fd_limit  # noqa: E402

log = logging.getLogger("monitor")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="Real-time job monitor for ComfyUI. Every flag has an "
                                            "environment variable; the flag wins.")
    p.add_argument("--host", help="listen address (MONITOR_HOST, default 127.0.0.1)")
    p.add_argument("--port", type=int, help="listen port (PORT, then MONITOR_PORT, default 8000)")
    p.add_argument("--comfy-url", help="ComfyUI base URL, or a comma-separated list of URL or NAME=URL "
                                        "(COMFYUI_URL, default http://127.0.0.1:8188)")
    p.add_argument("--data-dir", help="SQLite and state directory (MONITOR_DATA_DIR, default ./data)")
    p.add_argument("--demo", action="store_true",
                   help="start a simulated ComfyUI in this process and watch it (no GPU needed)")
    return p.parse_args(argv)


def main(argv=None) -> int:
    configure_logging()
    args = parse_args(argv)
    overrides = dict(host=args.host, port=args.port, comfyui_url=args.comfy_url, data_dir=args.data_dir)
    demo = None
    if args.demo:
        from monitor.demo import start_demo
        demo = start_demo(traffic_every_s=None)
        overrides["comfyui_url"] = demo.url
        overrides["demo"] = True
        if args.data_dir is None:
            overrides["data_dir"] = "./data/demo"
        log.info("demo mode: simulated ComfyUI at %s", overrides["comfyui_url"])
    try:
        config = Config.from_env(**overrides)
        app = create_app(config)
    except (SystemExit, StoreError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if demo is not None:
        from monitor.demo import drive_monitor
        drive_monitor(app.extensions["monitor"], demo, every_s=4.0)
    old, new = raise_fd_limit()
    if new != old:
        log.info("open-file limit raised from %d to %d", old, new)
    server = make_server(app)
    server.start()
    host = f"[{config.host}]" if ":" in config.host else config.host
    log.info("serving on http://%s:%d/admin/queue (ComfyUI: %s)", host, server.server_port, config.comfy_base)

    def shutdown(*_):
        log.info("shutting down")
        server.stop(timeout=2)
        app.extensions["monitor"].close()
        if demo is not None:
            demo.stop()

    gevent.signal_handler(signal.SIGTERM, shutdown)
    gevent.signal_handler(signal.SIGINT, shutdown)
    server.serve_forever()
    return 0


if __name__ == "__main__":
    sys.exit(main())
