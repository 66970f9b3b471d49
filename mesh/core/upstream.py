"""A pooled asyncio HTTP/1.1 client for upstream requests, shared across all downstream connections.

mitmproxy reuses an upstream connection only within one downstream connection and cannot retry;
forwarding through this pool lets every downstream connection share warm keep-alive connections
and lets retries, deadlines and breakers decide per attempt.
"""

from __future__ import annotations

import asyncio
import os
import ssl as _ssl
import time
from dataclasses import dataclass, field

from mesh.security import mtls

HOP_BY_HOP = frozenset(
    {b"connection", b"keep-alive", b"proxy-connection", b"transfer-encoding", b"te",
     b"trailer", b"upgrade"}
)
IDEMPOTENT = frozenset({b"GET", b"HEAD", b"OPTIONS", b"PUT", b"DELETE", b"TRACE"})
MAX_HEAD = 64 * 1024


class UpstreamError(Exception):
    """An attempt that produced no usable response. `kind` names it in Envoy's terms."""

    kind = "error"


class ConnectFailure(UpstreamError):
    kind = "connect_failure"


class Reset(UpstreamError):
    kind = "reset"


class Timeout(UpstreamError):
    kind = "timeout"


class ProtocolError(UpstreamError):
    kind = "protocol_error"


@dataclass(slots=True)
class Response:
    status: int
    reason: bytes
    headers: list[tuple[bytes, bytes]]
    body: bytes
    http_version: bytes = b"HTTP/1.1"


@dataclass(slots=True)
class _Conn:
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    idle_since: float = 0.0
    used: int = 0
    ssl: _ssl.SSLContext | None = None  # the context it was opened with

    def usable(self, now: float, idle_timeout: float) -> bool:
        return (
            not self.writer.is_closing()
            and not self.reader.at_eof()
            and not self.reader._buffer  # unexpected bytes on an idle connection
            and now - self.idle_since < idle_timeout
        )

    def close(self) -> None:
        self.writer.close()


@dataclass(slots=True)
class _Bucket:
    idle: list[_Conn] = field(default_factory=list)
    ssl: _ssl.SSLContext | None = None  # the current context; older connections are retired


