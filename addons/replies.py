"""Every response the proxy makes itself: JSON with `error`, `reason` and the request id."""

from __future__ import annotations

import json
import time

from mitmproxy import http

from . import keys


def reply(flow: http.HTTPFlow, status: int, error: str, reason: str,
          headers: dict[str, str] | None = None, **extra) -> None:
    st = keys.get(flow)
    rid = st.request_id if st else flow.request.headers.get("x-request-id", "")
    if st is not None:
        st.error = error  # what the proxy answered itself, for metrics and logs
    body = {"error": error, "reason": reason, "request_id": rid, **extra}
    h = {"content-type": "application/json", "cache-control": "no-store"}
    if rid:
        h["x-request-id"] = rid
    if headers:
        h.update(headers)
    flow.response = http.Response.make(status, json.dumps(body).encode() + b"\n", h)
    flow.response.timestamp_start = time.time()


def raw(flow: http.HTTPFlow, status: int, body: bytes, headers: tuple[tuple[str, str], ...]) -> None:
    """A configured direct response (a route's `direct` action)."""
    flow.response = http.Response.make(status, body, dict(headers))
