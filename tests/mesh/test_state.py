"""MeshState turns the registry into cluster memberships: version and service clusters share one
Endpoint per address; static endpoints, discovered instances and a sidecar's own app."""

from __future__ import annotations

from discovery import Event, Instance
from mesh.core import health
from mesh.core.build import build
from mesh.core.state import INBOUND, OUTBOUND, MeshState
from mesh.core.workload import parse_workload
from tests.conftest import BASE


def mdns(name, service, version, port, **kw) -> Instance:
    return Instance(name, service, version, "127.0.0.9", port, source="mdns", **kw)


def test_discovered_instances_join_their_clusters_and_leave_again(write_config):
    state = MeshState()
    snap = state.install(build(str(write_config()), state.runtime, state.workload))
    assert [str(e) for e in snap.clusters["catalog/v1"].endpoints] == ["127.0.0.1:19101", "127.0.0.1:19102"]
    changes = []
    state.watchers.append(lambda: changes.append(1))
    state.registry.apply(Event("add", mdns("c3", "catalog", "v1", 15006, weight=3, zone="a")))
    v1, every = snap.clusters["catalog/v1"], snap.clusters["catalog"]
    assert len(v1.endpoints) == 3 and len(every.endpoints) == 4 and changes
    shared = next(e for e in v1.endpoints if e.port == 15006)
    assert shared in every.endpoints and (shared.weight, shared.zone, shared.source) == (3, "a", "mdns")
    # an instance of a service the config does not name gets clusters of its own
    state.registry.apply(Event("add", mdns("s1", "search", "v7", 15007)))
    # (in a new snapshot: the one flows hold never changes)
    assert "search" not in snap.clusters
    snap = state.snapshot
    assert [str(e) for e in snap.clusters["search"].endpoints] == ["127.0.0.9:15007"]
    assert "search/v7" in snap.clusters
    state.registry.apply(Event("remove", mdns("c3", "catalog", "v1", 15006)))
    assert len(v1.endpoints) == 2 and ("127.0.0.9", 15006) not in state.endpoints


def test_reload_keeps_live_endpoint_state_and_discovered_ones(write_config):
    state = MeshState()
    path = write_config()
    snap = state.install(build(str(path), state.runtime, state.workload))
    state.registry.apply(Event("add", mdns("c3", "catalog", "v1", 15006)))
    ep = state.endpoints[("127.0.0.9", 15006)]
    ep.healthy = False
    write_config(BASE.replace('v2: {endpoints: ["127.0.0.1:19111"]}', "v2: {}"))
    snap2 = state.install(build(str(path), state.runtime, state.workload))
    assert snap2.version == 2 and ep in snap2.clusters["catalog/v1"].endpoints and not ep.healthy
    assert snap2.clusters["catalog/v2"].endpoints == []  # the static endpoint left with the edit
    assert ("127.0.0.1", 19111) not in state.endpoints


def test_a_new_endpoint_awaits_its_first_check_and_a_known_one_keeps_its_state(write_config):
    """Static, mDNS or etcd alike: a new address is out of rotation until its first check passed
    (discovery is unauthenticated); the same address announced again, under another name or
    after a reload, is the endpoint already known."""
    state = MeshState()
    path = write_config()
    snap = state.install(build(str(path), state.runtime, state.workload))
    v1 = snap.clusters["catalog/v1"]
    assert all(e.pending and not e.healthy for e in v1.endpoints) and v1.pick() is None
    hc = v1.health_check
    for ep in v1.endpoints:
        health.record(ep, True, "", hc)
    state.refresh()
    state.registry.apply(Event("add", mdns("c3", "catalog", "v1", 15006)))
    new = state.endpoints[("127.0.0.9", 15006)]
    assert new.pending and new not in {v1.pick() for _ in range(20)}
    entry = next(i for i in state.status()["registry"]["instances"] if i["name"] == "c3")
    assert (entry["healthy"], entry["pending"], entry["detail"]) == (
        False, True, "awaiting its first health check")
    health.record(new, True, "", hc)
    state.refresh()
    state.registry.apply(Event("add", mdns("c3-again", "catalog", "v1", 15006, weight=2)))
    write_config(BASE.replace('v2: {endpoints: ["127.0.0.1:19111"]}', "v2: {}"))
    snap = state.install(build(str(path), state.runtime, state.workload))
    assert state.endpoints[("127.0.0.9", 15006)] is new and new.healthy and new.weight == 2
    assert not any(e.pending for e in snap.clusters["catalog/v1"].endpoints)
    state.registry.apply(Event("remove", mdns("c3", "catalog", "v1", 15006)))
    state.registry.apply(Event("remove", mdns("c3-again", "catalog", "v1", 15006)))
    state.registry.apply(Event("add", mdns("c3", "catalog", "v1", 15006)))  # gone, then back
    assert state.endpoints[("127.0.0.9", 15006)].pending


