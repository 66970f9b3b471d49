"""`mitmesh config push|history|rollback`: config revisions in etcd, validated before they are stored."""

from __future__ import annotations

import asyncio
import datetime as dt
import os
from pathlib import Path

from discovery.etcdapi import Etcd, EtcdError

from .config.store import Location, Revision, Store, parse_location
from .errors import BAD_INPUT, CommandError
from .state import build_text

STORE_HELP = ("etcd://HOST:PORT[,HOST:PORT]/MESH, as proxies name it in mesh_config (default "
              "$MITMESH_STORE, else etcd://127.0.0.1:2379 and, on push, the file's mesh.id)")


def location(text: str | None, mesh: str | None = None) -> Location:
    text = text or os.environ.get("MITMESH_STORE") or "etcd://127.0.0.1:2379"
    if mesh is not None and text.count("/") == 2:  # no mesh id given: the pushed file's
        text = f"{text.rstrip('/')}/{mesh}"
    try:
        loc = parse_location(text)
    except ValueError as e:
        raise CommandError(f"--store: {e}", BAD_INPUT) from None
    if mesh is not None and loc.mesh != mesh:
        raise CommandError(f"--store names mesh {loc.mesh!r} but the config's mesh.id is {mesh!r}",
                           BAD_INPUT)
    return loc


def validated(file: str) -> tuple[str, str]:
    """(text, mesh id) of a config that builds as a proxy would build it; raises ConfigError."""
    path = Path(file)
    if not path.is_file():
        raise CommandError(f"{file}: no such file", BAD_INPUT)
    text = path.read_text()
    return text, build_text(text, path.name).config.mesh.id


def describe(rev: Revision, current: dict) -> str:
    marks = []
    if current.get("revision") == rev.revision:
        marks.append("current")
    canary = current.get("canary") or {}
    if canary.get("revision") == rev.revision:
        marks.append(f"canary on {', '.join(canary.get('proxies', []))}")
    when = dt.datetime.fromtimestamp(rev.pushed_at, dt.UTC).strftime("%Y-%m-%d %H:%M:%S")
    note = rev.message or (f"rollback to {rev.rollback_of}" if rev.rollback_of else "")
    return (f"{'*' if 'current' in marks else ' '} {rev.revision:>4}  {rev.digest}  {when}  {rev.file}"
            f"{'  ' + note if note else ''}{'  (' + '; '.join(marks) + ')' if marks else ''}")


async def _with_store(loc: Location, work):
    etcd = Etcd(list(loc.endpoints))
    try:
        return await work(Store(etcd, loc.mesh))
    except EtcdError as e:
        raise CommandError(f"{loc}: {e}") from None
    finally:
        await etcd.close()


def push(args) -> int:
    text, mesh = validated(args.file)  # a ConfigError ends here: nothing is stored
    loc = location(args.store, mesh)
    rev = asyncio.run(_with_store(loc, lambda s: s.push(text, Path(args.file).name, args.message or "")))
    print(f"{args.file}: ok\nrevision {rev.revision} ({rev.digest}) stored in {loc}; every proxy applies it")
    return 0


def history(args) -> int:
    loc = location(args.store)

    async def work(store: Store):
        return await store.history(), await store.current()
    revs, current = asyncio.run(_with_store(loc, work))
    if not revs:
        print(f"{loc}: no config pushed yet")
        return 0
    print(f"  {'REV':>4}  DIGEST        PUSHED (UTC)         FILE")
    for rev in revs:
        print(describe(rev, current))
    return 0


def rollback(args) -> int:
    loc = location(args.store)

    async def work(store: Store) -> Revision:
        old = await store.get(args.revision)
        if old is None:
            raise CommandError(f"{loc}: no revision {args.revision} (see `mitmesh config history`)", BAD_INPUT)
        return await store.push(old.text, old.file, f"rollback to {old.revision}", rollback_of=old.revision)
    rev = asyncio.run(_with_store(loc, work))
    print(f"revision {rev.revision} ({rev.digest}) = revision {args.revision}, stored in {loc}; "
          f"every proxy applies it")
    return 0


def add_parser(sub) -> None:
    c = sub.add_parser("config", help="config revisions in etcd: push, history, rollback, rollout")
    csub = c.add_subparsers(dest="config_command", required=True)
    p = csub.add_parser("push", help="validate a config file and store it as the next revision; "
                                     "every proxy reading etcd applies it")
    p.add_argument("file", metavar="FILE")
    p.add_argument("-m", "--message", default="", help="a note kept with the revision")
    p.add_argument("--store", default=None, help=STORE_HELP)
    p.set_defaults(func=push)
    h = csub.add_parser("history", help="list the stored revisions; * marks the one proxies run")
    h.add_argument("--store", default=None, help=STORE_HELP)
    h.set_defaults(func=history)
    r = csub.add_parser("rollback", help="store revision REV again as the next revision, for every proxy")
    r.add_argument("revision", type=int, metavar="REV")
    r.add_argument("--store", default=None, help=STORE_HELP)
    r.set_defaults(func=rollback)
