"""What the scenarios on network-namespace hosts share (partition, control-plane-loss): the hosts,
made at the start and removed at the end with every process started on them, a catalog instance
on a host (in a pod inside it, or on the host itself), and the proxies' /metrics, each read from
its host's namespace."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Iterator, NamedTuple

from mesh.core.sidecar import virtual_addresses
from mesh.runtime import procs
from tools import netns, pods
from tools.scenario import Proxies, Run, Skip


class Placed(NamedTuple):
    """A catalog instance on a host: its sidecar's address, its two processes, its pod (or None)."""

    address: str
    app: procs.Child
    sidecar: procs.Child
    pod: pods.Pod | None


class Hosts:
    """The run's hosts (`net`) and what was started on them, stopped when the run ends."""

    def __init__(self, r: Run, net: netns.Network):
        self.r, self.net = r, net
        self.children: list[procs.Child] = []
        self.pods: list[pods.Pods] = []

    def spawn(self, host: str | None, name: str, argv: list[str], cwd: str | None = None) -> procs.Child:
        """Start `argv` on `host` (as it is where host is None: it enters its namespace itself), its
        log in the run's logs."""
        child = procs.spawn(name, self.net.argv(host, argv) if host else argv,
                            log_dir=self.r.workdir / "logs", cwd=cwd or str(self.r.workdir))
        self.children.append(child)
        return child

    def catalog(self, host: str, name: str, config: str, state: Path, ports: tuple[int, int, int, int],
                services) -> Placed:
        """A catalog app and its sidecar (`--config config`) on `host`: with isolation pod, in a pod
        inside the host (pods' state in `state`), the sidecar capturing transparently; otherwise the
        app on the host's loopback and the sidecar on the host's address. `ports`: the app's, the
        sidecar's inbound, outbound and admin; `services` (names) give the pod its virtual addresses."""
        app_port, inbound, outbound, admin = ports
        app = procs.python("-m", "services.catalog", "--host", "127.0.0.1", "--port", str(app_port),
                           "--instance", name)
        sidecar = procs.python("-m", "mesh.cli", "sidecar", "--config", config, "--service", "catalog",
                               "--app", f"127.0.0.1:{app_port}", "--instance", name)
        if self.r.isolation != "pod":
            at = self.net.address(host)
            return Placed(at, self.spawn(host, name, app),
                          self.spawn(host, f"{name}.sidecar", sidecar + ["--address", at]), None)
        in_host = pods.in_host(self.net, host, state)
        self.pods.append(in_host)
        in_host.create()
        pod = in_host.add(name, app_port, inbound, outbound, admin, virtual_addresses(services))
        return Placed(pod.address, self.spawn(None, name, in_host.app_argv(pod, app), cwd=str(pods.ROOT)),
                      self.spawn(None, f"{name}.sidecar", in_host.sidecar_argv(
                          pod, sidecar + ["--address", pod.address, "--capture", "transparent"])), pod)

    def watch(self, admins: dict[str, tuple[str, str]]) -> Proxies:
        """The /metrics of {proxy: (admin URL, host it is reached from)}, counted from now, polled in
        the background."""
        watched = Proxies()
        for name, (admin, host) in admins.items():
            watched.add(name, admin, via=lambda fn, h=host: self.net.call(h, fn))
        watched.baseline()
        return watched.start()


@contextlib.contextmanager
def hosts(r: Run, names: list[str], subnet: str, tag: str) -> Iterator[Hosts]:
    """Network-namespace hosts on one bridge (with room for pods inside them with isolation pod);
    Skip where they cannot be made. On the way out every process started on them is stopped and
    the pods and hosts are removed."""
    why = netns.why_not()
    if why:
        raise Skip(why)
    h = Hosts(r, netns.Network(names, subnet=subnet, tag=tag, pods=r.isolation == "pod"))
    try:
        try:
            h.net.create()
        except RuntimeError as e:
            raise Skip(f"cannot make network namespaces here: {e}") from None
        yield h
    finally:
        procs.stop_all(h.children)
        for made in h.pods:
            made.close()
        h.net.close()
