"""`mitmesh bench`: loopback throughput, latency and memory, as ratios against baselines of one run.

Targets, all in front of the same demo service: the service directly, bare `mitmdump --mode
reverse`, nginx as a reverse proxy (the reference a user would pick instead), a request through two
sidecars (a caller's outbound listener, then the service's inbound), the same two in pods (the
caller's call captured by nftables, Linux as root), and the mitmesh gateway on the
lean runtime with 1 worker, with N workers, and with 10,000 routes; and HTTP/2 against HTTP/1.1 on
the 1-worker gateway's TLS listener; and a function on the 1-worker gateway: its first call from zero
instances (cold start) and its warm latency. Load comes from wrk, and from h2load for the HTTP/2 comparison
(both protocols, so the client is the same); wrk, h2load and nginx are installed with apt-get when
missing. A benchmark, never a test.
"""

from __future__ import annotations

import argparse
import hashlib
import http.client
import json
import os
import platform
import random
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import yaml

from mesh.security import pki
from mesh.runtime import forkserver, procs, supervisor
from mesh.core.sidecar import virtual_addresses
from tools import footprint, pods

ROOT = Path(__file__).resolve().parent.parent

PATH = "/catalog/items/1"
BARE_PATH = "/bare/items/1"  # the same upstream through a route without policies (policies_vs_bare)
MIRROR_PATH = "/mirrored/items/1"  # the bare route, every request also copied to catalog v2
BENCH_KEY = "mk_bench_9fK2xQ7LpV4tR8wZ"  # sent by wrk to every target, checked by the gateway
ROUTES = 10  # the ordinary config has this many routes; the big one adds 10,000 more

NGINX = """
worker_processes {workers};
pid {tmp}/nginx.pid;
error_log {tmp}/nginx-error.log warn;
events {{ worker_connections 1024; }}
http {{
  access_log off;
  client_body_temp_path {tmp}/nginx-body;
  proxy_temp_path {tmp}/nginx-proxy;
  fastcgi_temp_path {tmp}/nginx-fastcgi;
  uwsgi_temp_path {tmp}/nginx-uwsgi;
  scgi_temp_path {tmp}/nginx-scgi;
  upstream catalog {{ server 127.0.0.1:{service}; keepalive 64; }}
  server {{
    listen 127.0.0.1:{port};
    location /catalog/ {{
      proxy_pass http://catalog/;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_set_header Host $host;
      proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
    }}
  }}
}}
"""


@dataclass
class Result:
    name: str
    rps: float
    p50_1: float  # ms at one connection
    p99_1: float
    p50_n: float  # ms at many connections
    p99_n: float
    errors: int
    cores: float = 0.0  # CPU the proxy processes used during the throughput run, in cores


def ensure(binary: str, package: str, skip: str = "") -> str:
    found = shutil.which(binary) or (f"/usr/sbin/{binary}" if os.path.exists(f"/usr/sbin/{binary}") else None)
    if found:
        return found
    if os.geteuid() == 0 and shutil.which("apt-get"):
        print(f"bench: installing {package} with apt-get", flush=True)
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        subprocess.run(["apt-get", "install", "-y", "-qq", "--no-install-recommends", package],
                       env=env, stdout=subprocess.DEVNULL, check=False)
        found = shutil.which(binary) or (f"/usr/sbin/{binary}" if os.path.exists(f"/usr/sbin/{binary}") else None)
    if not found:
        sys.exit(f"bench: {binary} is needed (Debian/Ubuntu: apt-get install {package})"
                 + (f"; or run without what needs it: {skip}" if skip else ""))
    return found


def _ms(value: str, unit: str) -> float:
    return float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]


class Wrk:
    def __init__(self, binary: str, prefix: list[str] = ()):
        self.binary = binary
        self.prefix = list(prefix)  # e.g. run as a pod's app (tools/pods.py)
        self.last_count = 0

    def run(self, url: str, connections: int, seconds: float, host: str | None = None,
            new_connections: bool = False) -> tuple[float, float, float, int]:
        """(requests/s, p50 ms, p99 ms, errors) of one timed run; `host` sets the Host header;
        `new_connections`: `Connection: close`, a new connection per request."""
        headers = ["-H", f"Host: {host}"] if host else []
        if new_connections:
            headers += ["-H", "Connection: close"]
        out = subprocess.run([*self.prefix, self.binary, "-t1", f"-c{connections}", f"-d{max(1, round(seconds))}s",
                              "--latency", "-H", f"x-api-key: {BENCH_KEY}", *headers, url],
                             capture_output=True, text=True, timeout=seconds + 60).stdout
        return self._parse(out)

    def _parse(self, out: str) -> tuple[float, float, float, int]:
        count = re.search(r"(\d+) requests in", out)
        self.last_count = int(count.group(1)) if count else 0
        m = re.search(r"Requests/sec:\s+([\d.]+)", out)
        if not m:
            raise RuntimeError(f"wrk printed no result:\n{out}")
        pct = {p: _ms(v, u) for p, v, u in re.findall(r"^\s+(50|99)%\s+([\d.]+)(us|ms|s)", out, re.M)}
        errors = sum(int(n) for n in re.findall(r"Non-2xx or 3xx responses:\s+(\d+)", out))
        sock = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
        if sock:
            errors += sum(int(x) for x in sock.groups())
        return float(m.group(1)), pct.get("50", 0.0), pct.get("99", 0.0), errors


