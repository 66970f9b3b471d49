"""`mitmesh bench`: loopback throughput and latency, as ratios against baselines of the same run.

Targets: the demo service directly, bare `mitmdump --mode reverse`, and the mitmesh gateway.
Load comes from wrk (installed with apt-get when missing). A benchmark, never a test.
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from . import launcher, procs

PATH = "/catalog/items/1"


@dataclass
class Result:
    name: str
    rps: float = 0.0
    p50_1: float = 0.0  # ms, one connection
    p99_1: float = 0.0
    p50_n: float = 0.0  # ms, many connections
    p99_n: float = 0.0
    errors: int = 0
    extra: dict = field(default_factory=dict)


def ensure_wrk() -> str:
    wrk = shutil.which("wrk")
    if wrk:
        return wrk
    if os.geteuid() == 0 and shutil.which("apt-get"):
        print("bench: installing wrk with apt-get", flush=True)
        subprocess.run(["apt-get", "install", "-y", "-qq", "wrk"], check=False,
                       env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"}, stdout=subprocess.DEVNULL)
        wrk = shutil.which("wrk")
    if not wrk:
        sys.exit("bench: wrk is needed (Debian/Ubuntu: apt-get install wrk; macOS: brew install wrk)")
    return wrk


def _ms(value: str, unit: str) -> float:
    return float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]


def wrk(wrk_bin: str, url: str, connections: int, seconds: float) -> tuple[float, float, float, int]:
    """(requests/s, p50 ms, p99 ms, errors) from one wrk run."""
    out = subprocess.run([wrk_bin, "-t1", f"-c{connections}", f"-d{max(1, round(seconds))}s", "--latency", url],
                         capture_output=True, text=True, timeout=seconds + 30).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    pct = dict((p, _ms(v, u)) for p, v, u in re.findall(r"^\s+(50|99)%\s+([\d.]+)(us|ms|s)", out, re.M))
    errors = sum(int(n) for n in re.findall(r"(?:Non-2xx or 3xx responses|Socket errors:.*?timeout)\s*:?\s*(\d+)", out))
    return rps, pct.get("50", 0.0), pct.get("99", 0.0), errors


def measure(name: str, url: str, args, wrk_bin: str) -> Result:
    wrk(wrk_bin, url, args.connections, 1)  # warm up connections, pools and caches
    rps, p50n, p99n, err = wrk(wrk_bin, url, args.connections, args.seconds)
    _, p50, p99, err1 = wrk(wrk_bin, url, 1, max(args.seconds / 2, 1))
    r = Result(name, rps, p50, p99, p50n, p99n, err + err1)
    print(f"  {name:<22} {rps:>9.0f} req/s   p50/p99 @1: {p50:.2f}/{p99:.2f} ms   "
          f"@{args.connections}: {p50n:.1f}/{p99n:.1f} ms" + (f"   errors {r.errors}" if r.errors else ""),
          flush=True)
    return r


def bench_config(service_port: int, listen_port: int, admin_port: int) -> dict:
    return {
        "version": 1,
        "gateway": {"listeners": [{"name": "bench", "port": listen_port}], "admin": {"port": admin_port}},
        "services": {"catalog": {"versions": {"v1": {"endpoints": [f"127.0.0.1:{service_port}"]}}}},
        "routes": [
            {"name": "health", "match": {"path": {"exact": "/healthz"}}, "direct": {"status": 200}},
            {"name": "catalog", "match": {"path": {"prefix": "/catalog/"}},
             "forward": {"service": "catalog", "rewrite": {"prefix": "/"}}},
        ],
    }


def machine() -> str:
    cpu = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{os.cpu_count()} cores, {cpu}, Python {platform.python_version()}, {platform.system()} {platform.release()}"


def run(args) -> int:
    wrk_bin = ensure_wrk()
    children: list[procs.Child] = []
    tmp = Path(tempfile.mkdtemp(prefix="mitmesh-bench-"))
    try:
        svc_port, mitm_port, gw_port, admin_port = (procs.free_port() for _ in range(4))
        svc = procs.spawn("catalog", procs.python("-m", "services.catalog", "--port", str(svc_port)),
                          log_dir=tmp)
        children.append(svc)
        procs.wait_ports(svc, [("127.0.0.1", svc_port)])

        bare = procs.spawn("mitmdump", [procs.tool("mitmdump"), "-q", "--mode",
                                        f"reverse:http://127.0.0.1:{svc_port}@127.0.0.1:{mitm_port}",
                                        "--set", f"confdir={tmp / 'mitmproxy'}"], log_dir=tmp)
        children.append(bare)
        cfg_path = tmp / "mesh.yaml"
        cfg_path.write_text(yaml.safe_dump(bench_config(svc_port, gw_port, admin_port)))
        from .config import load
        gw = procs.spawn("gateway", launcher.gateway_argv(cfg_path, load(cfg_path), extra=["-q"]),
                         log_dir=tmp)
        children.append(gw)
        procs.wait_ports(bare, [("127.0.0.1", mitm_port)])
        procs.wait_ports(gw, [("127.0.0.1", gw_port)])

        print(f"bench: {machine()}", flush=True)
        print(f"bench: wrk -t1, {args.connections} connections, {args.seconds:g}s per run, GET {PATH}", flush=True)
        direct = measure("direct", f"http://127.0.0.1:{svc_port}/items/1", args, wrk_bin)
        mitm = measure("mitmdump (bare)", f"http://127.0.0.1:{mitm_port}/items/1", args, wrk_bin)
        gate = measure("mitmesh gateway", f"http://127.0.0.1:{gw_port}{PATH}", args, wrk_bin)

        print()
        print("| target | req/s | vs mitmdump | p50 @1 (ms) | p99 @1 (ms) | "
              f"p50 @{args.connections} (ms) | p99 @{args.connections} (ms) |")
        print("|---|---:|---:|---:|---:|---:|---:|")
        for r in (direct, mitm, gate):
            print(f"| {r.name} | {r.rps:.0f} | {r.rps / mitm.rps:.2f}x | {r.p50_1:.2f} | {r.p99_1:.2f} | "
                  f"{r.p50_n:.1f} | {r.p99_n:.1f} |")
        print()
        added = gate.p50_1 - direct.p50_1
        print(f"gateway_vs_mitmdump={gate.rps / mitm.rps:.2f} gateway_vs_direct={gate.rps / direct.rps:.3f} "
              f"added_p50_ms={added:.2f}", flush=True)
        return 0
    finally:
        for c in reversed(children):
            c.stop()
        shutil.rmtree(tmp, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="mitmesh bench")
    p.add_argument("--seconds", type=float, default=5.0, help="duration of each measured run")
    p.add_argument("--connections", type=int, default=32)
    return run(p.parse_args(argv))