def test_a_sidecar_has_its_workload_listeners_and_app(write_config):
    state = MeshState()
    state.workload = parse_workload("service=users,app=127.0.0.1:9001,address=127.0.0.7,zone=b,inbound=16006")
    snap = state.install(build(str(write_config()), state.runtime, state.workload))
    assert snap.role == "sidecar" and snap.zone == "b" and snap.admin == ("127.0.0.7", 15000)
    assert [(b.mode, b.direction) for b in snap.listeners] == [
        ("reverse:http://127.0.0.1:9@127.0.0.7:16006", INBOUND), ("regular@127.0.0.7:15001", OUTBOUND)]
    local = snap.clusters["local"]
    assert [str(e) for e in local.endpoints] == ["127.0.0.1:9001"] and local.endpoints[0] is state.local
    assert not state.local.healthy  # until its first check passes; the announcement waits for it
    assert state.pool.local_address == "127.0.0.7"
    status = state.status()
    assert status["workload"]["identity"] == "spiffe://mitmesh.local/ns/demo/sa/users"
    assert status["workload"]["app_healthy"] is False


def test_health_targets_are_the_app_and_clusters_sent_to(write_config):
    """And every endpoint awaiting its first check, once: none is chosen before it passed."""
    state = MeshState()
    state.workload = parse_workload("service=users,app=127.0.0.1:9001")
    snap = state.install(build(str(write_config()), state.runtime, state.workload))
    first = sorted(str(e) for e, _ in state.health_targets())
    assert first == ["127.0.0.1:19001", "127.0.0.1:19101", "127.0.0.1:19102", "127.0.0.1:19111",
                     "127.0.0.1:9001"]
    for ep, hc in list(state.health_targets()):
        health.record(ep, True, "", hc)
    assert [str(e) for e, _ in state.health_targets()] == ["127.0.0.1:9001"]
    snap.clusters["catalog"].pick()
    assert sorted(str(e) for e, _ in state.health_targets()) == [
        "127.0.0.1:19101", "127.0.0.1:19102", "127.0.0.1:19111", "127.0.0.1:9001"]


def test_discovered_instances_at_the_proxys_own_addresses_are_no_endpoints(write_config, caplog):
    """An mDNS or etcd announcement (unauthenticated) of a service at this gateway's admin listener,
    its own listener or its etcd would let downstreams reach them through a route: refused."""
    state = MeshState()
    state.config_store = (("http://127.0.0.1:12379",), None)
    snap = state.install(build(str(write_config()), state.runtime, state.workload))
    rogues = [Instance("r1", "catalog", "v1", "127.0.0.1", 19901, source="mdns"),  # admin
              Instance("r2", "catalog", "v1", "0.0.0.0", 18080, source="mdns"),  # its listener
              Instance("r3", "search", "v1", "localhost", 12379, source="etcd")]  # its etcd
    for _ in range(2):  # the second browse finds them again: one log line each, not two
        for inst in rogues:
            state.registry.apply(Event("add", inst))
        state.registry.apply(Event("add", mdns("c3", "catalog", "v1", 19901)))  # another host's
    assert [str(e) for e in snap.clusters["catalog/v1"].endpoints] == [
        "127.0.0.1:19101", "127.0.0.1:19102", "127.0.0.9:19901"]
    assert "search" not in state.snapshot.clusters
    assert not {i.key for i in rogues} & set(state.endpoints)
    lines = [r.getMessage() for r in caplog.records if "is no endpoint" in r.getMessage()]
    assert lines == [
        "discovery: instance r1 (catalog/v1 at 127.0.0.1:19901, from mdns) is no endpoint: it is "
        "this proxy's admin listener",
        "discovery: instance r2 (catalog/v1 at 0.0.0.0:18080, from mdns) is no endpoint: it is "
        "this proxy's gateway listener 'public'",
        "discovery: instance r3 (search/v1 at localhost:12379, from etcd) is no endpoint: it is "
        "this proxy's control plane's etcd (http://127.0.0.1:12379)"]
    by_name = {i["name"]: i for i in state.status()["registry"]["instances"]}
    assert by_name["r1"]["detail"] == "it is this proxy's admin listener"
    # gone from discovery: forgotten, so a new announcement is logged again
    state.registry.apply(Event("remove", rogues[0]))
    assert "r1" not in state.refused