class H2load:
    """nghttp2's load generator: HTTP/2 (one request at a time per connection, like wrk) or, with
    `--h1`, HTTP/1.1 over the same TLS listener, so both protocols see the same client."""

    def __init__(self, binary: str):
        self.binary = binary

    def run(self, url: str, connections: int, seconds: float, h1: bool = False,
            warmup: bool = True) -> tuple[float, int]:
        """(requests/s, failed requests) of one timed run."""
        # the TLS handshakes happen during the warm-up: the figure is requests on open connections, as wrk's
        argv = [self.binary, *(["--h1"] if h1 else ["-m1"]), f"-c{connections}", f"-D{max(1, round(seconds))}",
                *(["--warm-up-time=1"] if warmup else []), "-H", f"x-api-key: {BENCH_KEY}", url]
        out = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 61).stdout
        m = re.search(r"finished in [\d.]+m?s, ([\d.]+) req/s", out)
        done = re.search(r"requests: \d+ total, \d+ started, \d+ done, (\d+) succeeded, (\d+) failed, "
                         r"(\d+) errored, (\d+) timeout", out)
        codes = re.search(r"status codes: (\d+) 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx", out)
        if not (m and done and codes):
            raise RuntimeError(f"h2load printed no result:\n{out}")
        return float(m.group(1)), sum(map(int, done.groups()[1:])) + sum(map(int, codes.groups()[1:]))


def h2_vs_h1(h2load: H2load, url: str, args) -> tuple[list[float], list[float], int]:
    """HTTP/1.1 then HTTP/2 against the same TLS listener, interleaved 3 times (so a busier moment
    of the machine hits both; once with --no-warmup): req/s of each run, and failed requests."""
    seconds = max(args.seconds / 2, 1)
    warm = not args.no_warmup
    if warm:
        h2load.run(url, args.connections, 1, h1=True)
        h2load.run(url, args.connections, 1)
    h1, h2, errors = [], [], 0
    for _ in range(3 if warm else 1):
        for runs, is_h1 in ((h1, True), (h2, False)):
            rps, failed = h2load.run(url, args.connections, seconds, h1=is_h1, warmup=warm)
            runs.append(rps)
            errors += failed
    return h1, h2, errors


@dataclass
class PolicyRuns:
    """policies_vs_bare's rounds: req/s and the worker's CPU per request (µs), of each route:
    `policies` and `bare` on one gateway, and with --policies-only `unloaded`, the bare route on a
    gateway whose config has no policies at all (or `mirrored` and `bare`: mirror_vs_bare); and the
    p50 latency (ms) of each run."""

    rps: dict[str, list[float]]
    cpu: dict[str, list[float]]
    errors: int
    p50: dict[str, list[float]]

    def ratio(self, what: str = "rps") -> float:
        runs = getattr(self, what)
        return sum(runs["policies"]) / sum(runs["bare"])

    def pairs(self, what: str = "cpu", of: str = "policies", to: str = "bare") -> list[float]:
        """Each round's own ratio, `of` over `to` (their runs back to back)."""
        runs = getattr(self, what)
        return [p / b for p, b in zip(runs[of], runs[to]) if b]

    def paired(self, what: str = "cpu", of: str = "policies", to: str = "bare") -> float:
        """The median of each round's ratio: this machine's speed steps by 15-70 % from one run of
        seconds to the next (docs/performance.md §9), which a sum over rounds carries into the
        ratio and a median of pairs leaves out."""
        return statistics.median(self.pairs(what, of, to))

    def figures(self) -> str:
        """The `name=value` figures `mitmesh bench` ends with."""
        return (f"policies_vs_bare={self.ratio():.2f} policies_cpu_vs_bare={self.ratio('cpu'):.2f} "
                f"policies_cpu_vs_bare_paired={self.paired():.2f}"
                + (f" bare_cpu_vs_unloaded_paired={self.paired(of='bare', to='unloaded'):.2f}"
                   if "unloaded" in self.cpu else ""))


def policies_vs_bare(wrk: Wrk, targets: list[tuple[str, str, list[int]]], args,
                     connections: int = 0) -> PolicyRuns:
    """The demo's policies (API key, rate limit) against a bare route to the same upstream on the
    same gateway, interleaved (ABBA, or ABCCBA with a third target, so a trend in the machine's
    load hits all alike) for `--policy-rounds` rounds (one with --no-warmup): req/s and p50 of each
    run, the worker CPU per request (what the route costs, whatever else the machine runs), and
    failed requests. `targets`: (name, url, the worker pids of its gateway); `connections`: wrk's
    (default --connections)."""
    seconds = max(args.seconds / 2, 1)
    warm = not args.no_warmup
    connections = connections or args.connections
    if warm:
        for _, url, _ in targets:
            wrk.run(url, connections, 1)
    names = [name for name, _, _ in targets]
    runs = PolicyRuns({n: [] for n in names}, {n: [] for n in names}, 0, {n: [] for n in names})
    for i in range(args.policy_rounds if warm else 1):
        for name, url, pids in (targets if i % 2 == 0 else targets[::-1]):
            cpu0 = cpu_seconds(pids)
            rps, p50, _, failed = wrk.run(url, connections, seconds)
            runs.rps[name].append(rps)
            runs.p50[name].append(p50)
            runs.cpu[name].append(1e6 * (cpu_seconds(pids) - cpu0) / max(wrk.last_count, 1))
            runs.errors += failed
    return runs


def policies_sentence(runs: PolicyRuns) -> str:
    n = len(runs.rps["bare"])
    text = (f"The demo's policies (API key, rate limit) against a bare route on the same 1-worker "
            f"gateway ({n} interleaved round{'s' if n > 1 else ''}): {runs.ratio():.2f}x the "
            f"throughput, {runs.ratio('cpu'):.2f}x the worker CPU per request (median of the "
            f"rounds' pairs {runs.paired():.2f}x: {', '.join(f'{r:.2f}' for r in runs.pairs())})")
    if "unloaded" in runs.cpu:
        pairs = runs.pairs(of="bare", to="unloaded")
        text += (f". The bare route against the same route on a gateway with no policies in its "
                 f"config: {runs.paired(of='bare', to='unloaded'):.2f}x the worker CPU per request "
                 f"(median of {', '.join(f'{r:.2f}' for r in pairs)})")
    return text


