"""HTTP/2 at the edge, seen frame by frame by a real HTTP/2 client over TLS: a complete response
leaves as HEADERS then DATA ending the stream (not a third, empty DATA frame); bodies larger than a
frame and than the client's flow-control window, several streams on one connection, responses
without a body and the gateway's own replies all arrive whole."""

from __future__ import annotations

import json
import socket
import ssl

import h2.config
import h2.connection
import h2.events
import pytest

from mesh.security import pki
from mesh.runtime import procs

from . import traffic


@pytest.fixture(scope="module")
def mesh(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("http2")
    pki.init_edge(tmp / "certs")
    cfg = traffic.config(
        {"catalog": traffic.service("catalog", "v1"), "echo": traffic.service("echo", "v1")},
        [{"name": "catalog", "match": {"path": {"prefix": "/catalog/"}},
          "forward": {"service": "catalog", "rewrite": {"prefix": "/"}}},
         {"name": "echo", "match": {"path": {"prefix": "/echo/"}}, "forward": {"service": "echo"}}])
    cfg["gateway"]["listeners"].append({"name": "tls", "port": procs.free_port(), "tls": {
        "cert": str(tmp / "certs" / "edge.pem"), "key": str(tmp / "certs" / "edge.key")}})
    yield from traffic.running(tmp, cfg)


class Client:
    """One HTTP/2 connection; records each stream's events in the order they arrived."""

    def __init__(self, mesh):
        context = ssl.create_default_context(cafile=str(mesh.tmp / "certs" / "edge-ca.pem"))
        context.set_alpn_protocols(["h2"])
        port = mesh.config["gateway"]["listeners"][1]["port"]
        self.sock = context.wrap_socket(socket.create_connection(("127.0.0.1", port), timeout=10),
                                        server_hostname="localhost")
        assert self.sock.selected_alpn_protocol() == "h2"
        self.conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
        self.conn.initiate_connection()
        self.sock.sendall(self.conn.data_to_send())
        self.events: dict[int, list] = {}

    def send(self, method: str, path: str, body: bytes = b"") -> int:
        sid = self.conn.get_next_available_stream_id()
        headers = [(":method", method), (":scheme", "https"), (":authority", "localhost"), (":path", path)]
        if body:
            headers.append(("content-length", str(len(body))))
        self.conn.send_headers(sid, headers, end_stream=not body)
        self.sock.sendall(self.conn.data_to_send())
        sent = 0
        while sent < len(body):  # within the windows the gateway grants
            room = min(self.conn.local_flow_control_window(sid), self.conn.max_outbound_frame_size)
            if room == 0:
                self._read()
                continue
            self.conn.send_data(sid, body[sent:sent + room], end_stream=sent + room >= len(body))
            sent += room
            self.sock.sendall(self.conn.data_to_send())
        self.events[sid] = []
        return sid

    def _read(self) -> None:
        data = self.sock.recv(65536)
        assert data, "the gateway closed the connection"
        for event in self.conn.receive_data(data):
            sid = getattr(event, "stream_id", 0)
            if sid in self.events:
                self.events[sid].append(event)
            if isinstance(event, h2.events.DataReceived):  # a small window: the body needs updates
                self.conn.acknowledge_received_data(event.flow_controlled_length, sid)
        if out := self.conn.data_to_send():
            self.sock.sendall(out)

    def wait(self, *sids: int) -> dict[int, tuple[int, dict, bytes, list]]:
        """Each stream's status, headers, body and the kinds of frames it came in."""
        def ended(sid):
            return any(isinstance(e, (h2.events.StreamEnded, h2.events.StreamReset)) for e in self.events[sid])
        while not all(ended(sid) for sid in sids):
            self._read()
        out = {}
        for sid in sids:
            events = self.events[sid]
            (resp,) = [e for e in events if isinstance(e, h2.events.ResponseReceived)]
            headers = {k.decode(): v.decode() for k, v in resp.headers}
            data = [e for e in events if isinstance(e, h2.events.DataReceived)]
            frames = ["HEADERS" + (" END_STREAM" if resp.stream_ended else "")]
            frames += ["DATA" + (" END_STREAM" if e.stream_ended else "") for e in data]
            out[sid] = (int(headers[":status"]), headers, b"".join(e.data for e in data), frames)
        return out

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def client(mesh):
    c = Client(mesh)
    try:
        yield c
    finally:
        c.close()


def test_a_complete_response_is_headers_then_data_that_ends_the_stream(client):
    sid = client.send("GET", "/catalog/items/1")
    status, headers, body, frames = client.wait(sid)[sid]
    assert status == 200 and json.loads(body)["item"]["id"] == 1
    assert int(headers["content-length"]) == len(body) and headers["x-request-id"]
    assert frames == ["HEADERS", "DATA END_STREAM"]


def test_bodies_larger_than_a_frame_and_the_window_arrive_whole(client):
    payload = b"x" * 200_000  # echoed back: larger than a frame (16 KB) and the client's window (64 KB)
    sid = client.send("POST", "/echo/big", payload)
    status, _, body, frames = client.wait(sid)[sid]
    assert status == 200 and json.loads(body)["body"] == payload.decode()
    assert frames[0] == "HEADERS" and frames[-1].endswith("END_STREAM") and len(frames) > 10
    assert all(f == "DATA" for f in frames[1:-1])


def test_streams_on_one_connection_each_get_their_own_response(client):
    sids = [client.send("GET", f"/catalog/items/{i}") for i in (1, 2, 3, 4)]
    sids.append(client.send("POST", "/echo/one", b'{"a": 1}'))
    answers = client.wait(*sids)
    assert [json.loads(answers[s][2])["item"]["id"] for s in sids[:4]] == [1, 2, 3, 4]
    assert json.loads(answers[sids[4]][2])["json"] == {"a": 1}
    assert all(a[3] == ["HEADERS", "DATA END_STREAM"] for a in answers.values())


def test_responses_without_a_body_and_the_gateways_own_replies(client):
    head = client.send("HEAD", "/catalog/items/1")
    missing = client.send("GET", "/no/such/route")
    answers = client.wait(head, missing)
    status, headers, body, frames = answers[head]
    assert status == 200 and body == b"" and frames == ["HEADERS END_STREAM"]
    status, headers, body, frames = answers[missing]
    assert status == 404 and json.loads(body)["error"] == "no_route"
    assert frames == ["HEADERS", "DATA END_STREAM"]
