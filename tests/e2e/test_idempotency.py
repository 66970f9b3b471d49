"""Idempotency-Key across gateway workers: a gateway of two workers with Redis storage charges each
key once at the real payments app (counted in its ledger), whichever worker each duplicate reaches."""

from __future__ import annotations

import collections
import concurrent.futures
import json

import pytest

from .conftest import Mesh, demo_config, get, wait_until


@pytest.fixture
def charging(tmp_path, redis_server):
    config = demo_config()
    for route in config["routes"]:
        if route["name"] == "payments":
            route["policies"] = ["once"]
    config["policies"] = {"once": {"idempotency": {"storage": redis_server.url}}}
    m = Mesh(tmp_path, config)
    m.write()
    try:
        m.start_services()
        m.start_gateway(workers=2)
        yield m
    finally:
        m.stop()


def test_each_key_charges_once_across_two_workers(charging, tmp_path):
    payments = charging.config["services"]["payments"]["versions"]["v1"]["endpoints"][0]
    ledger = tmp_path / "payments.ledger"
    wait_until(lambda: get(f"http://{payments}/__knobs", data=json.dumps({"ledger": str(ledger)}).encode())[0] == 200,
               timeout=10)

    def charge(key: str, amount: int = 5):
        return get(charging.url + "/payments/charge", data=json.dumps({"amount": amount}).encode(),
                   headers={"content-type": "application/json", "idempotency-key": key}, method="POST")

    keys = [f"k{i}" for i in range(20)]
    with concurrent.futures.ThreadPoolExecutor(8) as pool:  # each on a new connection: either worker
        first = list(pool.map(charge, keys + keys))
    later = [charge(k) for k in keys]
    other = charge("k0", amount=6)

    statuses = collections.Counter(status for status, _, _ in first)
    assert set(statuses) <= {200, 409} and statuses[200] >= len(keys), statuses
    assert all(status == 200 and headers.get("idempotent-replayed") == "true" for status, _, headers in later)
    assert other[0] == 422 and other[1]["error"] == "idempotency_key_reused"
    charged = collections.Counter(line.split()[1] for line in ledger.read_text().splitlines())
    assert charged == {k: 1 for k in keys}
    by_key = {k: body["payment_id"] for k, (status, body, _) in zip(keys + keys, first) if status == 200}
    assert all(body["payment_id"] == by_key[k] for k, (_, body, _) in zip(keys, later))