class Pool:
    """Keep-alive connections per upstream (host, port, TLS, peer identity); LIFO so hot ones stay warm.

    When the TLS context for an upstream changes (a renewed workload certificate), idle connections
    made with the old one are closed and busy ones are closed when they come back: new connections
    present the new certificate, and no request in flight is cut.
    """

    def __init__(self, *, max_idle: int = 64, idle_timeout: float = 30.0, max_body: int = 64 << 20):
        self.max_idle = max_idle
        self.idle_timeout = idle_timeout
        self.max_body = max_body
        self._buckets: dict[tuple, _Bucket] = {}
        self.opened = 0  # connections opened since start, for tests and /status
        self.local_address: str | None = None  # bind upstream connections here (a sidecar's address)

    async def request(
        self,
        host: str,
        port: int,
        method: bytes,
        target: bytes,
        headers: list[tuple[bytes, bytes]],
        body: bytes = b"",
        *,
        timeout: float,
        connect_timeout: float = 1.0,
        ssl: _ssl.SSLContext | None = None,
        server_hostname: str | None = None,
        peer_identity: str | None = None,
    ) -> Response:
        """Send one request; raises an UpstreamError subclass when no response could be had.

        With `peer_identity`, the TLS peer must present that SPIFFE ID, else ConnectFailure."""
        key = (host, port, ssl is not None, server_hostname, peer_identity)
        head = _serialize(method, target, headers, body)
        deadline = time.monotonic() + timeout
        for fresh in (False, True):
            conn = None if fresh else self._checkout(key, ssl)
            reused = conn is not None
            if conn is None:
                conn = await self._connect(host, port, ssl, server_hostname, peer_identity,
                                           min(connect_timeout, max(deadline - time.monotonic(), 0.001)))
            try:
                async with asyncio.timeout(max(deadline - time.monotonic(), 0.0)):
                    resp, keep = await self._exchange(conn, method, head, body)
            except TimeoutError:
                conn.close()
                raise Timeout(f"no response within {timeout:g}s") from None
            except _NothingReceived as e:
                conn.close()
                if reused and method in IDEMPOTENT:
                    continue  # a stale keep-alive connection: try once more on a new one
                raise Reset(f"connection closed before a response ({e})") from None
            except UpstreamError:
                conn.close()
                raise
            except (ConnectionError, OSError, asyncio.IncompleteReadError) as e:
                conn.close()
                raise Reset(f"connection reset during the response ({e.__class__.__name__})") from None
            except BaseException:
                conn.close()
                raise
            if keep:
                self._checkin(key, conn)
            else:
                conn.close()
            return resp
        raise AssertionError("unreachable")

    def _checkout(self, key: tuple, ssl: _ssl.SSLContext | None) -> _Conn | None:
        bucket = self._buckets.get(key)
        if not bucket:
            return None
        if bucket.ssl is not ssl:  # renewed certificate: retire connections of the old one
            for conn in bucket.idle:
                conn.close()
            bucket.idle.clear()
            bucket.ssl = ssl
            return None
        now = time.monotonic()
        while bucket.idle:
            conn = bucket.idle.pop()
            if conn.usable(now, self.idle_timeout):
                return conn
            conn.close()
        return None

    def _checkin(self, key: tuple, conn: _Conn) -> None:
        bucket = self._buckets.get(key)
        if bucket is None:
            bucket = self._buckets[key] = _Bucket(ssl=conn.ssl)
        if len(bucket.idle) >= self.max_idle or conn.ssl is not bucket.ssl:
            conn.close()
            return
        conn.idle_since = time.monotonic()
        conn.used += 1
        bucket.idle.append(conn)

    async def _connect(self, host, port, ssl, server_hostname, peer_identity, timeout: float) -> _Conn:
        try:
            async with asyncio.timeout(timeout):
                reader, writer = await asyncio.open_connection(
                    host, port, ssl=ssl, server_hostname=server_hostname if ssl else None,
                    limit=MAX_HEAD,
                    local_addr=(self.local_address, 0) if self.local_address else None,
                )
        except TimeoutError:
            raise ConnectFailure(f"connect to {host}:{port} timed out after {timeout:g}s") from None
        except _ssl.SSLError as e:
            why = getattr(e, "verify_message", None) or e.reason or e  # e.g. certificate has expired
            raise ConnectFailure(f"TLS handshake with {host}:{port} failed: {why}") from None
        except OSError as e:
            reason = os.strerror(e.errno).lower() if e.errno else str(e)
            raise ConnectFailure(f"connect to {host}:{port} failed: {reason}") from None
        if peer_identity is not None:
            problem = mtls.check_peer(writer.get_extra_info("ssl_object"), peer_identity)
            if problem is not None:
                writer.close()
                raise ConnectFailure(f"TLS peer {host}:{port} refused: {problem}")
        self.opened += 1
        return _Conn(reader, writer, ssl=ssl)

    async def _exchange(self, conn: _Conn, method: bytes, head: bytes, body: bytes):
        writer, reader = conn.writer, conn.reader
        writer.write(head + body if body and len(body) < 65536 else head)  # one send for small bodies
        if body and len(body) >= 65536:
            writer.write(body)
        try:
            raw = await reader.readuntil(b"\r\n\r\n")
        except asyncio.IncompleteReadError as e:
            if not e.partial:
                raise _NothingReceived("EOF") from None
            raise Reset("connection closed in the response head") from None
        except asyncio.LimitOverrunError:
            raise ProtocolError(f"response head larger than {MAX_HEAD} bytes") from None
        except (ConnectionResetError, BrokenPipeError) as e:
            raise _NothingReceived(e.__class__.__name__) from None
        status, reason, version, headers = _parse_head(raw)
        while 100 <= status < 200 and status != 101:  # skip interim responses
            raw = await reader.readuntil(b"\r\n\r\n")
            status, reason, version, headers = _parse_head(raw)
        keep = version == b"HTTP/1.1"
        length = None
        chunked = False
        out: list[tuple[bytes, bytes]] = []
        drop = HOP_BY_HOP
        for name, value in headers:
            lname = name.lower()
            if lname == b"connection":
                tokens = {t.strip().lower() for t in value.split(b",")}
                if b"close" in tokens:
                    keep = False
                elif b"keep-alive" in tokens and version == b"HTTP/1.0":
                    keep = True
                drop = drop | tokens
            elif lname == b"transfer-encoding":
                chunked = value.strip().lower().endswith(b"chunked")
            elif lname == b"content-length":
                try:
                    length = int(value)
                except ValueError:
                    raise ProtocolError(f"invalid Content-Length {value[:40]!r}") from None
        for name, value in headers:
            lname = name.lower()
            if lname not in drop and lname != b"content-length":
                out.append((name, value))
        if method == b"HEAD" or status in (204, 304) or status == 101:
            if length is not None:
                out.append((b"content-length", str(length).encode()))
            return Response(status, reason, out, b"", version), keep and status != 101
        if chunked:
            data = await self._read_chunked(reader)
        elif length is not None:
            if length > self.max_body:
                raise ProtocolError(f"response body of {length} bytes is over the limit")
            data = await reader.readexactly(length)
        else:
            data = await reader.read(self.max_body + 1)
            chunks = [data]
            while data:
                data = await reader.read(self.max_body)
                chunks.append(data)
            data = b"".join(chunks)
            keep = False
        out.append((b"content-length", str(len(data)).encode()))
        return Response(status, reason, out, data, version), keep

    async def _read_chunked(self, reader: asyncio.StreamReader) -> bytes:
        parts: list[bytes] = []
        total = 0
        while True:
            line = await reader.readuntil(b"\r\n")
            try:
                size = int(line.split(b";", 1)[0].strip(), 16)
            except ValueError:
                raise ProtocolError(f"invalid chunk size {line[:40]!r}") from None
            if size == 0:
                while (await reader.readuntil(b"\r\n")) != b"\r\n":  # trailers are dropped
                    pass
                return b"".join(parts)
            total += size
            if total > self.max_body:
                raise ProtocolError("chunked response body is over the limit")
            parts.append((await reader.readexactly(size + 2))[:-2])

    async def close(self) -> None:
        for bucket in self._buckets.values():
            for conn in bucket.idle:
                conn.close()
            bucket.idle.clear()
        self._buckets.clear()

    def idle_count(self) -> int:
        return sum(len(b.idle) for b in self._buckets.values())

    def forget(self, host: str, port: int) -> None:
        """Close the idle connections to an endpoint that left its cluster."""
        for key in [k for k in self._buckets if k[0] == host and k[1] == port]:
            for conn in self._buckets.pop(key).idle:
                conn.close()


