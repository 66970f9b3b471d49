"""Load balancers: smooth weighted round robin, power-of-two least request, retry exclusion."""

from __future__ import annotations

import collections

from mesh.core.cluster import Cluster, Endpoint


def eps(*weights):
    return [Endpoint("127.0.0.1", 9000 + i, w) for i, w in enumerate(weights)]


def test_round_robin_weights_interleave():
    c = Cluster("a/v1", "a", "v1", "round_robin", endpoints=eps(3, 1))
    picks = [c.pick().port for _ in range(8)]
    assert collections.Counter(picks) == {9000: 6, 9001: 2}
    assert picks[:4] != [9000, 9000, 9000, 9001] or picks[4:] == picks[:4]


def test_exclude_prefers_other_endpoints():
    c = Cluster("a/v1", "a", "v1", endpoints=eps(1, 1, 1))
    first = c.pick()
    for _ in range(10):
        assert c.pick(exclude=(first,)) is not first
    only = Cluster("b/v1", "b", "v1", endpoints=eps(1))
    assert only.pick(exclude=(only.endpoints[0],)) is only.endpoints[0]


def test_least_request_prefers_idle():
    c = Cluster("a/v1", "a", "v1", "least_request", endpoints=eps(1, 1))
    c.endpoints[0].active = 10
    assert all(c.pick().port == 9001 for _ in range(50))


def test_unhealthy_are_skipped_and_membership_keeps_state():
    c = Cluster("a/v1", "a", "v1", endpoints=eps(1, 1))
    c.endpoints[0].healthy = False
    c.refresh()
    assert {c.pick().port for _ in range(5)} == {9001}
    kept = c.endpoints[1]
    kept.active = 3
    c.set_endpoints([Endpoint("127.0.0.1", 9001, 5), Endpoint("127.0.0.1", 9002)])
    assert c.endpoints[0] is kept and kept.weight == 5 and kept.active == 3
    assert Cluster("x", "x", "v").pick() is None


def hashed(n: int, **kw) -> Cluster:
    return Cluster("a/v1", "a", "v1", "consistent_hash", endpoints=eps(*([1] * n)), **kw)


def test_ring_hash_keeps_keys_and_remaps_about_one_nth():
    keys = [f"user-{i}" for i in range(4000)]
    c = hashed(4)
    before = {k: c.pick(key=k).port for k in keys}
    assert all(c.pick(key=k).port == p for k, p in list(before.items())[:500])  # stable
    assert min(collections.Counter(before.values()).values()) > 4000 / 4 * 0.7  # spread evenly
    c.set_endpoints(c.endpoints + [Endpoint("127.0.0.1", 9004)])  # a fifth endpoint joins
    after = {k: c.pick(key=k).port for k in keys}
    moved = [k for k in keys if before[k] != after[k]]
    assert all(after[k] == 9004 for k in moved)  # keys only move to the newcomer
    assert abs(len(moved) / len(keys) - 1 / 5) < 0.06
    c.set_endpoints(c.endpoints[:4])  # and leaves again: everything is back in place
    assert {k: c.pick(key=k).port for k in keys} == before


def test_ring_hash_follows_weights_and_skips_unhealthy_and_excluded():
    c = Cluster("a/v1", "a", "v1", "consistent_hash", endpoints=eps(3, 1))
    counts = collections.Counter(c.pick(key=f"k{i}").port for i in range(4000))
    assert abs(counts[9000] / 4000 - 0.75) < 0.05
    owner = c.pick(key="k1")
    owner.healthy = False
    c.refresh()
    assert c.pick(key="k1") is not owner
    owner.healthy = True
    c.refresh()
    assert c.pick(key="k1", exclude=(owner,)) is not owner
    assert c.pick(key=None) in c.endpoints  # no key: a random endpoint, as Envoy does


def zoned(*zones, min_healthy=0.5, local="a") -> Cluster:
    endpoints = [Endpoint("127.0.0.1", 9000 + i, zone=z) for i, z in enumerate(zones)]
    return Cluster("a/v1", "a", "v1", endpoints=endpoints, zone_aware=min_healthy, local_zone=local)


