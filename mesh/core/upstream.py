"""A pooled asyncio HTTP/1.1 client for upstream requests, shared across all downstream connections.

mitmproxy reuses an upstream connection only within one downstream connection and cannot retry;
forwarding through this pool lets every downstream connection share warm keep-alive connections
and lets retries, deadlines and breakers decide per attempt.
"""

from __future__ import annotations

import asyncio
import os
import re
import select
import ssl as _ssl
import time
from dataclasses import dataclass, field

# what an attempt ends in is the forwarding engine's vocabulary; the pool speaks it
from mesh.resilience.attempt import (ConnectFailure, ProtocolError, Reset, Response, Stale,  # noqa: F401
                                     Timeout, UpstreamError)
from mesh.security import mtls
from mesh.core import podnet
from mesh.config.types import TCHAR
from mesh.core.hopbyhop import HOP_BY_HOP

MAX_HEAD = 64 * 1024
MAX_INTERIM = 8  # 1xx responses skipped before the final one; more is an upstream gone wrong
_DIGITS = re.compile(rb"[0-9]{1,18}")  # RFC 9110 §8.6: Content-Length = 1*DIGIT
_CHUNK_SIZE = re.compile(rb"[0-9A-Fa-f]{1,15}")  # RFC 9112 §7.1: chunk-size = 1*HEXDIG
# the header lines after the status line, each `token ":" value CRLF`, no control character but
# HTAB in a value (RFC 9110 §5.1, §5.5): a bare CR or LF would end a line at the client, a header
# of the upstream's own making. One match for the whole block: a check per line cost twice as much.
_FIELDS = re.compile(TCHAR.encode() + rb"+:[^\x00-\x08\x0a-\x1f\x7f]*\r\n")
_BLOCK = re.compile(rb"(?:" + _FIELDS.pattern + rb")*")


