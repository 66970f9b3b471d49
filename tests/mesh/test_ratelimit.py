"""Rate limits: exact counts per window and key, the most restrictive window in the headers, the
three strategies, Redis shared between limiters, and fail-open/closed when Redis is gone."""

from __future__ import annotations

import asyncio
import hashlib
import time

import pytest

from mesh.telemetry import metrics
from mesh.policies import ratelimit
from mesh.config import load_text

CONFIG = """
version: 1
gateway: {listeners: [{name: p, port: 18080}]}
services: {s: {versions: {v1: {endpoints: ["127.0.0.1:1"]}}}}
routes:
  - {name: r, forward: {service: s}, policies: [rl]}
policies:
  rl:
    rate_limit: SPEC
"""


def policy(spec: str) -> ratelimit.Policy:
    config = load_text(CONFIG.replace("SPEC", spec), "t.yaml")
    return ratelimit.compile(config.policies["rl"].rate_limit, config.routes[0])


def headers(outcome: ratelimit.Outcome) -> dict[str, str]:
    return dict(outcome.headers)


@pytest.mark.parametrize("strategy", ["fixed_window", "sliding_window", "moving_window"])
def test_memory_allows_exactly_the_limit_and_counts_down(strategy):
    p = policy(f"{{minute: 5, key: ip, strategy: {strategy}}}")
    limiters = ratelimit.Limiters()
    outcomes = [limiters.hit_sync(p, "ip:10.0.0.1") for _ in range(8)]
    assert [o.allowed for o in outcomes] == [True] * 5 + [False] * 3
    assert [headers(o)["RateLimit-Remaining"] for o in outcomes] == ["4", "3", "2", "1", "0", "0", "0", "0"]
    assert all(headers(o)["RateLimit-Limit"] == "5" for o in outcomes)
    assert all(0 <= int(headers(o)["RateLimit-Reset"]) <= 60 for o in outcomes)
    assert 1 <= outcomes[-1].retry_after <= 60 and outcomes[-1].window == "5 per minute"
    assert limiters.hit_sync(p, "ip:10.0.0.2").allowed  # another key has its own count


def test_memory_storage_starts_no_threads_and_expires_on_request():
    import threading
    import time

    p = policy("{second: 1000, key: ip, strategy: moving_window}")
    q = policy("{second: 1000, key: ip}")
    limiters = ratelimit.Limiters()
    time.sleep(0.05)
    before = threading.active_count()
    for i in range(200):
        limiters.hit_sync(p, f"k{i % 20}")
        limiters.hit_sync(q, f"k{i % 20}")
    time.sleep(0.05)  # limits' own MemoryStorage would have started a timer thread by now
    assert threading.active_count() == before
    memory = limiters._memory
    assert memory.events and memory.storage
    memory.expirations = {k: 0 for k in memory.expirations}  # as if a second had passed
    for entries in memory.events.values():
        for e in entries:
            e.expiry = 0
    limiters.expire()
    assert not any(memory.events.values()) and not memory.storage


def test_several_windows_headers_show_the_most_restrictive():
    p = policy("{second: 3, minute: 4, key: ip}")
    assert p.policy_header == "3;w=1, 4;w=60"
    limiters = ratelimit.Limiters()
    first = limiters.hit_sync(p, "k")
    assert headers(first)["RateLimit-Limit"] == "3" and headers(first)["RateLimit-Remaining"] == "2"
    third = [limiters.hit_sync(p, "k") for _ in range(2)][-1]
    assert third.allowed and headers(third)["RateLimit-Remaining"] == "0"
    fourth = limiters.hit_sync(p, "k")
    assert not fourth.allowed and fourth.window == "3 per second"


@pytest.mark.parametrize("spec", ["{minute: 5, hour: 5, key: ip}",
                                  "{second: 3, minute: 5, hour: 6, key: ip}",
                                  "{second: 9, minute: 3, hour: 3, day: 4, key: ip}",
                                  "{minute: 4, hour: 6, day: 2, key: ip}", "{second: 2, key: ip}"])
