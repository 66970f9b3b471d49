"""`mitmesh config push|history|rollback|rollout`: config revisions in etcd, validated before they
are stored; a rollout runs a revision on canary gateways first and promotes or rolls back by itself."""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import os
import sys
import time
from pathlib import Path

import aiohttp

from discovery.etcdapi import Etcd, EtcdError
from discovery.etcdtls import EtcdTls

from mesh.config.errors import BAD_INPUT, CommandError
from mesh.config.schema import MeshConfig
from mesh.config.types import parse_duration, shown
from mesh.core.build import build_text
from mesh.runtime.store import (Location, PresenceTrust, Revision, Store, check_revision,
                                on_loopback, operator_tls_defaults, parse_location)
from mesh.security import pki, signing
from mesh.security.signing import Signer
from mesh.telemetry.analysis import Sample, Thresholds, parse, verdict

STORE_HELP = ("etcd[s]://HOST:PORT[,HOST:PORT]/MESH, as proxies name it in mesh_config; etcds: "
              "mutual TLS (default $MITMESH_STORE, else etcds://127.0.0.1:2379, the demo's, and, "
              "on push, the file's mesh.id)")
DEFAULT_STORE = "etcds://127.0.0.1:2379"  # what `mitmesh up --control-plane etcd` runs
TLS_HELP = {  # etcdctl's flags, and their environment variables
    "cacert": "with an etcds:// store: CA bundle the members' certificates must chain to "
              "(default $MITMESH_ETCD_CACERT, else certs/mesh-ca.pem)",
    "cert": "with an etcds:// store: client certificate to present (default $MITMESH_ETCD_CERT, "
            "else certs/operator.pem, which `mitmesh up --control-plane etcd` issues)",
    "key": "with an etcds:// store: its private key (default $MITMESH_ETCD_KEY, else "
           "certs/operator.key)",
}


def location(text: str | None, mesh: str | None = None, args=None) -> Location:
    """The store named, with the operator's TLS files when it is etcds://."""
    text = text or os.environ.get("MITMESH_STORE") or DEFAULT_STORE
    if mesh is not None and text.count("/") == 2:  # no mesh id given: the pushed file's
        text = f"{text.rstrip('/')}/{mesh}"
    try:
        loc = parse_location(text)
    except ValueError as e:
        raise CommandError(f"--store: {e}", BAD_INPUT) from None
    if mesh is not None and loc.mesh != mesh:
        raise CommandError(f"--store names mesh {loc.mesh!r} but the config's mesh.id is {mesh!r}",
                           BAD_INPUT)
    given = {k: getattr(args, k, None) for k in TLS_HELP}
    if not loc.secure:
        named = [f"--{k}" for k, v in given.items() if v]
        if named:
            raise CommandError(f"{', '.join(named)}: the store {loc} is plain http; name it "
                               f"etcds://... for mutual TLS", BAD_INPUT)
        if not on_loopback(loc):
            print(f"warning: {loc} is plain http beyond this host: anyone who reaches it can push "
                  f"a config; use etcds:// (docs/howto/etcd.md)", file=sys.stderr)
        return loc
    files = {k: v or operator_tls_defaults()[k] for k, v in given.items()}
    for k, path in files.items():
        if not Path(path).is_file():
            raise CommandError(f"--{k}: no such file (got {path!r}); `mitmesh up --control-plane "
                               f"etcd` issues the demo's operator certificate into certs/",
                               BAD_INPUT)
    return loc.with_tls(EtcdTls(files["cacert"], files["cert"], files["key"],
                                what="--cacert/--cert/--key"))


def validated(file: str) -> tuple[str, MeshConfig]:
    """(text, config) of a config that builds as a proxy would build it; raises ConfigError."""
    path = Path(file)
    if not path.is_file():
        raise CommandError(f"{file}: no such file", BAD_INPUT)
    text = path.read_text()
    return text, build_text(text, path.name).config


