"""The config store in etcd: numbered revisions, and which one each proxy should run.

Keys under `/mitmesh/<mesh>/config/`:
  proxies/<name>/<pid>  each proxy worker, under a lease: role, admin URL, revision run, refusal;
                 in an etcds:// store signed by the worker's own workload key, anew every
                 PRESENCE_REFRESH seconds: a rollout believes only a gateway's, and only fresh
  revisions/<n>  one pushed config: its YAML text, digest, file name, time, message (n from 1 up),
                 the operator's signature and certificate (etcds://)
  current        {"revision": n, "canary": {"revision": m, "proxies": [names]} | absent,
                 "latest": the highest revision stored then, "at": time}: what proxies run; a
                 proxy named in the canary runs m, every other runs n. In an etcds:// store
                 signed by the operator too; a proxy refuses one made before a revision the
                 operator stored since, or before the one it follows (a copy of an old one)
Only validated configs are pushed (the caller validates: `mitmesh config push`); a proxy still
validates what it reads, and one that cannot apply a revision keeps its own and says why.
In an etcds:// store every revision carries the operator's signature and certificate, and a proxy
runs none without them (`check_revision`): every workload can write to etcd, only the operator can
sign. A plain etcd:// store is trusted whole, as whoever reaches it can write anything.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import json
import logging
import os
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterable

from discovery.etcdtls import EtcdTls
from discovery.etcdwire import EtcdError, b64, parse_endpoints, unb64
from mesh.config.types import load_json

if TYPE_CHECKING:
    from discovery.etcdapi import Etcd
    from mesh.security.signing import Signer

log = logging.getLogger("mitmesh.config")


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


PRESENCE_REFRESH = 30.0  # a proxy signs its presence record anew this often (etcds://) ...
PRESENCE_MAX_AGE = 120.0  # ... and a rollout believes a record this old at most (clock skew)


PRESENCE = "mitmesh proxy presence"  # what a proxy signs its presence record as
SELECTION = "mitmesh config selection"  # what the operator signs a selection as


def signed_presence(mesh: str, record: dict, signer: Signer) -> dict:
    """`record` with the time it is said at, signed with the proxy's own workload key."""
    from mesh.security.signing import sign_record

    return sign_record(PRESENCE, mesh, {**record, "at": time.time()}, signer)


@dataclass(frozen=True)
class PresenceTrust:
    """Whose presence records `mitmesh config rollout` believes in an etcds:// store: any
    workload can write one, naming itself a gateway with its own admin URL and revision; only a
    record signed by the key of a certificate of the mesh CA (`ca`) for a gateway's SPIFFE ID
    (`gateways`), and said within PRESENCE_MAX_AGE, is a gateway's."""

    ca: str
    gateways: frozenset[str]

    def check(self, record: dict, mesh: str, now: float | None = None) -> None:
        """Raises ValueError saying why `record` is not a gateway's own, fresh word."""
        from mesh.security import signing

        gateways = f"a gateway's ({', '.join(sorted(self.gateways))})"
        signing.check_record(PRESENCE, mesh, record, self.ca,
                             signing.of_identity(self.gateways, gateways))
        at, now = record.get("at"), time.time() if now is None else now
        if isinstance(at, bool) or not isinstance(at, (int, float)) \
                or not abs(now - at) <= PRESENCE_MAX_AGE:
            raise ValueError(f"it was said at {at!r}, not within {PRESENCE_MAX_AGE:g}s of now "
                             f"({now:.0f}): a copy of an old record, or a proxy that is gone")


SCHEMES = {"etcd": "http", "etcds": "https"}  # etcds: mutual TLS to every member
SYNTAX = "etcd[s]://HOST:PORT[,HOST:PORT]/MESH"


