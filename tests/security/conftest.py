"""The security battery: each test is one attack, named by it, against real gateways and sidecars.

Fixtures shared by the battery's modules live here; each module covers one family of attacks
(paths, bodies, headers, slow clients, HTTP/2 streams, admin port, keys, auth, leaks).

`targets(...)` starts, once per module, a real gateway (`mitmesh gateway`) in front of an echo app,
and a real sidecar (`mitmesh sidecar`) in front of another, both with the same authorization policy
(`GUARD`), and yields them as `Target`s; attacks are sent as raw bytes (`Target.send`) so nothing
between the test and the proxy tidies them up. Every process is stopped in a `finally`.
"""

from __future__ import annotations

import contextlib
import json
import socket
import ssl
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import h2.config
import h2.connection
import h2.events
import pytest

from mesh.security import pki
from mesh.runtime import procs
from tools.testbed import Mesh, sidecar_config

pytestmark = pytest.mark.e2e

# the policy of the attacks: the app's admin pages are denied, only /app/ and /shop/public
# are allowed; a route at the gateway, the service's own policy at the sidecar inbound
GUARD = {"authz": {"deny": [{"paths": ["/app/admin*"]}], "allow": [{"paths": ["/app/*", "/shop/public*"]}]}}


@dataclass
class Reply:
    """One HTTP/1 response as the bytes came: status, headers in order, body; `closed` when asked."""

    status: int
    headers: list[tuple[str, str]]
    body: bytes
    raw: bytes
    closed: bool | None = None

    def header(self, name: str) -> str | None:
        return next((v for k, v in self.headers if k == name.lower()), None)

    @property
    def json(self) -> dict:
        return json.loads(self.body)


@dataclass
class Target:
    """A proxy listener under attack, and the app behind it (whose hit counter says what got through)."""

    name: str
    host: str
    port: int
    app: tuple[str, int]
    tls: ssl.SSLContext | None = field(default=None, repr=False)
    log: Path | None = None  # the proxy's log file

    def hits(self) -> int:
        """Requests the app behind this listener has served (health checks are not counted)."""
        with urllib.request.urlopen(f"http://{self.app[0]}:{self.app[1]}/__knobs", timeout=5) as r:
            return json.load(r)["hits"]

    def connect(self, timeout: float = 5.0) -> socket.socket:
        return socket.create_connection((self.host, self.port), timeout=timeout)

    def send(self, data: bytes, timeout: float = 5.0, until_closed: bool = False) -> Reply:
        """Send raw bytes on a new connection and read one response (and, `until_closed`, whether
        the proxy then closes the connection within `timeout`)."""
        with contextlib.closing(self.connect(timeout)) as s:
            s.sendall(data)
            return read_reply(s, until_closed)


def read_reply(s: socket.socket, until_closed: bool = False) -> Reply:
    raw = b""
    while b"\r\n\r\n" not in raw:
        chunk = s.recv(65536)
        if not chunk:
            raise AssertionError(f"connection closed before a response head: {raw[:200]!r}")
        raw += chunk
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ", 2)[1])
    headers = [(k.strip().lower(), v.strip()) for k, _, v in (line.partition(":") for line in lines[1:])]
    length = int(next((v for k, v in headers if k == "content-length"), "0"))
    while len(body) < length:
        chunk = s.recv(65536)
        if not chunk:
            break
        body += chunk
        raw += chunk
    reply = Reply(status, headers, body[:length], raw)
    if until_closed:
        try:
            reply.closed = s.recv(1) == b""
        except TimeoutError:
            reply.closed = False
        except ConnectionResetError:
            reply.closed = True
    return reply


def sending_on(target: Target, data: bytes, seconds: float = 2.0) -> Reply:
    """Send `data`, read the answer, then go on sending as a client that ignores it would; the
    reply's `closed` says whether the proxy closed the connection within `seconds` of the answer."""
    with contextlib.closing(target.connect()) as s:
        try:
            s.sendall(data)
        except OSError:  # closed before all of it went out: the answer is read all the same
            pass
        reply = read_reply(s)
        reply.closed = closes_within(s, seconds, b"a" * 65536)
        return reply


def closes_within(s: socket.socket, seconds: float, sending: bytes = b"") -> bool:
    """Whether the peer closes `s` (end of stream or reset) within `seconds` of now, while we go
    on sending `sending` over and over (or send nothing more)."""
    deadline = time.monotonic() + seconds
    s.settimeout(0.05)
    while time.monotonic() < deadline:
        try:
            if s.recv(65536) == b"":
                return True
        except TimeoutError:
            pass
        except OSError:  # reset
            return True
        if sending:
            try:
                s.send(sending)
            except TimeoutError:  # the peer reads no more: its buffers and ours are full
                pass
            except OSError:  # broken pipe, reset
                return True
    return False


def assert_refused(reply: Reply, status: int, error: str | None = None) -> dict:
    """The proxy's own JSON answer (addons/replies.py), never mitmproxy's HTML page or name."""
    assert reply.status == status, (reply.status, reply.body[:300])
    assert reply.header("content-type") == "application/json", reply.raw[:300]
    assert b"mitmproxy" not in reply.raw.lower() and b"<html" not in reply.raw.lower(), reply.raw[:300]
    body = reply.json
    assert body["reason"] and body["request_id"] == reply.header("x-request-id"), body
    if error is not None:
        assert body["error"] == error, body
    return body


