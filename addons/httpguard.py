"""HttpGuard: every HTTP connection a listener takes is read by mitmesh's guarded HTTP layer
(addons/httplayer.py): bodies stop at the route's limit, early answers leave at once, no mitmproxy
error page reaches a client, request heads have a size cap, HTTP/2 rapid reset gets GOAWAY; and a
client connection mitmproxy is done with is closed, also where its handler left it open."""

from __future__ import annotations

from mitmproxy import connection, ctx
from mitmproxy.proxy import layer
from mitmproxy.proxy.layers.http import HttpLayer

from mesh.config.http import Http
from mesh.core.state import MeshState, Snapshot

from .httplayer import GuardedHttpLayer, Limits


class HttpGuard:
    def __init__(self, state: MeshState):
        self.state = state
        self._limits: Limits | None = None
        self._built_for: Snapshot | None = None

    def next_layer(self, nextlayer: layer.NextLayer):
        # the HttpLayer mitmproxy's own NextLayer addon made becomes ours in place, so the stack and
        # its context stay mitmproxy's. The lean runtime adds NextLayer before the chain; mitmdump
        # and mitmweb call a script's addons before it (ScriptLoader comes first), so there it is
        # asked here, and then leaves the layer it sees decided alone
        if nextlayer.layer is None and (decides := ctx.master.addons.get("nextlayer")) is not None:
            decides.next_layer(nextlayer)
        child = nextlayer.layer
        while child is not None:
            if type(child) is HttpLayer:
                child.__class__ = GuardedHttpLayer
                child.limits = self._current()
                return
            child = getattr(child, "child_layer", None)

    def client_disconnected(self, client: connection.Client):
        # mitmproxy's connection handler closes the client's socket as it leaves, except when the
        # close a layer asks for (a refused request: 400, 431) cancels it while it waits for its
        # turn to hand on the next read: more of the request already buffered, and a hook that
        # ended at once (hook tasks start eagerly) queued for that turn ahead of it. The
        # cancellation then leaves from its `await server_event` and skips the close: the socket
        # stayed open, unread, until the garbage collector found its writer (~20 s). The client's
        # transport is still listed here only then.
        proxyserver = ctx.master.addons.get("proxyserver")
        handler = proxyserver.connections.get(client.id) if proxyserver is not None else None
        io = handler.transports.get(client) if handler is not None else None
        if io is not None and io.writer is not None:
            io.writer.close()  # after what is still buffered for it: the answer leaves first

    def _current(self) -> Limits:
        snap = self.state.snapshot
        if self._limits is None or snap is not self._built_for:
            http = snap.http if snap is not None else Http()
            self._limits = Limits(http.max_request_headers, http.http2.max_stream_resets,
                                  http.http2.stream_reset_window,
                                  fast=snap is not None and snap.engine == "fast")
            self._built_for = snap
        return self._limits
