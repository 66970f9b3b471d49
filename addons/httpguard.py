"""HttpGuard: every HTTP connection a listener takes is read by mitmesh's guarded HTTP layer
(addons/httplayer.py): bodies stop at the route's limit, early answers leave at once, no mitmproxy
error page reaches a client, request heads have a size cap, HTTP/2 rapid reset gets GOAWAY."""

from __future__ import annotations

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
        # runs after mitmproxy's own NextLayer addon has decided (it is added before the chain); the
        # HttpLayer it made becomes ours in place, so the stack and its context stay mitmproxy's
        child = nextlayer.layer
        while child is not None:
            if type(child) is HttpLayer:
                child.__class__ = GuardedHttpLayer
                child.limits = self._current()
                return
            child = getattr(child, "child_layer", None)

    def _current(self) -> Limits:
        snap = self.state.snapshot
        if self._limits is None or snap is not self._built_for:
            http = snap.http if snap is not None else Http()
            self._limits = Limits(http.max_request_headers, http.http2.max_stream_resets,
                                  http.http2.stream_reset_window,
                                  fast=snap is not None and snap.engine == "fast")
            self._built_for = snap
        return self._limits
