"""The config store in etcd: numbered revisions, and which one each proxy should run.

Keys under `/mitmesh/<mesh>/config/`:
  proxies/<name>/<pid>  each proxy worker, under a lease: role, admin URL, revision run, refusal
  revisions/<n>  one pushed config: its YAML text, digest, file name, time, message (n from 1 up)
  current        {"revision": n, "canary": {"revision": m, "proxies": [names]} | absent}: what
                 proxies run; a proxy named in the canary runs m, every other runs n
Only validated configs are pushed (the caller validates: `mitmesh config push`); a proxy still
validates what it reads, and one that cannot apply a revision keeps its own and says why.
"""

from __future__ import annotations

import hashlib
import json
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import TYPE_CHECKING

from discovery.etcdwire import EtcdError, b64, parse_endpoints, unb64

if TYPE_CHECKING:
    from discovery.etcdapi import Etcd


def config_prefix(mesh: str) -> str:
    return f"/mitmesh/{mesh}/config/"


def revision_key(mesh: str, n: int) -> str:
    return f"{config_prefix(mesh)}revisions/{n:010d}"


def current_key(mesh: str) -> str:
    return f"{config_prefix(mesh)}current"


def proxies_prefix(mesh: str) -> str:
    return f"{config_prefix(mesh)}proxies/"


def proxy_key(mesh: str, proxy: str, pid: int) -> str:
    """Each worker of each proxy says, under a lease, which revision it runs."""
    return f"{proxies_prefix(mesh)}{proxy}/{pid}"


@dataclass(frozen=True)
class Location:
    """Where a proxy reads its config: `etcd://host:port[,host:port...]/<mesh id>`."""

    endpoints: tuple[str, ...]
    mesh: str

    def __str__(self) -> str:
        hosts = ",".join(e.removeprefix("http://") for e in self.endpoints)
        return f"etcd://{hosts}/{self.mesh}"


def parse_location(text: str) -> Location:
    """Raises ValueError naming what is wrong."""
    if not text.startswith("etcd://"):
        raise ValueError(f"expected etcd://HOST:PORT[,HOST:PORT]/MESH (got {text!r})")
    hosts, slash, mesh = text[len("etcd://"):].partition("/")
    if not slash or not mesh or "/" in mesh:
        raise ValueError(f"expected etcd://HOST:PORT[,HOST:PORT]/MESH, the mesh id after the "
                         f"hosts (got {text!r})")
    return Location(tuple(parse_endpoints(hosts)), mesh)


@dataclass(frozen=True)
class Revision:
    revision: int
    text: str
    digest: str
    file: str  # the name it was pushed from: errors and relative paths read as `<file>@r<n>`
    pushed_at: float
    message: str = ""
    rollback_of: int | None = None

    @property
    def label(self) -> str:
        return f"{self.file}@r{self.revision}"

    def to_json(self) -> str:
        return json.dumps({"revision": self.revision, "text": self.text, "digest": self.digest,
                           "file": self.file, "pushed_at": self.pushed_at, "message": self.message,
                           "rollback_of": self.rollback_of})

    @classmethod
    def from_json(cls, value: str) -> Revision:
        d = json.loads(value)
        return cls(int(d["revision"]), d["text"], d["digest"], d["file"], float(d["pushed_at"]),
                   d.get("message", ""), d.get("rollback_of"))


def wanted_revision(current: dict, proxy: str) -> int | None:
    """The revision `proxy` should run, by the `current` record."""
    canary = current.get("canary") or {}
    if canary and proxy in canary.get("proxies", ()):
        return int(canary["revision"])
    return int(current["revision"]) if current.get("revision") else None


class Store:
    """Push, list and select config revisions of one mesh."""

    def __init__(self, etcd: Etcd, mesh: str):
        self.etcd = etcd
        self.mesh = mesh

    async def current(self) -> dict:
        kv = await self.etcd.get(current_key(self.mesh))
        return json.loads(kv.value) if kv else {}

    async def set_current(self, record: dict) -> None:
        await self.etcd.put(current_key(self.mesh), json.dumps(record, sort_keys=True))

    async def get(self, n: int) -> Revision | None:
        kv = await self.etcd.get(revision_key(self.mesh, n))
        return Revision.from_json(kv.value) if kv else None

    async def proxies(self) -> list[dict]:
        """Every proxy worker reading this store, as it reports itself."""
        kvs, _ = await self.etcd.get_prefix(proxies_prefix(self.mesh))
        return [json.loads(kv.value) for kv in kvs]

    async def history(self) -> list[Revision]:
        kvs, _ = await self.etcd.get_prefix(f"{config_prefix(self.mesh)}revisions/")
        return [Revision.from_json(kv.value) for kv in kvs]

    async def add(self, text: str, file: str, message: str = "", rollback_of: int | None = None) -> Revision:
        """Store a (validated) config as the next revision; it runs nowhere until selected."""
        while True:
            revs = await self.history()
            n = (revs[-1].revision if revs else 0) + 1
            rev = Revision(n, text, hashlib.sha256(text.encode()).hexdigest()[:12], file, time.time(),
                           message, rollback_of)
            if await self.etcd.create(revision_key(self.mesh, n), rev.to_json()):
                return rev  # else another push took n meanwhile: count again

    async def push(self, text: str, file: str, message: str = "", rollback_of: int | None = None) -> Revision:
        """Store and select for every proxy (any canary in progress ends)."""
        rev = await self.add(text, file, message, rollback_of)
        await self.set_current({"revision": rev.revision})
        return rev


def fetch_current(location: Location, proxy: str, timeout: float = 3.0) -> Revision:
    """The revision a starting proxy should run, read synchronously (a proxy's first config is
    loaded before its event loop serves). Raises EtcdError saying what is missing or unreachable."""
    errors = []
    for base in location.endpoints:
        def call(key: str) -> str | None:
            req = urllib.request.Request(f"{base}/v3/kv/range", data=json.dumps({"key": b64(key)}).encode(),
                                         headers={"Content-Type": "application/json"})
            with urllib.request.urlopen(req, timeout=timeout) as r:
                kvs = json.load(r).get("kvs") or []
            return unb64(kvs[0].get("value")) if kvs else None
        try:
            current = call(current_key(location.mesh))
            if current is None:
                raise EtcdError(f"{location}: no config pushed yet (run `mitmesh config push FILE "
                                f"--store {location}`)")
            n = wanted_revision(json.loads(current), proxy)
            value = call(revision_key(location.mesh, n)) if n else None
            if value is None:
                raise EtcdError(f"{location}: revision {n} is selected but not stored")
            return Revision.from_json(value)
        except (OSError, urllib.error.URLError, ValueError) as e:
            errors.append(f"{base}: {e}")
    raise EtcdError(f"{location}: cannot read the config: {'; '.join(errors)}")


def is_location(spec: str) -> bool:
    return spec.startswith("etcd://")


def load_any(spec: str, proxy: str):
    """The MeshConfig a proxy starts with: from a file, or the revision etcd selects for it (the
    supervisor binds its listeners before any worker runs)."""
    from mesh.config import load, load_text

    if not is_location(spec):
        return load(spec)
    rev = fetch_current(parse_location(spec), proxy)
    return load_text(rev.text, rev.label)
