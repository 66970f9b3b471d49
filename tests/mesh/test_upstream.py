"""Upstream pool against a real socket server: framing, keep-alive reuse, and each failure kind."""

from __future__ import annotations

import asyncio

import pytest

from mesh.core import upstream


class RawServer:
    """Answers each request with the bytes `script(request_head)` returns; None closes the socket."""

    def __init__(self, script):
        self.script = script
        self.connections = 0
        self.requests: list[bytes] = []

    async def __aenter__(self):
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc):
        self.server.close()

    async def _handle(self, reader, writer):
        self.connections += 1
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n"):
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":")[1])
                body = await reader.readexactly(length)
                self.requests.append(head + body)
                out = self.script(head)
                if asyncio.iscoroutine(out):
                    out = await out
                if out is None:
                    writer.transport.abort()
                    return
                writer.write(out)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


OK = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nx-a: 1\r\n\r\nok"


async def call(pool, port, method=b"GET", body=b"", timeout=2.0):
    return await pool.request("127.0.0.1", port, method, b"/p?q=1",
                              [(b"host", b"svc"), (b"x-b", b"2")], body, timeout=timeout)


async def test_content_length_and_keepalive_reuse():
    async with RawServer(lambda h: OK) as srv:
        pool = upstream.Pool()
        for _ in range(5):
            r = await call(pool, srv.port)
            assert (r.status, r.body) == (200, b"ok")
            assert (b"x-a", b"1") in r.headers
        assert srv.connections == 1 and pool.opened == 1
        assert srv.requests[0].startswith(b"GET /p?q=1 HTTP/1.1\r\nhost: svc\r\nx-b: 2\r\n")
        await pool.close()


async def test_chunked_is_decoded_and_reframed():
    chunked = (b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n"
               b"3\r\nabc\r\n5;ext=1\r\ndefgh\r\n0\r\nx-trailer: t\r\n\r\n")
    async with RawServer(lambda h: chunked) as srv:
        pool = upstream.Pool()
        r = await call(pool, srv.port)
        assert r.body == b"abcdefgh"
        assert (b"content-length", b"8") in r.headers
        assert not any(n.lower() == b"transfer-encoding" for n, _ in r.headers)
        r = await call(pool, srv.port)  # connection still usable after a chunked body
        assert srv.connections == 1
        await pool.close()


async def test_connection_close_and_read_until_eof():
    resp = b"HTTP/1.1 200 OK\r\nconnection: close\r\n\r\nuntil-eof"

    async def script(head):
        return resp

    class Closing(RawServer):
        async def _handle(self, reader, writer):
            self.connections += 1
            await reader.readuntil(b"\r\n\r\n")
            writer.write(resp)
            await writer.drain()
            writer.close()

    async with Closing(script) as srv:
        pool = upstream.Pool()
        assert (await call(pool, srv.port)).body == b"until-eof"
        assert (await call(pool, srv.port)).body == b"until-eof"
        assert srv.connections == 2 and pool.idle_count() == 0
        await pool.close()


async def test_post_body_and_head_has_no_body():
    async with RawServer(lambda h: OK if not h.startswith(b"HEAD") else
                         b"HTTP/1.1 200 OK\r\ncontent-length: 1000\r\n\r\n") as srv:
        pool = upstream.Pool()
        await call(pool, srv.port, b"POST", b'{"a":1}')
        assert srv.requests[-1].endswith(b'content-length: 7\r\n\r\n{"a":1}')
        r = await call(pool, srv.port, b"HEAD")
        assert r.body == b"" and (b"content-length", b"1000") in r.headers
        await call(pool, srv.port)  # still in sync after HEAD
        await pool.close()


async def test_connect_refused_is_connect_failure():
    async with RawServer(lambda h: OK) as srv:
        port = srv.port
    pool = upstream.Pool()
    with pytest.raises(upstream.ConnectFailure):
        await call(pool, port)


async def test_timeout():
    async def slow(head):
        await asyncio.sleep(1)
        return OK

    async with RawServer(slow) as srv:
        pool = upstream.Pool()
        with pytest.raises(upstream.Timeout):
            await call(pool, srv.port, timeout=0.1)
        assert pool.idle_count() == 0
        await pool.close()


async def test_reset_before_response_and_mid_body():
    async with RawServer(lambda h: None) as srv:
        pool = upstream.Pool()
        with pytest.raises(upstream.Reset):
            await call(pool, srv.port, b"POST", b"x")
    partial = b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\nonly-some"

    class MidBody(RawServer):
        async def _handle(self, reader, writer):
            await reader.readuntil(b"\r\n\r\n")
            writer.write(partial)
            await writer.drain()
            writer.transport.abort()

    async with MidBody(None) as srv:
        with pytest.raises(upstream.Reset):
            await call(pool, srv.port)
    await pool.close()


async def test_garbage_is_protocol_error():
    async with RawServer(lambda h: b"SSH-2.0-OpenSSH\r\n\r\n") as srv:
        pool = upstream.Pool()
        with pytest.raises(upstream.ProtocolError):
            await call(pool, srv.port)
        await pool.close()


