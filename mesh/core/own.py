"""Addresses a proxy serves itself or depends on, which discovery must never make endpoints.

Discovery is not authenticated (mDNS on the link, etcd keys): an announcement pointing a service
at this proxy's admin listener, at one of its own listeners, or at its control plane's etcd would
let a downstream reach them through a route. Envoy never routes to its own admin; neither do we.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from urllib.parse import urlsplit

# host names that always mean this host (an etcd announcement may carry a name, not an address)
LOCAL_NAMES = frozenset({"localhost", "localhost.localdomain", "ip6-localhost", "ip6-loopback"})


@dataclass(frozen=True, slots=True)
class Own:
    """What this proxy listens on and talks to, each with what it is (for the log line)."""

    addresses: tuple[tuple[str, int, str], ...] = ()  # (host, port, what)
    # a sidecar's inbound: the legitimate endpoint of its own service (a pod calling its own
    # service), never of another one
    inbound: tuple[str, int, str] | None = None
    service: str | None = None  # the sidecar's own service

    def refusal(self, service: str, address: str, port: int) -> str | None:
        """Why an instance of `service` at `address:port` cannot be an endpoint here, or None."""
        for host, own_port, what in self.addresses:
            if port == own_port and reaches(address, host):
                return f"it is this proxy's {what}"
        if self.inbound is not None and service != self.service:
            host, own_port, what = self.inbound
            if port == own_port and reaches(address, host):
                return f"it is this proxy's {what} (of service {self.service})"
        return None


def own(listeners: list[tuple[str, int, str]], admin: tuple[str, int], etcd: tuple[str, ...] = (),
        inbound: tuple[str, int, str] | None = None, service: str | None = None) -> Own:
    """The Own of a proxy: its listeners, its admin listener, its etcd members' client URLs."""
    addresses = [*listeners, (admin[0], admin[1], "admin listener")]
    for url in etcd:
        parts = urlsplit(url if "://" in url else f"http://{url}")
        if parts.hostname and parts.port:
            addresses.append((parts.hostname, parts.port, f"control plane's etcd ({url})"))
    return Own(tuple(addresses), inbound, service)


def _ip(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        ip = ipaddress.ip_address(host.strip("[]").partition("%")[0])
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


def _local(host: str) -> bool:
    """Whether `host` is always this host: a loopback or unspecified address, or localhost."""
    ip = _ip(host)
    if ip is None:
        return host.lower().rstrip(".") in LOCAL_NAMES
    return ip.is_loopback or ip.is_unspecified


def reaches(target: str, bound: str) -> bool:
    """Whether a connection to `target` (same port) reaches a socket bound to `bound`.

    A socket bound to the unspecified address gets every local connection (its other host
    addresses are not known here); a connection to the unspecified address goes to the loopback."""
    t, b = _ip(target), _ip(bound)
    if b is None:  # a name: localhost, or one we can only compare as written
        return _local(target) if _local(bound) else target.lower() == bound.lower()
    if b.is_unspecified:
        return _local(target)
    if t is None:
        return b.is_loopback and _local(target)
    if t.is_unspecified:
        return b.is_loopback
    return t == b
