"""Entry point: patch gevent first, build the app, serve it on gevent's own WSGI server.

    python app.py [--host H] [--port P] [--comfy-url URL] [--data-dir DIR] [--demo] [--demo-hosts N]
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
    p.add_argument("--demo-hosts", type=int, metavar="N",
                   help="with --demo (implied): N simulated ComfyUIs, gpu1..gpuN, for the farm view "
                        "(MONITOR_DEMO_HOSTS, default 1)")
    return p.parse_args(argv)


def _demo_data_dir(hosts: int) -> str:
    # A farm demo keeps its own records: its host names are not the single demo's.
    return "./data/demo" if hosts == 1 else f"./data/demo-{hosts}"


def main(argv=None) -> int:
    configure_logging()
    args = parse_args(argv)
    overrides = dict(host=args.host, port=args.port, comfyui_url=args.comfy_url, data_dir=args.data_dir,
                     demo_hosts=args.demo_hosts)
    demo = args.demo or args.demo_hosts is not None
    if demo:
        overrides["comfyui_url"] = "http://127.0.0.1:8188"   # COMFYUI_URL is not read: the simulators' replace it
    sims = []
    try:
        config = Config.from_env(**overrides)   # a bad MONITOR_DEMO_HOSTS is refused before anything starts
        if demo:
            from monitor.demo import start_demo, start_demo_fleet
            if config.demo_hosts == 1:
                sims = [start_demo(traffic_every_s=None)]
                url = sims[0].url
            else:
                named = start_demo_fleet(config.demo_hosts)
                sims = [sim for _, sim in named]
                url = ",".join(f"{name}={sim.url}" for name, sim in named)
            config = config.with_overrides(comfyui_url=url, demo=True,
                                           data_dir=args.data_dir or _demo_data_dir(config.demo_hosts))
            log.info("demo mode: simulated ComfyUI at %s", url)
        app = create_app(config)
    except (SystemExit, StoreError) as exc:
        for sim in sims:
            sim.stop()
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if sims:
        from monitor.demo import drive_monitor
        drive_monitor(app.extensions["monitor"], sims, every_s=4.0)
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
        for sim in sims:
            sim.stop()

    gevent.signal_handler(signal.SIGTERM, shutdown)
    gevent.signal_handler(signal.SIGINT, shutdown)
    server.serve_forever()
    return 0


if __name__ == "__main__":
    sys.exit(main())
