"""Access log: one JSON line per request at every proxy, with ids, route, upstream and decisions.

Lines are buffered and written by a background task (whole lines per write, so workers sharing a
file or stdout never interleave inside a line); secrets are redacted.

Alone: `mitmdump -s addons/accesslog.py --set mesh_access_log='{path: access.log}'` (default stdout).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time

from mitmproxy import http

from addons import alone, keys
from mesh.core.loops import Loop
from mesh.security import redact
from mesh.config import schema
from mesh.core.state import MeshState, Snapshot

log = logging.getLogger("mitmesh.accesslog")


class AccessLog:
    def __init__(self, state: MeshState):
        self.state = state
        self._lines: list[str] = []
        self._fd = -1
        self._for: Snapshot | None = None
        self._loop = Loop("mitmesh-accesslog", self._flusher)

    def _target(self) -> int:
        """The fd to write to for the current snapshot's config (-1: access log off)."""
        snap = self.state.snapshot
        if snap is self._for:
            return self._fd
        cfg = snap.config.observability.access_log if snap else None
        if self._fd > 2:
            os.close(self._fd)
        self._fd = -1
        if cfg is not None and cfg.enabled:
            if cfg.path == "-":
                self._fd = 1
            else:
                path = os.path.join(os.path.dirname(os.path.abspath(snap.file)), cfg.path)
                try:
                    os.makedirs(os.path.dirname(path), exist_ok=True)
                    self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
                except OSError as e:
                    log.error(f"access log {path}: {e.strerror}; access log off")
        self._for = snap
        return self._fd

    def running(self):
        self._loop.start()

    async def done(self):
        await self._loop.stop()
        self._flush()

    async def _flusher(self):
        while True:
            await asyncio.sleep(0.2)
            self._flush()

    def _flush(self) -> None:
        if not self._lines:
            return
        data = "".join(self._lines).encode()
        self._lines.clear()
        fd = self._target()
        if fd >= 0:
            try:
                os.write(fd, data)
            except OSError as e:
                log.error(f"access log write failed: {e.strerror}")

    def response(self, flow: http.HTTPFlow):
        self._record(flow)

    def error(self, flow: http.HTTPFlow):
        if flow.response is None:
            self._record(flow)

    def _record(self, flow: http.HTTPFlow) -> None:
        st = keys.get(flow)
        if st is None or self._target() < 0:
            return
        req, resp = flow.request, flow.response
        now = time.time()
        entry = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now)) + f".{int(now * 1000) % 1000:03d}Z",
            "proxy": st.snapshot.role,  # who wrote the line: gateway or sidecar, and which one
            "instance": st.snapshot.instance,
            "request_id": st.request_id,
            "trace_id": st.trace_id,
            "direction": st.direction or "edge",
            "listener": st.listener.name if st.listener is not None else None,
            "client": flow.client_conn.peername[0] if flow.client_conn.peername else None,
            "principal": st.principal,
            "method": req.method,
            "host": req.host_header,
            "path": st.downstream_path,
            "route": st.route.name if st.route else None,
            "service": st.destination()[0] or None,
            "cluster": st.cluster,
            "upstream": str(st.endpoint) if st.endpoint else _peer(flow),
            "attempts": st.attempts,
            "status": resp.status_code if resp else None,
            "duration_ms": round((time.monotonic() - st.started) * 1000, 2),
            "bytes_in": len(req.raw_content or b""),
            "bytes_out": len(resp.raw_content or b"") if resp else 0,
            "error": flow.error.msg if flow.error else None,
        }
        # the decision lines as Decisions logged them (already looked at and masked), else made here
        lines = st.decision_lines
        checked = lines is not None and len(lines) == len(st.decisions)
        entry["decisions"] = lines if checked else [f"{who}: {what}" for who, what in st.decisions]
        # rarely a credential in the path, a header-borne id or a decision: the entry's keys are
        # fixed and none names a credential, so its strings are all `redact.value` would look at
        strings = [v for v in entry.values() if isinstance(v, str)]
        if redact.masks("\n".join(strings if checked else strings + entry["decisions"])):
            entry = redact.value(entry)
        line = json.dumps(entry, separators=(",", ":"))
        self._lines.append(line + "\n")
        if len(self._lines) >= 256:
            self._flush()


def _peer(flow: http.HTTPFlow) -> str | None:
    """Where plain mitmproxy (loaded alone, no Forward) sent the request, if it did."""
    peer = flow.server_conn.peername
    return f"{peer[0]}:{peer[1]}" if peer else None


addons = alone.script(AccessLog(alone.state()), blocks=[alone.Block(
    "mesh_access_log", "observability", "access_log", schema.AccessLog,
    "Where the access log goes: an observability.access_log block of mesh.yaml in YAML flow style, "
    "e.g. '{path: logs/access.log}' (relative to the working directory). Empty: one JSON line per "
    "request on stdout.")])
