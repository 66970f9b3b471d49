"""The same addons inside stock mitmdump and mitmweb (`mitmdump -s addons/gateway.py`), for inspection."""

from __future__ import annotations

import json
import secrets
import socket
import urllib.request

import pytest

from addons.decisions import COMMENT_STYLE
from tools import launcher
from mesh.security import pki
from mesh.runtime import procs
from mesh.config import load

from .conftest import Mesh, demo_config, get


@pytest.fixture
def dumped(tmp_path):
    pki.init_edge(tmp_path / "certs")
    m = Mesh(tmp_path, demo_config(tmp_path / "certs"))
    m.write()
    try:
        m.start_services()
        m.start_gateway(mitmdump=True)
        yield m
    finally:
        m.stop()


def test_mitmdump_runs_the_gateway_chain(dumped):
    status, body, headers = get(dumped.url + "/catalog/items")
    assert status == 200 and body["service"] == "catalog" and "x-request-id" in headers
    assert get(dumped.url + "/nope")[1]["error"] == "no_route"
    assert dumped.status()["config"]["version"] == 1


def test_mitmweb_shows_this_meshs_listener_and_the_decision_logs_lines(tmp_path):
    m = Mesh(tmp_path, demo_config())
    m.write()
    web, token = procs.free_port(), secrets.token_hex(8)
    try:
        config = load(m.path)
        gw = procs.spawn("gateway", launcher.gateway_argv(m.path, config, web=True, web_port=web, web_token=token),
                         log_dir=tmp_path / "logs", cwd=str(tmp_path))
        m.children["gateway"] = gw
        procs.wait_ports(gw, [(l.address, l.port) for l in config.gateway.listeners] + [("127.0.0.1", web)])
        base = f"http://127.0.0.1:{web}"
        with urllib.request.urlopen(f"{base}/?token={token}", timeout=5) as r:
            page = r.read()
        with urllib.request.urlopen(f"{base}/options.json?token={token}", timeout=5) as r:
            options = json.load(r)
    finally:
        m.stop()
    assert COMMENT_STYLE in page  # the Comment tab keeps one line per decision
    listener = config.gateway.listeners[0]
    assert (options["listen_host"]["value"], options["listen_port"]["value"]) == (listener.address, listener.port)


def test_mitmdump_reads_requests_through_the_guarded_layer(dumped):
    """Under stock mitmdump the script's addons come before mitmproxy's own NextLayer: the guarded
    HTTP layer (head cap, body framing answered as JSON, no mitmproxy page) must still be the one
    reading, as in the lean runtime."""
    port = dumped.config["gateway"]["listeners"][0]["port"]
    for head, status, error in [
        (b"GET /catalog/items HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 200_000, 431, "headers_too_large"),
        (b"POST /catalog/items HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
         400, "invalid_body"),
    ]:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
            s.sendall(head)
            raw = b""
            while b"\r\n\r\n" not in raw or not raw.rstrip().endswith(b"}"):
                chunk = s.recv(65536)
                assert chunk, (error, raw[:200])  # mitmproxy's own answer: a silent close
                raw += chunk
        assert raw.startswith(f"HTTP/1.1 {status} ".encode()), raw[:200]
        assert json.loads(raw.partition(b"\r\n\r\n")[2])["error"] == error
