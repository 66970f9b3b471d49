"""`mitmesh record` and `mitmesh replay`: production traffic turned into a regression test.

record: asks each proxy's admin listener to save its flows for a while, then merges the files.
replay: sends recorded requests to another cluster and lists the responses that differ. An
endpoint under mTLS (its service's `mtls` mode, or announced as https) is called as a proxy would:
presenting a workload certificate (`--identity`, default the gateway's) and requiring the service's
SPIFFE ID from the peer.
This module reads mitmproxy's flow format, so it is the second mesh/ module importing mitmproxy.
"""

from __future__ import annotations

import asyncio
import glob
import json
import os
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from mitmproxy import http, io
from mitmproxy.exceptions import FlowReadException

from mesh.security import mtls
from mesh.core import upstream
from mesh.runtime.admin import read_token, token_paths
from mesh.core.mirror import json_differences
from mesh.config import ConfigError, load
from mesh.config.errors import BAD_INPUT, CommandError


# ----------------------------------------------------------------------------------------------
# record


def admins_of(config_path: str) -> list[str]:
    """Admin URLs of the running demo (written by `mitmesh up`), else the config's gateway admin."""
    from tools.launcher import state_dir

    state = state_dir(Path(config_path).resolve()) / "up.json"
    if state.exists():
        return json.loads(state.read_text())["admins"]
    admin = load(config_path).gateway.admin
    return [f"http://{admin.address}:{admin.port}"]


def admin_token(config_path: str, token_file: str | None = None) -> str | None:
    """The admin token `record` presents: from `--token-file`, else the config's token file."""
    if token_file:
        return read_token(Path(token_file))
    try:
        config = load(config_path)
    except ConfigError:
        return None
    return next(filter(None, (read_token(p) for p in token_paths(config_path, config))), None)


