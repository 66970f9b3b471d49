"""The admin listener's refusals (`AdminServer.refusal`): which Host names it answers on whatever
address it binds, requests a proxy forwarded, and state changes without the token."""

from __future__ import annotations

import json

import pytest

from mesh.runtime.admin import AdminServer

TOKEN = "s3cret"


def refused(address: str, headers: dict, method: str = "GET", local: str | None = None):
    server = AdminServer(address, 9901, {}, token=lambda: TOKEN)
    answer = server.refusal(method, headers, local)
    return None if answer is None else (answer[0], json.loads(answer[2])["error"])


HOST_NOT_ALLOWED = (403, "host_not_allowed")


@pytest.mark.parametrize("address, host, local, expected", [
    ("127.0.0.1", "localhost:9901", None, None),
    ("127.0.0.1", "LOCALHOST", None, None),
    ("127.0.0.1", "127.0.0.1:9901", None, None),
    ("127.0.0.1", "127.9.9.9", None, None),
    ("127.0.0.1", "[::1]:9901", None, None),
    ("127.0.0.1", "", None, None),  # HTTP/1.0 sends none: no page's name in it
    ("127.0.0.1", "attacker.example:9901", None, HOST_NOT_ALLOWED),
    # the red-team case: a wildcard bind had no Host check at all
    ("0.0.0.0", "attacker.example", None, HOST_NOT_ALLOWED),
    ("0.0.0.0", "attacker.example", "10.0.0.5", HOST_NOT_ALLOWED),
    ("0.0.0.0", "localhost", "10.0.0.5", None),
    ("0.0.0.0", "10.0.0.5:9901", "10.0.0.5", None),  # its own address: the connection's
    ("0.0.0.0", "10.0.0.6:9901", "10.0.0.5", HOST_NOT_ALLOWED),
    ("0.0.0.0", "0.0.0.0:9901", "10.0.0.5", HOST_NOT_ALLOWED),
    ("10.0.0.5", "10.0.0.5", None, None),
    ("10.0.0.5", "10.0.0.5:9901", None, None),
    ("10.0.0.5", "admin.example", None, HOST_NOT_ALLOWED),
    ("::", "[fe80::1]:9901", "fe80::1", None),
    ("::", "[fe80:0::1]", "fe80::1", None),  # one address, another spelling
    ("2001:db8::5", "[2001:db8::5]:9901", None, None),
    ("admin.internal", "ADMIN.internal:9901", None, None),
])
def test_host_names_it_answers_on_every_address(address, host, local, expected):
    assert refused(address, {"host": host}, local=local) == expected


FORWARDED = (403, "forwarded_request")


@pytest.mark.parametrize("headers", [
    {"x-forwarded-for": "203.0.113.7"},
    {"forwarded": "for=203.0.113.7"},
    {"x-forwarded-host": "localhost"},
    {"x-forwarded-proto": "http"},
], ids=["x-forwarded-for", "forwarded", "x-forwarded-host", "x-forwarded-proto"])
def test_a_request_a_proxy_forwarded_is_refused(headers):
    assert refused("127.0.0.1", {"host": "localhost", **headers}) == FORWARDED
    # before the token is looked at: the token does not make a forwarded request direct
    assert refused("127.0.0.1", {"host": "localhost", "authorization": f"Bearer {TOKEN}", **headers},
                   "POST") == FORWARDED


def test_what_direct_clients_send_is_answered():
    """The CLI, curl and Prometheus: no forwarding marks; a request id or a trace context alone is
    what an instrumented client sends too."""
    assert refused("127.0.0.1", {"host": "127.0.0.1:9901", "user-agent": "Prometheus/2.53",
                                 "accept": "text/plain", "x-request-id": "r1",
                                 "traceparent": "00-" + "1" * 32 + "-" + "2" * 16 + "-01"}) is None


@pytest.mark.parametrize("method, authorization, expected", [
    ("POST", None, (401, "unauthorized")),
    ("POST", "Bearer nope", (401, "unauthorized")),
    ("POST", f"Bearer {TOKEN}", None),
    ("HEAD", None, None),
])
def test_state_changes_need_the_token(method, authorization, expected):
    headers = {"host": "localhost"} | ({"authorization": authorization} if authorization else {})
    assert refused("127.0.0.1", headers, method) == expected


