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
EGRESS = "mitmesh.egress"  # on a pod's sidecar: a call outside the mesh that its egress policy lets through
DIRECTION = "mitmesh.direction"  # on a sidecar: "inbound" or "outbound"
OUTCOMES = "mitmesh.outcomes"  # what happened: denied, limited, faulted, retried, mirrored (Decisions)

_ATTR = "_mitmesh"


# Who writes each field of FlowState: exactly one stage (addon module) per field, so reading a
# field tells where it came from (tests/addons/test_keys.py checks every `st.<field> =` against
# this). `route` is written by the routing stage, which is Router on the gateway, Inbound or
# Outbound on a sidecar (one per direction) and alone.Flows for an addon loaded alone.
WRITERS: dict[str, tuple[str, ...]] = {
    "snapshot": (), "listener": (), "direction": (), "downstream_path": (), "started": (),  # begin()
    "request_id": ("requestid",),
    "path": ("normalize",),
    "max_body": ("sizelimit",),
    "route": ("router", "inbound", "outbound", "alone"),
    "versioned_path": ("versioning",),
    "version_cluster": ("versioning",),
    "version_headers": ("versioning",),
    "peer": ("tls",),
    "authenticated": ("authn",),
    "claims": ("authn",),
    "credential": ("authn",),
    "ratelimit_headers": ("ratelimit",),
    "sticky_point": ("canary",),
    "set_cookie": ("canary",),
    "transform_values": ("transform",),
    "final_path": ("transform",),
    "mirror": ("mirror",),
    "cluster": ("forward",),
    "endpoint": ("forward",),
    "attempts": ("forward",),
    "sent": ("forward",),
    "idempotency": ("idempotency",),
    "fault": ("faults",),
    "span": ("tracing",),
    "trace_id": ("tracing",),
    "error": ("replies",),
    "decisions": (),  # appended to by every stage through decide()
    "decision_lines": ("decisions",),
}


class FlowState:
    """What the addons of one proxy decided about one flow, in request order; each field has one
    writer (WRITERS above)."""

    __slots__ = tuple(WRITERS)

    def __init__(self, snapshot: Snapshot, listener: Listener | None, direction: str | None = None,
                 downstream_path: str = "/"):
        self.snapshot = snapshot
        self.listener = listener
        # the path and query the downstream asked for; flow.request shows the upstream's once
        # Forward sends it (mitmweb and saved flows show what the upstream got)
        self.downstream_path = downstream_path
        self.direction = direction  # INBOUND, OUTBOUND, or None on the gateway
        self.started = time.monotonic()
        self.request_id = ""
        # the request path (no query) after RFC 3986 normalization (Normalize, the first addon on
        # the request path): what routing, authz, rate limits and rewrites read
        self.path: str | None = None
        # the route's body limit (SizeLimit, at requestheaders): the HTTP layer stops reading a
        # body that grows past it (addons/httplayer.py)
        self.max_body: int | None = None
        self.route: Route | None = None  # the routing stage
        # Versioning: the path without its version segment, the version's cluster, its headers
        self.versioned_path: str | None = None
        self.version_cluster: str | None = None
        self.version_headers: tuple[tuple[str, str], ...] = ()  # Deprecation, Sunset, Link
        # the SPIFFE ID of the downstream's verified mTLS certificate (source.principal in Istio)
        self.peer: str | None = None
        # who Authn verified: a consumer name, a JWT subject, a client id; and the verified claims
        self.authenticated: str | None = None
        self.claims: dict | None = None
        # which credential Authn verified, never the credential itself: `<method>:<24 hex digits of
        # its SHA-256>` (mesh/policies/authn.py `identity`), what a per-key rate limit counts
        self.credential: str | None = None
        self.ratelimit_headers: tuple[tuple[str, str], ...] = ()  # RateLimit-*
        # Canary: where a sticky key hashed to on the route's weights, and a new sticky cookie
        self.sticky_point: float | None = None
        self.set_cookie: str | None = None
        self.transform_values: dict | None = None  # what transform templates read, as the request came
        self.final_path: str | None = None  # the upstream path after every rewrite (Transform)
        self.mirror = None  # the in-flight mirrored copy (addons/mirror.py)
        # Forward, the one place the cluster is chosen (from the version, the sticky point or the
        # weights), the endpoint it sent to and how many attempts it took
        self.cluster: str | None = None
        self.endpoint: Endpoint | None = None
        self.attempts = 0
        self.fault = None  # Faults (plain mitmproxy only): what it injected into this flow
        self.span = None  # the server span, when tracing is on
        self.trace_id = ""  # W3C trace id (hex), when known
        self.error: str | None = None  # the `error` of a reply the proxy made itself (replies.py)
        # Forward: a byte of the request reached an upstream (it may have acted on it);
        # Idempotency keeps a key whose request may have run, and frees one that surely did not
        self.sent = False
        self.idempotency = None  # Idempotency: the key this flow holds in flight (addons/idempotency.Held)
        # "why did the proxy do that": every addon appends what it decided, in request order
        self.decisions: list[tuple[str, str]] = []
        # the same as logged, one `who: what` line each, credentials masked (Decisions, for the access log)
        self.decision_lines: list[str] | None = None

    @property
    def principal(self) -> str | None:
        """Who the downstream is: the caller Authn verified, else the verified mTLS peer."""
        return self.authenticated if self.authenticated is not None else self.peer

    @property
    def caller(self) -> str:
        """Whose records a request's Idempotency-Key names: how the caller was verified, by which
        issuer, and its name (a JWT `sub` and an API-key consumer of the same name are two callers,
        as two tokens without a subject are not the anonymous caller); "" for no one verified."""
        if self.authenticated is not None:
            method = self.credential.partition(":")[0] if self.credential else "authn"
            iss = self.claims.get("iss") if isinstance(self.claims, dict) else None
            return f"{method}\0{iss if isinstance(iss, str) else ''}\0{self.authenticated}"
        return f"peer\0\0{self.peer}" if self.peer is not None else ""

    @property
    def upstream_path(self) -> str:
        """The path routing and policies match on: the normalized path, without the API version
        segment once Versioning took it out (Forward applies the route's rewrite to it)."""
        return self.versioned_path if self.versioned_path is not None else (self.path or "/")

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


def unanswered(flow: http.HTTPFlow) -> FlowState | None:
    """The flow's state while the proxy may still act on it (live, no response or error yet), else
    None: how a request hook that runs before routing starts."""
    if flow.response or flow.error or not flow.live:
        return None
    return getattr(flow, _ATTR, None)


def routed(flow: http.HTTPFlow) -> FlowState | None:
    """The flow's state while it is live, unanswered and has a route, else None: how a route stage's
    request hook starts (`st.route` is then set)."""
    st = unanswered(flow)
    return st if st is not None and st.route is not None else None
