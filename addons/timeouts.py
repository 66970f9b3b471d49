"""Timeouts: closes downstream connections that are too slow to send a request head or body, or idle
too long between requests (`request_headers_timeout`, `request_timeout`, `idle_timeout`), so slowloris
clients cannot hold connections open. mitmproxy's own `tcp_timeout` only sees silence, not trickling.

The decisions are mesh/core/downstream.py's; this addon follows each connection through mitmproxy's hooks
and closes it the way mitmproxy's inactivity timeout does (cancelling its connection handler).
"""

from __future__ import annotations

import asyncio
import logging
import time

from mitmproxy import connection, ctx, http

from mesh.core.loops import Loop
from mesh.core import downstream
from mesh.core.state import MeshState

log = logging.getLogger("mitmesh.timeouts")


class Timeouts:
    def __init__(self, state: MeshState):
        self.state = state
        self.connections: dict[str, downstream.Connection] = {}
        self._activity: dict[str, float] = {}  # mitmproxy's last activity seen on an idle connection
        self._loop = Loop("mitmesh-timeouts", self._watch)

    def running(self):
        self._loop.start()

    async def done(self):
        await self._loop.stop()

    def client_connected(self, client: connection.Client):
        self.connections[client.id] = downstream.Connection(time.monotonic())

    def client_disconnected(self, client: connection.Client):
        self.connections.pop(client.id, None)
        self._activity.pop(client.id, None)

    # these follow every flow, answered or not: no early return on flow.response

    def requestheaders(self, flow: http.HTTPFlow):
        conn = self.connections.get(flow.client_conn.id)
        if conn is not None:  # its body (if any) is still to come: the `request` hook ends that
            conn.head(flow.id, time.monotonic())

    def request(self, flow: http.HTTPFlow):
        conn = self.connections.get(flow.client_conn.id)
        if conn is not None:
            conn.complete(flow.id)

    def response(self, flow: http.HTTPFlow):
        conn = self.connections.get(flow.client_conn.id)
        if conn is not None:
            conn.done(flow.id, time.monotonic())
            self._activity.pop(flow.client_conn.id, None)

    error = response

    async def _watch(self):
        while True:
            snap = self.state.snapshot
            opts = snap.http if snap is not None else None
            limits = downstream.Timeouts(opts.request_headers_timeout, opts.request_timeout,
                                         opts.idle_timeout) if opts is not None else None
            await asyncio.sleep(limits.tick if limits is not None else 1.0)
            if limits is not None and self.connections:
                self._sweep(limits)

    def _sweep(self, limits: downstream.Timeouts) -> None:
        proxyserver = ctx.master.addons.get("proxyserver")
        handlers = proxyserver.connections if proxyserver is not None else {}
        now = time.monotonic()
        for cid, conn in list(self.connections.items()):
            handler = handlers.get(cid)
            if handler is None:
                continue
            io = handler.transports.get(handler.client)
            transport = getattr(io.writer, "transport", None) if io is not None else None
            if transport is not None and transport.get_write_buffer_size():
                conn.sending(now)  # an answer still on its way to a slow reader is no idleness
            elif conn.served and not conn.streams and handler.client.alpn != b"h2":
                self._idle_activity(cid, conn, handler, now)
            why = conn.overdue(now, limits)
            if why is not None:
                self._close(cid, handler, why)

    def _idle_activity(self, cid: str, conn: downstream.Connection, handler, now: float) -> None:
        """On an idle HTTP/1 connection, any event after it settled is bytes of a next request head."""
        seen = handler.timeout_watchdog.last_activity
        if now - conn.idle_since < 0.2:  # the answer's own events may still come in
            return
        before = self._activity.setdefault(cid, seen)
        if seen != before:
            conn.activity(now)

    def _close(self, cid: str, handler, why: str) -> None:
        self.connections.pop(cid, None)
        self._activity.pop(cid, None)
        peer = handler.client.peername
        log.info(f"closing {peer[0]}:{peer[1]}: {why}")
        io = handler.transports.get(handler.client)
        if io is not None and io.handler is not None:
            io.handler.cancel(why)