def paced(urls: dict[str, str], blocks: int, per_block: int = 20,
          pause: float = 0.015) -> dict[str, list[float]]:
    """Latencies (ms) of a client that leaves the gateway idle between requests: one request at a
    time on one keep-alive connection per url, `pause` s before each, in blocks of `per_block`
    alternating between the urls (a busier moment of the machine hits both alike)."""
    conns = {}
    for name, url in urls.items():
        u = urllib.parse.urlsplit(url)
        conns[name] = (http.client.HTTPConnection(u.hostname, u.port, timeout=10), u.path)
    out: dict[str, list[float]] = {name: [] for name in urls}
    try:
        for _ in range(blocks):
            for name, (conn, path) in conns.items():
                for _ in range(per_block):
                    time.sleep(pause)
                    t0 = time.perf_counter()
                    conn.request("GET", path, headers={"x-api-key": BENCH_KEY})
                    r = conn.getresponse()
                    r.read()
                    if r.status != 200:
                        raise RuntimeError(f"{name}: {r.status} from {path}")
                    out[name].append(1000 * (time.perf_counter() - t0))
    finally:
        for conn, _ in conns.values():
            conn.close()
    return out


def idle_ratio(idle: dict[str, list[float]]) -> float:
    return statistics.median(idle["mirrored"]) / statistics.median(idle["bare"])


def mirror_sentence(runs: PolicyRuns, idle: dict[str, list[float]]) -> str:
    n = len(runs.rps["bare"])
    cpu, p50 = runs.pairs(of="mirrored"), runs.pairs("p50", of="mirrored")
    return (f"Every request mirrored (copied after the answer to a catalog v2 instance, which "
            f"answers differently; every difference counted) against the bare route on the same "
            f"1-worker gateway. A client that leaves the gateway idle between requests (15 ms, "
            f"{len(idle['bare'])} requests each): {idle_ratio(idle):.2f}x the median latency. A "
            f"client "
            f"that sends its next request at once, wrk at one connection ({n} interleaved "
            f"round{'s' if n > 1 else ''}): {runs.paired(of='mirrored'):.2f}x the worker CPU per "
            f"request (the copy included; {', '.join(f'{r:.2f}' for r in cpu)}), "
            f"{runs.paired('p50', of='mirrored'):.2f}x the p50 latency "
            f"({', '.join(f'{r:.2f}' for r in p50)})")


def mirror_figures(runs: PolicyRuns, idle: dict[str, list[float]]) -> str:
    return (f"mirror_idle_p50_vs_bare={idle_ratio(idle):.2f} "
            f"mirror_cpu_vs_bare_paired={runs.paired(of='mirrored'):.2f} "
            f"mirror_busy_p50_vs_bare_paired={runs.paired('p50', of='mirrored'):.2f}")


def cpu_seconds(pids: list[int]) -> float:
    ticks = 0
    for pid in pids:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        ticks += int(fields[11]) + int(fields[12])  # utime + stime
    return ticks / os.sysconf("SC_CLK_TCK")


def measure(name: str, url: str, wrk: Wrk, args, pids: list[int] = (), host: str | None = None) -> Result:
    if not args.no_warmup:
        wrk.run(url, args.connections, 1, host)  # warm up connections, pools and caches
    cpu0, t0 = cpu_seconds(pids), time.monotonic()
    rps, p50n, p99n, err = wrk.run(url, args.connections, args.seconds, host)
    cores = (cpu_seconds(pids) - cpu0) / (time.monotonic() - t0) if pids else 0.0
    _, p50, p99, err1 = wrk.run(url, 1, max(args.seconds / 2, 1), host)
    r = Result(name, rps, p50, p99, p50n, p99n, err + err1, cores)
    print(f"  {name:<32} {rps:>8.0f} req/s   p50/p99 @1: {p50:.2f}/{p99:.2f} ms   "
          f"@{args.connections}: {p50n:.1f}/{p99n:.1f} ms" + (f"   {cores:.2f} cores" if pids else "")
          + (f"   ERRORS {r.errors}" if r.errors else ""), flush=True)
    return r


def children_of(pid: int) -> list[int]:
    return forkserver.proxies_of(pid)  # its workers, forked by its fork server or not


FUNCTIONS = 3  # functions called once each from zero instances: the cold starts measured


def bench_config(service_port: int, listen_port: int, admin_port: int, extra_routes: int = 0,
                 tls: tuple[int, Path] | None = None, functions: bool = False,
                 engine: str = "standard", policies: bool = True, mirror: int = 0) -> dict:
    """The gateway under test: the demo's kind of chain (health, a few services, rewrite, a rate
    limit); `tls` (port, certificate directory) adds a TLS listener offering HTTP/2 and HTTP/1.1;
    `functions` the demo's pure function on /fn/ and FUNCTIONS copies of it on /cold0/, /cold1/ ...;
    without `policies`, no policy in the config and none on /catalog/; `mirror` (the port of a
    catalog v2 instance) adds /mirrored/, the bare route with every request mirrored to it and
    both answers compared (mirror_vs_bare: issue 6's 100 % to a deliberately different v2)."""
    routes = [{"name": "health", "match": {"path": {"exact": "/healthz"}}, "direct": {"status": 200}}]
    routes += [{"name": f"svc{i}", "match": {"path": {"prefix": f"/svc{i}/"}}, "forward": {"service": "catalog"}}
               for i in range(extra_routes)]
    routes += [{"name": f"other{i}", "match": {"path": {"prefix": f"/other{i}/"}, "methods": ["GET"]},
                "forward": {"service": "catalog"}} for i in range(ROUTES - 3)]
    routes.append({"name": "bare", "match": {"path": {"prefix": "/bare/"}},
                   "forward": {"service": "catalog", "rewrite": {"prefix": "/"}}})
    routes.append({"name": "catalog", "match": {"path": {"prefix": "/catalog/"}},
                   "forward": {"service": "catalog", "rewrite": {"prefix": "/"}},
                   **({"policies": ["partner", "public"]} if policies else {})})
    if mirror:
        routes.append({"name": "mirrored", "match": {"path": {"prefix": "/mirrored/"}},
                       "forward": {"service": "catalog", "rewrite": {"prefix": "/"}},
                       "policies": ["shadow"]})
    fns = {}
    if functions:
        fn = {"handler": "services.functions.greet:handler", "code": str(Path(__file__).resolve().parents[1])}
        fns = {name: fn for name in ("fn", *(f"cold{i}" for i in range(FUNCTIONS)))}
        routes += [{"name": name, "match": {"path": {"prefix": f"/{name}/"}}, "function": name} for name in fns]
    listeners = [{"name": "bench", "port": listen_port}]
    if tls is not None:
        listeners.append({"name": "bench-tls", "port": tls[0],
                          "tls": {"cert": str(tls[1] / "edge.pem"), "key": str(tls[1] / "edge.key")}})
    services = {"catalog": {"versions": {"v1": {"endpoints": [f"127.0.0.1:{service_port}"]}}}}
    shadow = {}
    if mirror:  # a service of its own: the routes to catalog keep going to v1 alone
        services["catalog-shadow"] = {"versions": {"v2": {"endpoints": [f"127.0.0.1:{mirror}"]}}}
        shadow = {"shadow": {"mirror": {"service": "catalog-shadow", "percent": 100}}}
    return {
        "version": 1,
        "gateway": {"listeners": listeners, "admin": {"port": admin_port}, "engine": engine},
        "services": services,
        "routes": routes,
        "functions": fns,
        "policies": {
            # as the demo: an API key identifies the consumer, whose rate limit is counted
            # (memory storage, never reached here); metrics and the access log are on by default
            "partner": {"api_key": {"consumers": {"bench": {
                "key_sha256": hashlib.sha256(BENCH_KEY.encode()).hexdigest()}}}},
            "public": {"rate_limit": {"second": 1_000_000, "minute": 60_000_000, "key": "consumer"}},
            **shadow,
        } if policies else shadow,
    }