def test_memory_fixed_window_hits_answer_as_limits_strategy(spec):
    """Each hit of the memory fixed window (`Limiters._hit_fixed`) answers what `_outcome` makes of
    limits' own FixedWindowRateLimiter hit and window stats: allowed, the window shown (fewest
    left, a tie to the later end, the refusing window when refused), retry-after."""
    from limits.strategies import FixedWindowRateLimiter

    p = policy(spec)
    limiters = ratelimit.Limiters()
    reference = FixedWindowRateLimiter(ratelimit.LoopMemoryStorage())  # limits' own incr and get
    ids = (p.strategy, p.route, "k")
    for _ in range(8):
        ours = limiters.hit_sync(p, "k")
        stats = []
        for item in p.items:
            ok = reference.hit(item, *ids)
            stats.append((item, ok, reference.get_window_stats(item, *ids)))
            if not ok:
                break
        theirs = ratelimit._outcome(p, stats, time.time())
        assert (ours.allowed, ours.window) == (theirs.allowed, theirs.window)
        assert abs(ours.retry_after - theirs.retry_after) <= 1  # two clocks a few µs apart
        mine, limits_ = headers(ours), headers(theirs)
        assert abs(int(mine.pop("RateLimit-Reset")) - int(limits_.pop("RateLimit-Reset"))) <= 1
        assert mine == limits_


def test_secrets_are_hashed_in_counter_keys():
    assert ratelimit.key_text("header", "Bearer secret", hashed=True) == "header:" + hashlib.sha256(
        b"Bearer secret").hexdigest()[:24]
    assert ratelimit.key_text("header", "acme") == "header:acme"


AUTH = """
  keys: {api_key: {header: X-Partner-Key, consumers: {acme: {key_sha256: "%s"}}}}
  tokens: {jwt: {issuer: "https://idp", jwks_uri: "https://idp/jwks",
                 token_from: [{header: authorization, prefix: "Bearer "}, {cookie: session}]}}
  opaque: {oauth2: {introspection_url: "https://idp/i", client_id: gw, client_secret: s}}
""" % ("0" * 64)


def auth(*kinds: str) -> dict:
    config = load_text(CONFIG.replace("SPEC", "{minute: 1}") + AUTH, "t.yaml")
    blocks = (("keys", "api_key"), ("tokens", "jwt"), ("opaque", "oauth2"))
    return {kind: getattr(config.policies[name], kind) for name, kind in blocks if kind in kinds}


@pytest.mark.parametrize("spec, kinds, credential, hashed", [
    # key: api_key counts the key an api_key policy verified, wherever it came from (or the IP)
    ("{minute: 1, key: api_key}", ("api_key",), ("api_key:",), False),
    ("{minute: 1, key: api_key}", (), ("api_key:",), False),
    # a header the route reads a credential from counts that credential, as verified
    ("{minute: 1, key: header, header: x-partner-key}", ("api_key", "jwt"), ("api_key:",), False),
    ("{minute: 1, key: header, header: Authorization}", ("api_key", "jwt", "oauth2"),
     ("jwt:", "oauth2:"), False),
    # a credential's name the route does not authenticate with: its value, hashed
    ("{minute: 1, key: header, header: authorization}", ("api_key",), (), True),
    ("{minute: 1, key: header, header: x-api-key}", (), (), True),
    ("{minute: 1, key: header, header: x-tenant}", ("api_key", "jwt"), (), False),
    ("{minute: 1, key: consumer}", ("api_key", "jwt"), (), False),
])
def test_what_a_limit_counts_of_a_credential(spec, kinds, credential, hashed):
    config = load_text(CONFIG.replace("SPEC", spec), "t.yaml")
    p = ratelimit.compile(config.policies["rl"].rate_limit, config.routes[0], auth(*kinds))
    assert (p.credential, p.hashed) == (credential, hashed)


@pytest.mark.parametrize("strategy", ["fixed_window", "sliding_window", "moving_window"])
def test_redis_is_shared_by_limiters(redis_server, strategy):
    p = policy(f"{{minute: 10, key: header, header: x-consumer, storage: '{redis_server.url}', "
               f"storage_timeout: 2s, strategy: {strategy}}}")

    async def run():
        a, b = ratelimit.Limiters(), ratelimit.Limiters()  # two gateways, one storage
        try:
            results = [await (a if i % 2 else b).hit_async(p, "header:acme") for i in range(14)]
        finally:
            await a.close()
            await b.close()
        return results

    results = asyncio.run(run())
    assert [o.allowed for o in results] == [True] * 10 + [False] * 4
    assert [headers(o)["RateLimit-Remaining"] for o in results[:10]] == [str(9 - i) for i in range(10)]


