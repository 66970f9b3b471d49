"""mDNS discovery with zeroconf: announce this instance, browse `_mitmesh._tcp.local.` into a registry.

zeroconf is always bound to explicit interface addresses (never its default, which multicasts on
every interface of the machine). Its shared receiving socket would still bind 0.0.0.0:5353 whatever
the interfaces (zeroconf offers no option for it); here it binds the mDNS group 224.0.0.251:5353
with IP_MULTICAST_ALL off, so it hears only the groups it joined on the configured interfaces, and
the only unicast sockets are those on the configured addresses. Instances of other meshes on the
same network are ignored by the `mesh` TXT key, so concurrent meshes never see each other.
"""

from __future__ import annotations

import asyncio
import hashlib
import ipaddress
import logging
import re
import socket
import sys

import zeroconf._engine
import zeroconf._utils.net as zcnet
from zeroconf import DNSQuestionType, IPVersion, ServiceStateChange
from zeroconf.asyncio import AsyncServiceBrowser, AsyncServiceInfo, AsyncZeroconf

from .registry import NAME as _NAME, PROTOCOLS, Event, Instance, Registry
from .source import Source

log = logging.getLogger("mitmesh.discovery")

SERVICE_TYPE = "_mitmesh._tcp.local."
TXT_KEYS = ("mesh", "service", "version", "zone", "region", "weight", "identity", "port", "protocol", "instance", "admin")
_SLUG = re.compile(r"[^a-z0-9-]+")


def label(instance: str, mesh: str, address: str, port: int) -> str:
    """A unique mDNS instance label: readable, and distinct per mesh, address and port."""
    digest = hashlib.blake2b(f"{mesh}|{address}|{port}".encode(), digest_size=4).hexdigest()
    return f"{_SLUG.sub('-', instance.lower())[:50].strip('-')}-{digest}"


def txt_record(inst: Instance, mesh: str, instance: str) -> dict[str, str]:
    txt = {"mesh": mesh, "service": inst.service, "version": inst.version, "weight": str(inst.weight),
           "port": str(inst.port), "protocol": inst.protocol, "instance": instance}
    if inst.zone:
        txt["zone"] = inst.zone
    if inst.region:
        txt["region"] = inst.region
    if inst.identity:
        txt["identity"] = inst.identity
    if inst.admin:
        txt["admin"] = str(inst.admin)
    return txt


def _text(props: dict, key: str) -> str | None:
    value = props.get(key.encode())
    return None if value is None else value.decode("utf-8", "replace")


def instance_from_txt(name: str, addresses: list[str], srv_port: int, props: dict,
                      mesh: str) -> Instance | None:
    """The instance an announcement describes; None if it belongs to another mesh.

    Raises ValueError naming the bad TXT key when the announcement is malformed.
    """
    if _text(props, "mesh") != mesh:
        return None
    fields: dict[str, object] = {}
    for key in ("service", "version"):
        value = _text(props, key)
        if value is None or not _NAME.fullmatch(value):
            raise ValueError(f"TXT {key}: expected a lowercase name (got {value!r})")
        fields[key] = value
    zone, region = _text(props, "zone"), _text(props, "region")
    for key, value in (("zone", zone), ("region", region)):
        if value is not None and not _NAME.fullmatch(value):
            raise ValueError(f"TXT {key}: expected a lowercase name (got {value!r})")
    weight = _text(props, "weight") or "1"
    if not weight.isdigit() or not 1 <= int(weight) <= 10_000:
        raise ValueError(f"TXT weight: expected an integer from 1 to 10000 (got {weight!r})")
    port = _text(props, "port") or str(srv_port)
    if not port.isdigit() or not 1 <= int(port) <= 65535:
        raise ValueError(f"TXT port: expected a port from 1 to 65535 (got {port!r})")
    protocol = _text(props, "protocol") or "http"
    if protocol not in PROTOCOLS:
        raise ValueError(f"TXT protocol: expected one of {', '.join(PROTOCOLS)} (got {protocol!r})")
    admin = _text(props, "admin")
    if admin is not None and (not admin.isdigit() or not 1 <= int(admin) <= 65535):
        raise ValueError(f"TXT admin: expected a port from 1 to 65535 (got {admin!r})")
    if not addresses:
        raise ValueError("no address record")
    return Instance(name=name, service=str(fields["service"]), version=str(fields["version"]),
                    address=addresses[0], port=int(port), weight=int(weight), zone=zone, region=region,
                    identity=_text(props, "identity"), protocol=protocol, source="mdns",
                    workload=_text(props, "instance"), admin=int(admin) if admin else None)