async def test_stale_pooled_connection_is_replaced_for_idempotent_requests():
    served = 0

    class OneShot(RawServer):
        async def _handle(self, reader, writer):
            nonlocal served
            self.connections += 1
            await reader.readuntil(b"\r\n\r\n")
            served += 1
            writer.write(OK)
            await writer.drain()
            # keep-alive promised, but the server forgets the connection after one request
            await asyncio.sleep(0.05)
            writer.transport.abort()

    async with OneShot(None) as srv:
        pool = upstream.Pool()
        await call(pool, srv.port)
        await asyncio.sleep(0.1)
        r = await call(pool, srv.port)
        assert r.status == 200 and srv.connections == 2
        await pool.close()


def test_request_headers_drop_hop_by_hop():
    fields = [(b"Host", b"x"), (b"Connection", b"keep-alive, x-secret-hop"), (b"Keep-Alive", b"5"),
              (b"TE", b"trailers"), (b"Accept", b"*/*"), (b"Content-Length", b"3")]
    assert upstream.request_headers(fields, b"svc") == [(b"host", b"svc"), (b"Accept", b"*/*")]


def test_request_headers_keep_what_the_proxy_set_though_connection_names_it():
    """Nominations went when the request was received (mesh/core/hopbyhop.py); a header the proxy
    set since is sent, whatever the client's Connection field still says."""
    fields = [(b"Host", b"x"), (b"Connection", b"close, x-consumer, x-forwarded-for"),
              (b"x-consumer", b"acme"), (b"x-forwarded-for", b"10.1.1.1")]
    assert upstream.request_headers(fields, b"svc") == [
        (b"host", b"svc"), (b"x-consumer", b"acme"), (b"x-forwarded-for", b"10.1.1.1")]


# what an upstream may not answer (RFC 9110/9112): each is a ProtocolError (a 502 at the proxy),
# never a response passed on or an exception the proxy did not expect
BAD_ANSWERS = {
    # int() would read these as lengths and frame the next response from the wrong byte
    "negative-content-length": b"HTTP/1.1 200 OK\r\ncontent-length: -5\r\n\r\nhello",
    "signed-content-length": b"HTTP/1.1 200 OK\r\ncontent-length: +2\r\n\r\nok",
    "underscore-in-content-length": b"HTTP/1.1 200 OK\r\ncontent-length: 0_2\r\n\r\nok",
    "two-content-lengths": b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\ncontent-length: 3\r\n\r\nok!",
    "negative-chunk-size": b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n-2\r\nok\r\n0"
                           b"\r\n\r\n",
    "0x-chunk-size": b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n0x2\r\nok\r\n0\r\n\r\n",
    "chunk-size-line-over-the-limit": b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n"
                                      + b"0" * (upstream.MAX_HEAD + 10) + b"2\r\nok\r\n0\r\n\r\n",
    "interim-then-a-head-over-the-limit": b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nx: "
                                          + b"a" * (upstream.MAX_HEAD + 10) + b"\r\n\r\n",
    "endless-interim-responses": b"HTTP/1.1 103 Early Hints\r\n\r\n" * 50 + OK,
    # the proxy never forwards Upgrade: a 101 switches to a protocol nobody asked for
    "unasked-switching-protocols": b"HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\n"
                                   b"connection: upgrade\r\n\r\n",
    # a bare LF or CR would end the line at the client: a header the upstream slipped in
    "bare-lf-in-header-value": b"HTTP/1.1 200 OK\r\nx-a: a\nset-cookie: s=evil\r\ncontent-length: 2"
                               b"\r\n\r\nok",
    "bare-cr-in-header-value": b"HTTP/1.1 200 OK\r\nx-a: a\rset-cookie: s=evil\r\ncontent-length: 2"
                               b"\r\n\r\nok",
    "nul-in-header-value": b"HTTP/1.1 200 OK\r\nx-a: a\x00b\r\ncontent-length: 2\r\n\r\nok",
    "space-in-header-name": b"HTTP/1.1 200 OK\r\nx a: b\r\ncontent-length: 2\r\n\r\nok",
    "four-digit-status": b"HTTP/1.1 2000 OK\r\ncontent-length: 2\r\n\r\nok",
    "http-2-status-line": b"HTTP/1.2 200 OK\r\ncontent-length: 2\r\n\r\nok",
}


@pytest.mark.parametrize("answer", list(BAD_ANSWERS.values()), ids=list(BAD_ANSWERS))
async def test_an_answer_that_frames_nothing_is_a_protocol_error(answer):
    async with RawServer(lambda h: answer) as srv:
        pool = upstream.Pool()
        with pytest.raises(upstream.ProtocolError):
            await call(pool, srv.port)
        await pool.close()


async def test_interim_responses_are_skipped():
    async with RawServer(lambda h: b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\n"
                                   b"link: </a.css>\r\n\r\n" + OK) as srv:
        pool = upstream.Pool()
        resp = await call(pool, srv.port)
        assert (resp.status, resp.body) == (200, b"ok")
        await pool.close()
