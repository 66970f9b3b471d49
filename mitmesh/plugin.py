"""The stable API of a plugin: what mitmesh decided about a flow, and one way to answer it.

A plugin is a plain mitmproxy addon; these functions read the state the built-in stages wrote
(route, cluster, identity, claims) and answer a request in the project's error shape. Every
function takes the `HTTPFlow` a hook was given and works in any hook; what a stage decides is
known once that stage has run (the route after `router`, the identity after `authn`, the cluster
after `forward`). docs/reference/plugin-api.md lists what each returns and when.
"""

from __future__ import annotations

from types import MappingProxyType
from typing import Any, Mapping

from mitmproxy import http

from addons import keys, replies
from addons.plugins import current, who

__all__ = ["claims", "cluster", "decide", "direction", "identity", "peer", "reply", "request_id",
           "route", "service"]


def route(flow: http.HTTPFlow) -> str | None:
    """The name of the route the request matched (`routes[].name`; on a sidecar `inbound` or
    `outbound.SERVICE`), or None before routing or when nothing matched."""
    st = keys.get(flow)
    return st.route.name if st is not None and st.route is not None else None


def service(flow: http.HTTPFlow) -> str | None:
    """The service the request is for (a forwarding route's), or None."""
    st = keys.get(flow)
    if st is None or st.route is None:
        return None
    return getattr(st.route.action, "service", None)


def cluster(flow: http.HTTPFlow) -> str | None:
    """The cluster chosen for the request (`catalog/v2`), once a stage chose it (versioning, canary,
    or forwarding), else None."""
    st = keys.get(flow)
    return st.cluster if st is not None else None


def identity(flow: http.HTTPFlow) -> str | None:
    """Who the caller is, once verified: an API key's consumer, a JWT subject, or a workload's
    SPIFFE ID (mTLS); None for an anonymous caller or before authentication."""
    st = keys.get(flow)
    return st.principal if st is not None else None


def peer(flow: http.HTTPFlow) -> str | None:
    """The SPIFFE ID of the caller's verified mTLS certificate, or None."""
    st = keys.get(flow)
    return st.peer if st is not None else None


def claims(flow: http.HTTPFlow) -> Mapping[str, Any]:
    """The verified token claims (read-only), empty when the caller presented none."""
    st = keys.get(flow)
    return MappingProxyType(dict(st.claims)) if st is not None and st.claims else MappingProxyType({})


def request_id(flow: http.HTTPFlow) -> str:
    """The request id every answer and log line of this request carries."""
    st = keys.get(flow)
    return st.request_id if st is not None else flow.request.headers.get("x-request-id", "")


def direction(flow: http.HTTPFlow) -> str | None:
    """On a sidecar, `inbound` (to its app) or `outbound` (from its app); None on the gateway."""
    st = keys.get(flow)
    return st.direction if st is not None else None


def decide(flow: http.HTTPFlow, what: str) -> None:
    """Record a decision of this plugin: one line of the flow's decision log (`plugin NAME: what`),
    shown in mitmweb's Comment tab, /flows and `mesh_decisions_log`."""
    st = keys.get(flow)
    if st is not None:
        st.decide(who(current.get() or "?"), what)


def reply(flow: http.HTTPFlow, status: int, error: str, reason: str,
          headers: dict[str, str] | None = None) -> None:
    """Answer the request now, as every built-in stage does: JSON `{"error", "reason",
    "request_id", "plugin"}` with this status; the upstream is not called. Also one decision line."""
    name = current.get() or "?"
    decide(flow, f"answered {status} {error}: {reason}")
    replies.reply(flow, status, error, reason, headers, plugin=name)