MDNS_GROUP = "224.0.0.251"
IP_MULTICAST_ALL = getattr(socket, "IP_MULTICAST_ALL", 49)  # Linux; Python does not name it
_zeroconf_listen_socket = zcnet.new_listen_socket


def group_listen_socket(ip_version: IPVersion = IPVersion.V4Only, apple_p2p: bool = False) -> socket.socket | None:
    """zeroconf's receiving socket, bound to the mDNS group rather than every address (IPv4 on
    Linux; elsewhere zeroconf's own)."""
    if ip_version is not IPVersion.V4Only or not sys.platform.startswith("linux"):
        return _zeroconf_listen_socket(ip_version, apple_p2p)
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    zcnet.set_so_reuseport_if_available(s)
    s.setsockopt(socket.IPPROTO_IP, IP_MULTICAST_ALL, 0)  # only the memberships of this socket
    s.bind((MDNS_GROUP, zcnet._MDNS_PORT))
    return s


# zeroconf builds its sockets in create_sockets (and on an interface rescan) through these names
zcnet.new_listen_socket = group_listen_socket
zeroconf._engine.new_listen_socket = group_listen_socket


def drop_queued_answers(zc, info: AsyncServiceInfo) -> None:
    """Take back the answers about `info` that zeroconf has queued but not sent yet.

    zeroconf multicasts an answer to a query 20-120 ms later, and a second later still for records
    multicast within the last second (RFC 6762 §6, §14): an instance stopped just after a query
    (a proxy of this or any mesh on the link starting to browse) still owes its answer. zeroconf
    unregisters a service without taking such answers back, so one sent after the goodbye
    announced the instance again, with its full TTL, to every browser: callers sent to it until
    its sidecar exited, and kept it as an unhealthy endpoint after. Call once `info` has left the
    registry (unregistering removes it at once), so nothing about it can be queued again."""
    names = {info.key}  # its SRV, TXT and the PTR that points at it
    if not zc.registry.async_get_infos_server(info.server_key):
        names.add(info.server_key)  # its address records, unless another service shares the host

    def about(record) -> bool:
        return record.key in names or getattr(record, "alias_key", None) in names

    for queue in (zc.out_queue, zc.out_delay_queue):  # zeroconf's MulticastOutgoingQueue
        for group in queue.queue:
            group.answers = {record: {a for a in additionals if not about(a)}
                             for record, additionals in group.answers.items() if not about(record)}


