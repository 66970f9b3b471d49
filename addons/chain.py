"""The request path, in one place. Order matters: each entry says why it sits where it does."""

from __future__ import annotations

from mesh.state import MeshState

from .admin import Admin
from .canary import Canary
from .config import Config
from .forward import Forward
from .forwarded import Forwarded
from .mirror import Mirror
from .ratelimit import RateLimit
from .requestid import RequestId
from .router import Router
from .tls import Tls
from .transform import Transform
from .versioning import Versioning


def gateway(state: MeshState | None = None) -> list:
    """The edge gateway's addons, in the order every request meets them."""
    state = state or MeshState()
    return [
        Config(state),     # first: loads mesh.yaml and pins the live snapshot to the flow
        Admin(state),      # admin listener; not on the request path
        RequestId(),       # before anything may answer, so every reply carries the id
        Tls(state),        # downstream TLS handshake; refuses plain HTTP on HTTPS listeners
        Router(),          # picks the route; 404, direct and redirect answers end here
        Versioning(),      # the API version picks the cluster; an unknown version is a 400 before any work
        RateLimit(state),  # after authentication: keyed by the verified consumer; a 429 costs no upstream
        Canary(),          # sticky split after authentication too (the key may be a verified claim)
        Transform(),       # request side once the request is admitted; response side before it leaves
        Forwarded(),       # X-Forwarded-* once we know the request goes upstream
        Mirror(state),     # copies the request exactly as the upstream will get it, just before Forward
        Forward(state),    # last: the upstream attempt, answers every flow that got this far
    ]
