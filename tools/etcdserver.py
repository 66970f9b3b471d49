"""Runs Debian's etcd-server for the demo and the tests: one member or a cluster, loopback only.

With a certificate folder (`certs`, holding the mesh CA) a member serves its client and peer URLs
over https and accepts only clients and peers with a certificate from the mesh CA (etcd's
--client-cert-auth and --peer-client-cert-auth): a proxy presents its workload certificate, the
operator the one `mitmesh up` issues (mesh/security/pki.py)."""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

from mesh.runtime import procs
from mesh.security import pki


@dataclass
class Member:
    name: str
    host: str
    client_port: int
    peer_port: int
    child: procs.Child | None = None
    certs: Path | None = None  # the mesh's certificate folder: TLS on, its CA trusted

    @property
    def scheme(self) -> str:
        return "https" if self.certs is not None else "http"

    @property
    def client_url(self) -> str:
        return f"{self.scheme}://{self.host}:{self.client_port}"

    @property
    def peer_url(self) -> str:
        return f"{self.scheme}://{self.host}:{self.peer_port}"

    def store(self, mesh: str) -> str:
        """The location proxies and `mitmesh config` name: etcds:// when TLS is on."""
        scheme = "etcds" if self.certs is not None else "etcd"
        return f"{scheme}://{self.host}:{self.client_port}/{mesh}"

    def tls_flags(self) -> list[str]:
        """etcd's flags for mutual TLS on both URLs, issuing the member's certificate first."""
        if self.certs is None:
            return []
        cert, key = pki.issue_etcd_member(self.certs, self.name, self.host)
        ca = pki.mesh_ca_cert(self.certs)
        return ["--cert-file", str(cert), "--key-file", str(key), "--client-cert-auth",
                "--trusted-ca-file", str(ca),
                "--peer-cert-file", str(cert), "--peer-key-file", str(key),
                "--peer-client-cert-auth", "--peer-trusted-ca-file", str(ca)]


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
            "--log-outputs", "stderr", *member.tls_flags()]


def start(data_dir: Path, log_dir: Path, host: str = "127.0.0.1", name: str = "etcd0",
          prefix: list[str] | None = None, certs: Path | None = None) -> Member:
    """One etcd member on free ports of `host` (loopback); `prefix` runs it inside a namespace
    (e.g. ["ip", "netns", "exec", NS]); `certs`: mutual TLS with that folder's mesh CA."""
    member = Member(name, host, procs.free_port(host), procs.free_port(host), certs=certs)
    member.child = procs.spawn(name, [*(prefix or []), *argv(member, [member], data_dir)], log_dir=log_dir)
    procs.wait_ports(member.child, [(host, member.client_port)], timeout=20)
    return member


def control_plane(state_dir: Path, log_dir: Path, certs: Path, text: str, file: str, mesh: str,
                  port: int | None = None) -> tuple[Member, str]:
    """A single-member etcd for the demo (127.0.0.1:2379 when free), serving mutual TLS with the
    mesh CA of `certs`, holding `text` (validated by the caller) as the current revision; proxies
    reading their config there also discover through it. The operator's certificate is issued
    into `certs` (the revision is pushed and signed with it). Returns the member and the store
    location."""
    import asyncio

    from discovery.etcdapi import Etcd
    from discovery.etcdtls import EtcdTls
    from mesh.runtime.store import Store, check_revision, parse_location
    from mesh.security.signing import Signer

    host = "127.0.0.1"
    client = port or (2379 if not procs.port_open(host, 2379) else procs.free_port(host))
    member = Member("etcd0", host, client, procs.free_port(host), certs=certs)
    pki.ensure_operator(certs)
    operator = EtcdTls(str(pki.mesh_ca_cert(certs)), *map(str, pki.operator_paths(certs)))
    location = parse_location(member.store(mesh)).with_tls(operator)
    member.child = procs.spawn("etcd", argv(member, [member], state_dir), log_dir=log_dir)
    procs.wait_ports(member.child, [(host, client)], timeout=20)

    def signed(rev) -> bool:  # a revision from before signing, or a workload's: proxies refuse it
        try:
            check_revision(rev, rev.revision, location)
            return True
        except ValueError:
            return False

    async def push() -> None:
        etcd = Etcd([member.client_url], tls=operator)
        try:
            store = Store(etcd, mesh, Signer.load(operator.cert, operator.key), location)
            current = await store.current()
            try:  # junk a holder of a mesh certificate wrote is no revision: push the file
                latest = await store.get(current["revision"]) if current.get("revision") else None
            except (ValueError, TypeError, KeyError):
                latest = None
            if latest is None or latest.text != text or not signed(latest) \
                    or await store.selection_problem(current):  # proxies refuse the selection
                await store.push(text, file, "mitmesh up")  # keep history across runs; push an edit
        finally:
            await etcd.close()
    try:
        asyncio.run(push())
    except Exception:
        member.child.stop()
        raise
    return member, member.store(mesh)