def test_zone_aware_stays_local_until_too_few_are_healthy():
    c = zoned("a", "a", "b", "b")
    assert {c.pick().zone for _ in range(20)} == {"a"}
    c.endpoints[0].healthy = False
    c.refresh()
    assert {c.pick().port for _ in range(20)} == {9001}  # 1 of 2 healthy: still at the 0.5 share
    c.endpoints[1].healthy = False
    c.refresh()
    assert {c.pick().zone for _ in range(20)} == {"b"}  # zone a is gone: zone b
    c.endpoints[0].healthy = True
    c.refresh()
    assert {c.pick().port for _ in range(20)} == {9000}  # and back


def test_zone_aware_spreads_over_every_zone_below_the_share():
    c = zoned("a", "a", "a", "b", min_healthy=0.7)
    c.endpoints[0].healthy = False
    c.refresh()  # 2 of 3 healthy is below 0.7: every healthy endpoint takes traffic
    assert {c.pick().port for _ in range(40)} == {9001, 9002, 9003}
    assert zoned("b", "b", local="a").pick().zone == "b"  # no endpoint in the caller's zone
    blind = zoned("a", "b", local=None)
    assert {blind.pick().zone for _ in range(10)} == {"a", "b"}


def test_panic_when_none_is_healthy():
    c = Cluster("a/v1", "a", "v1", endpoints=eps(1, 1))
    for e in c.endpoints:
        e.healthy = False
    c.refresh()
    assert c.panic and c.pick() in c.endpoints  # try them all rather than fail outright


def fresh(c: Cluster, *indexes: int) -> Cluster:
    """Those endpoints are new: awaiting their first health check (mesh/core/health.py)."""
    for i in indexes:
        c.endpoints[i].pending, c.endpoints[i].healthy = True, False
    c.refresh()
    return c


def test_an_endpoint_awaiting_its_first_check_is_never_chosen():
    c = fresh(Cluster("a/v1", "a", "v1", endpoints=eps(1, 10000)), 1)  # a heavy newcomer
    assert {c.pick().port for _ in range(50)} == {9000}
    assert c.pick(exclude=(c.endpoints[0],)) is c.endpoints[0]  # not even on a retry
    assert c.warming() == [] and not c.panic
    assert c.status()["endpoints"][1]["pending"] is True


def test_panic_tries_only_endpoints_that_were_checked():
    c = fresh(Cluster("a/v1", "a", "v1", endpoints=eps(1, 1, 1)), 2)
    for e in c.endpoints[:2]:
        e.healthy = False
    c.refresh()
    assert c.panic and {c.pick().port for _ in range(40)} == {9000, 9001}
    only_new = fresh(Cluster("b/v1", "b", "v1", endpoints=eps(1, 1)), 0, 1)
    assert only_new.pick() is None and not only_new.panic  # nobody checked: nobody chosen
    assert only_new.warming() == only_new.endpoints  # a request waits for their first checks


def test_new_endpoints_do_not_count_in_the_zone_share_or_the_levels():
    """Envoy's ignore_new_hosts_until_first_hc: new hosts are left out of the denominators, so
    scaling up a zone does not push its traffic elsewhere before the newcomers are checked."""
    c = fresh(zoned("a", "a", "a", "b", min_healthy=0.6), 1, 2)  # 1 of 1 checked in zone a
    assert c.local_only and {c.pick().port for _ in range(20)} == {9000}
    levels = fresh(Cluster("a/v1", "a", "v1", endpoints=eps(1, 1, 1), locality=1.4,
                           local_zone="a"), 1)
    for e, zone in zip(levels.endpoints, "aab"):
        e.zone = zone
    levels.refresh()
    assert levels.levels() == [{"load": 1.0, "healthy": ["127.0.0.1:9000"]},
                               {"load": 0.0, "healthy": ["127.0.0.1:9002"]}]
