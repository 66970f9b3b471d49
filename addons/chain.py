"""The request path, in one place. Order matters: each entry says why it sits where it does."""

from __future__ import annotations

from mesh import redact
from mesh.state import MeshState

from .accesslog import AccessLog
from .admin import Admin
from .authn import Authn
from .authz import Authz
from .canary import Canary
from .config import Config
from .cors import Cors
from .decisions import Decisions
from .forward import Forward
from .forwarded import Forwarded
from .ipfilter import IpFilter
from .metrics import Metrics
from .mirror import Mirror
from .ratelimit import RateLimit
from .recorder import Recorder
from .requestid import RequestId
from .router import Router
from .sanitize import Sanitize
from .securityheaders import SecurityHeaders
from .sizelimit import SizeLimit
from .tls import Tls
from .tracing import Tracing
from .transform import Transform
from .versioning import Versioning


def gateway(state: MeshState | None = None) -> list:
    """The edge gateway's addons, in the order every request meets them."""
    state = state or MeshState()
    redact.install()       # credentials never reach a log line, whoever logs
    tracing = Tracing(state, "mitmesh-gateway")
    return [
        Config(state),     # first: loads mesh.yaml and pins the live snapshot to the flow
        Admin(state),      # admin listener (/status, /metrics, /record); not on the request path
        RequestId(),       # before anything may answer, so every reply carries the id
        tracing,           # server span from the incoming trace context, before any decision
        Sanitize(),        # drops client-sent claim headers before routing or upstreams see them
        Tls(state),        # downstream TLS and mTLS; refuses plaintext where TLS is required
        IpFilter(),        # cheapest refusal: the listener's address lists, before any parsing
        Router(),          # picks the route; 404, direct and redirect answers end here
        Cors(),            # preflights answered before authentication (browsers send no credentials)
        SizeLimit(),       # 413/431 before authentication reads or introspects anything
        Versioning(),      # the API version picks the cluster; an unknown version is a 400 before any work
        Authn(state),      # who is calling: JWT, opaque token, API key; 401/403
        Authz(),           # may they: deny and allow rules on peer identity, request and claims
        RateLimit(state),  # after authentication: keyed by the verified consumer; a 429 costs no upstream
        Canary(),          # sticky split after authentication too (the key may be a verified claim)
        Transform(),       # request side once the request is admitted; response side before it leaves
        Forwarded(),       # X-Forwarded-* once we know the request goes upstream
        Mirror(state),     # copies the request exactly as the upstream will get it, just before Forward
        Forward(state, tracing),  # the upstream attempts (a client span each), answers every routed flow
        SecurityHeaders(), # response hook: security headers on every answer, ours or upstream's
        # response side: these only observe the finished flow, so they come last
        Decisions(),       # the decision log into flow metadata and mitmweb's Comment tab
        Metrics(state),    # Prometheus observations from FlowState
        AccessLog(state),  # one JSON line, after the decisions are complete
        Recorder(state),   # saves the flow (with its decisions) while a recording is on
    ]
