"""Every response the proxy makes itself: JSON with `error`, `reason` and the request id."""

from __future__ import annotations

import json
import time

from mitmproxy import http

from mesh.core import modes

from . import keys
from .requestid import new_id


# the `error` of a refusal, by the outcome mitmweb marks it with (addons/decisions.py)
DENIED = frozenset({"missing_credentials", "invalid_credentials", "invalid_token", "invalid_api_key",
                    "insufficient_scope", "insufficient_claims", "access_denied", "ip_denied",
                    "mtls_required", "tls_required", "cors_denied"})
LIMITED = frozenset({"rate_limited", "ratelimit_unavailable", "too_many_failed_authentications"})


def reply(flow: http.HTTPFlow, status: int, error: str, reason: str,
          headers: dict[str, str] | None = None, **extra) -> None:
    st = keys.get(flow)
    rid = st.request_id if st else flow.request.headers.get("x-request-id", "")
    if st is not None:
        st.error = error  # what the proxy answered itself, for metrics and logs
    flow.response = make(status, error, reason, rid, headers, **extra)
    flow.response.timestamp_start = time.time()
    _show_downstream(flow)


def make(status: int, error: str, reason: str, rid: str, headers: dict[str, str] | None = None,
         **extra) -> http.Response:
    body = {"error": error, "reason": reason, "request_id": rid, **extra}
    h = {"content-type": "application/json", "cache-control": "no-store"}
    if rid:
        h["x-request-id"] = rid
    if headers:
        h.update(headers)
    return http.Response.make(status, json.dumps(body).encode() + b"\n", h)


def without_flow(status: int, error: str, reason: str) -> http.Response:
    """An answer to a request mitmproxy refused before any flow or addon saw it (a malformed head,
    a broken body framing): the same JSON shape, a fresh request id, and the connection closed."""
    return make(status, error, reason, new_id(), {"connection": "close"})


def raw(flow: http.HTTPFlow, status: int, body: bytes, headers: tuple[tuple[str, str], ...]) -> None:
    """A configured direct response (a route's `direct` action)."""
    flow.response = http.Response.make(status, body, dict(headers))
    _show_downstream(flow)


def _show_downstream(flow: http.HTTPFlow) -> None:
    """An answer nobody upstream gave: the flow shows the address the client called (mitmweb, saved
    flows) instead of the listener's placeholder reverse target, which is never contacted."""
    req, sockname = flow.request.data, flow.client_conn.sockname
    if (req.host, req.port) == modes.PLACEHOLDER_ADDRESS and sockname:
        req.host, req.port = sockname[0], sockname[1]
        req.scheme = b"https" if flow.client_conn.tls_established else b"http"
