"""The header enricher in the real gateway chain (in-process, `mitmesh.testing`)."""

from pathlib import Path

import pytest

from mitmesh.testing import body, decisions

HERE = Path(__file__).parent.parent
pytestmark = pytest.mark.asyncio  # the kit's fixtures are async (pytest-asyncio)

CONFIG = """
services:
  catalog: {versions: {v1: {endpoints: ["127.0.0.1:9"]}}}
routes:
  - {name: catalog, match: {path: {prefix: /catalog}}, forward: {service: catalog}, plugins: [tenant]}
  - {name: open, match: {path: {prefix: /open}}, forward: {service: catalog}}
plugins:
  tenant:
    plugin: header_enricher.py:HeaderEnricher
    after: authn
    options:
      table: {alice: {x-tenant: acme, x-plan: gold}}
      unknown: reject
"""


async def test_adds_the_callers_headers(mitmesh_chain):
    async with mitmesh_chain(CONFIG, base=HERE) as chain:
        flow = await chain.send("/catalog/items", identity="alice")
    assert flow.response.status_code == 200
    assert body(flow)["headers"]["x-tenant"] == "acme"
    assert body(flow)["headers"]["x-plan"] == "gold"
    assert "plugin tenant: added x-tenant, x-plan for alice" in decisions(flow)


async def test_rejects_an_unknown_caller_in_the_error_shape(mitmesh_chain):
    async with mitmesh_chain(CONFIG, base=HERE) as chain:
        flow = await chain.send("/catalog/items", identity="mallory")
    assert flow.response.status_code == 403
    answer = body(flow)
    assert answer["error"] == "unknown_caller" and answer["plugin"] == "tenant"
    assert answer["request_id"] == flow.response.headers["x-request-id"]


async def test_routes_that_do_not_list_it_are_untouched(mitmesh_chain):
    async with mitmesh_chain(CONFIG, base=HERE) as chain:
        flow = await chain.send("/open/x", identity="mallory")
    assert flow.response.status_code == 200
    assert "x-tenant" not in body(flow)["headers"]
    assert not any(line.startswith("plugin tenant") for line in decisions(flow))


async def test_lookup_by_header(mitmesh_chain):
    config = CONFIG.replace("unknown: reject", "key: header:x-client")
    async with mitmesh_chain(config, base=HERE) as chain:
        known = await chain.send("/catalog/items", headers={"x-client": "alice"})
        other = await chain.send("/catalog/items", headers={"x-client": "bob"})
    assert body(known)["headers"]["x-tenant"] == "acme"
    assert other.response.status_code == 200 and "x-tenant" not in body(other)["headers"]