@pytest.mark.parametrize("path, peer, authorization, expected", [
    ("/flows", "127.0.0.1", None, None),
    ("/flows", "127.9.9.9", None, None),
    ("/flows", "::1", None, None),
    ("/flows", "::ffff:127.0.0.1", None, None),  # an IPv4 client of a dual-stack bind
    ("/flows", None, None, None),  # a unix socket, a test: this host's own
    ("/flows", "10.0.0.7", None, (401, "unauthorized")),  # a pod's neighbour, another host
    ("/flows", "::ffff:10.0.0.7", None, (401, "unauthorized")),
    ("/flows", "fe80::1%eth0", None, (401, "unauthorized")),
    ("/flows", "10.0.0.7", "Bearer nope", (401, "unauthorized")),
    ("/flows", "10.0.0.7", f"Bearer {TOKEN}", None),
    ("/metrics", "10.0.0.7", None, None),  # Prometheus scrapes from anywhere
    ("/healthz", "10.0.0.7", None, None),
    ("/status", "10.0.0.7", None, None),
])
def test_traffic_is_shown_beyond_loopback_only_with_the_token(path, peer, authorization,
                                                               expected):
    """/flows shows recent requests (paths, clients, decisions; credentials masked): on an admin
    listener beyond loopback (a sidecar's in a pod binds the pod's address), its network
    neighbours read them only with the admin token, as Linkerd serves its proxy's debug
    endpoints to localhost only; metrics and health stay open to scrapers and probes."""
    server = AdminServer("0.0.0.0", 9901, {}, token=lambda: TOKEN)
    headers = {"host": "localhost"} | ({"authorization": authorization} if authorization else {})
    answer = server.refusal("GET", headers, "10.0.0.5", path, peer)
    assert (None if answer is None else (answer[0], json.loads(answer[2])["error"])) == expected
    if answer is not None:
        assert f"/flows shows traffic, read from {peer}" in json.loads(answer[2])["reason"]


@pytest.mark.parametrize("host, expected", [
    ("127.0.0.1", True), ("127.9.9.9", True), ("::1", True), ("localhost", True),
    ("::ffff:127.0.0.1", True), ("::ffff:10.0.0.7", False), ("10.0.0.7", False),
    ("fe80::1%eth0", False), ("admin.example", False),
])
def test_what_is_loopback(host, expected):
    """The one test of loopback the admin listener (its peers, its Host names) and the config's
    warnings share: an IPv4 loopback address mapped into IPv6 is one."""
    from mesh.config.types import loopback

    assert loopback(host) is expected


def test_a_body_cut_short_or_never_sent_ends_the_connection_quietly(monkeypatch, caplog):
    """A request that announces a body and ends before it (or never sends it) is dropped, as one
    whose head is cut short. Before, the cut body escaped the handler (asyncio logged an
    unhandled exception with its traceback) and a body never sent held the connection for ever."""
    import asyncio
    import logging

    from mesh.runtime import admin

    monkeypatch.setattr(admin, "READ_TIMEOUT", 0.3, raising=False)

    async def run() -> list[bytes]:
        server = AdminServer("127.0.0.1", 0, {"/status": lambda method, query: (200, "text/plain",
                                                                                 b"ok")})
        await server.start()
        port = server.port
        answers = []
        try:
            for cut in (True, False):
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
                writer.write(b"POST /status HTTP/1.1\r\nHost: localhost\r\n"
                             b"Content-Length: 5\r\n\r\nab")
                if cut:
                    writer.write_eof()
                answers.append(await asyncio.wait_for(reader.read(), 5))  # b"": closed, no answer
                writer.close()
            reader, writer = await asyncio.open_connection("127.0.0.1", port)  # it serves on
            writer.write(b"GET /status HTTP/1.1\r\nHost: localhost\r\n\r\n")
            answers.append(await asyncio.wait_for(reader.readuntil(b"ok"), 5))
            writer.close()
            await asyncio.sleep(0.05)
        finally:
            await server.stop()
        return answers

    with caplog.at_level(logging.ERROR):
        cut, never, served = asyncio.run(run())
    assert (cut, never) == (b"", b"")
    assert served.startswith(b"HTTP/1.1 200 ")
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], caplog.text
