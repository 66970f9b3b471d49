"""The sidecar footprint figures of `mitmesh bench` (issue 18): memory and start time of forked sidecars.

sidecar_private_mb: the private memory (smaps_rollup Private_Clean + Private_Dirty) of each of 10
sidecars forked from one fork server, after each served requests: what one more sidecar costs, the
rest being shared with the fork server. sidecar_start_ms: from the fork request to the first answer
of the sidecar's admin listener. standalone_sidecar_rss_mb: the RSS of a sidecar started as its own
Python (`MITMESH_FORK_SERVER=0`, what `mitmesh sidecar` execs), after the same requests;
standalone_sidecar_anon_mb: the anonymous part of that RSS, what the process itself allocated. The
rest is clean pages of the libraries it maps, and how many of those the kernel maps for the same
process depends on how the page cache holds the files: ~28 MB in a long-used venv, ~35 MB right
after `pip install` wrote them (docs/performance.md §11).
"""

from __future__ import annotations

import os
import random
import statistics
import time
import urllib.request
from pathlib import Path

import yaml

from mesh.runtime import forkserver, procs, supervisor

SIDECARS = 10
REQUESTS = 20  # through each sidecar before its memory is read: a sidecar that served, not a cold one


def smaps(pid: int) -> dict[str, int]:
    """/proc/PID/smaps_rollup in kB."""
    out = {}
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()[1:]:
        key, _, value = line.partition(":")
        out[key] = int(value.split()[0])
    return out


def private_mb(rollup: dict[str, int]) -> float:
    """The private part of a `smaps` reading, in MB."""
    return (rollup["Private_Clean"] + rollup["Private_Dirty"]) / 1024


def cpu_ms(pid: int) -> float:
    """User and system CPU time of `pid` so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) * 1000 / os.sysconf("SC_CLK_TCK")


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1) as r:
            return r.status == 200
    except OSError:
        return False


def _serve(url: str, child: procs.Child, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not _answers(url):
        if not child.alive() or time.monotonic() > deadline:
            raise RuntimeError(f"{child.name} did not answer {url}:\n{child.tail()}")
        time.sleep(0.005)


class Footprint:
    def __init__(self, tmp: Path, app_port: int):
        self.tmp = tmp
        self.app = app_port
        # an address of their own, as `mitmesh up` gives each instance
        self.address = f"127.{random.randint(1, 254)}.{random.randint(1, 254)}.{random.randint(2, 254)}"
        self.config = tmp / "footprint.yaml"
        gw = procs.free_port(self.address)
        self.config.write_text(yaml.safe_dump({
            "version": 1, "gateway": {"listeners": [{"name": "unused", "port": gw}]},
            "services": {"catalog": {"versions": {"v1": {"endpoints": [f"127.0.0.1:{app_port}"]}}}}}))
        self.children: list[procs.Child] = []

    def argv(self, i: int) -> tuple[list[str], str, str]:
        inbound, outbound, admin = (procs.free_port(self.address) for _ in range(3))
        spec = (f"service=catalog,app=127.0.0.1:{self.app},address={self.address},instance=fp{i},"
                f"inbound={inbound},outbound={outbound},admin={admin}")
        return (supervisor.worker_argv(self.config, [], "sidecar", "warn", -1, spec),
                f"http://{self.address}:{admin}/status", f"http://{self.address}:{inbound}/items/1")

    def start(self, i: int, server: forkserver.Server | None) -> tuple[procs.Child, float, str]:
        argv, admin, inbound = self.argv(i)
        started = time.monotonic()
        child = (server.spawn if server else procs.spawn)(f"footprint-{i}", argv, log_dir=self.tmp)
        self.children.append(child)
        _serve(admin, child)
        return child, (time.monotonic() - started) * 1000, inbound

    def run(self) -> str:
        server = forkserver.Server(self.tmp)
        try:
            server.start()
            forked, starts = [], []
            for i in range(SIDECARS):
                child, ms, inbound = self.start(i, server)
                forked.append((child, inbound))
                starts.append(ms)
            for _, inbound in forked:
                for _ in range(REQUESTS):
                    urllib.request.urlopen(inbound, timeout=10).read()
            private = [private_mb(smaps(c.pid)) for c, _ in forked]
            cpu = [cpu_ms(c.pid) for c, _ in forked]
            base = smaps(server.child.pid)
            procs.stop_all([c for c, _ in forked])
            alone = self.standalone(SIDECARS)
        finally:
            procs.stop_all(self.children)
            server.close()
        pm, sm = statistics.median(private), statistics.median(starts)
        print(f"  fork server: {server.info.get('modules')} modules preloaded in "
              f"{server.info.get('preload_cpu_ms')} ms of CPU, RSS {base['Rss'] / 1024:.1f} MiB", flush=True)
        print(f"  {SIDECARS} forked sidecars: private {pm:.1f} MiB each (median; {min(private):.1f}-"
              f"{max(private):.1f}), started in {sm:.0f} ms (median; {min(starts):.0f}-{max(starts):.0f}; fork "
              f"request to the admin listener's first answer), {statistics.median(cpu):.0f} ms of CPU each "
              f"(median, start and {REQUESTS} requests)", flush=True)
        print(f"  standalone sidecar (no fork server): RSS {alone['rss']:.1f} MiB ({alone['anon']:.1f} anonymous, "
              f"{alone['rss'] - alone['anon']:.1f} pages of the libraries it maps), private {alone['private']:.1f} MiB, "
              f"started in {alone['ms']:.0f} ms, {alone['cpu']:.0f} ms of CPU", flush=True)
        return (f"sidecar_private_mb={pm:.1f} sidecar_start_ms={sm:.0f} "
                f"standalone_sidecar_rss_mb={alone['rss']:.1f} standalone_sidecar_anon_mb={alone['anon']:.1f}")

    def standalone(self, i: int) -> dict:
        """A sidecar without the fork server, after REQUESTS requests: its memory and start."""
        child, ms, inbound = self.start(i, None)
        try:
            for _ in range(REQUESTS):
                urllib.request.urlopen(inbound, timeout=10).read()
            m = smaps(child.pid)
            return {"rss": m["Rss"] / 1024, "anon": m["Anonymous"] / 1024, "private": private_mb(m),
                    "ms": ms, "cpu": cpu_ms(child.pid)}
        finally:
            procs.stop_all([child])
            self.children.remove(child)
