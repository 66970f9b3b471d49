"""Idempotency: one run per key against a counting upstream; 409 in flight, replay marked, 422 on
another request, 400 when required and missing, keys freed only when nothing was sent, retries keep
the key, Redis shares the records between gateways."""

from __future__ import annotations

import asyncio
import collections
import json

import pytest
from aiohttp import web

from addons import keys


def config(ports: list[int], policy: str = "{}", extra: str = "") -> str:
    eps = ", ".join(f'"127.0.0.1:{p}"' for p in ports)
    return f"""
version: 1
gateway: {{listeners: [{{name: public, port: 18080}}]}}
services:
  pay:
    versions: {{v1: {{endpoints: [{eps}]}}}}
    outlier_detection: null
routes:
  - name: pay
    match: {{path: {{prefix: /}}}}
    forward: {{service: pay}}
    policies: [p]
policies:
  p:
    idempotency: {policy}
{extra}"""


class Charges:
    """An upstream that charges: counts runs per Idempotency-Key (and what else it was told)."""

    def __init__(self, *, delay: float = 0.0, status: int = 200, reset: bool = False):
        self.delay, self.status, self.reset = delay, status, reset
        self.runs: collections.Counter[str] = collections.Counter()
        self.n = 0

    async def handle(self, request: web.Request):
        body = await request.read()
        self.runs[request.headers.get("idempotency-key", "")] += 1
        self.n += 1
        if self.delay:
            await asyncio.sleep(self.delay)
        if self.reset:
            request.transport.abort()
            raise asyncio.CancelledError
        return web.json_response({"charge": self.n, "body": body.decode()}, status=self.status,
                                 headers={"set-cookie": "a=1", "x-charge": str(self.n)})


def post(gw, key: str | None = "k1", body: bytes = b'{"amount": 5}', **kw):
    headers = {"idempotency-key": key} if key is not None else {}
    return gw.send("/charge", method="POST", headers=headers, body=body, **kw)


async def test_a_duplicate_gets_the_kept_answer_replayed(gateway, upstream_app):
    up = Charges()
    port = await upstream_app("pay", handler=up.handle)
    async with gateway(config([port])) as gw:
        first = await post(gw)
        again = await post(gw)
    assert first.response.status_code == 200 and "idempotent-replayed" not in first.response.headers
    assert again.response.status_code == 200 and again.response.headers["idempotent-replayed"] == "true"
    assert again.response.content == first.response.content
    assert again.response.headers["x-charge"] == "1" and again.response.headers["set-cookie"] == "a=1"
    assert again.response.headers["x-request-id"] == keys.get(again).request_id != keys.get(first).request_id
    assert up.runs == {"k1": 1}
    assert ("idempotency", "duplicate: the kept answer (200) replayed") in keys.get(again).decisions


async def test_records_are_the_callers_own_however_their_names_collide(gateway, upstream_app):
    """One key, one request, five callers whose names meet: an API-key consumer and a JWT subject
    both called alice, the same subject from another issuer, a token without a subject, and no one
    verified. Each runs once (a caller never gets another's kept answer); each again is a replay."""
    up = Charges()
    port = await upstream_app("pay", handler=up.handle)
    callers = [
        dict(principal="alice", credential="api_key:aa"),
        dict(principal="alice", claims={"iss": "https://idp.a", "sub": "alice"}, credential="jwt:bb"),
        dict(principal="alice", claims={"iss": "https://idp.b", "sub": "alice"}, credential="jwt:cc"),
        dict(principal="", claims={"iss": "https://idp.a"}, credential="jwt:dd"),
        dict(),
    ]
    async with gateway(config([port])) as gw:
        firsts = [await post(gw, **who) for who in callers]
        agains = [await post(gw, **who) for who in callers]
    assert [f.response.headers["x-charge"] for f in firsts] == ["1", "2", "3", "4", "5"]
    assert [a.response.headers["x-charge"] for a in agains] == ["1", "2", "3", "4", "5"]
    assert all(a.response.headers["idempotent-replayed"] == "true" for a in agains)
    assert up.runs == {"k1": 5}


async def test_a_duplicate_in_flight_gets_409(gateway, upstream_app):
    up = Charges(delay=1.5)  # long enough for the duplicate to arrive meanwhile on a loaded machine
    port = await upstream_app("pay", handler=up.handle)
    async with gateway(config([port])) as gw:
        first = asyncio.create_task(post(gw))
        await asyncio.sleep(0.3)
        during = await post(gw)
        first = await first
        after = await post(gw)
    assert during.response.status_code == 409 and json.loads(during.response.content)["error"] == "idempotency_key_in_flight"
    assert during.response.headers["retry-after"] == "1"
    assert first.response.status_code == 200 and after.response.headers["idempotent-replayed"] == "true"
    assert up.runs == {"k1": 1}


async def test_the_same_key_on_another_request_is_422(gateway, upstream_app):
    up = Charges()
    port = await upstream_app("pay", handler=up.handle)
    async with gateway(config([port])) as gw:
        await post(gw)
        other = await post(gw, body=b'{"amount": 6}')
        elsewhere = await gw.send("/refund", method="POST", headers={"idempotency-key": "k1"}, body=b'{"amount": 5}')
    assert other.response.status_code == 422 and json.loads(other.response.content)["error"] == "idempotency_key_reused"
    assert elsewhere.response.status_code == 422
    assert up.runs == {"k1": 1}


