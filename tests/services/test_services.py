"""Demo services: they say who answered, honour their knobs, and orders calls its dependencies."""

from __future__ import annotations

import aiohttp
from aiohttp.test_utils import TestClient, TestServer

from services import catalog, orders, payments
from services.app import Identity, Knobs


async def client(app) -> TestClient:
    c = TestClient(TestServer(app, host="127.0.0.1"))
    await c.start_server()
    return c


async def test_catalog_versions_differ_and_name_themselves():
    v1 = await client(catalog.build(Identity("catalog", "v1", "c1")))
    v2 = await client(catalog.build(Identity("catalog", "v2", "c2")))
    try:
        a = await (await v1.get("/items/1")).json()
        b = await (await v2.get("/items/1")).json()
        assert (a["service"], a["version"], a["instance"]) == ("catalog", "v1", "c1")
        assert a["item"]["price"] == 49.9 and b["item"]["price_cents"] == 4990
        assert (await v1.get("/healthz")).status == 200
        assert (await v1.get("/items/99")).status == 404
    finally:
        await v1.close()
        await v2.close()


async def test_knobs_inject_errors_and_latency_live():
    c = await client(catalog.build(Identity("catalog", "v1", "c1", knobs=Knobs())))
    try:
        assert (await c.get("/items")).status == 200
        r = await c.post("/__knobs", json={"error_rate": 1.0, "error_status": 503})
        assert (await r.json())["error_rate"] == 1.0
        assert (await c.get("/items")).status == 503
        assert (await c.get("/healthz")).status == 200  # health is never faulted
        r = await c.post("/__knobs", json={"error_rate": "x"})
        assert r.status == 400
    finally:
        await c.close()


async def test_orders_calls_catalog_and_payments():
    cat = await client(catalog.build(Identity("catalog", "v1", "c1")))
    pay = await client(payments.build(Identity("payments", "v1", "p1")))
    base = lambda c: f"http://127.0.0.1:{c.server.port}"  # noqa: E731
    o = await client(orders.build(Identity("orders", "v1", "o1"), base(cat), base(pay), None))
    try:
        r = await o.post("/orders", json={"item_id": 2, "quantity": 3}, headers={"x-request-id": "rid-1"})
        body = await r.json()
        assert r.status == 200
        assert body["order"] == {"item": {"id": 2, "name": "mouse", "price": 19.5}, "quantity": 3,
                                 "catalog": "c1", "payment": "p1-1", "payments": "p1"}
        await pay.close()
        r = await o.post("/orders", json={"item_id": 2})
        assert r.status == 502 and (await r.json())["error"] == "upstream_unreachable"
    finally:
        await o.close()
        await cat.close()


async def test_an_orders_idempotency_key_is_the_callers_own(tmp_path):
    """The key orders sends payments is scoped by the verified caller: two callers who choose the
    same Idempotency-Key (or x-request-id) place two orders, not one charge shared; one caller's
    retry keeps its key."""
    ledger = tmp_path / "ledger"
    cat = await client(catalog.build(Identity("catalog", "v1", "c1")))
    pay = await client(payments.build(Identity("payments", "v1", "p1", knobs=Knobs(ledger=str(ledger)))))
    base = lambda c: f"http://127.0.0.1:{c.server.port}"  # noqa: E731
    o = await client(orders.build(Identity("orders", "v1", "o1"), base(cat), base(pay), None))
    try:
        for caller, chosen in (("alice", "idempotency-key"), ("bob", "idempotency-key"),
                               ("alice", "idempotency-key"), ("alice", "x-request-id"),
                               ("bob", "x-request-id")):
            r = await o.post("/orders", json={"item_id": 2},
                             headers={chosen: "k-1", "x-authenticated-userid": caller})
            assert r.status == 200
    finally:
        await o.close()
        await pay.close()
        await cat.close()
    keys = [line.split()[1] for line in ledger.read_text().splitlines()]
    assert len(keys) == 5 and all(k.startswith("order-k-1@") for k in keys)
    assert keys[0] == keys[2] == keys[3] and keys[1] == keys[4] and keys[0] != keys[1]


async def test_echo_answers_what_it_received():
    from services import echo

    c = await client(echo.build(Identity("echo", "v1", "e1")))
    try:
        r = await c.post("/a/b?x=1&x=2&respond=x-extra:yes", json={"k": [1]}, headers={"X-Test": "t"})
        body = await r.json()
        assert body["path"] == "/a/b?x=1&x=2&respond=x-extra:yes" and body["method"] == "POST"
        assert ["x", "1"] in body["query"] and ["x", "2"] in body["query"]
        assert ["x-test", "t"] in body["headers"] and body["json"] == {"k": [1]}
        assert r.headers["x-extra"] == "yes"
    finally:
        await c.close()