@dataclass(frozen=True)
class Location:
    """Where a proxy reads its config: `etcd://host:port[,host:port...]/<mesh id>` (plain http), or
    `etcds://...` (https: the client presents `tls.cert`, checks the members against `tls.ca`)."""

    endpoints: tuple[str, ...]
    mesh: str
    tls: EtcdTls | None = None

    @property
    def secure(self) -> bool:
        return self.endpoints[0].startswith("https://")

    def __str__(self) -> str:
        scheme = "etcds" if self.secure else "etcd"
        hosts = ",".join(e.partition("://")[2] for e in self.endpoints)
        return f"{scheme}://{hosts}/{self.mesh}"

    def with_tls(self, tls: EtcdTls | None) -> Location:
        return dataclasses.replace(self, tls=tls)


def parse_location(text: str) -> Location:
    """Raises ValueError naming what is wrong. An etcds:// location has no TLS files yet: the
    caller adds them (`with_tls`: a proxy's own identity, the command line's --cacert ...)."""
    scheme, sep, rest = text.partition("://")
    if not sep or scheme not in SCHEMES:
        raise ValueError(f"expected {SYNTAX} (got {text!r})")
    hosts, slash, mesh = rest.partition("/")
    if not slash or not mesh or "/" in mesh:
        raise ValueError(f"expected {SYNTAX}, the mesh id after the hosts (got {text!r})")
    return Location(tuple(parse_endpoints(hosts, SCHEMES[scheme])), mesh)


def on_loopback(location: Location) -> bool:
    """Whether every member is on this host: a plain-http store elsewhere is open to the network."""
    from mesh.config.types import loopback

    return all(loopback(urllib.parse.urlsplit(url).hostname or "") for url in location.endpoints)


IDENTITY_ENV = "MITMESH_IDENTITY_DIR"  # where a proxy finds its certificates before its config
TLS_ENV = {"ca": "MITMESH_ETCD_CACERT", "cert": "MITMESH_ETCD_CERT", "key": "MITMESH_ETCD_KEY"}


def identity_dir() -> Path:
    """`$MITMESH_IDENTITY_DIR`, default certs, relative to the working folder."""
    return Path(os.environ.get(IDENTITY_ENV) or "certs")


def _tls_files(client: Callable[[Path], tuple[Path, Path]]) -> dict[str, str]:
    """The mesh CA and a client certificate and key (`client(identity dir)`) in
    `$MITMESH_IDENTITY_DIR` (default certs, relative to the working folder), each one replaced
    by $MITMESH_ETCD_CACERT, $MITMESH_ETCD_CERT or $MITMESH_ETCD_KEY where set."""
    from mesh.security import pki

    directory = identity_dir()
    cert, key = client(directory)
    default = {"ca": pki.mesh_ca_cert(directory), "cert": cert, "key": key}
    return {k: os.environ.get(TLS_ENV[k]) or str(v) for k, v in default.items()}


def identity_files(workload: str) -> dict[str, str]:
    """$MITMESH_ETCD_CERT and $MITMESH_ETCD_KEY naming `workload`'s certificate and key in the
    identity folder (`mitmesh gateway --identity`), so the gateway presents them before its config
    names gateway.identity."""
    from mesh.security import pki

    cert, key = pki.workload_paths(identity_dir(), workload)
    return {TLS_ENV["cert"]: str(cert), TLS_ENV["key"]: str(key)}


def proxy_tls(workload: str) -> EtcdTls:
    """The files a proxy presents to an etcds:// store: its own workload certificate and the mesh
    CA (as an Istio proxy authenticates to istiod), where a config from etcd resolves its paths
    too (`_tls_files`)."""
    from mesh.security import pki

    files = _tls_files(lambda directory: pki.workload_paths(directory, workload))
    return EtcdTls(**files, what=f"the workload certificate of {workload} for etcd")


