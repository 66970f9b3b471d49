"""Locality priority levels (Envoy's priority load with the overprovisioning factor) and the peak
EWMA balancer (Finagle's, as Linkerd uses it)."""

from __future__ import annotations

import collections
import random

import pytest

from mesh.core.cluster import DECAY, Cluster, Endpoint, level_of, peak_ewma, priority_loads


@pytest.mark.parametrize("levels, loads", [
    ([(4, 4), (2, 2), (2, 2)], [1.0, 0.0, 0.0]),        # all healthy: everything to the local zone
    ([(3, 4), (2, 2), (2, 2)], [1.0, 0.0, 0.0]),        # 75 % x 1.4 = 105 %: still all local
    ([(2, 4), (2, 2), (2, 2)], [0.7, 0.3, 0.0]),        # 50 % x 1.4 = 70 %: the rest to the region
    ([(0, 4), (2, 2), (2, 2)], [0.0, 1.0, 0.0]),        # zone gone: the region
    ([(0, 4), (0, 2), (2, 2)], [0.0, 0.0, 1.0]),        # region gone: the rest
    ([(1, 4), (0, 2), (1, 4)], [0.5, 0.0, 0.5]),        # 35 % + 35 % < 100 %: scaled up
    ([(0, 4), (0, 2)], [0.0, 0.0]),
])
def test_priority_loads(levels, loads):
    assert [round(x, 6) for x in priority_loads(levels, 1.4)] == loads


def test_levels_by_zone_then_region():
    here = ("eu-1", "eu")
    assert level_of(Endpoint("a", 1, zone="eu-1", region="eu"), *here) == 0
    assert level_of(Endpoint("a", 1, zone="eu-2", region="eu"), *here) == 1
    assert level_of(Endpoint("a", 1, zone="us-1", region="us"), *here) == 2
    assert level_of(Endpoint("a", 1), *here) == 2


def cluster(**kw) -> tuple[Cluster, dict[str, Endpoint]]:
    eps = {"eu1": Endpoint("127.0.0.1", 1, zone="eu-1", region="eu"),
           "eu2": Endpoint("127.0.0.1", 2, zone="eu-2", region="eu"),
           "us1": Endpoint("127.0.0.1", 3, zone="us-1", region="us"),
           "us2": Endpoint("127.0.0.1", 4, zone="us-2", region="us")}
    c = Cluster("catalog/v1", "catalog", "v1", endpoints=list(eps.values()), local_zone="eu-1",
                local_region="eu", locality=1.4, **kw)
    return c, eps


def spread(c: Cluster, n: int = 2000) -> collections.Counter:
    names = {ep.port: name for name, ep in zip(("eu1", "eu2", "us1", "us2"), sorted(c.endpoints, key=lambda e: e.port))}
    return collections.Counter(names[c.pick().port] for _ in range(n))


def test_failover_zone_region_rest_and_back():
    random.seed(1)
    c, eps = cluster()
    assert set(spread(c)) == {"eu1"}
    eps["eu1"].healthy = False
    c.refresh()
    assert set(spread(c)) == {"eu2"}
    assert c.status()["lb"]["locality"]["levels"][0] == {"load": 0.0, "healthy": []}
    eps["eu2"].healthy = False
    c.refresh()
    assert set(spread(c)) == {"us1", "us2"}
    eps["eu1"].healthy = eps["eu2"].healthy = True
    c.refresh()
    assert set(spread(c)) == {"eu1"}


def test_a_retry_leaves_the_level():
    c, eps = cluster()
    assert c.pick(exclude=(eps["eu1"],)) is not eps["eu1"]


def test_peak_ewma_takes_peaks_at_once_and_decays():
    assert peak_ewma(-1.0, 0.0, 5.0, 0.02) == 0.02  # first observation
    assert peak_ewma(0.02, 0.0, 0.0, 0.5) == 0.5  # a peak replaces the average
    later = peak_ewma(0.5, 0.0, DECAY, 0.01)  # one decay time later: mostly the new sample
    assert 0.01 < later < 0.5 * 0.37 + 0.01 * 0.64
    assert peak_ewma(0.5, 0.0, 100 * DECAY, 0.0) < 1e-6  # unobserved for long: retried again


def test_peak_ewma_moves_load_away_from_a_slow_endpoint():
    random.seed(2)
    c = Cluster("catalog/v1", "catalog", "v1", policy="peak_ewma",
                endpoints=[Endpoint("127.0.0.1", p) for p in (1, 2, 3)])
    slow = c.endpoints[2]
    for ep in c.endpoints:  # as observed: the third answers in 300 ms, the others in 5 ms
        t = ep.begin()
        ep.end(t - (0.3 if ep is slow else 0.005))
    picks = collections.Counter(c.pick().port for _ in range(3000))
    assert picks[3] < 0.05 * 3000, picks  # P2C: the slow one only wins against itself


@pytest.mark.parametrize("lb, error", [
    ("{locality: true, zone_aware: true}", "zone_aware and locality both prefer the caller's zone: choose one"),
    ("{policy: consistent_hash, hash_on: {header: x-user}, locality: true}", "not with consistent_hash"),
    ("{locality: {overprovisioning: 0.5}}", "locality.overprovisioning: expected a value >= 1"),
])
def test_config_errors(lb, error):
    from mesh.config import ConfigError, load_text
    text = f"""version: 1
gateway: {{listeners: [{{name: p, port: 1}}], zone: eu-1, region: eu}}
services:
  catalog: {{lb: {lb}, versions: {{v1: {{endpoints: [{{address: 127.0.0.1, port: 2, zone: eu-1, region: eu}}]}}}}}}
"""
    with pytest.raises(ConfigError) as e:
        load_text(text, "m.yaml")
    assert error in str(e.value) and "m.yaml:4: services.catalog.lb" in str(e.value), str(e.value)


def test_config_locality_reaches_the_cluster(write_config):
    from mesh.core.build import build
    from mesh.core.state import MeshState
    path = write_config("""version: 1
gateway: {listeners: [{name: p, port: 18080}], admin: {port: 19901}, zone: eu-1, region: eu}
services:
  catalog:
    lb: {policy: peak_ewma, locality: true}
    versions: {v1: {endpoints: [{address: 127.0.0.1, port: 2, zone: eu-1, region: eu},
                                {address: 127.0.0.1, port: 3, zone: us-1, region: us}]}}
routes: [{name: c, match: {path: {prefix: /}}, forward: {service: catalog}}]
""")
    from mesh.core import health
    state = MeshState()
    state.install(build(str(path)))
    cluster = state.snapshot.clusters["catalog/v1"]
    assert cluster.status()["lb"]["locality"]["levels"] == []  # both await their first check
    for ep in cluster.endpoints:
        health.record(ep, True, "", cluster.health_check)
    state.refresh()
    lb = cluster.status()["lb"]
    assert lb["policy"] == "peak_ewma"
    assert lb["locality"] == {"overprovisioning": 1.4, "zone": "eu-1", "region": "eu",
                              "levels": [{"load": 1.0, "healthy": ["127.0.0.1:2"]},
                                         {"load": 0.0, "healthy": ["127.0.0.1:3"]}]}
