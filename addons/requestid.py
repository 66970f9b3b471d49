"""x-request-id: passed on when the client sent a sane one, generated otherwise, echoed back."""

from __future__ import annotations

import os
import re

from mitmproxy import http

from . import keys

_SANE = re.compile(r"^[A-Za-z0-9._:\-]{1,128}$")


def new_id() -> str:
    """A random UUID (version 4) string; about 3x cheaper than str(uuid.uuid4())."""
    h = bytearray(os.urandom(16))
    h[6] = (h[6] & 0x0F) | 0x40
    h[8] = (h[8] & 0x3F) | 0x80
    x = h.hex()
    return f"{x[:8]}-{x[8:12]}-{x[12:16]}-{x[16:20]}-{x[20:]}"


class RequestId:
    def requestheaders(self, flow: http.HTTPFlow):
        st = keys.get(flow)
        if st is None:
            return
        rid = flow.request.headers.get("x-request-id")
        if rid is None or not _SANE.fullmatch(rid):
            rid = new_id()
            flow.request.headers["x-request-id"] = rid
        st.request_id = rid
        flow.metadata[keys.REQUEST_ID] = rid

    def response(self, flow: http.HTTPFlow):
        st = keys.get(flow)
        if st is not None and st.request_id and flow.response is not None:
            flow.response.headers["x-request-id"] = st.request_id