@dataclass(frozen=True)
class Revision:
    revision: int
    text: str
    digest: str
    file: str  # the name it was pushed from: errors and relative paths read as `<file>@r<n>`
    pushed_at: float
    message: str = ""
    rollback_of: int | None = None
    signature: str = ""  # base64, over `signed_bytes`, by the key of `certificate`
    certificate: str = ""  # PEM: the operator's, which `mitmesh config` presents to etcds://

    @property
    def label(self) -> str:
        return f"{self.file}@r{self.revision}"

    def signed_bytes(self, mesh: str) -> bytes:
        """What the operator signs: the mesh, and every field a proxy applies or shows, the
        text by its whole SHA-256 (the 12-digit digest names a revision, too short to prove one)."""
        return json.dumps({"purpose": "mitmesh config revision", "mesh": mesh,
                           "revision": self.revision,
                           "sha256": hashlib.sha256(self.text.encode()).hexdigest(),
                           "digest": self.digest, "file": self.file, "pushed_at": self.pushed_at,
                           "message": self.message, "rollback_of": self.rollback_of},
                          sort_keys=True, separators=(",", ":")).encode()

    def signed(self, mesh: str, signer: Signer) -> Revision:
        return dataclasses.replace(self, signature=signer.sign(self.signed_bytes(mesh)),
                                   certificate=signer.certificate)

    def to_json(self) -> str:
        return json.dumps({"revision": self.revision, "text": self.text, "digest": self.digest,
                           "file": self.file, "pushed_at": self.pushed_at, "message": self.message,
                           "rollback_of": self.rollback_of, "signature": self.signature,
                           "certificate": self.certificate})

    @classmethod
    def from_json(cls, value: str) -> Revision:
        """Raises ValueError saying why `value` is no revision record: anyone with a mesh
        certificate can write one, so each field must be of its type, each number in range."""
        d = load_json(value)
        if not isinstance(d, dict):
            raise ValueError(f"expected a JSON object (got {value[:80]!r})")
        missing = [k for k in ("text", "digest", "file") if k not in d]
        if missing:
            raise ValueError(f"{missing[0]}: missing")
        for k in ("text", "digest", "file", "message", "signature", "certificate"):
            if not isinstance(d.get(k, ""), str) and not (k in SIGNATURE and d[k] is None):
                raise ValueError(f"{k}: expected a string (got {str(d[k])[:80]!r})")
        if not is_revision_number(d.get("revision")):
            raise ValueError(f"revision: expected a number > 0 (got {d.get('revision')!r})")
        if d.get("rollback_of") is not None and not is_revision_number(d["rollback_of"]):
            raise ValueError(f"rollback_of: expected a revision number (got {d['rollback_of']!r})")
        at = d.get("pushed_at")
        if isinstance(at, bool) or not isinstance(at, (int, float)) or not 0 <= at < LAST_TIME:
            raise ValueError(f"pushed_at: expected a Unix time (got {at!r})")
        return cls(d["revision"], d["text"], d["digest"], d["file"], float(at),
                   d.get("message", ""), d.get("rollback_of"), d.get("signature") or "",
                   d.get("certificate") or "")


SIGNATURE = ("signature", "certificate")  # null in records from before revisions were signed
LAST_TIME = 253402300800  # 10000-01-01: later times do not fit a datetime


