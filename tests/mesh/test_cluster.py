"""Load balancers: smooth weighted round robin, power-of-two least request, retry exclusion."""

from __future__ import annotations

import collections

from mesh.cluster import Cluster, Endpoint


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