def sidecar_config(inbound: int, admin: int, address: str = "127.0.0.1") -> dict:
    """Two sidecars: a caller's outbound sends `catalog` to catalog's sidecar inbound (static
    endpoint, no mDNS), which sends it to the catalog app."""
    return {
        "version": 1,
        "gateway": {"listeners": [{"name": "unused", "port": admin}]},  # the schema wants one
        "services": {"catalog": {"versions": {"v1": {"endpoints": [f"{address}:{inbound}"]}}}},
    }


def admin_port(config: Path) -> int:
    return yaml.safe_load(config.read_text())["gateway"]["admin"]["port"]


def gw1_rps(results: dict) -> float:
    return max(results["gw1"].rps, 1.0)


def rss_kb(pids: list[int]) -> int:
    total = 0
    for pid in pids:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                total += int(line.split()[1])
    return total


CATEGORIES = [  # leaf frame → where the time goes; first match wins
    ("hook dispatch (addon manager, hook objects)", r"addonmanager|typecheck|contextlib|hooks\.py|handle_hook|hook_task|HookTable|dataclasses\.py"),
    ("task creation and scheduling", r"asyncio/tasks\.py|asyncio_utils|asyncio/locks\.py|create_task|call_soon|create_future"),
    ("mitmproxy layers (state machines, events, commands)", r"mitmproxy/proxy/"),
    ("HTTP/1 parsing and message objects", r"h11|mitmproxy/net/http|mitmproxy/http\.py|<string>|coretypes|multidict"),
    ("mitmesh addons", r"/addons/"),
    ("mitmesh core (routing, upstream pool)", r"/mesh/"),
    ("asyncio transports and selector", r"asyncio/|selectors\.py|socket"),
]


def profile(pid: int, seconds: float, tmp: Path) -> None:
    """py-spy the worker while wrk loads it; print where its CPU goes, by category and function."""
    out = tmp / "profile.txt"
    spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    subprocess.run([spy, "record", "-p", str(pid), "-d", str(max(1, round(seconds))), "-r", "250",
                    "-f", "raw", "-o", str(out), "--nonblocking"], capture_output=True, check=True)
    categories: dict[str, int] = {}
    functions: dict[str, int] = {}
    total = 0
    for line in out.read_text().splitlines():
        stack, _, n = line.rpartition(" ")
        if not stack:
            continue
        total += int(n)
        leaf = stack.split(";")[-1]
        label = next((name for name, rx in CATEGORIES if re.search(rx, leaf)), "other (C code, interpreter)")
        categories[label] = categories.get(label, 0) + int(n)
        fn = re.sub(r"\(.*?(site-packages/|python3\.\d+/|/work/[^/]+/)?([^:()]*):\d+\)", r"(\2)", leaf)
        functions[fn] = functions.get(fn, 0) + int(n)
    print(f"  profile of the 1-worker gateway under load ({total} samples, self time):")
    for label, n in sorted(categories.items(), key=lambda kv: -kv[1]):
        print(f"    {100 * n / total:5.1f}%  {label}")
    print("  top functions:")
    for fn, n in sorted(functions.items(), key=lambda kv: -kv[1])[:12]:
        print(f"    {100 * n / total:5.1f}%  {fn}")


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


