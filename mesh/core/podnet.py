"""The gateway's way into pods: it stays in the machine's own namespace (its listeners on loopback,
its IdP, Redis and bare apps where they always were) and makes only its sockets towards the pods,
connections and mDNS, inside the mesh namespace that holds their bridge (MITMESH_POD_NETNS, set
by `mitmesh up` in pod isolation; see tools/pods.py and docs/howto/pods.md).

A socket belongs to the namespace it was made in, whatever thread uses it later; `entered()`
switches only the calling thread, and only for the few synchronous lines that make sockets.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import os
import socket
from typing import Iterator

ENV = "MITMESH_POD_NETNS"
SUBNET = "10.241.0"  # the pods' bridge, inside the mesh namespace only
GATEWAY_ADDRESS = f"{SUBNET}.1"  # the mesh namespace's address on that bridge
_NETWORK = ipaddress.ip_network(f"{SUBNET}.0/24")


def namespace() -> str | None:
    return os.environ.get(ENV) or None


def in_subnet(address: str | None) -> bool:
    """Whether `address` is on the pods' bridge. Never connect to one from the machine's own
    namespace: there it is no local address, and the default route would take it off the machine."""
    try:
        return ipaddress.ip_address(address or "") in _NETWORK
    except ValueError:
        return False


def inside(address: str) -> bool:
    """Whether `address` is a pod's, reached through the mesh namespace from here."""
    return namespace() is not None and in_subnet(address)


@contextlib.contextmanager
def entered(name: str | None = None) -> Iterator[None]:
    """This thread in the mesh namespace (or `name`) for the block, and back where it was after."""
    name = name or namespace()
    if name is None:
        yield
        return
    own = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    try:
        target = os.open(f"/run/netns/{name}", os.O_RDONLY)
        try:
            os.setns(target, os.CLONE_NEWNET)
        finally:
            os.close(target)
        try:
            yield
        finally:
            os.setns(own, os.CLONE_NEWNET)
    finally:
        os.close(own)


async def open_connection(host: str, port: int, **kwargs) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """asyncio.open_connection, with the socket made in the mesh namespace when `host` is a pod's."""
    if not inside(host):
        return await asyncio.open_connection(host, port, **kwargs)
    with entered():
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setblocking(False)
    try:
        await asyncio.get_running_loop().sock_connect(sock, (host, port))
    except BaseException:
        sock.close()
        raise
    kwargs.pop("local_addr", None)
    if kwargs.get("ssl") and not kwargs.get("server_hostname"):
        kwargs["server_hostname"] = host  # what asyncio takes from `host` when it makes the socket
    return await asyncio.open_connection(sock=sock, **kwargs)


def mdns_interfaces(configured: tuple[str, ...]) -> tuple[str, ...]:
    """The gateway's mDNS addresses: the mesh namespace's on the pods' bridge when in pods."""
    return (GATEWAY_ADDRESS,) if namespace() else configured
