"""What one upstream attempt ends in, in the forwarding engine's terms: a response, or a failure of
an Envoy kind that says whether any byte of the request was sent. The pool (mesh/core/upstream.py)
raises these; the engine (mesh/resilience/forwarding.py) decides on them."""

from __future__ import annotations

from dataclasses import dataclass


class UpstreamError(Exception):
    """An attempt that produced no usable response. `kind` names it in Envoy's terms; `sent` says
    whether any byte of the request was written to a connection (a retry of a request never sent
    cannot run it twice), `reused` whether that connection came from the pool."""

    kind = "error"
    sent = False
    reused = False

    def on(self, sent: bool, reused: bool) -> UpstreamError:
        self.sent, self.reused = sent, reused
        return self


class ConnectFailure(UpstreamError):
    kind = "connect_failure"


class Reset(UpstreamError):
    kind = "reset"


class Timeout(UpstreamError):
    kind = "timeout"


class ProtocolError(UpstreamError):
    kind = "protocol_error"


class Stale(Reset):
    """A reused keep-alive connection ended before any response byte: the upstream may have closed
    it as the request arrived (never read it) or read it, acted and reset (Go's errServerClosedIdle
    case). Only the forwarding engine decides whether to send again, as a counted attempt."""


@dataclass(slots=True)
class Response:
    status: int
    reason: bytes
    headers: list[tuple[bytes, bytes]]
    body: bytes
    http_version: bytes = b"HTTP/1.1"
    keep_alive: bytes | None = None  # the upstream's Keep-Alive header (timeout=N: how long it keeps idle connections)
