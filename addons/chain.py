"""The request path, in one place. Order matters: each entry says why it sits where it does."""

from __future__ import annotations

from mesh.state import MeshState

from .accesslog import AccessLog
from .admin import Admin
from .config import Config
from .decisions import Decisions
from .forward import Forward
from .forwarded import Forwarded
from .metrics import Metrics
from .recorder import Recorder
from .requestid import RequestId
from .router import Router
from .tls import Tls
from .tracing import Tracing


def gateway(state: MeshState | None = None) -> list:
    """The edge gateway's addons, in the order every request meets them."""
    state = state or MeshState()
    tracing = Tracing(state, "mitmesh-gateway")
    return [
        Config(state),     # first: loads mesh.yaml and pins the live snapshot to the flow
        Admin(state),      # admin listener (/status, /metrics, /record); not on the request path
        RequestId(),       # before anything may answer, so every reply carries the id
        tracing,           # server span from the incoming trace context, before any decision
        Tls(state),        # downstream TLS handshake; refuses plain HTTP on HTTPS listeners
        Router(),          # picks the route; 404, direct and redirect answers end here
        Forwarded(),       # X-Forwarded-* once we know the request goes upstream
        Forward(state, tracing),  # the upstream attempt (a client span each), answers every routed flow
        # response side: these only observe the finished flow, so they come last
        Decisions(),       # the decision log into flow metadata and mitmweb's Comment tab
        Metrics(state),    # Prometheus observations from FlowState
        AccessLog(state),  # one JSON line, after the decisions are complete
        Recorder(state),   # saves the flow (with its decisions) while a recording is on
    ]
