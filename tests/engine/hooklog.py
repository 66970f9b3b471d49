"""A user's addon for the engine differential test (`mitmdump -s tests/engine/hooklog.py`): writes one
JSON line per HTTP hook, with the flow's fields as that hook sees them, to $MITMESH_HOOKLOG."""

from __future__ import annotations

import json
import os


def _fields(flow) -> dict:
    req, resp = flow.request, flow.response
    out = {"live": flow.live, "killed": flow.killable is False and flow.error is not None,
           "error": flow.error.msg if flow.error else None,
           "request": {"method": req.method, "scheme": req.scheme, "host": req.host, "port": req.port,
                       "authority": req.authority, "path": req.path, "http_version": req.http_version,
                       "headers": [[k, v] for k, v in req.headers.items(multi=True)],
                       "content": (req.raw_content or b"").decode("latin-1") if req.raw_content is not None else None,
                       "ended": req.timestamp_end is not None},
           "client_tls": flow.client_conn.tls_established, "websocket": flow.websocket is not None}
    if resp is not None:
        out["response"] = {"status": resp.status_code, "http_version": resp.http_version,
                           "headers": [[k, v] for k, v in resp.headers.items(multi=True)],
                           "content": resp.raw_content.decode("latin-1") if resp.raw_content is not None else None}
    return out


class HookLog:
    def __init__(self):
        self.path = os.environ["MITMESH_HOOKLOG"]

    def _write(self, hook: str, flow) -> None:
        with open(self.path, "a") as f:
            f.write(json.dumps({"hook": hook, **_fields(flow)}) + "\n")

    def requestheaders(self, flow):
        self._write("requestheaders", flow)

    def request(self, flow):
        self._write("request", flow)

    def responseheaders(self, flow):
        self._write("responseheaders", flow)

    def response(self, flow):
        self._write("response", flow)

    def error(self, flow):
        self._write("error", flow)


addons = [HookLog()]
