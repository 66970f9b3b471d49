"""Pods for `mitmesh up` (isolation: pod): every instance, app plus sidecar, in a network namespace
of its own, as Istio's sidecar injection and istio-iptables do on Kubernetes.

    mesh namespace  <prefix>-mesh: the bridge br0 (SUBNET.1), nothing else; the gateway stays in
                    the machine's namespace and makes its connections to pods, and its mDNS
                    sockets, in here (mesh/core/podnet.py)
    pod namespace   <prefix>-p<N>: eth0 (SUBNET.N+2/24, a veth into the bridge), lo; the app on
                    127.0.0.1 as a uid of its own, the sidecar as root; nftables table `mitmesh`:
                      - the app's outbound TCP is redirected to the sidecar's transparent outbound
                        listener (127.0.0.1:15001); root's (the sidecar's) is exempt (`meta skuid 0`,
                        as Istio exempts uid 1337): the app cannot become root in its pod
                      - connections from the bridge to the app's port are redirected to the sidecar
                        inbound; from the bridge only the inbound, the admin port and mDNS get in
                      - the app's non-TCP traffic never leaves the pod; nor does it reach its
                        sidecar's outbound port unless redirected there
                    a hosts file mapping every mesh service to its virtual address (240.240.0.0/16,
                    mesh/sidecar.py), bind-mounted over /etc/hosts for the app only

Nothing is added to the machine's own namespace: no interface, address, route or rule. Names
start with a prefix made from the config file's path, so the next `up` of the same config finds
the pods of a SIGKILLed one (`stale`) and removes them.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from tools import netns
from mesh.core.podnet import GATEWAY_ADDRESS, SUBNET

APP_UID = 41000  # pod N's app runs as APP_UID + N (and its group), a uid of its own per pod
NETNS_DIR = Path("/run/netns")
ROOT = Path(__file__).resolve().parent.parent


def why_not() -> str | None:
    """Why pods cannot be made here, or None when they can."""
    if not sys.platform.startswith("linux"):
        return "pods need Linux network namespaces"
    problem = netns.why_not()
    if problem:
        return problem
    if shutil.which("nft") is None and not Path("/usr/sbin/nft").exists():
        return "the nft command is missing (apt-get install nftables)"
    return None


def prefix_of(config_path: Path) -> str:
    """`mmp<6 hex>`: the same for every `up` of one config file, different for another."""
    return "mmp" + hashlib.sha256(str(config_path.resolve()).encode()).hexdigest()[:6]


def stale(prefix: str) -> list[str]:
    """Namespaces left by an `up` of this config that did not clean up (it was SIGKILLed)."""
    if not NETNS_DIR.is_dir():
        return []
    return sorted(p.name for p in NETNS_DIR.iterdir() if p.name.startswith(prefix + "-"))


def stale_of_dead(kind: str) -> list[str]:
    """Namespaces `<kind><hex pid>-…` whose process is gone (a bench's pods are named by its pid)."""
    return netns.stale_of_dead(kind, base=16)


def remove(names: list[str]) -> None:
    """Delete namespaces (pods first, the mesh's last): a namespace takes its veth end, addresses,
    routes and nftables tables with it, and the bridge lives in the mesh's."""
    for name in sorted(names, key=lambda n: n.endswith("-mesh")):
        subprocess.run(["ip", "netns", "del", name], capture_output=True)


def _run(argv: list[str], stdin: str | None = None) -> None:
    out = subprocess.run(argv, input=stdin, capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(f"{' '.join(argv[:6])}: {out.stderr.strip() or out.stdout.strip()}")


@dataclass
class Pod:
    index: int
    name: str  # the instance's name
    netns: str  # its namespace
    address: str  # eth0's address: the sidecar's inbound and admin listen here
    uid: int  # the app's uid and gid
    hosts: Path  # the hosts file the app sees as /etc/hosts


class Pods:
    """The mesh namespace with its bridge, and one namespace per pod; `close()` removes them all.
    With `host` (a host of tools/netns.py made with pods=True), the pods join that host's bridge
    br0 instead, with addresses `subnet`.`first` on; the host is not theirs to make or remove."""

    def __init__(self, prefix: str, state: Path, *, host: str | None = None, subnet: str = SUBNET,
                 first: int = 2, limit: int = 250):
        self.prefix = prefix
        self.host = host
        self.mesh = host or f"{prefix}-mesh"
        self.gateway_address = GATEWAY_ADDRESS
        self.subnet, self.first, self.limit = subnet, first, limit
        self.state = state  # hosts files and the interpreter's mount point
        self.pods: list[Pod] = []
        self.made: list[str] = []

    def create(self) -> None:
        if self.host is not None:
            self.state.mkdir(parents=True, exist_ok=True)
            return
        self.made.append(self.mesh)  # before it exists: a failure half way still removes it
        _run(["ip", "netns", "add", self.mesh])
        _run(["ip", "-n", self.mesh, "link", "set", "lo", "up"])
        _run(["ip", "-n", self.mesh, "link", "add", "br0", "type", "bridge", "mcast_snooping", "0"])
        _run(["ip", "-n", self.mesh, "addr", "add", f"{self.gateway_address}/24", "dev", "br0"])
        _run(["ip", "-n", self.mesh, "link", "set", "br0", "up"])
        self.state.mkdir(parents=True, exist_ok=True)

    def add(self, name: str, app_port: int, inbound: int, outbound: int, admin: int,
            services: dict[str, str]) -> Pod:
        """A pod for one instance: its namespace, veth, address, nftables rules and hosts file."""
        index = len(self.pods)
        if index >= self.limit:
            raise RuntimeError(f"pods: at most {self.limit} instances here")
        ns = f"{self.prefix}-p{index}"
        address = f"{self.subnet}.{index + self.first}"
        self.made.append(ns)
        _run(["ip", "netns", "add", ns])
        _run(["ip", "-n", self.mesh, "link", "add", f"v{index}", "type", "veth", "peer", "name", "eth0",
              "netns", ns])
        _run(["ip", "-n", self.mesh, "link", "set", f"v{index}", "master", "br0", "up"])
        _run(["ip", "-n", ns, "link", "set", "lo", "up"])
        _run(["ip", "-n", ns, "addr", "add", f"{address}/24", "dev", "eth0"])
        _run(["ip", "-n", ns, "link", "set", "eth0", "up"])
        # virtual addresses need a route for the app's connect() to get as far as the redirect;
        # nothing is ever sent to them (only root's traffic, the sidecar's, is not redirected)
        from mesh.core.sidecar import VIRTUAL_NET
        _run(["ip", "-n", ns, "route", "add", VIRTUAL_NET, "dev", "eth0"])
        _run(["ip", "netns", "exec", ns, "nft", "-f", "-"],
             stdin=ruleset(app_port, inbound, outbound, admin))
        hosts = self.state / f"hosts-p{index}"
        hosts.write_text("127.0.0.1\tlocalhost\n::1\tlocalhost\n" + "".join(
            f"{vip}\t{service}\n" for service, vip in sorted(services.items())))
        hosts.chmod(0o644)
        pod = Pod(index, name, ns, address, APP_UID + index, hosts)
        self.pods.append(pod)
        return pod

    def close(self) -> None:
        remove(self.made)
        self.made.clear()

    def app_argv(self, pod: Pod, argv: list[str], expose: tuple[str, ...] = ()) -> list[str]:
        """Run `argv` as the pod's app: in its namespace, with its hosts file, as its own uid; the
        paths in `expose` (beside the interpreter and the project) readable by it."""
        return [sys.executable, "-m", "tools.pods", "--netns", pod.netns, "--hosts", str(pod.hosts),
                "--uid", str(pod.uid), "--mounts", str(self.state / "mnt"),
                *(a for path in expose for a in ("--expose", path)), "--", *argv]

    @staticmethod
    def sidecar_argv(pod: Pod, argv: list[str]) -> list[str]:
        return ["ip", "netns", "exec", pod.netns, *argv]


def in_host(net: netns.Network, host: str, state: Path) -> Pods:
    """Pods inside a host of a multi-host network (made with pods=True): sibling namespaces joined
    to the host's bridge, on the hosts' segment; removed by `close()` (and with the network)."""
    subnet, first = net.pod_addresses(host)
    return Pods(f"{net.prefix}-{host}", state, host=net.name(host), subnet=subnet, first=first,
                limit=netns.PODS_PER_HOST)


def ruleset(app_port: int, inbound: int, outbound: int, admin: int) -> str:
    """The pod's nftables table (replaced whole, so loading it twice is harmless)."""
    return f"""table inet mitmesh
delete table inet mitmesh
table inet mitmesh {{
    chain prerouting {{
        type nat hook prerouting priority dstnat; policy accept;
        iifname "eth0" tcp dport {app_port} redirect to :{inbound}
    }}
    chain output_nat {{
        type nat hook output priority -100; policy accept;
        meta skuid 0 return
        ip daddr 127.0.0.0/8 return
        ip6 daddr ::1 return
        meta l4proto tcp redirect to :{outbound}
    }}
    chain input {{
        type filter hook input priority filter; policy drop;
        iifname "lo" accept
        ct state established,related accept
        iifname "eth0" tcp dport {{ {inbound}, {admin} }} accept
        iifname "eth0" udp dport 5353 accept
    }}
    chain output {{
        type filter hook output priority filter; policy accept;
        ct state established,related accept
        meta skuid 0 accept
        tcp dport {outbound} ct status dnat accept
        tcp dport {outbound} reject with tcp reset
        oifname "lo" accept
        drop
    }}
}}
"""


# ---------------------------------------------------------------------------------------------
# the app's side: `python -m tools.pods --netns NS --hosts FILE --uid N --mounts DIR -- ARGV...`
# (as root; it enters the pod, gives the app its own view of the files, becomes uid N and execs)

_MS_BIND, _MS_MOVE, _MS_REC, _MS_PRIVATE, _MS_RDONLY, _MS_REMOUNT = 4096, 8192, 16384, 1 << 18, 1, 32
_PR_SET_PDEATHSIG, _PR_SET_NO_NEW_PRIVS = 1, 38


def _mount(libc, source: str | None, target: str, fstype: str | None, flags: int, data: str | None = None):
    enc = (lambda v: v.encode() if v is not None else None)
    if libc.mount(enc(source), enc(target), enc(fstype), flags, enc(data)) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"mount {source} on {target}: {os.strerror(err)}")


def blocked(paths: list[str], uid: int) -> list[tuple[str, str]]:
    """(directory, its entry on the way) for each path that `uid` cannot reach because a directory
    on the way lets no other user pass (/root, mode 0700, in front of pyenv's interpreters or a
    checkout under /root): the topmost such directory of each path."""
    out: list[tuple[str, str]] = []
    for path in paths:
        parts = Path(path).parts
        for i in range(2, len(parts)):
            d = Path(*parts[:i])
            st = d.stat()
            if not st.st_mode & 0o001 and st.st_uid != uid:
                pair = (str(d), str(d / parts[i]))
                if pair not in out:
                    out.append(pair)
                break
    return out


def expose(libc, paths: list[str], uid: int, hold: Path) -> None:
    """Let `uid` reach `paths` (the interpreter, the venv, the project) read-only, in this mount
    namespace only: each blocking directory D is covered by an empty tmpfs that holds nothing but
    the entries on the way to those paths, bound read-only from the original. The rest of D stays
    hidden from the app, and the machine's own view of D is untouched."""
    for round_ in range(8):  # a blocking directory inside an exposed one is handled on the next round
        pairs = blocked(paths, uid)
        if not pairs:
            return
        holds = []
        for i, (_, entry) in enumerate(pairs):
            h = hold / f"{round_}-{i}"  # each round's holds apart: a name may be a dir, then a file
            if os.path.isdir(entry):
                h.mkdir(parents=True, exist_ok=True)
            else:  # a file (a config) is bound onto a file
                h.parent.mkdir(parents=True, exist_ok=True)
                h.touch()
            _mount(libc, entry, str(h), None, _MS_BIND | _MS_REC)
            holds.append(h)
        for d in dict.fromkeys(d for d, _ in pairs):
            _mount(libc, "tmpfs", d, "tmpfs", 0, "mode=0755,size=64k")
        for (_, entry), h in zip(pairs, holds):
            os.mkdir(entry) if os.path.isdir(h) else open(entry, "w").close()
            _mount(libc, str(h), entry, None, _MS_MOVE)
            _mount(libc, None, entry, None, _MS_BIND | _MS_REMOUNT | _MS_RDONLY | _MS_REC)


def exec_app(netns_name: str, hosts: str, uid: int, mounts: Path, argv: list[str],
             extra: tuple[str, ...] = ()) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    with open(NETNS_DIR / netns_name) as f:
        os.setns(f.fileno(), os.CLONE_NEWNET)
    os.unshare(os.CLONE_NEWNS)
    _mount(libc, None, "/", None, _MS_REC | _MS_PRIVATE)
    _mount(libc, hosts, "/etc/hosts", None, _MS_BIND)
    interpreter = os.path.realpath(argv[0]) if os.sep in argv[0] else os.path.realpath(sys.executable)
    # the holding directories sit where no exposed path's blocking directory can cover them
    hold = Path(tempfile.mkdtemp(prefix=f"mitmesh-{netns_name}-", dir="/tmp"))
    try:
        expose(libc, [os.path.dirname(os.path.dirname(interpreter)), sys.prefix, str(ROOT), os.getcwd(), *extra],
               uid, hold)
    finally:
        shutil.rmtree(hold, ignore_errors=True)  # empty by now: every mount was moved out
    os.setgroups([])
    os.setgid(uid)
    os.setuid(uid)  # no capabilities are left: it cannot change the pod's rules, mounts or uid
    libc.prctl(_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0)
    libc.prctl(_PR_SET_PDEATHSIG, 15, 0, 0, 0)  # a change of uid clears the parent-death signal
    os.environ["HOME"] = "/nonexistent"
    os.execvp(argv[0], argv)


def main(args: list[str]) -> int:
    import argparse

    p = argparse.ArgumentParser(prog="python -m tools.pods", description="run an app inside its pod")
    p.add_argument("--netns", required=True)
    p.add_argument("--hosts", required=True)
    p.add_argument("--uid", type=int, required=True)
    p.add_argument("--mounts", required=True, type=Path)
    p.add_argument("--expose", action="append", default=[], help="a path the app must read (its config)")
    p.add_argument("argv", nargs="+")
    a = p.parse_args(args)
    if a.uid == 0:
        print("tools.pods: the app never runs as root in its pod", file=sys.stderr)
        return 2
    try:
        exec_app(a.netns, a.hosts, a.uid, a.mounts, a.argv, tuple(a.expose))
    except OSError as e:
        print(f"tools.pods: cannot start the app in pod {a.netns}: {e}", file=sys.stderr)
        return 1
    return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
