"""`mitmesh record` and `mitmesh replay`: production traffic turned into a regression test.

record: asks each proxy's admin listener to save its flows for a while, then merges the files.
replay: sends recorded requests to another cluster and lists the responses that differ.
This module reads mitmproxy's flow format, so it is the second mesh/ module importing mitmproxy.
"""

from __future__ import annotations

import asyncio
import glob
import json
import os
import sys
import time
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from mitmproxy import http, io

from . import upstream
from .config import ConfigError, load


# ----------------------------------------------------------------------------------------------
# record


def admins_of(config_path: str) -> list[str]:
    """Admin URLs of the running demo (written by `mitmesh up`), else the config's gateway admin."""
    state = Path(config_path).resolve().parent / ".mitmesh" / "up.json"
    if state.exists():
        return json.loads(state.read_text())["admins"]
    admin = load(config_path).gateway.admin
    return [f"http://{admin.address}:{admin.port}"]


def record(admins: list[str], seconds: float, expr: str, out: str) -> int:
    started = []
    for admin in admins:
        q = urllib.parse.urlencode({"seconds": seconds, "filter": expr})
        try:
            with urllib.request.urlopen(urllib.request.Request(f"{admin}/record?{q}", method="POST"),
                                        timeout=5) as r:
                started.append(json.load(r))
        except urllib.error.HTTPError as e:
            print(f"record: {admin}: {json.load(e).get('reason')}", file=sys.stderr)
            return 1
        except OSError as e:
            print(f"record: {admin}: {e}", file=sys.stderr)
            return 1
        print(f"recording at {admin} for {seconds:g}s" + (f" ({expr})" if expr else ""), flush=True)
    time.sleep(seconds + 0.5)  # workers close their files when the recording ends
    count = 0
    with open(out, "wb") as dst:
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


def diff(a, b, path: str = "$") -> list[str]:
    """JSON paths where two documents differ, as `path: a → b`."""
    missing = "(missing)"
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for k in sorted(set(a) | set(b), key=str):
            if k not in a or k not in b:
                out.append(f"{path}.{k}: {json.dumps(a.get(k)) if k in a else missing} → "
                           f"{json.dumps(b.get(k)) if k in b else missing}")
            else:
                out += diff(a[k], b[k], f"{path}.{k}")
        return out
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        return [d for i, (x, y) in enumerate(zip(a, b)) for d in diff(x, y, f"{path}[{i}]")]
    return [] if a == b else [f"{path}: {json.dumps(a)[:80]} → {json.dumps(b)[:80]}"]


def compare(recorded: http.Response, status: int, body: bytes, ignore: frozenset[str]) -> list[str]:
    out = [] if recorded.status_code == status else [f"status: {recorded.status_code} → {status}"]
    try:
        a = _normalize(json.loads(recorded.content or b"null"), ignore)
        b = _normalize(json.loads(body or b"null"), ignore)
    except ValueError:
        if (recorded.content or b"") != body:
            out.append(f"body: {len(recorded.content or b'')} bytes → {len(body)} bytes, different")
        return out
    return out + diff(a, b)


def endpoints_of(cluster: str, admin: str | None, config_path: str) -> list[tuple[str, int]]:
    if admin:
        with urllib.request.urlopen(f"{admin}/status", timeout=5) as r:
            status = json.load(r)
        known = status.get("clusters", {})
        if cluster not in known:
            raise SystemExit(f"replay: {admin} knows no cluster {cluster}; it knows {', '.join(known)}")
        eps = [e["address"] for e in known[cluster]["endpoints"] if e.get("healthy", True)]
        return [(a.rpartition(":")[0], int(a.rpartition(":")[2])) for a in eps]
    service, _, version = cluster.partition("/")
    config = load(config_path)
    try:
        return [(e.address, e.port) for e in config.services[service].versions[version].endpoints]
    except KeyError:
        raise SystemExit(f"replay: {config_path} has no cluster {cluster}") from None


async def _replay(flows: list[http.HTTPFlow], targets: list[tuple[str, int]], ignore: frozenset[str],
                  concurrency: int = 8) -> list[Outcome]:
    pool = upstream.Pool()
    outcomes = [Outcome(f) for f in flows]
    sem = asyncio.Semaphore(concurrency)

    async def one(i: int, o: Outcome):
        host, port = targets[i % len(targets)]
        req = o.flow.request
        target = o.flow.metadata.get("mitmesh.upstream_path") or req.path
        headers = upstream.request_headers(req.headers.fields, (req.host_header or host).encode())
        async with sem:
            try:
                resp = await pool.request(host, port, req.data.method, target.encode(), headers,
                                          req.raw_content or b"", timeout=15)
            except upstream.UpstreamError as e:
                o.error = f"{e.kind}: {e}"
                return
        o.status = resp.status
        o.differences = compare(o.flow.response, resp.status, resp.body, ignore)

    await asyncio.gather(*(one(i, o) for i, o in enumerate(outcomes)))
    await pool.close()
    return outcomes


def replay(file: str, against: str, *, only: str | None, admin: str | None, config_path: str,
           ignore: frozenset[str]) -> int:
    with open(file, "rb") as f:
        flows = [fl for fl in io.FlowReader(f).stream()
                 if isinstance(fl, http.HTTPFlow) and fl.response is not None]
    if only:
        flows = [fl for fl in flows if fl.metadata.get("mitmesh.cluster") == only]
    if not flows:
        print(f"replay: no recorded responses in {file}" + (f" from {only}" if only else ""))
        return 1
    try:
        targets = endpoints_of(against, admin, config_path)
    except ConfigError as e:
        print(e, file=sys.stderr)
        return 1
    if not targets:
        print(f"replay: cluster {against} has no endpoint", file=sys.stderr)
        return 1
    outcomes = asyncio.run(_replay(flows, targets, ignore))
    differ = [o for o in outcomes if o.differences]
    failed = [o for o in outcomes if o.error]
    for o in differ + failed:
        req = o.flow.request
        rid = o.flow.metadata.get("mitmesh.request_id", "")
        print(f"{'DIFF' if o.differences else 'FAIL'} {req.method} {req.path} (request {rid})")
        for line in (o.differences[:8] if o.differences else [o.error]):
            print(f"    {line}")
    same = len(outcomes) - len(differ) - len(failed)
    print(f"replayed {len(outcomes)} requests against {against}: {same} same, {len(differ)} differ, "
          f"{len(failed)} failed (ignoring {', '.join(sorted(ignore)) or 'nothing'})")
    return 1 if differ or failed else 0