def is_revision_number(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 < value < 2**63




def check_revision(rev: Revision, n: int, location: Location, signed_at: bool = False) -> None:
    """Raises ValueError saying why no proxy may run `rev`, read as revision `n` of `location`:
    in an etcds:// store, a signature by the operator's certificate of the mesh CA the proxy
    trusts (`location.tls.ca`), valid now (`signed_at`: when it was pushed, for a rollback);
    in any store, a digest that is its text's (what `history` and /status name it by)."""
    if rev.revision != n:
        raise ValueError(f"{rev.label}: stored as revision {n}, refused (got revision "
                         f"{rev.revision})")
    if location.secure:
        _check_signature(rev, location, signed_at)
    own = hashlib.sha256(rev.text.encode()).hexdigest()[:12]
    if rev.digest != own:  # signed or not, a record whose name is another text's
        raise ValueError(f"{rev.label}: its digest {rev.digest[:40]!r} is not its text's "
                         f"({own}), refused")


def _check_signature(rev: Revision, location: Location, signed_at: bool) -> None:
    if location.tls is None:  # fail closed: an etcds:// store is only ever read with a mesh CA
        raise ValueError(f"{rev.label}: no mesh CA to check its signature against, refused")
    from mesh.security import signing

    at = dt.datetime.fromtimestamp(rev.pushed_at, dt.UTC) if signed_at else None
    try:
        signing.check(rev.signed_bytes(location.mesh), rev.signature, rev.certificate,
                      location.tls.ca, at)
    except ValueError as e:
        again = (" (stored before mitmesh signed revisions, or around `mitmesh config`): push "
                 f"the file again with `mitmesh config push FILE --store {location}`"
                 if not rev.signature else "")
        raise ValueError(f"{rev.label}: not signed by the operator, refused: {e}{again}") from None


def signed_until(rev: Revision) -> float | None:
    """When the certificate that signed `rev` stops being valid (Unix time); None: unsigned."""
    from mesh.security.signing import valid_until

    return valid_until(rev.certificate)


def check_selection(current: object) -> dict:
    """`current` if it is a selection: {"revision": n, "canary": {"revision": m, "proxies":
    [names]}}, the canary optional; raises ValueError (anyone with a mesh certificate writes it)."""
    if not isinstance(current, dict):
        raise ValueError("expected a JSON object")
    if current.get("revision") not in (None, 0) and not is_revision_number(current["revision"]):
        raise ValueError(f"revision: expected a number > 0 (got {current['revision']!r})")
    canary = current.get("canary") or {}
    if not isinstance(canary, dict):
        raise ValueError(f"canary: expected an object (got {canary!r})")
    names = canary.get("proxies", [])
    if not isinstance(names, list) or not all(isinstance(p, str) for p in names):
        raise ValueError(f"canary.proxies: expected a list of names (got {names!r})")
    if canary and not is_revision_number(canary.get("revision")):
        raise ValueError(f"canary.revision: expected a number > 0 (got {canary.get('revision')!r})")
    if "latest" in current and not is_revision_number(current["latest"]):
        raise ValueError(f"latest: expected a revision number (got {current['latest']!r})")
    at = current.get("at", 0)
    if isinstance(at, bool) or not isinstance(at, (int, float)) or not 0 <= at < LAST_TIME:
        raise ValueError(f"at: expected a Unix time (got {at!r})")
    return current


def signed_selection(mesh: str, selection: dict, latest: int, signer: Signer | None) -> dict:
    """`selection` with the highest revision stored when it was made (`latest`) and the time,
    signed by the operator (etcds://): a copy of an older selection is then known as one."""
    from mesh.security.signing import sign_record

    record = {**selection, "latest": latest, "at": time.time()}
    return sign_record(SELECTION, mesh, record, signer) if signer is not None else record


def selected(selection: dict) -> list[int]:
    canary = selection.get("canary") or {}
    return [n for n in (selection.get("revision"), canary.get("revision")) if n]


def check_signed_selection(selection: dict, location: Location) -> None:
    """Raises ValueError saying why no proxy may follow `selection` (a checked structure, as
    `check_selection` passes it) of an etcds:// store: the operator's signature, as on a
    revision, and no revision it selects above the `latest` it names. An older selection the
    operator signed is refused by `selection_refusal`."""
    if not location.secure:
        return
    if location.tls is None:
        raise ValueError("no mesh CA to check its signature against, refused")
    from mesh.security import signing

    try:
        signing.check_record(SELECTION, location.mesh, selection, location.tls.ca)
    except ValueError as e:
        again = (f" (stored before mitmesh signed selections, or around `mitmesh config`): "
                 f"push the file again, or `mitmesh config rollback N --store {location}`"
                 if not selection.get("signature") else "")
        raise ValueError(f"the selection is not signed by the operator, refused: {e}"
                         f"{again}") from None
    latest = selection.get("latest")
    if not is_revision_number(latest) or any(n > latest for n in selected(selection)):
        raise ValueError(f"the selection names revisions {selected(selection)} above its "
                         f"latest {latest!r}, refused")


def revisions_end(mesh: str) -> str:
    """The etcd range end past every key under revisions/."""
    from discovery.etcdapi import prefix_end

    return prefix_end(f"{config_prefix(mesh)}revisions/")


def numbered(kvs: Iterable[tuple[str, str]]) -> list[tuple[int, str]]:
    """(number, value) of the (key, value) pairs read under revisions/ whose key ends in one,
    by number (anyone with a mesh certificate may write other keys there)."""
    found = [(key.rpartition("/")[2], value) for key, value in kvs]
    return sorted((int(n), value) for n, value in found if n.isdigit())


def selection_refusal(selection: dict, above: list[tuple[int, str]],
                      location: Location) -> str | None:
    """Why no proxy may follow `selection` (`check_signed_selection`), given the records stored
    above its `latest` (`numbered`), or None. A revision the operator signed among them means the
    selection was made before it: a copy of an old one (a workload's downgrade), as TUF refuses
    metadata older than what it knows."""
    try:
        check_signed_selection(selection, location)
    except ValueError as e:
        return str(e)
    latest = selection.get("latest") or 0
    for n, value in sorted(above, reverse=True):
        if n <= latest:
            continue
        try:
            check_revision(Revision.from_json(value), n, location)
        except (ValueError, TypeError, KeyError):
            continue  # junk a workload wrote above: no revision, and no proof of anything
        return (f"the selection was made when revision {latest} was the latest, but the "
                f"operator has since stored revision {n}: a copy of an old selection, refused")
    return None


STATE_ENV = "MITMESH_STATE_DIR"  # where a proxy keeps what it trusted last (default certs/state)


@dataclass(frozen=True)
class Floor:
    """The newest selection this host followed from one store (mesh id and etcd cluster id),
    kept in a file, as TUF clients keep the metadata they trusted last: after a restart a copy of
    an older selection is refused too, even when a workload deleted the newer revisions that
    would otherwise show it is older (`selection_refusal`). A host that never followed the store has
    no floor: it trusts the first selection that passes the other checks."""

    path: Path

    @classmethod
    def of(cls, location: Location, cluster: str | None) -> Floor | None:
        if not location.secure or not cluster:
            return None
        directory = Path(os.environ.get(STATE_ENV) or identity_dir() / "state")
        return cls(directory / f"selection-{location.mesh}-{cluster}.json")

    def read(self) -> tuple[int, float] | None:
        try:
            d = json.loads(self.path.read_text())
            return int(d["latest"]), float(d["at"])
        except FileNotFoundError:
            return None
        except (OSError, ValueError, TypeError, KeyError) as e:  # written by no mitmesh
            log.warning(f"{self.path}: ignored ({e!r})")
            return None

    def problem(self, selection: dict) -> str | None:
        floor = self.read()
        made = (selection.get("latest") or 0, selection.get("at", 0))
        if floor is None or made >= floor:
            return None
        return (f"the selection was made before the one this host followed last (latest "
                f"revision {floor[0]} at {floor[1]:.0f}, kept in {self.path}): a copy of an old "
                f"selection, refused; if the store was emptied and filled again, remove that file")

    def raise_to(self, selection: dict) -> None:
        made = (selection["latest"], float(selection.get("at", 0)))
        floor = self.read()
        if floor is not None and made <= floor:
            return
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}")
            tmp.write_text(json.dumps({"latest": made[0], "at": made[1]}))
            tmp.replace(self.path)
        except OSError as e:  # a read-only identity folder: the floor lives as long as the process
            log.warning(f"cannot keep the selection followed in {self.path} ({e}); set "
                        f"${STATE_ENV} to a writable folder")


