"""The differential test of `gateway.engine` (issue 19): one corpus of raw HTTP/1 requests, well-formed
and malformed (the security battery's smuggling, framing and header attacks among them), sent to two
real gateways (mitmdump with the gateway chain and a user's hook-logging addon, tests/engine/hooklog.py)
that differ only in `gateway.engine`; both must answer with the same bytes (bar what differs per
process: dates, request ids, ports) and fire the same hooks, in the same order, with the same flow
fields."""

from __future__ import annotations

import contextlib
import difflib
import json
import re
import socket
import time
from pathlib import Path

import pytest

from mesh.config import load
from mesh.runtime import procs
from tools import launcher
from tools.testbed import Mesh, sidecar_config

pytestmark = pytest.mark.e2e

HOOKLOG = Path(__file__).with_name("hooklog.py")
ENGINES = ("standard", "fast")


def req(line: str, *headers: str, body: bytes = b"", host: bool = True) -> bytes:
    head = "\r\n".join([line, *(["Host: gw.test"] if host else []), *headers])
    return head.encode("latin-1") + b"\r\n\r\n" + body


CORPUS = {
    # well-formed: the fast engine takes these
    "get": req("GET /app/items/1?q=a%20b&r=1 HTTP/1.1", "Connection: close"),
    "post": req("POST /app/items HTTP/1.1", "Content-Type: application/json", "Content-Length: 11",
                "Connection: close", body=b'{"a": "b"} '),
    "keepalive-two": req("GET /app/one HTTP/1.1") + req("GET /app/two HTTP/1.1", "Connection: close"),
    "pipelined-post": req("POST /app/p HTTP/1.1", "Content-Length: 3", body=b"abc")
                      + req("GET /app/q HTTP/1.1", "Connection: close"),
    "head": req("HEAD /app/h HTTP/1.1", "Connection: close"),
    "http10": req("GET /app/old HTTP/1.0"),
    "repeated-headers": req("GET /app/r HTTP/1.1", "X-A: 1", "x-a: 2", "Accept:   text/plain  ",
                            "Connection: close"),
    "denied": req("GET /app/admin/x HTTP/1.1", "Connection: close"),
    "no-route-policy": req("GET /other HTTP/1.1", "Connection: close"),
    "empty-lines-first": b"\r\n" + req("GET /app/e HTTP/1.1", "Connection: close"),
    "split-head": req("GET /app/s HTTP/1.1", "Connection: close"),  # sent in pieces, below
    # standard's own territory on both engines
    "chunked": req("POST /app/c HTTP/1.1", "Transfer-Encoding: chunked", "Connection: close",
                   body=b"3\r\nabc\r\n0\r\n\r\n"),
    "expect-continue": req("POST /app/x HTTP/1.1", "Content-Length: 2", "Expect: 100-continue",
                           "Connection: close", body=b"hi"),
    "absolute-form": b"GET http://gw.test/app/abs HTTP/1.1\r\nHost: gw.test\r\nConnection: close\r\n\r\n",
    "no-host": req("GET /app/n HTTP/1.1", "Connection: close", host=False),
    "websocket-upgrade": req("GET /app/ws HTTP/1.1", "Upgrade: websocket", "Connection: Upgrade",
                             "Sec-WebSocket-Version: 13", "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ=="),
    # malformed (tests/security/test_bodies.py, test_headers.py): refused alike
    "cl-and-te": req("POST /app/s HTTP/1.1", "Content-Length: 4", "Transfer-Encoding: chunked",
                     body=b"0\r\n\r\nGET /app/admin HTTP/1.1\r\nHost: x\r\n\r\n"),
    "double-cl": req("POST /app/s HTTP/1.1", "Content-Length: 3", "Content-Length: 4", body=b"abcd"),
    "bad-cl": req("POST /app/s HTTP/1.1", "Content-Length: 3x", body=b"abc"),
    "te-not-chunked-last": req("POST /app/s HTTP/1.1", "Transfer-Encoding: chunked, identity", body=b"0\r\n\r\n"),
    "space-before-colon": req("GET /app/s HTTP/1.1", "X-Bad : 1"),
    "bad-header-name": req("GET /app/s HTTP/1.1", "X(Bad): 1"),
    "no-colon": req("GET /app/s HTTP/1.1", "NoColonHere"),
    "obs-fold": req("GET /app/s HTTP/1.1", "X-A: 1", " folded", "Connection: close"),
    "bare-lf": b"GET /app/s HTTP/1.1\nHost: gw.test\nConnection: close\n\n",
    "nul-in-value": req("GET /app/s HTTP/1.1", "X-A: a\x00b"),
    "bad-version": req("GET /app/s HTTP/9.9"),
    "bad-request-line": b"GET  /app/s  HTTP/1.1 extra\r\nHost: gw.test\r\n\r\n",
    "unknown-method": req("FROB /app/s HTTP/1.1", "Connection: close"),
    "bad-chunk": req("POST /app/s HTTP/1.1", "Transfer-Encoding: chunked", body=b"zz\r\nabc\r\n0\r\n\r\n"),
    "short-body": req("POST /app/s HTTP/1.1", "Content-Length: 10", body=b"abc"),
    "cut-head": b"GET /app/s HTTP/1.1\r\nHost: gw.test\r\n",
    "huge-head": req("GET /app/s HTTP/1.1", *(f"X-Pad-{i}: {'v' * 200}" for i in range(800))),
}