class _NothingReceived(Exception):
    pass


def _serialize(method: bytes, target: bytes, headers: list[tuple[bytes, bytes]], body: bytes) -> bytes:
    lines = [method, b" ", target, b" HTTP/1.1\r\n"]
    for name, value in headers:
        lines += (name, b": ", value, b"\r\n")
    if body or method in (b"POST", b"PUT", b"PATCH"):
        lines += (b"content-length: ", str(len(body)).encode(), b"\r\n")
    lines.append(b"\r\n")
    return b"".join(lines)


def _parse_head(raw: bytes) -> tuple[int, bytes, bytes, list[tuple[bytes, bytes]]]:
    lines = raw[:-4].split(b"\r\n")
    parts = lines[0].split(b" ", 2)
    if len(parts) < 2 or not parts[0].startswith(b"HTTP/1.") or not parts[1].isdigit():
        raise ProtocolError(f"invalid status line {lines[0][:60]!r}")
    headers = []
    for line in lines[1:]:
        name, sep, value = line.partition(b":")
        if not sep or not name or name != name.strip():
            raise ProtocolError(f"invalid header line {line[:60]!r}")
        headers.append((name, value.strip()))
    return int(parts[1]), parts[2] if len(parts) > 2 else b"", parts[0], headers


def request_headers(fields, host: bytes) -> list[tuple[bytes, bytes]]:
    """Headers to send upstream: hop-by-hop removed, Host first."""
    connection = set()
    for name, value in fields:
        if name.lower() == b"connection":
            connection |= {t.strip().lower() for t in value.split(b",")}
    drop = HOP_BY_HOP | connection | {b"host", b"content-length"}
    out = [(b"host", host)]
    out += [(n, v) for n, v in fields if n.lower() not in drop]
    return out
