"""AuthThrottle: wrong credentials counted per client IP; over the limit a JSON 429 with Retry-After
before authentication, on routes that authenticate only; missing credentials and other addresses
are not affected; Redis storage shares the count."""

from __future__ import annotations

import pytest

from mesh.policies import apikeys

KEY = "mk_test_key_for_acme_0123456789abcdef"


def config(upstream: int, throttle: str = "") -> str:
    return f"""
version: 1
gateway:
  listeners: [{{name: public, port: 18080}}]
  {throttle}
services:
  users: {{versions: {{v1: {{endpoints: ["127.0.0.1:{upstream}"]}}}}}}
routes:
  - name: keys
    match: {{path: {{prefix: /keys/}}}}
    forward: {{service: users}}
    policies: [partners]
  - name: open
    match: {{path: {{prefix: /open/}}}}
    forward: {{service: users}}
policies:
  partners:
    api_key:
      consumers:
        acme: {{key_sha256: {apikeys.digest(KEY)}}}
"""


async def wrong(gw, n: int, client: str = "10.1.1.1") -> list[int]:
    return [(await gw.send("/keys/x", headers={"x-api-key": f"mk_wrong_{i}"}, client=client)).response.status_code
            for i in range(n)]


async def test_over_the_limit_of_failures_an_address_gets_429_before_authentication(gateway, upstream_app):
    users = await upstream_app("users")
    async with gateway(config(users, "auth_failures: {minute: 5}")) as gw:
        assert await wrong(gw, 5) == [401] * 5
        flow = await gw.send("/keys/x", headers={"x-api-key": KEY}, client="10.1.1.1")  # even the right key
        assert flow.response.status_code == 429
        body = flow.response.json()
        assert body["error"] == "too_many_failed_authentications" and body["request_id"]
        assert 1 <= int(flow.response.headers["retry-after"]) <= 60
        # another address, missing credentials, routes without authentication: untouched
        assert (await gw.send("/keys/x", headers={"x-api-key": KEY}, client="10.1.1.2")).response.status_code == 200
        assert (await gw.send("/open/x", client="10.1.1.1")).response.status_code == 200
        assert [(await gw.send("/keys/x", client="10.1.1.3")).response.status_code for _ in range(8)] == [401] * 8


async def test_default_is_20_per_minute_and_null_turns_it_off(gateway, upstream_app):
    users = await upstream_app("users")
    async with gateway(config(users)) as gw:
        assert await wrong(gw, 21) == [401] * 20 + [429]
    async with gateway(config(users, "auth_failures: null")) as gw:
        assert set(await wrong(gw, 30)) == {401}


async def test_redis_storage_shares_the_count(gateway, upstream_app, redis_server):
    users = await upstream_app("users")
    throttle = f"auth_failures: {{minute: 3, storage: '{redis_server.url}'}}"
    async with gateway(config(users, throttle)) as one:  # counted in the background; done() waits
        assert await wrong(one, 3) == [401, 401, 401]
    async with gateway(config(users, throttle)) as other:  # another gateway, the same Redis
        assert await wrong(other, 1) == [429]
        assert await wrong(other, 1, client="10.1.1.9") == [401]


@pytest.mark.parametrize("spec, error", [
    ("auth_failures: {minute: 0}", "gateway.auth_failures.minute: expected a value >= 1 (got 0)"),
    ("auth_failures: {minute: null}",
     "gateway.auth_failures: expected minute or hour (got neither); `auth_failures: null` turns it off"),
    ("auth_failures: {storage: mongodb://x}", "gateway.auth_failures.storage: expected memory or a Redis URI"),
])
def test_config_errors(spec, error, write_config):
    from mesh.config import ConfigError, load
    with pytest.raises(ConfigError) as e:
        load(write_config(config(9, spec)))
    assert error in str(e.value)