def describe(rev: Revision, current: dict, loc: Location | None = None) -> str:
    marks = []
    try:
        if loc is not None:
            check_revision(rev, rev.revision, loc)
    except ValueError:  # a workload's push, say: the operator should know it is there
        marks.append("proxies refuse it: no valid operator signature")
    if current.get("revision") == rev.revision:
        marks.append("current")
    canary = current.get("canary") or {}
    if canary.get("revision") == rev.revision:
        marks.append(f"canary on {', '.join(canary.get('proxies', []))}")
    when = dt.datetime.fromtimestamp(rev.pushed_at, dt.UTC).strftime("%Y-%m-%d %H:%M:%S")
    note = shown(rev.message or (f"rollback to {rev.rollback_of}" if rev.rollback_of else ""))
    return (f"{'*' if 'current' in marks else ' '} {rev.revision:>4}  {shown(rev.digest)}  {when}  "
            f"{shown(rev.file)}"
            f"{'  ' + note if note else ''}{'  (' + '; '.join(marks) + ')' if marks else ''}")


PROBE = b"mitmesh config: may this certificate sign revisions?"


def signer(loc: Location) -> Signer | None:
    """The operator's key, which signs every revision stored in an etcds:// store; refused here
    when proxies would refuse what it signs (a workload's certificate, another CA's, expired)."""
    if not loc.secure or loc.tls is None:
        return None  # a plain etcd:// store: proxies trust whatever it holds (docs/howto/etcd.md)
    try:
        key = Signer.load(loc.tls.cert, loc.tls.key)
        signing.check(PROBE, key.sign(PROBE), key.certificate, loc.tls.ca)
    except ValueError as e:
        raise CommandError(f"--cert/--key: proxies refuse revisions this signs: {e}; sign with "
                           f"the operator certificate (certs/operator.pem)", BAD_INPUT) from None
    return key


async def _with_store(loc: Location, work, sign: bool = False):
    key = signer(loc) if sign else None
    etcd = Etcd(list(loc.endpoints), tls=loc.tls)
    try:
        return await work(Store(etcd, loc.mesh, key, loc))
    except EtcdError as e:
        raise CommandError(f"{loc}: {e}") from None
    finally:
        await etcd.close()


def push(args) -> int:
    text, config = validated(args.file)  # a ConfigError ends here: nothing is stored
    loc = location(args.store, config.mesh.id, args)
    name = Path(args.file).name
    rev = asyncio.run(_with_store(loc, lambda s: s.push(text, name, args.message or ""), sign=True))
    print(f"{args.file}: ok\nrevision {rev.revision} ({rev.digest}) stored in {loc}; every proxy applies it")
    return 0


def history(args) -> int:
    loc = location(args.store, args=args)

    async def work(store: Store):
        current = await store.current()
        return await store.history(), current, await store.selection_problem(current)
    revs, current, problem = asyncio.run(_with_store(loc, work))
    if not revs:
        print(f"{loc}: no config pushed yet")
        return 0
    print(f"  {'REV':>4}  DIGEST        PUSHED (UTC)         FILE")
    for rev in revs:
        print(describe(rev, current, loc))
    if problem:  # proxies keep what they run; one that starts now exits
        print(f"proxies refuse the selection marked *: {shown(problem)}")
    return 0


def rollback(args) -> int:
    loc = location(args.store, args=args)

    async def work(store: Store) -> Revision:
        try:
            old = await store.get(args.revision)
        except (ValueError, TypeError, KeyError):  # written around `mitmesh config`
            raise CommandError(f"{loc}: revision {args.revision} is no revision record (see "
                               f"`mitmesh config history`)", BAD_INPUT) from None
        if old is None:
            raise CommandError(f"{loc}: no revision {args.revision} (see `mitmesh config history`)", BAD_INPUT)
        try:  # signed again below: it must be the operator's (signed then), not a workload's
            check_revision(old, args.revision, loc, signed_at=True)
        except ValueError as e:
            raise CommandError(str(e), BAD_INPUT) from None
        return await store.push(old.text, old.file, f"rollback to {old.revision}", rollback_of=old.revision)
    rev = asyncio.run(_with_store(loc, work, sign=True))
    print(f"revision {rev.revision} ({rev.digest}) = revision {args.revision}, stored in {loc}; "
          f"every proxy applies it")
    return 0


def rollout(args) -> int:
    text, config = validated(args.file)
    loc = location(args.store, config.mesh.id, args)
    t = Thresholds(args.max_error_increase, args.p99_ratio, args.p99_slack, args.min_requests)
    trust = gateway_trust(loc, config)
    return asyncio.run(_with_store(loc, lambda store: Rollout(store, args, t, trust).run(text),
                                   sign=True))