@dataclass(slots=True)
class _Conn:
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    idle_since: float = 0.0
    used: int = 0
    ssl: _ssl.SSLContext | None = None  # the context it was opened with
    idle_limit: float = 0.0  # reused only if idle for less: the cluster's idle_timeout, or less if the upstream said so

    def usable(self, now: float) -> bool:
        """Still open, nothing unexpected arrived, and idle for less than its limit: checked right
        before a request is written, so a connection the upstream closed is never written to."""
        return (
            not self.writer.is_closing()
            and not self.reader.at_eof()
            and not self.reader._buffer  # unexpected bytes on an idle connection
            and now - self.idle_since < self.idle_limit
            and not _readable(self.writer)  # a FIN or RST the event loop has not read yet
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
        fresh: bool = False,
        idle_timeout: float | None = None,
    ) -> Response:
        """Send one request, once; raises an UpstreamError subclass when no response could be had
        (with `sent` and `reused` set). `fresh`: on a new connection, never a pooled one.
        `idle_timeout`: how long the connection may then idle in the pool and still be reused.

        With `peer_identity`, the TLS peer must present that SPIFFE ID, else ConnectFailure."""
        key = (host, port, ssl is not None, server_hostname, peer_identity)
        head = _serialize(method, target, headers, body)
        deadline = time.monotonic() + timeout
        conn = None if fresh else self._checkout(key, ssl)
        reused = conn is not None
        if conn is None:
            conn = await self._connect(host, port, ssl, server_hostname, peer_identity,
                                       min(connect_timeout, max(deadline - time.monotonic(), 0.001)))
        sent = False
        try:
            async with asyncio.timeout(max(deadline - time.monotonic(), 0.0)):
                sent = _write(conn.writer, head, body)
                resp, keep = await self._exchange(conn, method)
        except TimeoutError:
            conn.close()
            raise Timeout(f"no response within {timeout:g}s").on(sent, reused) from None
        except _NothingReceived as e:
            conn.close()
            if reused and sent:
                raise Stale(f"reused connection closed before a response ({e})").on(sent, reused) from None
            raise Reset(f"connection closed before a response ({e})").on(sent, reused) from None
        except UpstreamError as e:
            conn.close()
            raise e.on(sent, reused)
        except (ConnectionError, OSError, asyncio.IncompleteReadError) as e:
            conn.close()
            raise Reset(f"connection reset during the response ({e.__class__.__name__})").on(sent, reused) from None
        except BaseException:
            conn.close()
            raise
        if keep:
            conn.idle_limit = min(idle_timeout or self.idle_timeout, _keep_alive_hint(resp.keep_alive))
            self._checkin(key, conn)
        else:
            conn.close()
        return resp

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
            if conn.usable(now):
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
                reader, writer = await podnet.open_connection(
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

    async def _exchange(self, conn: _Conn, method: bytes):
        reader = conn.reader
        status, reason, version, headers = _parse_head(await _read_head(reader, first=True))
        for _ in range(MAX_INTERIM):
            if not 100 <= status < 200 or status == 101:
                break
            # an interim response (100 Continue, 103 Early Hints): skipped
            status, reason, version, headers = _parse_head(await _read_head(reader))
        if 100 <= status < 200:
            # the proxy never forwards Upgrade (hop by hop), so no 101 was asked for
            raise ProtocolError(f"status {status} where a final response was due")
        keep = version == b"HTTP/1.1"
        hint = None
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
            elif lname == b"keep-alive":
                hint = value
            elif lname == b"transfer-encoding":
                chunked = value.strip().lower().endswith(b"chunked")
            elif lname == b"content-length":
                if not _DIGITS.fullmatch(value) or (length is not None and int(value) != length):
                    # int() would take "-5", "+5", "5_0"; two lengths that differ frame nothing
                    raise ProtocolError(f"invalid Content-Length {value[:40]!r}")
                length = int(value)
        for name, value in headers:
            lname = name.lower()
            if lname not in drop and lname != b"content-length":
                out.append((name, value))
        if method == b"HEAD" or status in (204, 304):
            if length is not None:
                out.append((b"content-length", str(length).encode()))
            return Response(status, reason, out, b"", version, hint), keep
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
        return Response(status, reason, out, data, version, hint), keep

    async def _read_chunked(self, reader: asyncio.StreamReader) -> bytes:
        parts: list[bytes] = []
        total = 0
        while True:
            line = await _read_line(reader)
            digits = line.split(b";", 1)[0].strip()
            if not _CHUNK_SIZE.fullmatch(digits):  # int(…, 16) would take "0x5", "-5", "5_0"
                raise ProtocolError(f"invalid chunk size {line[:40]!r}")
            size = int(digits, 16)
            if size == 0:
                while (await _read_line(reader)) != b"\r\n":  # trailers are dropped
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


def _write(writer: asyncio.StreamWriter, head: bytes, body: bytes) -> bool:
    """Write the request; False if not a byte of it left (the send failed at once and the
    transport closed itself), which makes a failure `reset-before-request`."""
    writer.write(head + body if body and len(body) < 65536 else head)  # one send for small bodies
    if body and len(body) >= 65536:
        writer.write(body)
    return not writer.transport.is_closing()


def _readable(writer: asyncio.StreamWriter) -> bool:
    """Has the idle connection's socket something to read (a FIN, a RST, stray bytes)? Asked with a
    zero poll right before reuse, for what arrived after the event loop last looked."""
    sock = writer.get_extra_info("socket")
    if sock is None:
        return False
    poller = select.poll()
    poller.register(sock.fileno(), select.POLLIN | select.POLLPRI)
    return bool(poller.poll(0))


def _keep_alive_hint(value: bytes | None) -> float:
    """How long to keep reusing a connection whose upstream sent `Keep-Alive: timeout=N`: a second
    less (at least half), so the upstream never closes it as a request arrives; inf if no hint."""
    if value:
        for param in value.split(b","):
            name, _, n = param.strip().partition(b"=")
            if name.strip().lower() == b"timeout" and n.strip().isdigit():
                n = float(n.strip())
                return max(n - 1.0, n / 2)
    return float("inf")


def _serialize(method: bytes, target: bytes, headers: list[tuple[bytes, bytes]], body: bytes) -> bytes:
    lines = [method, b" ", target, b" HTTP/1.1\r\n"]
    for name, value in headers:
        lines += (name, b": ", value, b"\r\n")
    if body or method in (b"POST", b"PUT", b"PATCH"):
        lines += (b"content-length: ", str(len(body)).encode(), b"\r\n")
    lines.append(b"\r\n")
    return b"".join(lines)


async def _read_head(reader: asyncio.StreamReader, first: bool = False) -> bytes:
    try:
        return await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError as e:
        if first and not e.partial:
            raise _NothingReceived("EOF") from None
        raise Reset("connection closed in the response head") from None
    except asyncio.LimitOverrunError:
        raise ProtocolError(f"response head larger than {MAX_HEAD} bytes") from None
    except (ConnectionResetError, BrokenPipeError) as e:
        if first:
            raise _NothingReceived(e.__class__.__name__) from None
        raise


async def _read_line(reader: asyncio.StreamReader) -> bytes:
    """A chunk-size or trailer line of a chunked body."""
    try:
        return await reader.readuntil(b"\r\n")
    except asyncio.LimitOverrunError:
        raise ProtocolError(f"chunked body line longer than {MAX_HEAD} bytes") from None


def _parse_head(raw: bytes) -> tuple[int, bytes, bytes, list[tuple[bytes, bytes]]]:
    status_line, _, block = raw[:-2].partition(b"\r\n")  # block: each line with its CRLF
    parts = status_line.split(b" ", 2)
    if len(parts) < 2 or parts[0] not in (b"HTTP/1.1", b"HTTP/1.0") or len(parts[1]) != 3 \
            or not parts[1].isdigit() or parts[1][:1] == b"0":
        raise ProtocolError(f"invalid status line {status_line[:60]!r}")
    if not _BLOCK.fullmatch(block):
        bad = next(line for line in block.split(b"\r\n") if not _FIELDS.fullmatch(line + b"\r\n"))
        raise ProtocolError(f"invalid header line {bad[:60]!r}")
    headers = []
    for line in block.split(b"\r\n")[:-1]:
        name, _, value = line.partition(b":")
        headers.append((name, value.strip(b" \t")))
    return int(parts[1]), parts[2] if len(parts) > 2 else b"", parts[0], headers


_NOT_SENT = HOP_BY_HOP | {b"host", b"content-length"}  # Host comes first, Content-Length with the body


def request_headers(fields, host: bytes) -> list[tuple[bytes, bytes]]:
    """Headers to send upstream: the fixed hop-by-hop set removed, Host first. What the client's
    Connection field nominated went when the request was received (mesh/core/hopbyhop.py): read
    again here, it would also remove the headers the proxy set since (claims, X-Forwarded-*)."""
    out = [(b"host", host)]
    out += [(n, v) for n, v in fields if n.lower() not in _NOT_SENT]
    return out