@pytest.mark.parametrize("fail_open", [True, False])
def test_unreachable_redis_fails_open_or_closed_and_is_counted(redis_server, fail_open):
    p = policy(f"{{minute: 10, key: ip, storage: '{redis_server.url}', fail_open: {str(fail_open).lower()}, "
               f"storage_timeout: 2s}}")  # a busy test machine may take more than 100 ms to connect

    async def run():
        limiters = ratelimit.Limiters()
        try:
            before = await limiters.hit_async(p, "ip:1")
            redis_server.kill()
            after = [await limiters.hit_async(p, "ip:1") for _ in range(3)]
        finally:
            await limiters.close()
        return before, after

    base = metrics.totals()  # the /status counters, counted for the whole process
    before, after = asyncio.run(run())
    counted = {k: v - base[k] for k, v in metrics.totals().items()}
    assert before.allowed and not before.unavailable
    assert all(o.unavailable and o.allowed == fail_open and o.headers == () for o in after)
    assert counted["ratelimit_storage_errors"] == 3 and counted["ratelimit_storage_outages"] == 1


@pytest.mark.parametrize("spec, error", [
    ("{key: ip}", "policies.rl.rate_limit: expected at least one of second, minute, hour, day (got none)"),
    ("{minute: 0}", "policies.rl.rate_limit.minute: expected a value >= 1 (got 0)"),
    ("{minute: 5, key: header}", "policies.rl.rate_limit: key: header needs header: NAME"),
    ("{minute: 5, key: claim}", "policies.rl.rate_limit: key: claim needs claim: NAME"),
    ("{minute: 5, key: ip, header: x-a}",
     "policies.rl.rate_limit: header is only used with key: header (got key: ip)"),
    ("{minute: 5, key: api_key, header: x-a}",
     "policies.rl.rate_limit: header is only used with key: header (got key: api_key; it counts "
     "the key the api_key policy verified, wherever it was sent)"),
    ("{minute: 5, key: user}", "policies.rl.rate_limit.key: expected one of 'consumer', 'ip', 'header', "
                               "'claim', 'api_key' (got 'user')"),
    ("{minute: 5, strategy: leaky}", "policies.rl.rate_limit.strategy: expected one of 'fixed_window', "
                                     "'sliding_window', 'moving_window' (got 'leaky')"),
    ("{minute: 5, storage: 'memcached://x'}", "policies.rl.rate_limit.storage: expected memory or a Redis URI "
                                              "such as redis://127.0.0.1:6379/0 (got 'memcached://x')"),
    ("{minute: 5, storage_timeout: 0}", "policies.rl.rate_limit.storage_timeout: expected a value > 0 (got 0)"),
    ("{minute: 5, windw: 1}", "policies.rl.rate_limit.windw: unknown key; expected one of second, minute, "
                              "hour, day, key, header, claim, strategy, storage, fail_open, storage_timeout, "
                              "headers "
                              "(got 'windw')"),
])
def test_config_errors(spec, error):
    from mesh.config import ConfigError

    with pytest.raises(ConfigError) as e:
        policy(spec)
    assert [str(p) for p in e.value.problems] == [f"t.yaml:9: {error}"]


def test_memory_fixed_window_keeps_limits_own_counters():
    """hit_sync and peek_sync (the auth throttle's look) count in the storage limits' fixed-window
    strategy reads, with its semantics: its test() and get_window_stats() agree with every answer."""
    from limits.strategies import FixedWindowRateLimiter

    p = policy("{second: 3, minute: 4, key: ip}")
    limiters = ratelimit.Limiters()
    strategy = FixedWindowRateLimiter(limiters._memory)
    ids = (p.strategy, p.route, "k")
    fresh = limiters.peek_sync(p, "k")
    assert fresh.allowed and headers(fresh) == {"RateLimit-Limit": "3", "RateLimit-Remaining": "3",
                                                "RateLimit-Reset": "0", "RateLimit-Policy": "3;w=1, 4;w=60"}
    answers = []
    for _ in range(5):
        answers.append(limiters.hit_sync(p, "k").allowed)
        peek = limiters.peek_sync(p, "k")
        assert peek.allowed == all(strategy.test(item, *ids) for item in p.items)
        left = min(strategy.get_window_stats(item, *ids).remaining for item in p.items)
        assert headers(peek)["RateLimit-Remaining"] == str(left)
    assert answers == [True, True, True, False, False] and not peek.allowed and peek.window == "3 per second"
    assert limiters.peek_sync(p, "other").allowed  # nothing counted for another key
    limiters._memory.expirations = {k: 0 for k in limiters._memory.expirations}  # a minute later
    assert limiters.hit_sync(p, "k").allowed and headers(limiters.peek_sync(p, "k"))["RateLimit-Remaining"] == "2"