def request(method: str, path: str, headers: dict | None = None, body: bytes = b"",
            version: str = "HTTP/1.1") -> bytes:
    """A request head (and body) as bytes, with `Host: x` unless headers say otherwise."""
    fields = {"Host": "x", **(headers or {})}
    if body and "Content-Length" not in fields and "Transfer-Encoding" not in fields:
        fields["Content-Length"] = str(len(body))
    head = f"{method} {path} {version}\r\n" + "".join(f"{k}: {v}\r\n" for k, v in fields.items() if v is not None)
    return head.encode("latin-1") + b"\r\n" + body


@pytest.fixture(scope="module", params=["standard", "fast"])
def engine(request) -> str:
    """The HTTP/1.1 engine of the module's proxies: the battery's HTTP/1 attacks run against both."""
    return request.param


@contextlib.contextmanager
def targets(tmp: Path, *, http: dict | None = None, sidecar: bool = True, tls: bool = False,
            routes: list | None = None, policies: dict | None = None, engine: str = "standard",
            functions: dict | None = None):
    """A gateway (and a sidecar) in front of echo apps, both guarded by GUARD; `http` is their
    `gateway.http` / `sidecar.http` block, `routes` go before the gateway's catch-all route, `engine`
    their `gateway.engine` / `sidecar.engine`, `functions` the config's `functions`."""
    m = Mesh(tmp, {})
    config = sidecar_config(f"{m.net}.1")
    p = procs.free_port
    edge_app = p()
    config["gateway"]["listeners"] = [{"name": "public", "port": p()}]
    if tls:
        pki.init_edge(tmp / "certs")
        config["gateway"]["listeners"].append({"name": "public-tls", "port": p(), "tls": {
            "cert": str(tmp / "certs" / "edge.pem"), "key": str(tmp / "certs" / "edge.key")}})
    config["gateway"]["engine"] = config["sidecar"]["engine"] = engine
    if http:
        config["gateway"]["http"] = http
        config["sidecar"]["http"] = http
    config["services"] = {
        "edge-echo": {"versions": {"v1": {"launch": {"app": "echo"}, "endpoints": [f"127.0.0.1:{edge_app}"]}}},
        "echo": {"versions": {"v1": {}}, "policies": ["guard"]},
    }
    config["routes"] = [*(routes or []), {"name": "all", "match": {"path": {"prefix": "/"}},
                                          "forward": {"service": "edge-echo"}, "policies": ["guard"]}]
    config["policies"] = {"guard": GUARD, **(policies or {})}
    if functions:
        config["functions"] = functions
    m.write(config)
    try:
        m.start_services()
        found = {}
        if sidecar:
            (inst,) = m.start_instances({"service": "echo", "app": "echo"})
            found["sidecar"] = Target("sidecar", inst.inst.sidecar.address, inst.inst.sidecar.inbound,
                                      (inst.inst.host, inst.inst.port), log=inst.sidecar.log)
        m.start_gateway()
        gw = config["gateway"]["listeners"]
        log = m.children["gateway"].log
        found["gateway"] = Target("gateway", "127.0.0.1", gw[0]["port"], ("127.0.0.1", edge_app),
                                  log=log)
        if tls:
            ctx = ssl.create_default_context(cafile=str(tmp / "certs" / "edge-ca.pem"))
            ctx.set_alpn_protocols(["h2"])
            found["gateway-tls"] = Target("gateway-tls", "127.0.0.1", gw[1]["port"],
                                          ("127.0.0.1", edge_app), ctx, log)
        m.targets = found
        yield m
    finally:
        m.stop()



class H2:
    """A real HTTP/2 client (the h2 package mitmproxy ships with) on a TLS connection with ALPN h2."""

    def __init__(self, target: Target, timeout: float = 5.0):
        self.sock = target.tls.wrap_socket(target.connect(timeout), server_hostname="localhost")
        assert self.sock.selected_alpn_protocol() == "h2"
        self.conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding="utf-8"))
        self.conn.initiate_connection()
        self.events: list = []
        self.closed = False
        self.flush()

    def flush(self) -> None:
        data = self.conn.data_to_send()
        if data:
            self.sock.sendall(data)

    def headers(self, path: str, method: str = "GET", extra: tuple = (), end_stream: bool = True) -> int:
        sid = self.conn.get_next_available_stream_id()
        self.conn.send_headers(sid, [(":method", method), (":path", path), (":scheme", "https"),
                                     (":authority", "localhost"), *extra], end_stream=end_stream)
        self.flush()
        return sid

    def read(self, until, timeout: float = 5.0) -> list:
        """Receive until `until(events)` holds or the server closes; returns all events so far."""
        self.sock.settimeout(timeout)
        while not until(self.events) and not self.closed:
            try:
                data = self.sock.recv(65536)
            except (ConnectionResetError, ssl.SSLError):
                data = b""
            if not data:
                self.closed = True
                break
            for event in self.conn.receive_data(data):
                self.events.append(event)
                if isinstance(event, h2.events.DataReceived):
                    self.conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
            self.flush()
        return self.events

    def response(self, sid: int, timeout: float = 5.0) -> tuple[int, dict, bytes]:
        """(status, headers, body) of one stream, once it ended."""
        self.read(lambda evs: any(isinstance(e, (h2.events.StreamEnded, h2.events.StreamReset))
                                  and e.stream_id == sid for e in evs), timeout)
        heads = [e for e in self.events if isinstance(e, h2.events.ResponseReceived) and e.stream_id == sid]
        assert heads, f"no response on stream {sid}: {self.events[-5:]}"
        headers = dict(heads[0].headers)
        body = b"".join(e.data for e in self.events if isinstance(e, h2.events.DataReceived) and e.stream_id == sid)
        return int(headers[":status"]), headers, body

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass
