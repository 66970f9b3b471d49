"""Every response the proxy makes itself: JSON with `error`, `reason` and the request id."""

from __future__ import annotations

import json
import time

from mitmproxy import http
from mitmproxy.net.http import status_codes

from mesh.core import modes

from . import keys
from .requestid import new_id


# the `error` of a refusal, by the outcome mitmweb marks it with (addons/decisions.py)
DENIED = frozenset({"missing_credentials", "invalid_credentials", "invalid_token", "invalid_api_key",
                    "insufficient_scope", "insufficient_claims", "access_denied", "ip_denied",
                    "mtls_required", "tls_required", "cors_denied"})
LIMITED = frozenset({"rate_limited", "ratelimit_unavailable", "too_many_failed_authentications",
                     "function_busy"})
PLUGIN_FAILED = frozenset({"plugin_failed", "plugin_timeout"})  # a user plugin's hook raised or hung
OVER_BUDGET = "budget"  # how a slow plugin hook's decision ends (addons/plugins.py)


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
    """A configured direct response (a route's `direct` action), or a function's result; a header
    may repeat (set-cookie)."""
    fields = tuple((k.encode("utf-8", "surrogateescape"), v.encode("utf-8", "surrogateescape")) for k, v in headers)
    flow.response = http.Response.make(status, body, http.Headers(fields))
    _show_downstream(flow)


def _show_downstream(flow: http.HTTPFlow) -> None:
    """An answer nobody upstream gave: the flow shows the address the client called (mitmweb, saved
    flows) instead of the listener's placeholder reverse target, which is never contacted."""
    req, sockname = flow.request.data, flow.client_conn.sockname
    if (req.host, req.port) == modes.PLACEHOLDER_ADDRESS and sockname:
        req.host, req.port = sockname[0], sockname[1]
        req.scheme = b"https" if flow.client_conn.tls_established else b"http"


def kept(flow: http.HTTPFlow, status: int, headers: tuple[tuple[bytes, bytes], ...], body: bytes,
         marker: tuple[bytes, bytes]) -> None:
    """An upstream's answer kept earlier and sent again (Idempotency-Key), marked by `marker`, with
    this request's id."""
    st = keys.get(flow)
    fields = [*headers, marker, (b"content-length", str(len(body)).encode())]
    if st is not None and st.request_id:
        fields.append((b"x-request-id", st.request_id.encode()))
    reason = status_codes.RESPONSES.get(status, "").encode()
    flow.response = http.Response(b"HTTP/1.1", status, reason, http.Headers(fields), body, None,
                                  time.time(), time.time())
    _show_downstream(flow)
