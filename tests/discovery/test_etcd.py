"""etcd discovery against a real etcd: leases, watch, graceful stop and SIGKILL, the merge with
other sources, and a proxy that keeps its last known instances while etcd is gone."""

from __future__ import annotations

import asyncio
import json
import time

import pytest

from discovery import Instance, Registry
from discovery.etcd import EtcdSource, decode, encode, instance_key
from discovery.etcdapi import Etcd, KeyValue, parse_endpoints
from discovery.registry import Event
from tests.etcd_server import etcd_server, mesh_certs, workload_tls  # noqa: F401 (fixture)

INST = Instance("catalog-1", "catalog", "v2", "127.0.0.5", 15006, weight=3, zone="a", region="eu",
                identity="spiffe://mitmesh.local/ns/demo/sa/catalog", protocol="https", source="etcd",
                workload="catalog-1", admin=15000)


def test_instance_round_trip():
    got = decode(KeyValue(instance_key("m1", INST), encode(INST), 1))
    assert got == INST.__class__(**{**{f: getattr(INST, f) for f in INST.__slots__},
                                    "name": "etcd:127.0.0.5:15006"})


@pytest.mark.parametrize("value, error", [
    ("nope", "expected a JSON object"),
    ("[1]", "expected a JSON object (got '[1]')"),
    ('{"service": "c", "version": "v1", "address": "127.0.0.1"}', "port: expected a int (got None)"),
    ('{"service": "c", "version": "v1", "address": "127.0.0.1", "port": 0}', "port: expected 1 to 65535 (got 0)"),
    ('{"service": "c", "version": "v1", "address": "127.0.0.1", "port": 1, "weight": 0}',
     "weight: expected an integer from 1 to 10000 (got 0)"),
    ('{"service": "c", "version": "v1", "address": "127.0.0.1", "port": 1, "colour": 1}',
     "unknown field 'colour'"),
    # held to what an mDNS announcement is (instance_from_txt)
    ('{"service": "c", "version": "v1", "address": "127.0.0.1", "port": true}',
     "port: expected a int (got True)"),
    ('{"service": "C D", "version": "v1", "address": "127.0.0.1", "port": 1}',
     "service: expected a lowercase name (got 'C D')"),
    ('{"service": "c", "version": "v1", "address": "127.0.0.1", "port": 1, "zone": {"a": 1}}',
     "zone: expected a lowercase name (got {'a': 1})"),
    ('{"service": "c", "version": "v1", "address": "127.0.0.1", "port": 1, "protocol": "ftp"}',
     "protocol: expected one of http, https (got 'ftp')"),
    ('{"service": "c", "version": "v1", "address": "127.0.0.1", "port": 1, "admin": "15000"}',
     "admin: expected a port from 1 to 65535 (got '15000')"),
    ('{"service": "c", "version": "v1", "address": "127.0.0.1", "port": 1, "identity": ["x"]}',
     "identity: expected a string (got ['x'])"),
])
def test_bad_values_are_named(value, error):
    with pytest.raises(ValueError) as e:
        decode(KeyValue("/mitmesh/m1/instances/c/v1/x", value, 1))
    assert error in str(e.value) and "/mitmesh/m1/instances/c/v1/x" in str(e.value)


@pytest.mark.parametrize("text, error", [
    ("", "expected at least one etcd endpoint"),
    ("https://127.0.0.1:1", "expected host:port or http://host:port"),  # TLS: an etcds:// store
    ("127.0.0.1", "expected host:port or http://host:port (got '127.0.0.1')"),
])
def test_bad_endpoints(text, error):
    with pytest.raises(ValueError, match=error.replace("(", r"\(").replace(")", r"\)")):
        parse_endpoints(text)


def test_ttl_is_bounded():
    with pytest.raises(ValueError, match="ttl: expected 1 to 10 seconds"):
        EtcdSource(Etcd(["http://127.0.0.1:1"]), "m1", ttl=30)


async def _until(cond, timeout: float) -> float:
    start = time.monotonic()
    while not cond():
        if time.monotonic() - start > timeout:
            raise AssertionError(f"not within {timeout}s")
        await asyncio.sleep(0.02)
    return time.monotonic() - start


