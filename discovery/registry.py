"""The registry: every service instance a proxy knows of, fed by discovery sources as events."""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from typing import Callable, Literal

log = logging.getLogger("mitmesh.discovery")

# what an announcement may name, whichever source carries it (mDNS TXT, an etcd record): the names
# of the config (mesh/config/types.py, which discovery may not import) and the inbound protocols
NAME = re.compile(r"^[a-z0-9]([a-z0-9._-]{0,61}[a-z0-9])?$")
PROTOCOLS = ("http", "https")

Kind = Literal["add", "update", "remove"]


@dataclass(frozen=True, slots=True)
class Instance:
    """One instance of a service as announced: where its inbound listener is, and who it is."""

    name: str  # unique within a registry: the mDNS instance name, or "static:service/version/addr:port"
    service: str
    version: str
    address: str
    port: int  # the instance's inbound listener (its sidecar), or the app itself for static endpoints
    weight: int = 1
    zone: str | None = None
    region: str | None = None  # the locality above zone (etcd announcements carry it)
    identity: str | None = None  # the workload identity the instance claims (SPIFFE ID)
    protocol: str = "http"  # what its inbound listener speaks: http, or https once mTLS lands
    source: str = "static"  # which source found it: static, mdns, etcd
    workload: str | None = None  # the instance's own name (catalog-v1-1), as its sidecar announces it
    admin: int | None = None  # the port of its sidecar's admin listener (/metrics), on `address`

    @property
    def key(self) -> tuple[str, int]:
        return (self.address, self.port)

    @property
    def cluster(self) -> str:
        return f"{self.service}/{self.version}"


@dataclass(frozen=True, slots=True)
class Event:
    kind: Kind
    instance: Instance


Listener = Callable[[Event], None]


class Registry:
    """Instances by name. Sources apply events; subscribers hear every change that took effect."""

    def __init__(self) -> None:
        self.instances: dict[str, Instance] = {}
        self._subscribers: list[Listener] = []

    def subscribe(self, listener: Listener) -> None:
        self._subscribers.append(listener)

    def unsubscribe(self, listener: Listener) -> None:
        if listener in self._subscribers:
            self._subscribers.remove(listener)

    def apply(self, event: Event) -> bool:
        """Apply one event; returns whether anything changed (an add of a known instance updates it)."""
        inst = event.instance
        old = self.instances.get(inst.name)
        if event.kind == "remove":
            if old is None:
                return False
            del self.instances[inst.name]
            effective = Event("remove", old)
        else:
            if old == inst:
                return False
            self.instances[inst.name] = inst
            effective = Event("add" if old is None else "update", inst)
        log.debug(f"registry: {effective.kind} {inst.name} ({inst.cluster} at {inst.address}:{inst.port})")
        for listener in list(self._subscribers):
            listener(effective)
        return True

    def by_source(self, source: str) -> dict[str, Instance]:
        return {n: i for n, i in self.instances.items() if i.source == source}

    def status(self) -> list[dict]:
        return [
            {"name": i.name, "service": i.service, "version": i.version, "address": f"{i.address}:{i.port}",
             "zone": i.zone, "region": i.region, "weight": i.weight, "identity": i.identity, "protocol": i.protocol,
             "source": i.source, "workload": i.workload,
             "admin": f"{i.address}:{i.admin}" if i.admin else None}
            for i in sorted(self.instances.values(), key=lambda i: (i.service, i.version, i.name))
        ]