def record(admins: list[str], seconds: float, expr: str, out: str, token: str | None = None,
           include_secrets: bool = False) -> int:
    if include_secrets:
        print("record: --include-secrets: credentials are saved in clear; keep the file safe",
              file=sys.stderr)
    folder = Path(out).resolve().parent
    if not folder.is_dir() or not os.access(folder, os.W_OK):
        raise CommandError(f"cannot write {out}: {folder} is not a writable folder", BAD_INPUT)
    started = []
    for admin in admins:
        q = urllib.parse.urlencode({"seconds": seconds, "filter": expr,
                                    **({"include_secrets": "true"} if include_secrets else {})})
        request = urllib.request.Request(f"{admin}/record?{q}", method="POST",
                                         headers={"authorization": f"Bearer {token}"} if token else {})
        try:
            with urllib.request.urlopen(request, timeout=5) as r:
                started.append(json.load(r))
        except urllib.error.HTTPError as e:
            try:
                reason = json.load(e).get("reason")
            except ValueError:
                reason = f"answered {e.code}; is it a mitmesh admin listener?"
            raise CommandError(f"{admin}: {reason}") from None
        except (OSError, ValueError) as e:
            raise CommandError(f"cannot reach the admin listener {admin}: {getattr(e, 'reason', e)}") from None
        print(f"recording at {admin} for {seconds:g}s" + (f" ({expr})" if expr else ""), flush=True)
    time.sleep(seconds + 0.5)  # workers close their files when the recording ends
    count = 0
    with open(os.open(out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "wb") as dst:
        os.fchmod(dst.fileno(), 0o600)  # recordings may hold personal data: owner only
        for control in started:
            for part in sorted(glob.glob(os.path.join(control["dir"], "flows-*.mitm"))):
                with open(part, "rb") as src:
                    data = src.read()
                dst.write(data)
                count += sum(1 for _ in io.FlowReader(open(part, "rb")).stream())
    print(f"wrote {count} flows to {out}")
    return 0


# ----------------------------------------------------------------------------------------------
# replay


@dataclass
class Outcome:
    flow: http.HTTPFlow
    status: int | None = None
    differences: list[str] = field(default_factory=list)
    error: str | None = None


def _normalize(value, ignore: frozenset[str]):
    if isinstance(value, dict):
        return {k: _normalize(v, ignore) for k, v in value.items() if k not in ignore}
    if isinstance(value, list):
        return [_normalize(v, ignore) for v in value]
    return value


def compare(recorded: http.Response, status: int, body: bytes, ignore: frozenset[str]) -> list[str]:
    out = [] if recorded.status_code == status else [f"status: {recorded.status_code} → {status}"]
    try:
        a = _normalize(json.loads(recorded.content or b"null"), ignore)
        b = _normalize(json.loads(body or b"null"), ignore)
    except ValueError:
        if (recorded.content or b"") != body:
            out.append(f"body: {len(recorded.content or b'')} bytes → {len(body)} bytes, different")
        return out
    return out + json_differences(a, b)


@dataclass(frozen=True)
class Target:
    """One endpoint of the cluster replayed against, as discovery (or the config) describes it."""

    host: str
    port: int
    protocol: str = "http"  # https: its sidecar's inbound is under mTLS
    identity: str | None = None  # the SPIFFE ID announced for it


def read_flows(file: str) -> list:
    try:
        with open(file, "rb") as f:
            return list(io.FlowReader(f).stream())
    except FileNotFoundError:
        raise CommandError(f"{file}: no such file (`mitmesh record -o {file}` makes one)", BAD_INPUT) from None
    except OSError as e:
        raise CommandError(f"{file}: {e.strerror}", BAD_INPUT) from None
    except FlowReadException as e:
        raise CommandError(f"{file}: not a mitmproxy flow file ({e})", BAD_INPUT) from None


def admin_status(admin: str) -> dict:
    """An admin listener's /status, or a one-line CommandError naming the URL."""
    try:
        with urllib.request.urlopen(f"{admin}/status", timeout=5) as r:
            return json.load(r)
    except urllib.error.HTTPError as e:
        raise CommandError(f"{admin}/status answered {e.code}; is {admin} a mitmesh admin listener?") from None
    except (OSError, ValueError) as e:
        reason = getattr(e, "reason", e)
        raise CommandError(f"cannot reach the admin listener {admin}: {reason}") from None


def endpoints_of(cluster: str, status: dict | None, config_path: str | None) -> list[Target]:
    """The cluster's healthy endpoints as a running proxy's /status lists them, else the config's
    static ones."""
    if status is not None:
        known = status.get("clusters", {})
        if cluster not in known:
            raise CommandError(f"the admin listener knows no cluster {cluster}; it knows "
                               f"{', '.join(known)}", BAD_INPUT)
        eps = [e for e in known[cluster]["endpoints"] if e.get("healthy", True)]
        return [Target(e["address"].rpartition(":")[0], int(e["address"].rpartition(":")[2]),
                       e.get("protocol") or "http", e.get("identity")) for e in eps]
    service, _, version = cluster.partition("/")
    if config_path is None:
        raise CommandError("no ./mesh.yaml here: name the config with --config FILE, or a running "
                           "gateway with --admin URL", BAD_INPUT)
    config = load(config_path)
    try:
        return [Target(e.address, e.port) for e in config.services[service].versions[version].endpoints]
    except KeyError:
        raise CommandError(f"{config_path} has no cluster {cluster}", BAD_INPUT) from None


def config_of(given: str | None, status: dict | None) -> str | None:
    """The config replay reads (static endpoints, mTLS certificates): --config, else ./mesh.yaml,
    else the file the running gateway behind --admin serves (so replay works from any folder)."""
    if given is not None:
        if not Path(given).is_file():
            raise CommandError(f"config {given} does not exist", BAD_INPUT)
        return given
    if Path("mesh.yaml").is_file():
        return "mesh.yaml"
    served = ((status or {}).get("config") or {}).get("file")
    return served if served and Path(served).is_file() else None


def upstreams_of(config_path: str | None, identity: str | None) -> mtls.Upstreams:
    """How replay calls mTLS endpoints: the config's mTLS services and the workload certificate of
    `identity` (default the config's gateway.identity); without a config, only announced https."""
    if config_path is None:
        return mtls.Upstreams(missing="no config to find workload certificates in (--config FILE)")
    path = Path(config_path)
    config = load(path)
    me = identity or config.gateway.identity
    wanted = frozenset(n for n, svc in config.services.items() if svc.mtls != "DISABLE")
    cert, key, ca = mtls.workload_files(str(path.resolve().parent), config.mesh.identity.dir, me)
    client, missing = None, ""
    try:
        client = mtls.CertStore().client(cert, key, ca)
    except (OSError, ValueError) as e:
        missing = f"cannot load the workload certificate of {me} ({e}); `mitmesh certs issue {me}` makes one"
    return mtls.Upstreams(wanted, client, config.mesh.trust_domain, config.mesh.namespace, missing)


async def _replay(flows: list[http.HTTPFlow], targets: list[Target], ignore: frozenset[str],
                  concurrency: int = 8, tls: list[tuple | None] | None = None) -> list[Outcome]:
    """`tls[i]`: (client context, required peer SPIFFE ID) for targets[i], or None for plaintext."""
    pool = upstream.Pool()
    outcomes = [Outcome(f) for f in flows]
    sem = asyncio.Semaphore(concurrency)
    tls = tls or [None] * len(targets)

    async def one(i: int, o: Outcome):
        t, mutual = targets[i % len(targets)], tls[i % len(targets)]
        req = o.flow.request
        target = o.flow.metadata.get("mitmesh.upstream_path") or req.path
        headers = upstream.request_headers(req.headers.fields, (req.host_header or t.host).encode())
        async with sem:
            try:
                resp = await pool.request(t.host, t.port, req.data.method, target.encode(), headers,
                                          req.raw_content or b"", timeout=15,
                                          ssl=mutual[0] if mutual else None,
                                          peer_identity=mutual[1] if mutual else None)
            except upstream.UpstreamError as e:
                o.error = f"{e.kind}: {e}"
                return
        o.status = resp.status
        o.differences = compare(o.flow.response, resp.status, resp.body, ignore)

    await asyncio.gather(*(one(i, o) for i, o in enumerate(outcomes)))
    await pool.close()
    return outcomes


def replay(file: str, against: str, *, only: str | None, admin: str | None, config_path: str | None,
           ignore: frozenset[str], identity: str | None = None) -> int:
    if "/" not in against.strip("/"):
        raise CommandError(f"expected a cluster as SERVICE/VERSION such as catalog/v2 (got {against!r})",
                           BAD_INPUT)
    flows = [fl for fl in read_flows(file) if isinstance(fl, http.HTTPFlow) and fl.response is not None]
    if only:
        flows = [fl for fl in flows if fl.metadata.get("mitmesh.cluster") == only]
    if not flows:
        print(f"replay: no recorded responses in {file}" + (f" from {only}" if only else ""))
        return 1
    status = admin_status(admin) if admin else None
    config_path = config_of(config_path, status)
    targets = endpoints_of(against, status, config_path)
    if not targets:
        print(f"replay: cluster {against} has no endpoint", file=sys.stderr)
        return 1
    try:
        upstreams = upstreams_of(config_path, identity)
        service = against.partition("/")[0]
        tls = [upstreams.plan(service, t.protocol, t.identity) for t in targets]
    except mtls.NoMtls as e:
        print(f"replay: {against}: {e}", file=sys.stderr)
        return 1
    if any(tls):
        me = identity or (load(config_path).gateway.identity if config_path else "?")
        print(f"replaying over mTLS as {upstreams.identity(me)}"
              + (f" (certificates of {config_path})" if config_path != "mesh.yaml" else ""), flush=True)
    outcomes = asyncio.run(_replay(flows, targets, ignore, tls=tls))
    differ = [o for o in outcomes if o.differences]
    failed = [o for o in outcomes if o.error]
    for o in differ + failed:
        req = o.flow.request
        rid = o.flow.metadata.get("mitmesh.request_id", "")
        print(f"{'DIFF' if o.differences else 'FAIL'} {req.method} {req.path} (request {rid})")
        for line in (o.differences[:8] if o.differences else [o.error]):
            print(f"    {line}")
        if len(o.differences) > 8:
            print(f"    and {len(o.differences) - 8} more")
    same = len(outcomes) - len(differ) - len(failed)
    print(f"replayed {len(outcomes)} requests against {against}: {same} same, {len(differ)} differ, "
          f"{len(failed)} failed (ignoring {', '.join(sorted(ignore)) or 'nothing'})")
    return 1 if differ or failed else 0
