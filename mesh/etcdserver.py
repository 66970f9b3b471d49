"""Runs Debian's etcd-server for the demo and the tests: one member or a cluster, loopback only."""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

from . import procs


@dataclass
class Member:
    name: str
    host: str
    client_port: int
    peer_port: int
    child: procs.Child | None = None

    @property
    def client_url(self) -> str:
        return f"http://{self.host}:{self.client_port}"

    @property
    def peer_url(self) -> str:
        return f"http://{self.host}:{self.peer_port}"


def binary() -> str:
    found = shutil.which("etcd") or "/usr/bin/etcd"
    if not Path(found).exists():
        raise RuntimeError("etcd is needed: apt-get install etcd-server (./dev installs it)")
    return found


def argv(member: Member, cluster: list[Member], data_dir: Path, state: str = "new") -> list[str]:
    return [binary(), "--name", member.name, "--data-dir", str(data_dir / member.name),
            "--listen-client-urls", member.client_url, "--advertise-client-urls", member.client_url,
            "--listen-peer-urls", member.peer_url, "--initial-advertise-peer-urls", member.peer_url,
            "--initial-cluster", ",".join(f"{m.name}={m.peer_url}" for m in cluster),
            "--initial-cluster-state", state, "--initial-cluster-token", f"mitmesh-{cluster[0].peer_port}",
            # quick elections for a LAN/loopback cluster; snapshots of a small store are cheap
            "--heartbeat-interval", "100", "--election-timeout", "1000", "--logger", "zap",
            "--log-outputs", "stderr"]


def start(data_dir: Path, log_dir: Path, host: str = "127.0.0.1", name: str = "etcd0",
          prefix: list[str] | None = None) -> Member:
    """One etcd member on free ports of `host` (loopback); `prefix` runs it inside a namespace
    (e.g. ["ip", "netns", "exec", NS])."""
    member = Member(name, host, procs.free_port(host), procs.free_port(host))
    member.child = procs.spawn(name, [*(prefix or []), *argv(member, [member], data_dir)], log_dir=log_dir)
    procs.wait_ports(member.child, [(host, member.client_port)], timeout=20)
    return member