def wanted_revision(current: object, proxy: str) -> int | None:
    """The revision `proxy` should run, by the `current` record; raises ValueError when that
    is no selection (`check_selection`)."""
    canary = check_selection(current).get("canary") or {}
    if canary and proxy in canary.get("proxies", []):
        return canary["revision"]
    return current.get("revision") or None


class Store:
    """Push, list and select config revisions of one mesh."""

    def __init__(self, etcd: Etcd, mesh: str, signer: Signer | None = None,
                 location: Location | None = None):
        self.etcd = etcd
        self.mesh = mesh
        self.signer = signer  # the operator's key: signs each revision and selection (etcds://)
        self.location = location  # where it is, with the CA that checks signatures (etcds://)

    async def current(self) -> dict:
        """The selection; {} when none is stored, or what is stored is no selection (anyone
        with a mesh certificate can write it, and no proxy follows it): the next push selects."""
        kv = await self.etcd.get(current_key(self.mesh))
        try:
            found = load_json(kv.value) if kv else {}
            return check_selection(found)
        except ValueError:
            return {}

    async def set_current(self, record: dict, latest: int) -> None:
        """Select revisions, `latest` being the highest this caller stored: signed by the
        operator's key where it has one (`signed_selection`)."""
        signed = signed_selection(self.mesh, record, latest, self.signer)
        await self.etcd.put(current_key(self.mesh), json.dumps(signed, sort_keys=True))

    async def selection_problem(self, selection: dict) -> str | None:
        """Why proxies refuse `selection` (`selection_refusal`), or None (also in a plain
        etcd:// store, or a Store not told its location)."""
        location = self.location
        if not selection or location is None or not location.secure:
            return None
        above: list[tuple[int, str]] = []
        if is_revision_number(latest := selection.get("latest")):
            kvs = await self.etcd.get_range(revision_key(self.mesh, latest + 1),
                                            revisions_end(self.mesh))
            above = numbered((kv.key, kv.value) for kv in kvs)
        return selection_refusal(selection, above, location)

    async def get(self, n: int) -> Revision | None:
        kv = await self.etcd.get(revision_key(self.mesh, n))
        return Revision.from_json(kv.value) if kv else None

    async def proxies(self) -> list[dict]:
        """Every proxy worker reading this store, as it reports itself; a record that is no
        JSON object naming its proxy (anyone with a mesh certificate can write one) is left out,
        not an error that stops the operator's rollout."""
        kvs, _ = await self.etcd.get_prefix(proxies_prefix(self.mesh))
        found = []
        for kv in kvs:
            try:
                record = load_json(kv.value)
            except ValueError:
                continue
            if isinstance(record, dict) and isinstance(record.get("proxy"), str):
                found.append(record)
        return found

    async def _records(self) -> list[tuple[int, str]]:
        """(number, stored value) of every record under revisions/, by the number in its key."""
        kvs, _ = await self.etcd.get_prefix(f"{config_prefix(self.mesh)}revisions/")
        return numbered((kv.key, kv.value) for kv in kvs)

    async def history(self) -> list[Revision]:
        """The revisions stored; a record that is none (anyone with a mesh certificate can write
        under revisions/, and no proxy runs such a record) is left out, not an error that stops
        the operator's `history`, `push` and `rollout`."""
        revs = []
        for _, value in await self._records():
            try:
                revs.append(Revision.from_json(value))
            except (ValueError, TypeError, KeyError):
                continue
        return revs

    async def add(self, text: str, file: str, message: str = "", rollback_of: int | None = None) -> Revision:
        """Store a (validated) config as the next revision; it runs nowhere until selected. The
        next number follows the highest key, a record that is no revision included."""
        while True:
            records = await self._records()
            n = (records[-1][0] if records else 0) + 1
            rev = Revision(n, text, hashlib.sha256(text.encode()).hexdigest()[:12], file, time.time(),
                           message, rollback_of)
            if self.signer is not None:
                rev = rev.signed(self.mesh, self.signer)
            if await self.etcd.create(revision_key(self.mesh, n), rev.to_json()):
                return rev  # else another push took n meanwhile: count again

    async def push(self, text: str, file: str, message: str = "", rollback_of: int | None = None) -> Revision:
        """Store and select for every proxy (any canary in progress ends)."""
        rev = await self.add(text, file, message, rollback_of)
        await self.set_current({"revision": rev.revision}, rev.revision)
        return rev


