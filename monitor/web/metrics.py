"""GET /metrics: the Prometheus exposition of the fleet's metrics (monitor/metrics.py), from cached state.
Needs the API's credentials unless MONITOR_METRICS_PUBLIC=1."""
from __future__ import annotations

from flask import Blueprint, Response, current_app

from ..metrics import CONTENT_TYPE

bp = Blueprint("metrics", __name__)


@bp.get("/metrics")
def metrics():
    body = current_app.extensions["monitor"].metrics.render()
    return Response(body, content_type=CONTENT_TYPE, headers={"Cache-Control": "no-store"})