class Bench:
    def __init__(self, args):
        self.args = args
        self.tmp = Path(tempfile.mkdtemp(prefix="mitmesh-bench-"))
        self.children: list[procs.Child] = []
        if args.footprint_only:  # no load generator needed
            return
        self.wrk = Wrk(ensure("wrk", "wrk"))
        self.h2load = None if args.no_h2 else H2load(ensure("h2load", "nghttp2-client", "--no-h2"))

    def spawn(self, name: str, argv: list[str], port: int) -> procs.Child:
        child = procs.spawn(name, argv, log_dir=self.tmp)
        self.children.append(child)
        procs.wait_ports(child, [("127.0.0.1", port)], timeout=60)
        return child

    def gateway(self, name: str, service: int, workers: int, extra_routes: int = 0,
                tls_port: int = 0, functions: bool = False,
                engine: str = "standard", policies: bool = True,
                mirror: int = 0) -> tuple[str, procs.Child]:
        port, admin = procs.free_port(), procs.free_port()
        cfg = self.tmp / f"{name}.yaml"
        tls = None
        if tls_port:
            pki.init_edge(self.tmp / "certs")
            tls = (tls_port, self.tmp / "certs")
        cfg.write_text(yaml.safe_dump(bench_config(service, port, admin, extra_routes, tls, functions,
                                                   engine, policies, mirror)))
        child = procs.spawn(name, [procs.tool("mitmesh"), "gateway", "--config", str(cfg),
                                   "--workers", str(workers), "--verbosity", "warn"], log_dir=self.tmp)
        self.children.append(child)
        procs.wait_log(child, "gateway ready", timeout=120)
        return f"http://127.0.0.1:{port}{PATH}", child

    def sidecars(self, app_port: int) -> tuple[str, list[procs.Child]]:
        """The catalog app's sidecar, and a caller's sidecar whose outbound listener wrk talks to."""
        # an instance address of their own, as `mitmesh up` gives each instance: no port of anyone
        # else on 127.0.0.1 can be taken between choosing it and binding it
        address = f"127.{random.randint(1, 254)}.{random.randint(1, 254)}.{random.randint(2, 254)}"
        ports = {k: procs.free_port(address) for k in ("in", "in_out", "in_admin", "c_in", "out", "c_admin", "gw")}
        cfg = self.tmp / "sidecars.yaml"
        cfg.write_text(yaml.safe_dump(sidecar_config(ports["in"], ports["gw"], address)))
        children = []
        for name, service, inbound, outbound, admin in (
                ("sidecar-catalog", "catalog", ports["in"], ports["in_out"], ports["in_admin"]),
                ("sidecar-caller", "caller", ports["c_in"], ports["out"], ports["c_admin"])):
            child = procs.spawn(name, [procs.tool("mitmesh"), "sidecar", "--config", str(cfg), "--service", service,
                                       "--app", f"127.0.0.1:{app_port}", "--address", address,
                                       "--inbound-port", str(inbound),
                                       "--outbound-port", str(outbound), "--admin-port", str(admin),
                                       "--verbosity", "warn"], log_dir=self.tmp)
            self.children.append(child)
            children.append(child)
        for child in children:
            procs.wait_log(child, "sidecar ready", timeout=120)
        return f"http://{address}:{ports['out']}/items/1", children

    def pod_sidecars(self) -> tuple[str, list[procs.Child], Wrk] | None:
        """The same two sidecars in pods (isolation: pod): wrk runs as the caller pod's app and calls
        `http://catalog/items/1` with no proxy setting; nftables hands it to the caller's sidecar."""
        if pods.why_not() is not None:
            print(f"  2 sidecars in pods: skipped ({pods.why_not()})", flush=True)
            return None
        left = pods.stale_of_dead("mmb")  # an earlier bench that was killed (a test's timeout) left its pods
        if left:
            pods.remove(left)
            print(f"  removed {len(left)} namespaces of an earlier bench that did not stop", flush=True)
        self.net = net = pods.Pods(f"mmb{os.getpid():x}", self.tmp / "pods")
        net.create()
        vips = virtual_addresses(["catalog"])
        catalog = net.add("catalog", 8000, 15006, 15001, 15000, vips)
        caller = net.add("caller", 8000, 15006, 15001, 15000, vips)
        cfg = self.tmp / "pod-sidecars.yaml"
        cfg.write_text(yaml.safe_dump(sidecar_config(15006, procs.free_port(), catalog.address)))
        app = procs.spawn("pod-catalog", net.app_argv(catalog, procs.python(
            "-m", "services.catalog", "--host", "127.0.0.1", "--port", "8000")), log_dir=self.tmp, cwd=str(ROOT))
        self.children.append(app)
        children = []
        for name, service, pod in (("pod-sidecar-catalog", "catalog", catalog), ("pod-sidecar-caller", "caller", caller)):
            child = procs.spawn(name, net.sidecar_argv(pod, [
                procs.tool("mitmesh"), "sidecar", "--config", str(cfg), "--service", service,
                "--app", "127.0.0.1:8000", "--address", pod.address, "--capture", "transparent",
                "--verbosity", "warn"]), log_dir=self.tmp)
            self.children.append(child)
            children.append(child)
        for child in children:
            procs.wait_log(child, "sidecar ready", timeout=120)
        return "http://catalog/items/1", children, Wrk(self.wrk.binary, net.app_argv(caller, []))

    def functions(self, base: str) -> tuple[float, Result]:
        """A function's first call from zero instances (median of FUNCTIONS functions, as the client
        sees it: process start and import included), then its warm calls at 1 connection."""
        cold = []
        for i in range(FUNCTIONS):
            t0 = time.perf_counter()
            with urllib.request.urlopen(f"{base}/cold{i}/?name=bench", timeout=30) as r:
                r.read()
            cold.append((time.perf_counter() - t0) * 1000)
        url = f"{base}/fn/?name=bench"
        urllib.request.urlopen(url, timeout=30).read()  # its instance is started: every call after is warm
        _, p50, p99, errors = self.wrk.run(url, 1, max(self.args.seconds / 2, 1))
        warm = Result("function (warm), 1 worker", 0.0, p50, p99, 0.0, 0.0, errors)
        print(f"  {'function, 1 worker':<32} cold start {statistics.median(cold):.1f} ms "
              f"({', '.join(f'{c:.0f}' for c in cold)})   warm p50/p99 @1: {p50:.2f}/{p99:.2f} ms"
              + (f"   ERRORS {errors}" if errors else ""), flush=True)
        return statistics.median(cold), warm

    def engines(self, svc: int, direct_p50: float) -> str:
        """`gateway.engine: fast` against `standard`: two 1-worker gateways up at once, measured in
        turn, round after round (interleaved A/B), so both see the same machine; the ratio of the
        rounds' sums, and each round's figures, for a reader to judge the spread."""
        args = self.args
        gws = {e: self.gateway(f"gateway-{e}", svc, 1, engine=e) for e in ("standard", "fast")}
        rounds = {e: {"rps": [], "new": [], "p50": [], "cpu": []} for e in gws}
        workers = {e: children_of(child.pid) for e, (_, child) in gws.items()}
        for _ in range(args.engine_rounds):
            for e, (url, _) in gws.items():
                if not args.no_warmup:
                    self.wrk.run(url, args.connections, 1)
                cpu0 = cpu_seconds(workers[e])
                rounds[e]["rps"].append(self.wrk.run(url, args.connections, args.seconds)[0])
                # the worker's CPU per request: what the engine costs, whatever the machine's load
                spent = cpu_seconds(workers[e]) - cpu0
                rounds[e]["cpu"].append(1e6 * spent / max(self.wrk.last_count, 1))
                rounds[e]["new"].append(self.wrk.run(url, args.connections, args.seconds, new_connections=True)[0])
                rounds[e]["p50"].append(self.wrk.run(url, 1, max(args.seconds / 2, 1))[1])
        for e, (_, child) in gws.items():
            r = rounds[e]
            print(f"  {'engine: ' + e + ', 1 worker':<32} keep-alive {', '.join(f'{x:.0f}' for x in r['rps'])} req/s   "
                  f"new connections {', '.join(f'{x:.0f}' for x in r['new'])} req/s   "
                  f"p50 @1 {', '.join(f'{x:.2f}' for x in r['p50'])} ms   "
                  f"worker CPU {', '.join(f'{x:.0f}' for x in r['cpu'])} µs/request", flush=True)
            self.stop(child)
        std, fast = rounds["standard"], rounds["fast"]
        return (f"fast_vs_standard={sum(fast['rps']) / sum(std['rps']):.2f} "
                f"fast_newconn_vs_standard={sum(fast['new']) / sum(std['new']):.2f} "
                f"fast_added_p50_ms={statistics.median(fast['p50']) - direct_p50:.2f} "
                f"standard_added_p50_ms={statistics.median(std['p50']) - direct_p50:.2f} "
                f"fast_cpu_per_request_vs_standard={sum(fast['cpu']) / sum(std['cpu']):.2f}")

    def policies(self, url: str, pids: list[int],
                 unloaded: tuple[str, list[int]] | None = None) -> PolicyRuns:
        """policies_vs_bare on the gateway at `url` (its worker `pids`), and the bare route of the
        gateway without policies `unloaded` (url, pids) when given, each round's figures printed."""
        targets = [("policies", url, pids), ("bare", url.replace(PATH, BARE_PATH), pids)]
        if unloaded is not None:
            targets.append(("unloaded", unloaded[0].replace(PATH, BARE_PATH), unloaded[1]))
        runs = policies_vs_bare(self.wrk, targets, self.args)
        labels = {"policies": "demo policies, 1 worker", "bare": "bare route, 1 worker",
                  "unloaded": "bare route, no policies loaded"}
        for name, rps in runs.rps.items():  # in the targets' order
            cpu = runs.cpu[name]
            print(f"  {labels[name]:<32} {sum(rps) / len(rps):>8.0f} req/s   "
                  f"(wrk -c{self.args.connections}: {', '.join(f'{x:.0f}' for x in rps)})   "
                  f"worker CPU {', '.join(f'{x:.0f}' for x in cpu)} µs/request", flush=True)
        if runs.errors:
            print(f"  ERRORS {runs.errors} failed requests on the routes measured", flush=True)
        return runs

    def mirror(self, url: str, pids: list[int],
               admin: int) -> tuple[PolicyRuns, dict[str, list[float]]]:
        """mirror_vs_bare on the gateway at `url` (its worker `pids`, its admin port): the mirrored
        route against the bare one, first with a client that leaves the gateway idle between
        requests (`paced`), then at one connection with wrk (a client that sends its next request
        at once), each printed, and the gateway's count of copies, comparisons and differences."""
        urls = {"mirrored": url.replace(PATH, MIRROR_PATH), "bare": url.replace(PATH, BARE_PATH)}
        if not self.args.no_warmup:
            paced(urls, 1)
        idle = paced(urls, 10 if not self.args.no_warmup else 2)
        runs = policies_vs_bare(self.wrk, [(name, u, pids) for name, u in urls.items()], self.args,
                                connections=1)
        for name in ("mirrored", "bare"):
            p50 = ", ".join(f"{x:.2f}" for x in runs.p50[name])
            cpu = ", ".join(f"{x:.0f}" for x in runs.cpu[name])
            print(f"  {name + ' route, 1 worker, @1':<32} paced p50 "
                  f"{statistics.median(idle[name]):.2f} ms   wrk p50 {p50} ms   "
                  f"worker CPU {cpu} µs/request", flush=True)
        with urllib.request.urlopen(f"http://127.0.0.1:{admin}/status", timeout=10) as r:
            counters = json.load(r)["counters"]
        sent, compared, differed = (counters.get(f"mirror_{k}", 0)
                                    for k in ("requests", "compared", "diffs"))
        print(f"  {'mirror copies':<32} {sent} sent, {compared} compared, {differed} differed",
              flush=True)
        if runs.errors:
            print(f"  ERRORS {runs.errors} failed requests on the routes measured", flush=True)
        return runs, idle

    def mirror_gateway(self, svc: int, **options) -> tuple[str, procs.Child]:
        """The 1-worker gateway "gateway-1" with /mirrored/, and the catalog v2 instance it mirrors
        to (it answers prices in cents: every copy differs)."""
        v2 = procs.free_port()
        self.spawn("catalog-v2", procs.python("-m", "services.catalog", "--port", str(v2),
                                             "--version", "v2"), v2)
        return self.gateway("gateway-1", svc, 1, mirror=v2, **options)

    def stop(self, child: procs.Child) -> None:
        child.stop()
        self.children.remove(child)

    def run(self) -> int:
        args = self.args
        workers = args.workers or supervisor.default_workers()
        svc = procs.free_port()
        self.spawn("catalog", procs.python("-m", "services.catalog", "--port", str(svc)), svc)
        print(f"bench: {machine()}", flush=True)
        if args.footprint_only:
            print(footprint.Footprint(self.tmp, svc).run(), flush=True)
            return 0
        print(f"bench: wrk -t1, {args.connections} connections, {args.seconds:g}s per run, "
              f"GET {PATH} through each target to one demo catalog instance", flush=True)
        if args.policies_only:
            url, gw = self.gateway("gateway-1", svc, 1)
            # the same gateway with no policies in its config: what the bare route pays for them
            plain, plain_gw = self.gateway("gateway-nopolicies", svc, 1, policies=False)
            policy = self.policies(url, children_of(gw.pid), (plain, children_of(plain_gw.pid)))
            print(policies_sentence(policy))
            print(policy.figures() + (" WARNING: failed requests" if policy.errors else ""), flush=True)
            return 0
        if args.mirror_only:
            url, gw = self.mirror_gateway(svc)
            admin = admin_port(self.tmp / "gateway-1.yaml")
            mirrored, idle = self.mirror(url, children_of(gw.pid), admin)
            print(mirror_sentence(mirrored, idle))
            print(mirror_figures(mirrored, idle)
                  + (" WARNING: failed requests" if mirrored.errors else ""), flush=True)
            return 0
        results: dict[str, Result] = {}
        results["direct"] = measure("direct (demo service)", f"http://127.0.0.1:{svc}/items/1", self.wrk, args)
        if args.engines_only:
            print(self.engines(svc, results["direct"].p50_1), flush=True)
            return 0

        port = procs.free_port()
        bare = self.spawn("mitmdump", [procs.tool("mitmdump"), "-q", "--mode",
                                       f"reverse:http://127.0.0.1:{svc}@127.0.0.1:{port}",
                                       "--set", f"confdir={self.tmp / 'mitmproxy'}"], port)
        results["mitmdump"] = measure("mitmdump --mode reverse", f"http://127.0.0.1:{port}/items/1", self.wrk, args)
        self.stop(bare)

        if not args.no_nginx:
            nginx = ensure("nginx", "nginx-light", "--no-nginx")
            port = procs.free_port()
            conf = self.tmp / "nginx.conf"
            conf.write_text(NGINX.format(workers=workers, tmp=self.tmp, service=svc, port=port))
            ng = self.spawn("nginx", [nginx, "-p", str(self.tmp), "-c", str(conf), "-g", "daemon off;"], port)
            results["nginx"] = measure(f"nginx ({workers} workers)", f"http://127.0.0.1:{port}{PATH}", self.wrk, args)
            self.stop(ng)

        url, pair = self.sidecars(svc)
        results["sidecars"] = measure("2 sidecars (outbound → inbound)", url, self.wrk, args,
                                      [c.pid for c in pair], host="catalog")
        for c in pair:
            self.stop(c)
        in_pods = self.pod_sidecars()
        if in_pods:
            url, pair, wrk = in_pods
            results["pod_sidecars"] = measure("2 sidecars in pods (captured)", url, wrk, args, [c.pid for c in pair])
            for c in pair:
                self.stop(c)

        tls_port = procs.free_port()
        url, gw = self.mirror_gateway(svc, tls_port=tls_port, functions=True)
        worker_pids = children_of(gw.pid)
        cold, warm = self.functions(url.removesuffix(PATH))
        results["gw1"] = measure("mitmesh gateway, 1 worker", url, self.wrk, args, worker_pids)
        policy = self.policies(url, worker_pids)
        mirrored, idle = self.mirror(url, worker_pids, admin_port(self.tmp / "gateway-1.yaml"))
        h1 = h2 = None
        h2_errors = 0
        if self.h2load is not None:
            h1, h2, h2_errors = h2_vs_h1(self.h2load, f"https://127.0.0.1:{tls_port}{PATH}", args)
            print(f"  {'HTTP/1.1 over TLS, 1 worker':<32} {sum(h1) / len(h1):>8.0f} req/s   "
                  f"(h2load --h1 -c{args.connections}: {', '.join(f'{x:.0f}' for x in h1)})", flush=True)
            print(f"  {'HTTP/2 over TLS, 1 worker':<32} {sum(h2) / len(h2):>8.0f} req/s   "
                  f"(h2load -m1 -c{args.connections}: {', '.join(f'{x:.0f}' for x in h2)})"
                  + (f"   ERRORS {h2_errors}" if h2_errors else ""), flush=True)
        if args.profile:
            load = subprocess.Popen([self.wrk.binary, "-t1", f"-c{args.connections}", "-H", f"x-api-key: {BENCH_KEY}",
                                     f"-d{round(args.seconds) + 3}s", url], stdout=subprocess.DEVNULL)
            time.sleep(1)
            profile(worker_pids[0], args.seconds, self.tmp)
            load.wait()
        before = rss_kb(worker_pids)  # after the warm-up and measured runs above
        sent = 0
        while sent < args.requests:  # timed runs sized from the measured rate, until enough were sent
            self.wrk.run(url, args.connections, (args.requests - sent) / gw1_rps(results) * 1.05 + 1)
            sent += self.wrk.last_count
        after = rss_kb(worker_pids)
        growth = 100.0 * (after - before) / before
        print(f"  RSS of 1 worker: {before / 1024:.1f} MiB before, {after / 1024:.1f} MiB after "
              f"{sent:,} more requests: {growth:+.1f}%", flush=True)
        self.stop(gw)

        url, gw = self.gateway(f"gateway-{workers}", svc, workers)
        results["gwN"] = measure(f"mitmesh gateway, {workers} workers", url, self.wrk, args, children_of(gw.pid))
        self.stop(gw)

        url, gw = self.gateway("gateway-10k", svc, 1, extra_routes=10_000)
        results["gw10k"] = measure("mitmesh, 1 worker, 10k routes", url, self.wrk, args)
        self.stop(gw)

        engines = self.engines(svc, results["direct"].p50_1)

        base = results["mitmdump"].rps
        print()
        print(f"| target | req/s @{args.connections} | vs mitmdump | p50 @1 (ms) | p99 @1 (ms) | "
              f"p50 @{args.connections} (ms) | p99 @{args.connections} (ms) |")
        print("|---|---:|---:|---:|---:|---:|---:|")
        for r in results.values():
            print(f"| {r.name} | {r.rps:.0f} | {r.rps / base:.2f}x | {r.p50_1:.2f} | {r.p99_1:.2f} | "
                  f"{r.p50_n:.1f} | {r.p99_n:.1f} |")
        print()
        gw1, gwn = results["gw1"], results["gwN"]
        print(f"RSS growth of 1 worker over {sent:,} requests: {growth:+.1f}% "
              f"({before / 1024:.1f} → {after / 1024:.1f} MiB)")
        print(f"10,000 routes against {ROUTES}: {results['gw10k'].rps / gw1.rps:.2f}x the throughput")
        if gw1.cores and gwn.cores:
            per1, perN = gw1.rps / gw1.cores, gwn.rps / gwn.cores
            print(f"{workers} workers used {gwn.cores:.2f} cores against {gw1.cores:.2f} for 1 worker "
                  f"(wrk and the demo service share the machine); requests per worker CPU-second: "
                  f"{perN:.0f} against {per1:.0f} ({perN / per1:.2f}x)")
        two = results["sidecars"]
        print(f"2 sidecars against the direct call: {two.rps / results['direct'].rps:.2f}x the throughput, "
              f"p50 +{two.p50_1 - results['direct'].p50_1:.2f} ms at 1 connection, "
              f"+{two.p50_n - results['direct'].p50_n:.1f} ms at {args.connections}")
        pod = results.get("pod_sidecars")
        if pod:
            print(f"2 sidecars in pods (the caller's call captured by nftables, the hop over a bridge) against "
                  f"the direct call: {pod.rps / results['direct'].rps:.2f}x the throughput, p50 "
                  f"+{pod.p50_1 - results['direct'].p50_1:.2f} ms at 1 connection, "
                  f"+{pod.p50_n - results['direct'].p50_n:.1f} ms at {args.connections}; on loopback: "
                  f"{two.rps / results['direct'].rps:.2f}x")
        if h1 and h2 and sum(h1) > 0:  # h2load may measure 0 req/s when the machine is saturated
            print(f"HTTP/2 against HTTP/1.1 on the TLS listener of 1 worker, same route, h2load for both "
                  f"({len(h1)} interleaved round{'s' if len(h1) > 1 else ''}): {sum(h2) / sum(h1):.2f}x the throughput")
        print(policies_sentence(policy))
        print(mirror_sentence(mirrored, idle))
        errors = (sum(r.errors for r in results.values()) + h2_errors + warm.errors + policy.errors
                  + mirrored.errors)
        if errors:
            print(f"WARNING: {errors} failed requests during the runs")
        print(f"gateway_vs_mitmdump={gw1.rps / base:.2f} workers_scaling={gwn.rps / gw1.rps:.2f} "
              f"added_p50_ms={gw1.p50_1 - results['direct'].p50_1:.2f} rss_growth_pct={growth:.1f} "
              f"sidecars_added_p50_ms={two.p50_1 - results['direct'].p50_1:.2f} "
              + policy.figures()
              + " " + mirror_figures(mirrored, idle)
              + (f" h2_vs_h1={sum(h2) / sum(h1):.2f}" if h1 and h2 and sum(h1) > 0 else "")
              + (f" pod_sidecars_added_p50_ms={pod.p50_1 - results['direct'].p50_1:.2f}" if pod else "")
              + f" function_cold_ms={cold:.1f} function_warm_p50_ms={warm.p50_1:.2f} {engines}", flush=True)
        return 0

    def close(self) -> None:
        for c in reversed(self.children):
            c.stop()
        if getattr(self, "net", None) is not None:
            self.net.close()
        shutil.rmtree(self.tmp, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="mitmesh bench", description=__doc__.split("\n\n")[0])
    p.add_argument("--seconds", type=float, default=5.0, help="duration of each measured run (default 5)")
    p.add_argument("--connections", type=int, default=32, help="connections for throughput (default 32)")
    p.add_argument("--workers", type=int, default=0, help="workers for the N-worker run (default: cores)")
    p.add_argument("--requests", type=int, default=100_000, help="requests for the RSS check (default 100,000)")
    p.add_argument("--no-nginx", action="store_true", help="skip the nginx reference")
    p.add_argument("--no-h2", action="store_true",
                   help="skip HTTP/2 against HTTP/1.1 (h2_vs_h1; needs h2load, Debian: nghttp2-client)")
    p.add_argument("--no-warmup", action="store_true", help="skip the 1 s warm-up runs (figures get worse)")
    p.add_argument("--profile", action="store_true", help="also py-spy the 1-worker gateway under load")
    p.add_argument("--engine-rounds", type=int, default=3,
                   help="interleaved rounds of gateway.engine fast against standard (default 3)")
    p.add_argument("--policy-rounds", type=int, default=3,
                   help="interleaved rounds of the demo's policies against a bare route (default 3)")
    p.add_argument("--policies-only", action="store_true",
                   help="measure only policies_vs_bare on a 1-worker gateway, and its bare route against "
                        "a gateway with no policies (policies_vs_bare=... bare_cpu_vs_unloaded_paired=...)")
    p.add_argument("--mirror-only", action="store_true",
                   help="measure only a route whose every request is mirrored against a bare "
                        "route on a 1-worker gateway (mirror_idle_p50_vs_bare=...)")
    p.add_argument("--engines-only", action="store_true",
                   help="measure only the direct service and the two engines (fast_vs_standard=...)")
    p.add_argument("--footprint-only", action="store_true",
                   help="measure only the sidecar footprint: sidecar_private_mb, sidecar_start_ms, "
                        "standalone_sidecar_rss_mb, standalone_sidecar_anon_mb (docs/performance.md)")
    bench = Bench(p.parse_args(argv))
    try:
        return bench.run()
    finally:
        bench.close()
