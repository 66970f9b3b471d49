"""The request path, in one place. Order matters: each entry says why it sits where it does."""

from __future__ import annotations

from mesh.security import redact
from mesh.core.state import MeshState

# the addons of both chains; a gateway-only addon (and the policy code and libraries it brings:
# JWT, CORS, transforms, rate limits, functions) is imported by gateway(), never by a sidecar
from .accesslog import AccessLog
from .admin import Admin
from .authz import Authz
from .config import Config
from .decisions import Decisions
from .etcd import Etcd
from .forward import Forward
from .forwarded import Forwarded
from .health import Health
from .hopbyhop import HopByHop
from .httpguard import HttpGuard
from .idempotency import Idempotency
from .inbound import Inbound
from .mdns import Mdns
from .metrics import Metrics
from .normalize import Normalize
from .outbound import Outbound
from .plugins import Plugins
from .recent import Recent
from .recorder import Recorder
from .requestid import RequestId
from .timeouts import Timeouts
from .tls import Tls
from .tracing import Tracing

def gateway(state: MeshState | None = None) -> list:
    """The edge gateway's addons, in the order every request meets them."""
    from .auththrottle import AuthThrottle
    from .authn import Authn
    from .canary import Canary
    from .cors import Cors
    from .dispatch import Dispatch
    from .function import Function
    from .ipfilter import IpFilter
    from .mirror import Mirror
    from .ratelimit import RateLimit
    from .router import Router
    from .sanitize import Sanitize
    from .securityheaders import SecurityHeaders
    from .sizelimit import SizeLimit
    from .transform import Transform
    from .versioning import Versioning

    state = state or MeshState()
    redact.install()       # credentials never reach a log line, whoever logs
    tracing = Tracing(state, "mitmesh-gateway")
    ratelimit = RateLimit(state)
    return [
        Config(state),     # first: loads mesh.yaml and pins the live snapshot to the flow
        Plugins(state),    # user plugins: loaded with each config, placed beside the stages they name
        Admin(state),      # admin listener (/status, /metrics, /record, /flows); not on the request path
        Mdns(state),       # keeps the registry live over mDNS; not on the request path
        Etcd(state),       # the same over etcd (leases and a watch); both may run, merged by address
        Health(state),     # active health checks of endpoints; not on the request path
        HttpGuard(state),  # every connection's HTTP layer: body limits while reading, no mitmproxy error pages
        Timeouts(state),   # closes connections too slow to send a head or body, or idle; follows every flow
        HopByHop(),        # fields Connection nominates leave before any stage reads headers
        RequestId(),       # before anything may answer, so every reply carries the id
        Normalize(),       # first on the request path: one checked head and normalized path for all after
        tracing,           # server span from the incoming trace context, before any decision
        Sanitize(),        # drops client-sent claim headers before routing or upstreams see them
        Tls(state),        # downstream TLS and mTLS; refuses plaintext where TLS is required
        IpFilter(),        # cheapest refusal: the listener's address lists, before any parsing
        Router(),          # picks the route; 404, direct and redirect answers end here
        # the route's stages: mitmproxy calls Dispatch, which runs only those the route's plan uses
        # (a stage's plan_fields; those without run for every routed flow), in this order
        Dispatch(
            Cors(),            # preflights answered before authentication (browsers send no credentials)
            SizeLimit(),       # 413/431 before authentication reads or introspects anything
            Versioning(),      # the API version picks the cluster; an unknown version is a 400 before any work
            AuthThrottle(ratelimit.limiters),  # an address with too many failed authentications: 429 before they are checked
            Authn(state),      # who is calling: JWT, opaque token, API key; 401/403
            Authz(),           # may they: deny and allow rules on peer identity, request and claims
            ratelimit,         # after authentication: keyed by the verified consumer; counts complete requests
            Idempotency(),     # admitted requests only (a refused one takes no key), before they change; duplicates end here
            Canary(),          # sticky split after authentication too (the key may be a verified claim)
            Transform(),       # request side once the request is admitted; response side before it leaves
            Forwarded(),       # X-Forwarded-* once we know the request goes upstream
            Mirror(state),     # copies the request exactly as the upstream will get it, just before Forward
            Function(state),   # a function route is answered here, after every policy, instead of by Forward
        ),
        Forward(state, tracing),  # the upstream attempts (a client span each), answers every routed flow
        SecurityHeaders(), # response hook: security headers on every answer, ours or upstream's
        # response side: these only observe the finished flow, so they come last
        Decisions(),       # the decision log into flow metadata and mitmweb's Comment tab
        Metrics(state),    # Prometheus observations from FlowState
        AccessLog(state),  # one JSON line, after the decisions are complete
        Recorder(state),   # saves the flow (with its decisions) while a recording is on
        Recent(state),     # last: keeps what was decided for /flows, once the answer is known
    ]


def sidecar(state: MeshState | None = None) -> list:
    """A sidecar's addons: inbound flows go to the local app, outbound flows to other services."""
    state = state or MeshState()
    redact.install()       # credentials never reach a log line, whoever logs
    tracing = Tracing(state, "mitmesh-sidecar")
    return [
        Config(state, role="sidecar"),  # first: config and workload; pins snapshot and direction
        Plugins(state, role="sidecar"),  # user plugins of inbound and outbound flows, placed by stage
        Admin(state, role="sidecar"),   # admin listener (/status shows the registry); off the path
        Mdns(state),       # mDNS browse, and announces this instance while its app is healthy
        Etcd(state),       # the same over etcd: a lease kept alive while the app is healthy
        Health(state),     # active health checks (the app, and endpoints sent to); off the path
        HttpGuard(state),  # every connection's HTTP layer: body limits while reading, no mitmproxy error pages
        Timeouts(state),   # closes connections too slow to send a head or body, or idle; follows every flow
        HopByHop(),        # fields Connection nominates leave before any stage reads headers
        RequestId(),       # before anything may answer, so every reply carries the id
        Normalize(),       # first on the request path: one checked head and normalized path for all after
        tracing,           # server span (inbound: continues the caller's trace; outbound: the app's)
        Tls(state),        # downstream TLS on the inbound listener (mTLS attaches here)
        Inbound(),         # inbound policy: the local app is the only destination
        Authz(),           # inbound only: the service's authz policy on the verified mTLS peer (403)
        Outbound(state),   # outbound policy: the host (in a pod: the virtual address) names a service
        Idempotency(),     # outbound only (a caller-side policy): duplicates end here, before any attempt
        Forwarded(),       # X-Forwarded-For on inbound; nothing on outbound
        Forward(state, tracing),  # the attempts (a client span each), through the shared keep-alive pool
        # response side: observe the finished flow
        Decisions(),       # the decision log into flow metadata and mitmweb's Comment tab
        Metrics(state),    # Prometheus observations, by direction
        AccessLog(state),  # one JSON line per request, also at every sidecar
        Recorder(state),   # saves the flow while a recording is on
        Recent(state),     # last: keeps what was decided for /flows, once the answer is known
    ]
