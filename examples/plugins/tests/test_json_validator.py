"""The JSON schema validator in the real gateway chain (in-process), and on a real gateway."""

import json
from pathlib import Path

import pytest

from mitmesh.testing import body, decisions

HERE = Path(__file__).parent.parent


def config(upstream: str = "127.0.0.1:9") -> dict:
    return {
        "services": {"orders": {"versions": {"v1": {"endpoints": [upstream]}}}},
        "routes": [{"name": "orders", "match": {"path": {"prefix": "/orders"}},
                    "forward": {"service": "orders"}, "plugins": ["orders-schema"]}],
        "plugins": {"orders-schema": {
            "plugin": "json_validator.py:JsonValidator", "before": "forward",
            "options": {"methods": ["POST"], "schema": {
                "type": "object", "required": ["item"],
                "properties": {"item": {"type": "string"}, "count": {"type": "integer", "minimum": 1}}}}}},
    }


@pytest.mark.parametrize("sent, status, error", [
    (b'{"item": "book", "count": 2}', 200, None),
    (b'{"count": 2}', 400, "schema_violation"),
    (b'{"item": "book", "count": 0}', 400, "schema_violation"),
    (b"not json", 400, "invalid_json"),
])
async def test_bodies(mitmesh_chain, sent, status, error):
    async with mitmesh_chain(config(), base=HERE) as chain:
        flow = await chain.send("/orders", method="POST", body=sent,
                                headers={"content-type": "application/json"})
    assert flow.response.status_code == status
    if error:
        assert body(flow)["error"] == error and body(flow)["plugin"] == "orders-schema"
        assert any(line.startswith(f"plugin orders-schema: answered 400 {error}") for line in decisions(flow))


async def test_other_methods_pass(mitmesh_chain):
    async with mitmesh_chain(config(), base=HERE) as chain:
        flow = await chain.send("/orders", method="GET")
    assert flow.response.status_code == 200


async def test_a_bad_schema_is_refused_at_load_with_its_line(mitmesh_chain):
    bad = config()
    bad["plugins"]["orders-schema"]["options"]["schema"] = {"type": "objekt"}
    with pytest.raises(Exception) as e:
        async with mitmesh_chain(bad, base=HERE):
            pass
    assert "plugins.orders-schema.options.schema: not a valid JSON schema" in str(e.value)


@pytest.mark.e2e
def test_on_a_real_gateway(mitmesh_gateway, mitmesh_upstream):
    gw = mitmesh_gateway(config(mitmesh_upstream()), base=HERE)
    ok = gw.get("/orders", data=json.dumps({"item": "book"}).encode(), method="POST",
                headers={"content-type": "application/json"})
    refused = gw.get("/orders", data=b'{"count": 1}', method="POST", headers={"content-type": "application/json"})
    assert ok[0] == 200 and ok[1]["method"] == "POST"
    assert refused[0] == 400 and refused[1]["error"] == "schema_violation"
    [entry] = gw.status()["plugins"]
    assert entry["name"] == "orders-schema" and entry["position"] == "before forward"