async def test_announce_watch_and_graceful_stop(etcd_server):
    watcher_reg, announcer_reg = Registry(), Registry()
    tls = workload_tls(etcd_server, "catalog")
    watcher = EtcdSource(Etcd([etcd_server.client_url], tls=tls), "m1", ttl=3)
    announcer = EtcdSource(Etcd([etcd_server.client_url], tls=tls), "m1", ttl=3)
    other = EtcdSource(Etcd([etcd_server.client_url], tls=tls), "another-mesh", ttl=3)
    try:
        await watcher.start(watcher_reg)
        await announcer.start(announcer_reg)
        await other.start(Registry())
        await other.announce(INST, "elsewhere")
        assert await watcher.wait_synced(5)
        await announcer.announce(INST, "catalog-1")
        await _until(lambda: "etcd:127.0.0.5:15006" in watcher_reg.instances, 2)
        got = watcher_reg.instances["etcd:127.0.0.5:15006"]
        assert (got.cluster, got.zone, got.region, got.weight, got.source) == ("catalog/v2", "a", "eu", 3, "etcd")
        assert len(watcher_reg.instances) == 1  # another mesh's instance is not ours
        await asyncio.sleep(3.5)  # past the TTL: the keepalive holds it
        assert "etcd:127.0.0.5:15006" in watcher_reg.instances
        await announcer.withdraw()
        gone = await _until(lambda: not watcher_reg.instances, 1.0)
        assert gone < 1.0, gone
    finally:
        for s in (announcer, other, watcher):
            await s.stop()
            await s.etcd.close()


async def test_lease_expires_when_the_announcer_dies(etcd_server):
    """A SIGKILLed sidecar stops refreshing: its key goes with the lease's TTL."""
    reg = Registry()
    tls = workload_tls(etcd_server, "catalog")
    watcher = EtcdSource(Etcd([etcd_server.client_url], tls=tls), "m1", ttl=2)
    announcer = EtcdSource(Etcd([etcd_server.client_url], tls=tls), "m1", ttl=2)
    try:
        await watcher.start(reg)
        await announcer.announce(INST, "catalog-1")
        await _until(lambda: reg.instances, 2)
        announcer.lease._task.cancel()  # as if killed: no refresh, no revoke
        announcer.lease.lease = 0
        took = await _until(lambda: not reg.instances, 4)
        assert took <= 2 + 1.0, took  # TTL plus etcd's expiry check granularity
    finally:
        await announcer.stop()
        await watcher.stop()
        for s in (announcer, watcher):
            await s.etcd.close()


def test_same_endpoint_from_mdns_and_etcd_is_one_member(write_config):
    from mesh.core.build import build
    from mesh.core.state import MeshState
    state = MeshState()
    state.install(build(str(write_config())))
    for inst in (Instance("mdns-label", "catalog", "v3", "127.0.0.5", 15006, source="mdns"),
                 Instance("etcd:127.0.0.5:15006", "catalog", "v3", "127.0.0.5", 15006, source="etcd")):
        state.registry.apply(Event("add", inst))
    assert [ep.key for ep in state.snapshot.clusters["catalog/v3"].endpoints] == [("127.0.0.5", 15006)]
    state.registry.apply(Event("remove", state.registry.instances["mdns-label"]))
    assert [ep.key for ep in state.snapshot.clusters["catalog/v3"].endpoints] == [("127.0.0.5", 15006)]


async def test_etcd_gone_keeps_instances_stale_then_resyncs(tmp_path):
    from tools import etcdserver
    member = etcdserver.start(tmp_path / "data", tmp_path / "logs",
                              certs=mesh_certs(tmp_path / "certs"))
    tls = workload_tls(member, "catalog")
    reg = Registry()
    watcher = EtcdSource(Etcd([member.client_url], timeout=0.5, tls=tls), "m1", ttl=3,
                         probe_interval=0.3)
    writer = Etcd([member.client_url], tls=tls)
    try:
        await watcher.start(reg)
        await writer.put(instance_key("m1", INST), encode(INST))
        await _until(lambda: reg.instances, 2)
        member.child.stop()
        await _until(lambda: watcher.status()["stale"], 3)
        assert list(reg.instances) == ["etcd:127.0.0.5:15006"]  # last known, still served
        # etcd returns (same data dir and ports) without the instance: the watcher catches up
        member.child = etcdserver.procs.spawn("etcd0b", etcdserver.argv(member, [member], tmp_path / "data"),
                                              log_dir=tmp_path / "logs")
        etcdserver.procs.wait_ports(member.child, [(member.host, member.client_port)])
        await writer.delete(instance_key("m1", INST))
        await _until(lambda: not reg.instances and not watcher.status()["stale"], 5)
    finally:
        await watcher.stop()
        await watcher.etcd.close()
        await writer.close()
        member.child.stop()
