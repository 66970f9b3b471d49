"""Named per-flow state: one FlowState object per flow, and the flow.metadata keys we write.

Runtime objects (snapshot, route, endpoint) live in FlowState, which is never serialized;
what a saved flow or mitmweb should show goes into flow.metadata under the keys below.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

# which listener of a sidecar a flow came in on (FlowState.direction; None on the gateway):
# INBOUND from another proxy to the local app, OUTBOUND from the local app to another service
from mesh.core.state import INBOUND, OUTBOUND

if TYPE_CHECKING:
    from mitmproxy import http

    from mesh.core.cluster import Endpoint
    from mesh.config.schema import Listener
    from mesh.core.routing import Route
    from mesh.core.state import Snapshot

# flow.metadata keys (plain, serializable values only)
REQUEST_ID = "mitmesh.request_id"
ROUTE = "mitmesh.route"
CLUSTER = "mitmesh.cluster"
ENDPOINT = "mitmesh.endpoint"
ATTEMPTS = "mitmesh.attempts"
DECISIONS = "mitmesh.decisions"  # list of [addon, decision] pairs, in the order they were made
UPSTREAM_PATH = "mitmesh.upstream_path"  # the path sent upstream, after rewrites (for replay)
PRINCIPAL = "mitmesh.principal"
PEER = "mitmesh.peer"  # the SPIFFE ID of a verified mTLS peer
API_VERSION = "mitmesh.api_version"
RATELIMIT = "mitmesh.ratelimit"  # the RateLimit-* values of the response
MIRROR = "mitmesh.mirror"  # the cluster a copy of the request went to
DIRECTION = "mitmesh.direction"  # on a sidecar: "inbound" or "outbound"
OUTCOMES = "mitmesh.outcomes"  # what happened: denied, limited, faulted, retried, mirrored (Decisions)

_ATTR = "_mitmesh"


class FlowState:
    """What the addons of one proxy decided about one flow, in request order."""

    __slots__ = ("snapshot", "listener", "downstream_path", "request_id", "path", "max_body", "route",
                 "cluster", "endpoint",
                 "attempts", "started", "upstream_path", "principal", "claims", "decisions",
                 "direction", "span", "trace_id", "peer", "error",
                 # traffic policies (versioning, rate limits, canary, transform, mirror)
                 "final_path", "version_headers", "ratelimit_headers", "set_cookie", "transform_values",
                 "mirror", "fault")

    def __init__(self, snapshot: Snapshot, listener: Listener | None, direction: str | None = None,
                 downstream_path: str = "/"):
        self.snapshot = snapshot
        self.listener = listener
        # the path and query the downstream asked for; flow.request shows the upstream's once
        # Forward sends it (mitmweb and saved flows show what the upstream got)
        self.downstream_path = downstream_path
        self.direction = direction  # INBOUND, OUTBOUND, or None on the gateway
        self.request_id = ""
        # the request path (no query) after RFC 3986 normalization, written once by Normalize (the
        # first addon on the request path): what routing, authz, rate limits and rewrites read
        self.path: str | None = None
        # the route's body limit, set by SizeLimit at requestheaders: the HTTP layer stops reading
        # a body that grows past it (addons/httplayer.py)
        self.max_body: int | None = None
        self.route: Route | None = None
        self.cluster: str | None = None
        self.endpoint: Endpoint | None = None
        self.attempts = 0
        self.started = time.monotonic()
        self.upstream_path: str | None = None
        # who the downstream is, once an authentication addon verified it: a consumer name,
        # a JWT subject or a workload's SPIFFE ID; `claims` are the verified token claims
        self.principal: str | None = None
        self.claims: dict | None = None
        # the SPIFFE ID of the downstream's verified mTLS certificate (source.principal in Istio);
        # Tls also sets it as `principal` until an authentication addon names the caller
        self.peer: str | None = None
        # "why did the proxy do that": every addon appends what it decided, in request order
        self.decisions: list[tuple[str, str]] = []
        self.span = None  # the server span, when tracing is on
        self.trace_id = ""  # W3C trace id (hex), when known
        self.error: str | None = None  # the `error` of a reply the proxy made itself (replies.py)
        # cluster: set before Forward (by Versioning or Canary) to choose it instead of the weights
        self.final_path: str | None = None  # the upstream path after every rewrite (Transform)
        self.version_headers: tuple[tuple[str, str], ...] = ()  # Deprecation, Sunset, Link
        self.ratelimit_headers: tuple[tuple[str, str], ...] = ()  # RateLimit-*
        self.set_cookie: str | None = None  # a sticky-split cookie to hand to the client
        self.transform_values: dict | None = None  # what transform templates read, as the request came
        self.mirror = None  # the in-flight mirrored copy (addons/mirror.py)
        self.fault = None  # written by Faults (plain mitmproxy only): what it injected into this flow

    def destination(self) -> tuple[str, str]:
        """(service, version) the request was for: its cluster's (a sidecar's `local` cluster is its
        own service), else its route's service; empty when it matched no forwarding route."""
        cluster = self.snapshot.clusters.get(self.cluster) if self.cluster else None
        if cluster is not None:
            return cluster.service, "" if cluster.version == "*" else cluster.version
        return getattr(self.route.action, "service", "") if self.route else "", ""

    def decide(self, who: str, what: str) -> None:
        """Record one decision, e.g. decide("router", "route catalog matched prefix /catalog/")."""
        self.decisions.append((who, what))


def begin(flow: http.HTTPFlow, snapshot: Snapshot, listener: Listener | None,
          direction: str | None = None) -> FlowState:
    st = FlowState(snapshot, listener, direction, flow.request.path)
    setattr(flow, _ATTR, st)
    if direction is not None:
        flow.metadata[DIRECTION] = direction
    return st


def get(flow: http.HTTPFlow) -> FlowState | None:
    return getattr(flow, _ATTR, None)
