"""etcd discovery: instances registered under a lease (TTL, keepalive), proxies watch the prefix.

An instance is one key, `/mitmesh/<mesh>/instances/<service>/<version>/<address>:<port>`, whose
value is the instance as JSON, put under a lease the announcer keeps alive. A graceful stop
revokes the lease: every watcher hears the delete at once. A killed announcer stops refreshing:
etcd deletes the key when the TTL runs out. When etcd cannot be reached the registry keeps the
last known instances (stale, flagged by `status()`); when it answers again the source lists the
prefix, drops what vanished meanwhile, and watches on.

With `sign` the announcer adds a proof to its record (`signature`, `certificate`); with `verify`
the watcher takes only records whose proof holds: mesh/security/instances.py, for etcd with TLS.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
from typing import Callable

from .etcdapi import Etcd, Follower, KeyValue, LeasedKey
from .etcdwire import EtcdError
from .registry import NAME, PROTOCOLS, Event, Instance, Registry
from .source import Source

log = logging.getLogger("mitmesh.discovery")

FIELDS = ("service", "version", "address", "port", "weight", "zone", "region", "identity", "protocol",
          "workload", "admin")


def instances_prefix(mesh: str) -> str:
    return f"/mitmesh/{mesh}/instances/"


def instance_key(mesh: str, inst: Instance) -> str:
    return f"{instances_prefix(mesh)}{inst.service}/{inst.version}/{inst.address}:{inst.port}"


PROOF = ("signature", "certificate")  # what `sign` adds and `verify` checks
Sign = Callable[[dict], dict]  # a record → the same with its proof; ValueError: cannot sign
Verify = Callable[[dict], None]  # raises ValueError: the record's proof does not hold


def encode(inst: Instance, sign: Sign | None = None) -> str:
    record = {k: getattr(inst, k) for k in FIELDS if getattr(inst, k) is not None}
    return json.dumps(sign(record) if sign is not None else record, sort_keys=True)


def decode(kv: KeyValue, verify: Verify | None = None) -> Instance:
    """The instance a key holds; raises ValueError naming what is wrong (with `verify`, a proof
    that does not hold too)."""
    try:
        signed = json.loads(kv.value)
    except (ValueError, RecursionError) as e:  # RecursionError: nested deeper than json parses
        raise ValueError(f"{kv.key}: expected a JSON object ({e})") from None
    if not isinstance(signed, dict):
        raise ValueError(f"{kv.key}: expected a JSON object (got {kv.value[:40]!r})")
    data = {k: v for k, v in signed.items() if k not in PROOF}
    unknown = sorted(set(data) - set(FIELDS))
    if unknown:
        raise ValueError(f"{kv.key}: unknown field {unknown[0]!r}; expected {', '.join(FIELDS)}")
    for key, kind in (("service", str), ("version", str), ("address", str), ("port", int)):
        if not isinstance(data.get(key), kind) or isinstance(data.get(key), bool):
            raise ValueError(f"{kv.key}: {key}: expected a {kind.__name__} (got {data.get(key)!r})")
    if not 1 <= data["port"] <= 65535:
        raise ValueError(f"{kv.key}: port: expected 1 to 65535 (got {data['port']!r})")
    weight = data.get("weight", 1)
    if not isinstance(weight, int) or isinstance(weight, bool) or not 1 <= weight <= 10_000:
        raise ValueError(f"{kv.key}: weight: expected an integer from 1 to 10000 (got {weight!r})")
    # the rest as an mDNS announcement is held to (mdns.instance_from_txt)
    for key in ("service", "version", "zone", "region"):
        if key in data and not (isinstance(data[key], str) and NAME.fullmatch(data[key])):
            raise ValueError(f"{kv.key}: {key}: expected a lowercase name (got {data[key]!r})")
    for key in ("identity", "workload"):
        if key in data and not isinstance(data[key], str):
            raise ValueError(f"{kv.key}: {key}: expected a string (got {data[key]!r})")
    if "protocol" in data and data["protocol"] not in PROTOCOLS:
        raise ValueError(f"{kv.key}: protocol: expected one of {', '.join(PROTOCOLS)} "
                         f"(got {data['protocol']!r})")
    admin = data.get("admin")
    if admin is not None and (not isinstance(admin, int) or isinstance(admin, bool)
                              or not 1 <= admin <= 65535):
        raise ValueError(f"{kv.key}: admin: expected a port from 1 to 65535 (got {admin!r})")
    if verify is not None:
        try:
            verify(signed)
        except ValueError as e:
            raise ValueError(f"{kv.key}: {e}") from None
    return Instance(name=f"etcd:{data['address']}:{data['port']}", source="etcd",
                    **{k: v for k, v in data.items()})


class EtcdSource(Source):
    """Watches `/mitmesh/<mesh>/instances/` into a registry, and announces one instance."""

    name = "etcd"

    def __init__(self, etcd: Etcd, mesh: str, ttl: int = 5, probe_interval: float = 1.0,
                 sign: Sign | None = None, verify: Verify | None = None):
        if not 1 <= ttl <= 10:
            raise ValueError(f"etcd lease ttl: expected 1 to 10 seconds (got {ttl!r})")
        self.etcd = etcd
        self.mesh = mesh
        self.ttl = ttl
        self.sign, self.verify = sign, verify
        self._announced: tuple[str, Instance] | None = None  # (key, record), for `refresh`
        self.registry: Registry | None = None
        self.revision = 0
        self.follower = Follower(etcd, self._follow, "discovery", probe_interval)
        self.lease = LeasedKey(etcd, ttl)
        self._warned: set[str] = set()

    async def start(self, registry: Registry) -> None:
        self.registry = registry
        self.follower.start()

    async def wait_synced(self, timeout: float) -> bool:
        """Wait for the first complete listing (a gateway starts with every known instance)."""
        try:
            await asyncio.wait_for(self.follower.synced.wait(), timeout)
            return True
        except asyncio.TimeoutError:
            return False

    def status(self) -> dict:
        return {**self.follower.status(), "revision": self.revision,
                "lease": f"{self.lease.lease:x}" if self.lease.lease else None}

    # following the prefix: the last known instances stay while etcd is out of reach

    async def _follow(self) -> None:
        kvs, revision = await self.etcd.get_prefix(instances_prefix(self.mesh))
        self._reconcile(kvs)
        self.revision = revision
        self.follower.in_sync()
        async for ev in self.etcd.watch(instances_prefix(self.mesh), revision + 1):
            self.revision = ev.revision
            self._event(ev.kind, ev.kv)

    def _mine(self) -> dict[str, Instance]:
        return self.registry.by_source(self.name) if self.registry else {}

    def _reconcile(self, kvs: list[KeyValue]) -> None:
        seen = set()
        for kv in kvs:
            inst = self._decode(kv)
            if inst is not None:
                seen.add(inst.name)
                self.registry.apply(Event("add", inst))
        for name, old in self._mine().items():
            if name not in seen:
                self.registry.apply(Event("remove", old))

    def _event(self, kind: str, kv: KeyValue) -> None:
        if kind == "put":
            inst = self._decode(kv)
            if inst is not None:
                self.registry.apply(Event("add", inst))
            return
        address = kv.key.rsplit("/", 1)[-1]
        old = self._mine().get(f"etcd:{address}")
        if old is not None:
            self.registry.apply(Event("remove", old))

    def _decode(self, kv: KeyValue) -> Instance | None:
        try:
            return decode(kv, self.verify)
        except (ValueError, TypeError) as e:
            if kv.key not in self._warned:
                self._warned.add(kv.key)
                log.warning(f"etcd: ignoring {e}")
            return None

    # announcing

    async def announce(self, inst: Instance, instance: str) -> str:
        """Register `inst` under a lease kept alive in the background; returns its key."""
        key = instance_key(self.mesh, inst)
        record = dataclasses.replace(inst, source="etcd", workload=instance)
        try:
            value = encode(record, self.sign)
        except ValueError as e:  # its certificate cannot be read: proxies would refuse it
            raise EtcdError(f"{key}: cannot sign the instance record: {e}") from None
        self._announced = (key, record)
        await self.lease.put(key, value)
        return key

    async def refresh(self) -> None:
        """Sign the announced record again (a renewed certificate: the one that signed it expires
        while the lease lives on); written only when that changes it."""
        if self._announced is None or self.sign is None:
            return
        key, record = self._announced
        value = encode(record, self.sign)
        if value != self.lease.value:
            await self.lease.put(key, value)

    async def withdraw(self) -> None:
        """Revoke the lease: every watcher drops this instance at once, not after the TTL."""
        self._announced = None
        await self.lease.revoke()

    async def stop(self) -> None:
        await self.withdraw()
        await self.follower.stop()
        if self.registry is not None:
            for old in self._mine().values():
                self.registry.apply(Event("remove", old))
        self.registry = None
        await self.etcd.close()