def gateway_trust(loc: Location, config: MeshConfig) -> PresenceTrust | None:
    """Whose presence records the rollout believes: in an etcds:// store, those its gateways
    sign with the workload certificate they present to etcd, for gateway.identity's SPIFFE ID
    (certs/workload/gateway.pem by default); a plain etcd:// store is trusted whole."""
    if not loc.secure or loc.tls is None:
        return None
    m = config.mesh
    return PresenceTrust(loc.tls.ca, frozenset({pki.spiffe_id(m.trust_domain, m.namespace,
                                                               config.gateway.identity)}))


def say(text: str) -> None:
    print(f"rollout: {shown(text)}", flush=True)  # names and refusals come from any workload


async def sample(session: aiohttp.ClientSession, admin: str) -> Sample:
    async with session.get(f"{admin}/metrics", timeout=aiohttp.ClientTimeout(total=5)) as r:
        return parse(await r.text())


class Rollout:
    """Revision N+1 on the canary gateways while the rest runs N; analysis; promote or roll back.
    Which gateways there are, what they run and where their metrics are, it reads from their
    presence records: with `trust` (an etcds:// store) only those a gateway signed."""

    def __init__(self, store: Store, args, t: Thresholds, trust: PresenceTrust | None):
        self.store, self.args, self.t, self.trust = store, args, t, trust
        self.stable: int | None = None

    async def gateways(self, say_why: bool = False) -> list[dict]:
        """The gateways' workers' presence records; any other is left out (said, with say_why)."""
        records = [p for p in await self.store.proxies() if p.get("role") == "gateway"]
        if self.trust is None:
            return records
        kept, left = [], {}
        for p in records:
            try:
                self.trust.check(p, self.store.mesh)
                kept.append(p)
            except ValueError as e:
                left.setdefault(p["proxy"], str(e))
        if say_why:
            for name, why in sorted(left.items()):
                say(f"left out a presence record naming {name}: not a gateway's own: {why}")
        return kept

    async def run(self, text: str) -> int:
        current = await self.store.current()
        self.stable = current.get("revision")
        if self.stable is None:
            raise CommandError("no revision runs yet: `mitmesh config push` the first one")
        problem = await self.store.selection_problem(current)
        if problem:  # a workload's: which revision the proxies run is not known
            raise CommandError(f"proxies refuse the selection stored ({shown(problem)}); select "
                               f"a revision again first: `mitmesh config rollback N`")
        if current.get("canary"):
            raise CommandError(f"revision {current['canary']['revision']} is on canary already; "
                               f"wait for that rollout, or `mitmesh config rollback {self.stable}`")
        gateways = sorted({p["proxy"] for p in await self.gateways(say_why=True)})
        if len(gateways) <= self.args.canary:
            raise CommandError(f"{len(gateways)} gateway(s) read this store ({', '.join(gateways) or 'none'}); "
                               f"a canary of {self.args.canary} needs at least {self.args.canary + 1}")
        canary, rest = gateways[:self.args.canary], gateways[self.args.canary:]
        rev = await self.store.add(text, Path(self.args.file).name, self.args.message or "rollout")
        say(f"stored revision {rev.revision} ({rev.digest}); {len(gateways)} gateways run revision {self.stable}")
        await self.store.set_current({"revision": self.stable,
                                      "canary": {"revision": rev.revision, "proxies": canary}},
                                     rev.revision)
        say(f"canary: revision {rev.revision} on {', '.join(canary)}; baseline: revision {self.stable} "
            f"on {', '.join(rest)}")
        problem = await self._applied(rev.revision, canary)
        if problem:
            return await self._roll_back(rev.revision, problem)
        try:  # an admin URL is a presence record's word, anyone's: a bad one ends in a rollback
            return await self._analyse(rev, canary, rest)
        except (aiohttp.ClientError, asyncio.TimeoutError, ValueError) as e:
            return await self._roll_back(rev.revision, f"cannot read a gateway's metrics: {e!r}")

    async def _analyse(self, rev: Revision, canary: list[str], rest: list[str]) -> int:
        admins = {p["proxy"]: p["admin"] for p in await self.gateways()
                  if isinstance(p.get("admin"), str)}
        async with aiohttp.ClientSession() as session:
            async def group(names: list[str]) -> Sample:
                total = Sample()
                for name in names:
                    if name not in admins:
                        raise ValueError(f"{name} names no admin URL")
                    total = total + await sample(session, admins[name])
                return total
            start_c, start_b = await group(canary), await group(rest)
            say(f"analysis for {self.args.watch:g}s, every {self.args.interval:g}s: error rate and p99 of "
                f"the canary against the baseline")
            began = time.monotonic()
            while True:
                await asyncio.sleep(self.args.interval)
                elapsed = time.monotonic() - began
                final = elapsed >= self.args.watch
                c, b = await group(canary) - start_c, await group(rest) - start_b
                result, why = verdict(c, b, self.t, final)
                say(f"  t+{elapsed:.0f}s {result}: {why}")
                if result == "fail":
                    return await self._roll_back(rev.revision, why)
                if result == "pass":
                    await self.store.set_current({"revision": rev.revision}, rev.revision)
                    say(f"promoted: revision {rev.revision} runs on every proxy")
                    return 0

    async def _applied(self, n: int, canary: list[str], timeout: float = 15.0) -> str | None:
        """None once every worker of the canary gateways runs revision n; else why not."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            workers = [p for p in await self.gateways() if p["proxy"] in canary]
            refused = [p for p in workers if p.get("wanted") == n and p.get("refused")]
            if refused:
                return f"{refused[0]['proxy']} refused it: {refused[0]['refused']}"
            if workers and all(p.get("revision") == n for p in workers):
                say(f"the canary runs revision {n} ({len(workers)} worker(s))")
                return None
            await asyncio.sleep(0.2)
        return f"the canary did not run revision {n} within {timeout:g}s"

    async def _roll_back(self, n: int, why: str) -> int:
        await self.store.set_current({"revision": self.stable}, n)
        say(f"rolled back: {why}")
        say(f"every proxy runs revision {self.stable}; revision {n} stays in the history")
        return 1


def duration(text: str) -> float:
    try:
        value = parse_duration(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a duration > 0 (got {text!r})")
    return value


def store_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--store", default=None, help=STORE_HELP)
    for name, text in TLS_HELP.items():
        p.add_argument(f"--{name}", default=None, metavar="FILE", help=text)


def add_parser(sub) -> None:
    c = sub.add_parser("config", help="config revisions in etcd: push, history, rollback, rollout")
    csub = c.add_subparsers(dest="config_command", required=True)
    p = csub.add_parser("push", help="validate a config file and store it as the next revision; "
                                     "every proxy reading etcd applies it")
    p.add_argument("file", metavar="FILE", help="the config file to validate and store")
    p.add_argument("-m", "--message", default="", help="a note kept with the revision (default none)")
    store_flags(p)
    p.set_defaults(func=push)
    h = csub.add_parser("history", help="list the stored revisions; * marks the one proxies run")
    store_flags(h)
    h.set_defaults(func=history)
    r = csub.add_parser("rollback", help="store revision REV again as the next revision, for every proxy")
    r.add_argument("revision", type=int, metavar="REV", help="the revision to run again (see history)")
    store_flags(r)
    r.set_defaults(func=rollback)
    o = csub.add_parser("rollout", help="run a new revision on canary gateways, compare their error rate "
                                        "and p99 with the rest, then promote it or roll it back")
    o.add_argument("file", metavar="FILE", help="the config file to validate and roll out")
    o.add_argument("--canary", type=int, default=1, help="how many gateways run it first (default 1; "
                                                         "by name order, `mitmesh gateway --name`)")
    o.add_argument("--watch", type=duration, default=60.0, help="the analysis window (default 60s)")
    o.add_argument("--interval", type=duration, default=5.0, help="how often to compare (default 5s); "
                                                                  "a failure rolls back at once")
    o.add_argument("--max-error-increase", type=float, default=0.02,
                   help="canary error rate (5xx, no response) allowed above the baseline's (default 0.02)")
    o.add_argument("--p99-ratio", type=float, default=2.0, help="canary p99 allowed, in times the "
                                                                "baseline's (default 2) ...")
    o.add_argument("--p99-slack", type=duration, default=0.1, help="... or this much above it, whichever "
                                                                   "is larger (default 100ms)")
    o.add_argument("--min-requests", type=int, default=20, help="canary requests needed for a verdict "
                                                                "(default 20; fewer: rolled back)")
    o.add_argument("-m", "--message", default="", help="a note kept with the revision (default: rollout)")
    store_flags(o)
    o.set_defaults(func=rollout)
