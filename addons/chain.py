"""The request path, in one place. Order matters: each entry says why it sits where it does."""

from __future__ import annotations

from mesh.state import MeshState

from .admin import Admin
from .config import Config
from .forward import Forward
from .forwarded import Forwarded
from .health import Health
from .inbound import Inbound
from .mdns import Mdns
from .outbound import Outbound
from .recent import Recent
from .requestid import RequestId
from .router import Router
from .tls import Tls


def gateway(state: MeshState | None = None) -> list:
    """The edge gateway's addons, in the order every request meets them."""
    state = state or MeshState()
    return [
        Config(state),     # first: loads mesh.yaml and pins the live snapshot to the flow
        Admin(state),      # admin listener; not on the request path
        Mdns(state),       # keeps the registry live over mDNS; not on the request path
        Health(state),     # active health checks of endpoints; not on the request path
        RequestId(),       # before anything may answer, so every reply carries the id
        Tls(state),        # downstream TLS handshake; refuses plain HTTP on HTTPS listeners
        Router(),          # picks the route; 404, direct and redirect answers end here
        Forwarded(),       # X-Forwarded-* once we know the request goes upstream
        Forward(state),    # the upstream attempt, answers every flow that got this far
        Recent(state),     # last: keeps what was decided for /flows, once the answer is known
    ]


def sidecar(state: MeshState | None = None) -> list:
    """A sidecar's addons: inbound flows go to the local app, outbound flows to other services."""
    state = state or MeshState()
    return [
        Config(state, role="sidecar"),  # first: config and workload; pins snapshot and direction
        Admin(state, role="sidecar"),   # admin listener (/status shows the registry); off the path
        Mdns(state),       # mDNS browse, and announces this instance while its app is healthy
        Health(state),     # active health checks (the app, and endpoints sent to); off the path
        RequestId(),       # before anything may answer, so every reply carries the id
        Tls(state),        # downstream TLS on the inbound listener (mTLS attaches here)
        Inbound(),         # inbound policy: the local app is the only destination
        Outbound(),        # outbound policy: the host names a service; CONNECT is refused
        Forwarded(),       # X-Forwarded-For on inbound; nothing on outbound
        Forward(state),    # the attempt, through the shared keep-alive pool
        Recent(state),     # last: keeps what was decided for /flows, once the answer is known
    ]