class MdnsSource(Source):
    """Browses (and optionally announces) `_mitmesh._tcp.local.` on the given interface addresses."""

    name = "mdns"

    def __init__(self, mesh: str, interfaces: list[str]) -> None:
        if not interfaces:
            raise ValueError("mDNS needs explicit interface addresses; it never uses all interfaces")
        self.mesh = mesh
        self.interfaces = list(interfaces)
        self.registry: Registry | None = None
        self.zc: AsyncZeroconf | None = None
        self.browser: AsyncServiceBrowser | None = None
        self.announced: AsyncServiceInfo | None = None
        self._broadcast: asyncio.Future | None = None
        self._tasks: set[asyncio.Task] = set()
        self._warned: set[str] = set()

    def open(self) -> None:
        """Make the sockets (in the calling thread's network namespace: a gateway calls this inside
        the namespace of the pods' bridge); start() does it when nobody did."""
        if self.zc is None:
            v6 = any(ipaddress.ip_address(a).version == 6 for a in self.interfaces)
            self.zc = AsyncZeroconf(interfaces=self.interfaces,
                                    ip_version=IPVersion.All if v6 else IPVersion.V4Only)

    async def start(self, registry: Registry) -> None:
        self.registry = registry
        self.open()
        # QM questions: answers come back by multicast, so every process browsing on one address
        # (gateway workers) hears them; a QU answer is unicast and reaches only one socket.
        self.browser = AsyncServiceBrowser(self.zc.zeroconf, SERVICE_TYPE, handlers=[self._changed],
                                           question_type=DNSQuestionType.QM)

    async def announce(self, inst: Instance, instance: str) -> str:
        """Register `inst` (its inbound listener) with goodbye on withdraw; returns the mDNS label."""
        if self.zc is None:
            raise RuntimeError("announce() before start()")
        name = label(instance, self.mesh, inst.address, inst.port)
        info = AsyncServiceInfo(
            SERVICE_TYPE, f"{name}.{SERVICE_TYPE}", port=inst.port,
            properties=txt_record(inst, self.mesh, instance), server=f"{name}.local.",
            addresses=[socket.inet_pton(socket.AF_INET6 if ":" in inst.address else socket.AF_INET,
                                        inst.address)],
        )
        # The label is unique by construction (mesh, address and port are hashed into it), so the
        # 0.75 s of uniqueness probing would only delay the first request the instance can take.
        # registered when this returns; the task it returns sends the announcement from the next loop
        # turn (after the caller's "announced" line), then its two repeats
        self._broadcast = await self.zc.async_register_service(info, cooperating_responders=True)
        self.announced = info
        return name

    async def withdraw(self) -> None:
        """Send the goodbye: browsers drop this instance at once instead of after its TTL."""
        if self._broadcast is not None:  # a repeat sent after the goodbye would undo it
            self._broadcast.cancel()
            self._broadcast = None
        if self.zc is not None and self.announced is not None:
            info, self.announced = self.announced, None
            goodbye = await self.zc.async_unregister_service(info)
            drop_queued_answers(self.zc.zeroconf, info)  # so would an answer still queued
            await goodbye

    async def stop(self) -> None:
        await self.withdraw()
        for task in list(self._tasks):
            task.cancel()
        if self.browser is not None:
            await self.browser.async_cancel()
            self.browser = None
        if self.zc is not None:
            await self.zc.async_close()
            self.zc = None
        if self.registry is not None:
            for old in self.registry.by_source(self.name).values():
                self.registry.apply(Event("remove", old))
        self.registry = None

    # browsing

    def _changed(self, zeroconf, service_type: str, name: str, state_change: ServiceStateChange) -> None:
        label_ = name[: -len(SERVICE_TYPE) - 1] if name.endswith(SERVICE_TYPE) else name
        if state_change is ServiceStateChange.Removed:
            old = self.registry.instances.get(label_) if self.registry else None
            if old is not None and old.source == self.name:
                self.registry.apply(Event("remove", old))
            return
        info = AsyncServiceInfo(service_type, name)
        if info.load_from_cache(zeroconf):
            self._apply(label_, info)
        else:
            task = asyncio.get_running_loop().create_task(self._resolve(label_, info))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _resolve(self, label_: str, info: AsyncServiceInfo) -> None:
        if self.zc is not None and await info.async_request(self.zc.zeroconf, 3000,
                                                            question_type=DNSQuestionType.QM):
            self._apply(label_, info)

    def _apply(self, label_: str, info: AsyncServiceInfo) -> None:
        if self.registry is None:
            return
        try:
            inst = instance_from_txt(label_, info.parsed_addresses(), info.port or 0,
                                     info.properties, self.mesh)
        except ValueError as e:
            if label_ not in self._warned:
                self._warned.add(label_)
                log.warning(f"mDNS: ignoring {label_}: {e}")
            return
        if inst is not None:
            self.registry.apply(Event("add", inst))