# where the standard engine closes without an answer: the client half-closed early, or mitmproxy
# ends the connection there (leading empty lines). A bad chunk size or a body cut short gets the
# guarded layer's JSON 400 (invalid_body) under mitmdump too, as in the lean runtime
SILENT = {"empty-lines-first", "websocket-upgrade", "cut-head"}


def exchange(port: int, name: str) -> bytes:
    data = CORPUS[name]
    with contextlib.closing(socket.create_connection(("127.0.0.1", port), timeout=15)) as s:
        if name == "split-head":
            for i in range(0, len(data), 7):
                s.sendall(data[i:i + 7])
        else:
            s.sendall(data)
        if name in ("short-body", "cut-head", "websocket-upgrade"):
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_WR)
        out = b""
        with contextlib.suppress(socket.timeout, ConnectionResetError):
            while chunk := s.recv(65536):
                out += chunk
    return out


class Gateway:
    def __init__(self, tmp: Path, engine: str):
        self.mesh = Mesh(tmp, {})
        self.log = tmp / "hooks.jsonl"
        config = sidecar_config(f"{self.mesh.net}.1")
        self.app = procs.free_port()
        config["gateway"]["engine"] = engine
        config["services"] = {"edge-echo": {"versions": {"v1": {"launch": {"app": "echo"},
                                                                "endpoints": [f"127.0.0.1:{self.app}"]}}}}
        config["routes"] = [{"name": "app", "match": {"path": {"prefix": "/app/"}},
                             "forward": {"service": "edge-echo"}, "policies": ["guard"]}]
        config["policies"] = {"guard": {"authz": {"deny": [{"paths": ["/app/admin*"]}]}}}
        self.mesh.write(config)
        self.port = config["gateway"]["listeners"][0]["port"]

    def start(self) -> None:
        self.mesh.start_services()
        parsed = load(self.mesh.path)
        argv = launcher.gateway_argv(self.mesh.path, parsed, extra=["-s", str(HOOKLOG)])
        gw = procs.spawn("gateway", argv, log_dir=self.mesh.tmp / "logs", cwd=str(self.mesh.tmp),
                         env={"MITMESH_HOOKLOG": str(self.log)})
        self.mesh.children["gateway"] = gw
        procs.wait_ports(gw, [("127.0.0.1", self.port)])

    def hooks(self) -> list[dict]:
        if not self.log.exists():
            return []
        lines = self.log.read_text().splitlines()
        self.log.unlink()
        return [json.loads(line) for line in lines]


@pytest.fixture(scope="module")
def gateways(tmp_path_factory):
    found = {e: Gateway(tmp_path_factory.mktemp(e), e) for e in ENGINES}
    try:
        for gw in found.values():
            gw.start()
            exchange(gw.port, "get")  # the first request of a process is slow: not part of any test
            settled_hooks(gw)
        yield found
    finally:
        for gw in found.values():
            gw.mesh.stop()


_VARYING = re.compile(rb"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}|[0-9a-f]{32}|[0-9a-f]{16}")
_DATE = re.compile(rb"(?im)^date: [^\r\n]*\r\n|\"(date|timestamp)\": \"[^\"]*\"")


_HTTP_DATE = re.compile(rb"[A-Z][a-z]{2}, \d\d [A-Z][a-z]{2} \d{4} \d\d:\d\d:\d\d GMT")


def normal(data: bytes, gw: Gateway) -> bytes:
    """What may differ between two processes answering alike: ids, dates, their own ports."""
    data = _HTTP_DATE.sub(b"<date>", _DATE.sub(b"", _VARYING.sub(b"<id>", data)))
    for port, name in ((gw.port, b"<gw>"), (gw.app, b"<app>")):
        data = data.replace(b"%d" % port, name)
    return re.sub(rb"(?im)^content-length: \d+\r\n", b"content-length: <n>\r\n", data)


def settled_hooks(gw: Gateway) -> list[dict]:
    """The hook lines of one exchange, once the log has stopped growing (an `error` hook may come
    after the client's connection is gone)."""
    last, deadline = -1, time.monotonic() + 5
    while time.monotonic() < deadline:
        size = gw.log.stat().st_size if gw.log.exists() else 0
        if size == last:
            break
        last = size
        time.sleep(0.3)
    return gw.hooks()


@pytest.mark.parametrize("name", list(CORPUS))
def test_both_engines_answer_and_hook_alike(gateways, name):
    seen = {}
    for engine, gw in gateways.items():
        settled_hooks(gw)  # nothing left from an earlier exchange
        reply = exchange(gw.port, name)
        seen[engine] = (normal(reply, gw), normal(json.dumps(settled_hooks(gw), indent=1).encode(), gw))
    (answer, hooks), (fast_answer, fast_hooks) = seen["standard"], seen["fast"]
    assert bool(answer) is (name not in SILENT), f"{name}: the standard engine answered {answer[:80]!r}"
    assert fast_answer == answer, f"{name}: the engines answered differently"
    assert fast_hooks == hooks, f"{name}: hooks or flow fields differ:\n" + "\n".join(
        difflib.unified_diff(hooks.decode().splitlines(), fast_hooks.decode().splitlines(), lineterm="", n=2))


def test_well_formed_requests_fire_every_hook_in_mitmproxys_order(gateways):
    gw = gateways["fast"]
    settled_hooks(gw)
    exchange(gw.port, "keepalive-two")
    hooks = [h["hook"] for h in settled_hooks(gw)]
    assert hooks == ["requestheaders", "request", "responseheaders", "response"] * 2
