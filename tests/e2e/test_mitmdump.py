"""The same addons inside stock mitmdump (`mitmdump -s addons/gateway.py`), for inspection."""

from __future__ import annotations

import pytest

from mesh import pki

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
