"""Load balancing across discovered instances, end to end: TXT weights, consistent hashing on a
header, and zone-aware failover from the caller's zone to another and back."""

from __future__ import annotations

import collections
import time

import pytest

from .conftest import Load, Mesh, get, sidecar_config, wait_until


@pytest.fixture(scope="module")
def mesh(tmp_path_factory):
    """A gateway in zone a; catalog in zones a (weights 3 and 1) and b; users hashed by x-user."""
    m = Mesh(tmp_path_factory.mktemp("balancing"), {})
    m.config = sidecar_config(f"{m.net}.1")
    m.config["services"]["catalog"]["lb"] = {"policy": "round_robin", "zone_aware": True}
    m.config["services"]["users"]["lb"] = {"policy": "consistent_hash", "hash_on": {"header": "x-user"}}
    m.write()
    try:
        started = m.start_instances(
            {"service": "catalog", "name": "catalog-a1", "zone": "a", "weight": 3},
            {"service": "catalog", "name": "catalog-a2", "zone": "a", "weight": 1},
            {"service": "catalog", "name": "catalog-b1", "zone": "b", "weight": 1},
            {"service": "users", "name": "users-1"}, {"service": "users", "name": "users-2"},
            {"service": "users", "name": "users-3"})
        m.instances = {s.name: s for s in started}
        m.start_gateway()
        m.wait_instances(6)
        yield m
    finally:
        m.stop()


def test_weights_3_to_1_split_75_25_in_the_callers_zone(mesh):
    samples = Load(mesh.url + "/catalog/items", threads=4, pace=0, limit=2000).start()
    wait_until(lambda: len(samples.samples) >= 2000, timeout=60, interval=0.2)
    done = samples.stop()[:2000]
    assert all(s.status == 200 for s in done)
    counts = collections.Counter(s.instance for s in done)
    # zone a is healthy, so zone b gets nothing; within zone a, the TXT weights 3:1
    assert set(counts) == {"catalog-a1", "catalog-a2"}, counts
    assert abs(counts["catalog-a1"] / 2000 - 0.75) <= 0.05, counts


def test_a_hash_key_always_lands_on_the_same_instance(mesh):
    placed: dict[str, set] = collections.defaultdict(set)
    for round_ in range(4):
        for user in (f"user-{i}" for i in range(40)):
            status, body, _ = get(mesh.url + "/users/alice", headers={"x-user": user})
            assert status == 200
            placed[user].add(body["instance"])
    assert all(len(instances) == 1 for instances in placed.values()), placed
    assert len({next(iter(i)) for i in placed.values()}) == 3  # the keys spread over all three


def test_zone_a_until_all_gone_then_zone_b_and_back(mesh):
    a1, a2 = mesh.instances["catalog-a1"], mesh.instances["catalog-a2"]
    load = Load(mesh.url + "/catalog/items", threads=3).start()
    marks = {}
    try:
        time.sleep(0.5)
        mesh.stop_instance(a2)  # half of zone a is left: still enough to keep its traffic local
        marks["a2 gone"] = time.time()
        time.sleep(1.0)
        marks["a1 stopping"] = time.time()
        mesh.stop_instance(a1)  # zone a is gone: over to zone b
        wait_until(lambda: load.seen("catalog-b1"), timeout=5)
        time.sleep(0.5)
        marks["a3 announced"] = 0.0
        (a3,) = mesh.start_instances({"service": "catalog", "name": "catalog-a3", "zone": "a"})
        marks["a3 announced"] = a3.announced
        wait_until(lambda: load.seen("catalog-a3"), timeout=5)
        time.sleep(1.0)
    finally:
        samples = load.stop()
    assert all(s.status == 200 for s in samples), [s for s in samples if s.status != 200][:3]

    def served(start: float, end: float) -> set:
        return {s.instance for s in samples if start <= s.start < end}

    assert served(0, marks["a1 stopping"]) <= {"catalog-a1", "catalog-a2"}
    assert served(marks["a2 gone"], marks["a1 stopping"]) == {"catalog-a1"}
    # while zone a was gone, zone b served; once a3 announced itself, traffic returned to zone a
    assert "catalog-b1" in served(marks["a1 stopping"], marks["a3 announced"])
    assert served(marks["a3 announced"] + 0.5, float("inf")) == {"catalog-a3"}
