"""Linux network namespaces as hosts, for multi-host tests and scenarios.

Every host is a namespace with one veth into a "switch" namespace holding a bridge, so the hosts
reach each other and nothing else: mDNS multicast stays on that bridge, never in the machine's own
namespace. All names carry our pid and a random tag; `close()` removes everything. `partition(a, b)`
cuts two hosts apart silently (their packets to each other are lost, as behind a failed link or a
firewall that drops), while both keep reaching every other host; `heal(a, b)` undoes it.
"""

from __future__ import annotations

import os
import re
import secrets
import shutil
import subprocess
import threading
from typing import Callable, TypeVar

T = TypeVar("T")


NETNS_DIR = "/run/netns"


def stale_of_dead(prefix: str, base: int = 16) -> list[str]:
    """Namespaces `<prefix><pid>-…` whose process is gone: what a run that was SIGKILLed (a test's
    timeout) left. The pid is written in `base` (the pods of a bench in hex, hosts in decimal)."""
    digits = "[0-9a-f]" if base == 16 else "[0-9]"
    if not os.path.isdir(NETNS_DIR):
        return []
    out = []
    for name in os.listdir(NETNS_DIR):
        m = re.fullmatch(rf"{re.escape(prefix)}({digits}+)-.+", name)
        if m and not os.path.exists(f"/proc/{int(m.group(1), base)}"):
            out.append(name)
    return sorted(out)


def remove(names: list[str]) -> None:
    """Delete namespaces: each takes its veth ends, addresses, routes and nftables tables with it."""
    for name in names:
        subprocess.run(["ip", "netns", "del", name], capture_output=True)


def why_not() -> str | None:
    """Why namespaces cannot be made here, or None when they can."""
    if not hasattr(os, "setns"):
        return "os.setns needs Python 3.12 on Linux"
    if os.geteuid() != 0:
        return "network namespaces need root (CI runs as root)"
    if shutil.which("ip") is None:
        return "the ip command is missing (apt-get install iproute2)"
    return None


PODS_FROM, PODS_PER_HOST = 64, 16  # host i's pods: SUBNET.(64 + 16 i) on


class Network:
    """`pods=True`: every host's eth0 is a port of a bridge br0 in the host, which carries the
    host's address; pods made in the host (tools/pods.py, `pods.in_host`) are sibling namespaces
    joined to that bridge, so they sit on the hosts' segment with addresses of their own (mDNS,
    partitions and the gateway's connections reach them as they reach hosts)."""

    def __init__(self, hosts: list[str], subnet: str = "10.77.0", tag: str = "mm4", pods: bool = False):
        self.tag, self.subnet, self.bridged = tag, subnet, pods
        self.prefix = f"{tag}-{os.getpid()}-{secrets.token_hex(2)}"
        self.switch = f"{self.prefix}-sw"
        self.hosts = {h: (f"{self.prefix}-{h}", f"{subnet}.{i + 1}") for i, h in enumerate(hosts)}
        if pods and len(hosts) > (255 - PODS_FROM) // PODS_PER_HOST:
            raise ValueError(f"at most {(255 - PODS_FROM) // PODS_PER_HOST} hosts with pods")
        self.made: list[str] = []

    def _ip(self, *args: str) -> None:
        out = subprocess.run(["ip", *args], capture_output=True, text=True)
        if out.returncode != 0:
            raise RuntimeError(f"ip {' '.join(args)}: {out.stderr.strip()}")

    def create(self) -> None:
        left = stale_of_dead(f"{self.tag}-", base=10)  # a run of ours that was SIGKILLed left them
        if left:
            remove(left)
            print(f"removed {len(left)} stale namespaces of a run that was killed: {', '.join(left)}", flush=True)
        self._ip("netns", "add", self.switch)
        self.made.append(self.switch)
        self._ip("-n", self.switch, "link", "add", "br0", "type", "bridge", "mcast_snooping", "0")
        self._ip("-n", self.switch, "link", "set", "br0", "up")
        for i, (ns, address) in enumerate(self.hosts.values()):
            self._ip("netns", "add", ns)
            self.made.append(ns)
            self._ip("-n", self.switch, "link", "add", f"p{i}", "type", "veth", "peer", "name", "eth0",
                     "netns", ns)
            self._ip("-n", self.switch, "link", "set", f"p{i}", "master", "br0", "up")
            self._ip("-n", ns, "link", "set", "lo", "up")
            device = "eth0"
            if self.bridged:  # the host's address on its bridge, eth0 one of its ports (pods join it)
                device = "br0"
                self._ip("-n", ns, "link", "add", "br0", "type", "bridge", "mcast_snooping", "0")
                self._ip("-n", ns, "link", "set", "eth0", "master", "br0")
                self._ip("-n", ns, "link", "set", "br0", "up")
            self._ip("-n", ns, "addr", "add", f"{address}/24", "dev", device)
            self._ip("-n", ns, "link", "set", "eth0", "up")

    def close(self) -> None:
        for ns in reversed(self.made):  # deleting a namespace deletes its end of every veth
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)
        self.made.clear()

    def partition(self, a: str, b: str) -> None:
        """Lose every packet between hosts a and b, both ways, silently (no refusal, no ICMP:
        connects and requests time out, mDNS of one never reaches the other), as behind a failed
        link: their bridge ports are isolated, and isolated ports only reach ports that are not.
        Every other host still reaches both. One partition at a time."""
        for host in (a, b):
            self._isolate(host, True)

    def heal(self, a: str, b: str) -> None:
        """End a partition: a and b reach each other again."""
        for host in (a, b):
            self._isolate(host, False)

    def _isolate(self, host: str, on: bool) -> None:
        port = f"p{list(self.hosts).index(host)}"
        self._ip("-n", self.switch, "link", "set", "dev", port, "type", "bridge_slave",
                 "isolated", "on" if on else "off")

    def pod_addresses(self, host: str) -> tuple[str, int]:
        """(subnet, first host number) of the pods made in `host`: up to PODS_PER_HOST of them."""
        if not self.bridged:
            raise RuntimeError("this network was made without pods=True: its hosts have no bridge for pods")
        return self.subnet, PODS_FROM + PODS_PER_HOST * list(self.hosts).index(host)

    def address(self, host: str) -> str:
        return self.hosts[host][1]

    def name(self, host: str) -> str:
        """The namespace of `host` (under /run/netns)."""
        return self.hosts[host][0]

    def argv(self, host: str, argv: list[str]) -> list[str]:
        """Run `argv` on `host` (ip netns exec execs it: the pid stays the same)."""
        return ["ip", "netns", "exec", self.hosts[host][0], *argv]

    def call(self, host: str, fn: Callable[..., T], *args, **kwargs) -> T:
        """Call `fn` in a thread that lives in `host`'s namespace (its sockets are made there)."""
        result: dict = {}

        def run():
            try:
                with open(f"/run/netns/{self.hosts[host][0]}") as f:
                    os.setns(f.fileno(), os.CLONE_NEWNET)
                result["value"] = fn(*args, **kwargs)
            except BaseException as e:  # handed to the caller
                result["error"] = e

        thread = threading.Thread(target=run)
        thread.start()
        thread.join()
        if "error" in result:
            raise result["error"]
        return result["value"]