async def test_required_key_missing_is_400_and_other_methods_pass(gateway, upstream_app):
    up = Charges()
    port = await upstream_app("pay", handler=up.handle)
    async with gateway(config([port], "{required: true}")) as gw:
        missing = await post(gw, key=None)
        empty = await post(gw, key=" ")
        read = await gw.send("/charge")
    assert missing.response.status_code == 400
    assert json.loads(missing.response.content) == {
        "error": "idempotency_key_missing", "reason": "this route needs an idempotency-key header on POST requests",
        "request_id": keys.get(missing).request_id}
    assert empty.response.status_code == 400 and json.loads(empty.response.content)["error"] == "bad_idempotency_key"
    assert read.response.status_code == 200
    assert up.runs == {"": 1}


async def test_without_required_a_request_without_a_key_just_passes(gateway, upstream_app):
    up = Charges()
    port = await upstream_app("pay", handler=up.handle)
    async with gateway(config([port])) as gw:
        flows = [await post(gw, key=None) for _ in range(2)]
    assert [f.response.status_code for f in flows] == [200, 200] and up.runs == {"": 2}


async def test_a_key_is_freed_when_nothing_was_sent(gateway, upstream_app):
    from mesh.runtime import procs

    closed = procs.free_port()  # nobody listens: every attempt is a connect failure, nothing sent
    async with gateway(config([closed])) as gw:
        refused = await post(gw)
    up = Charges()
    port = await upstream_app("pay", handler=up.handle)
    async with gateway(config([port])) as gw:  # a fresh gateway: what the first one freed is not carried
        ok = await post(gw)
    assert refused.response.status_code == 503 and not keys.get(refused).sent
    assert ("idempotency", "nothing was sent upstream: the key is free again") in keys.get(refused).decisions
    assert ok.response.status_code == 200 and up.runs == {"k1": 1}


async def test_a_key_whose_request_may_have_run_keeps_its_answer(gateway, upstream_app):
    """The upstream charged, then reset: the 502 is kept, and a duplicate is not charged again."""
    up = Charges(reset=True)
    port = await upstream_app("pay", handler=up.handle)
    async with gateway(config([port])) as gw:
        first = await post(gw)
        again = await post(gw)
    assert first.response.status_code == 502 and keys.get(first).sent
    assert again.response.status_code == 502 and again.response.headers["idempotent-replayed"] == "true"
    assert up.runs == {"k1": 1}


async def test_retries_keep_the_key(gateway, upstream_app):
    bad, good = Charges(status=503), Charges()
    ports = [await upstream_app("bad", handler=bad.handle), await upstream_app("good", handler=good.handle)]
    retries = "    retries: {attempts: 2, retry_on: [5xx], non_idempotent: true, backoff: {base: 1ms, max: 2ms}}"
    async with gateway(config(ports, extra=retries)) as gw:
        flows = [await post(gw, key=f"k{i}") for i in range(6)]
    assert all(f.response.status_code == 200 for f in flows)
    retried = [f for f in flows if f.response.headers["x-mitmesh-attempts"] == "2"]
    assert retried and set(bad.runs) == {f.request.headers["idempotency-key"] for f in retried}
    assert all(good.runs[k] == 1 for k in (f"k{i}" for i in range(6)))


async def test_redis_shares_the_records_between_gateways(gateway, upstream_app, redis_server):
    up = Charges(delay=1.5)
    port = await upstream_app("pay", handler=up.handle)
    policy = f"{{storage: '{redis_server.url}'}}"
    async with gateway(config([port], policy)) as one, gateway(config([port], policy)) as other:
        first = asyncio.create_task(post(one))
        await asyncio.sleep(0.3)
        during = await post(other)  # another gateway, the same Redis: the key is in flight there too
        first = await first
        after = await post(other)
        mismatch = await post(other, body=b"{}")
    assert during.response.status_code == 409
    assert first.response.status_code == 200
    assert after.response.status_code == 200 and after.response.headers["idempotent-replayed"] == "true"
    assert after.response.content == first.response.content
    assert mismatch.response.status_code == 422
    assert up.runs == {"k1": 1}


async def test_an_unreachable_redis_refuses_with_503(gateway, upstream_app):
    from mesh.runtime import procs

    up = Charges()
    port = await upstream_app("pay", handler=up.handle)
    policy = f"{{storage: 'redis://127.0.0.1:{procs.free_port()}/0'}}"
    async with gateway(config([port], policy)) as gw:
        flow = await post(gw)
    assert flow.response.status_code == 503
    assert json.loads(flow.response.content)["error"] == "idempotency_unavailable" and up.runs == {}


@pytest.mark.parametrize("spec, error", [
    ("{storage: mongodb://x}", "policies.p.idempotency.storage: expected memory or a Redis URI"),
    ("{methods: [FETCH]}", "policies.p.idempotency.methods[0]: expected one of 'GET'"),
    ("{ttl: 0s}", "policies.p.idempotency.ttl: expected a value > 0"),
    ("{header: 'Idempotency Key'}", "policies.p.idempotency.header: expected"),
    ("{required: maybe}", "policies.p.idempotency.required:"),
    ("{key: x}", "policies.p.idempotency.key: unknown key; expected one of header, ttl, lock, storage, methods, required (got 'key')"),
])
def test_config_errors(spec, error, write_config):
    from mesh.config import ConfigError, load

    path = write_config(config([1], spec))
    with pytest.raises(ConfigError) as e:
        load(path)
    assert error in str(e.value), str(e.value)
