"""comfyui-monitor relay: a ComfyUI custom node (no graph nodes) that also delivers each client's messages to
subscribed job monitors, and serves this GPU host's telemetry. Installed by `python -m monitor install-node`."""
import logging

from .relay import VERSION

NODE_CLASS_MAPPINGS = {}
NODE_DISPLAY_NAME_MAPPINGS = {}
__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS", "VERSION"]

# Imported as part of the monitor package (tests, the installer) it stays inert; only ComfyUI loads it for real.
if not __name__.startswith("monitor."):
    try:
        from server import PromptServer   # ComfyUI's own module
    except Exception as exc:  # noqa: BLE001 - never break ComfyUI's start
        logging.getLogger("comfyui_monitor_relay").warning(
            "[monitor relay] not inside ComfyUI (%s): relay disabled", exc)
    else:
        from .relay import install
        install(getattr(PromptServer, "instance", None))