def fetch_current(location: Location, proxy: str, timeout: float = 3.0) -> Revision:
    """The revision a starting proxy should run, read synchronously (a proxy's first config is
    loaded before its event loop serves). Raises EtcdError saying what is missing or unreachable."""
    try:
        context = location.tls.context() if location.tls is not None else None
    except ValueError as e:
        raise EtcdError(f"{location}: {e}") from None
    errors = []
    cluster: list[str] = []  # the etcd cluster's id, from a reply's header: whose floor
    for base in location.endpoints:
        def call(key: str, end: str | None = None) -> list[tuple[str, str]]:
            body = {"key": b64(key), **({"range_end": b64(end)} if end is not None else {})}
            req = urllib.request.Request(f"{base}/v3/kv/range", data=json.dumps(body).encode(),
                                         headers={"Content-Type": "application/json"})
            with urllib.request.urlopen(req, timeout=timeout, context=context) as r:
                data = json.load(r)
            cluster.append(str((data.get("header") or {}).get("cluster_id") or ""))
            return [(unb64(kv.get("key")), unb64(kv.get("value"))) for kv in data.get("kvs") or []]

        def value(key: str) -> str | None:
            found = call(key)
            return found[0][1] if found else None
        try:
            current = value(current_key(location.mesh))
            if current is None:
                raise EtcdError(f"{location}: no config pushed yet (run `mitmesh config push FILE "
                                f"--store {location}`)")
            selection = load_json(current)
            n = wanted_revision(selection, proxy)
            stored = value(revision_key(location.mesh, n)) if n else None
            if stored is None:
                raise EtcdError(f"{location}: revision {n} is selected but not stored")
            rev = Revision.from_json(stored)
            above: list[tuple[int, str]] = []
            if location.secure and is_revision_number(selection.get("latest")):
                above = numbered(call(revision_key(location.mesh, selection["latest"] + 1),
                                      revisions_end(location.mesh)))
        except (OSError, urllib.error.URLError, ValueError, TypeError, KeyError) as e:
            errors.append(f"{base}: {e}")
            continue
        floor = Floor.of(location, cluster[-1] if cluster else None)
        try:
            refused = selection_refusal(selection, above, location)
            if refused:
                raise ValueError(refused)
            older = floor.problem(selection) if floor is not None else None
            if older:
                raise ValueError(older)
            check_revision(rev, n, location)
        except ValueError as e:
            raise EtcdError(f"{location}: {e}") from None
        if floor is not None:
            floor.raise_to(selection)
        return rev
    raise EtcdError(f"{location}: cannot read the config: {'; '.join(errors)}")


def operator_tls_defaults() -> dict[str, str]:
    """What `mitmesh config` presents to an etcds:// store unless --cacert, --cert, --key say:
    $MITMESH_ETCD_CACERT, ... else the mesh CA and the operator certificate `mitmesh up
    --control-plane etcd` issues, in certs/ of the working folder (`_tls_files`)."""
    from mesh.security import pki

    files = _tls_files(pki.operator_paths)
    return {"cacert": files["ca"], "cert": files["cert"], "key": files["key"]}


def is_location(spec: str) -> bool:
    return spec.startswith(("etcd://", "etcds://"))


def proxy_location(spec: str, workload: str) -> Location:
    """The store a proxy reads, with its own certificate when it is etcds://."""
    location = parse_location(spec)
    return location.with_tls(proxy_tls(workload)) if location.secure else location


def load_any(spec: str, proxy: str, workload: str):
    """The MeshConfig a proxy starts with: from a file, or the revision etcd selects for it (the
    supervisor binds its listeners before any worker runs); `workload` names the certificate it
    presents to an etcds:// store."""
    from mesh.config import load, load_text

    if not is_location(spec):
        return load(spec)
    rev = fetch_current(proxy_location(spec, workload), proxy)
    return load_text(rev.text, rev.label)
