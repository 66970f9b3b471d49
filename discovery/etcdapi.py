"""A small asyncio client of etcd's v3 JSON gateway (kv, leases, watch) over aiohttp.

Why the gateway and not a gRPC client: see docs/howto/etcd.md (no grpcio/protobuf next to
mitmproxy and OpenTelemetry, and the few calls mitmesh makes are plain JSON). Keys and values are
str here; the gateway wants them base64. Several endpoints may be given: a call goes to the first
that answers, so one lost member of a cluster changes nothing.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, AsyncIterator, Awaitable, Callable

if TYPE_CHECKING:
    import aiohttp

    from .etcdtls import EtcdTls

from .etcdwire import EtcdError, LeaseLost, b64, parse_endpoints, unb64  # noqa: F401  (callers import them from here too)

log = logging.getLogger("mitmesh.etcd")


@dataclass(frozen=True, slots=True)
class KeyValue:
    key: str
    value: str
    mod_revision: int
    lease: int = 0


@dataclass(frozen=True, slots=True)
class WatchEvent:
    kind: str  # "put" or "delete"
    kv: KeyValue
    revision: int


def prefix_end(prefix: str) -> str:
    """The range end that selects every key starting with `prefix` (etcd's convention)."""
    raw = bytearray(prefix.encode())
    raw[-1] += 1
    return raw.decode("latin-1")


def _kv(d: dict) -> KeyValue:
    return KeyValue(unb64(d.get("key")), unb64(d.get("value")), int(d.get("mod_revision", 0)),
                    int(d.get("lease", 0)))


class Etcd:
    """One aiohttp session to a list of etcd endpoints; made inside the running loop. With `tls`,
    the endpoints are https:// and each connection verifies the member against `tls.ca` and
    presents `tls.cert` (etcd's --client-cert-auth)."""

    def __init__(self, endpoints: list[str], timeout: float = 2.0, tls: EtcdTls | None = None):
        global aiohttp  # loaded by the first client: a proxy without etcd never imports aiohttp
        import aiohttp
        self.endpoints = list(endpoints)
        self.timeout = timeout
        self.tls = tls
        self._session: aiohttp.ClientSession | None = None
        self._preferred = 0  # the endpoint that answered last
        self.cluster_id: str | None = None  # the etcd cluster's, from the last reply's header

    def _get(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=16))
        return self._session

    def _ssl(self):
        """The context for a new connection (rebuilt when the certificate was renewed)."""
        if self.tls is None:
            return True  # aiohttp's default; plain http:// endpoints never use it
        try:
            return self.tls.context()
        except ValueError as e:
            raise EtcdError(str(e)) from None

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def call(self, path: str, body: dict, timeout: float | None = None) -> dict:
        """POST /v3/<path> to the first endpoint that answers, waiting at most `timeout` (the
        client's by default) for each; raises EtcdError when none does."""
        errors = []
        n = len(self.endpoints)
        ssl = self._ssl()
        for i in range(n):
            idx = (self._preferred + i) % n
            url = f"{self.endpoints[idx]}/v3/{path}"
            try:
                async with self._get().post(url, json=body, ssl=ssl,
                                            timeout=aiohttp.ClientTimeout(total=timeout or self.timeout)) as r:
                    data = await r.json(content_type=None)
            except (aiohttp.ClientError, asyncio.TimeoutError, ValueError) as e:
                errors.append(f"{self.endpoints[idx]}: {e.__class__.__name__} {e}".strip())
                continue
            if "error" in data and "header" not in data:
                message = data.get("message") or data["error"]
                if "lease not found" in message:
                    raise LeaseLost(message)
                # no leader / timeouts are a member's trouble: another member may do better
                errors.append(f"{self.endpoints[idx]}: {message}")
                continue
            self._preferred = idx
            self.cluster_id = str((data.get("header") or {}).get("cluster_id") or "") or None
            return data
        raise EtcdError("; ".join(errors) or "no etcd endpoint")

    # kv

    async def put(self, key: str, value: str, lease: int = 0) -> int:
        body = {"key": b64(key), "value": b64(value)}
        if lease:
            body["lease"] = str(lease)
        return int((await self.call("kv/put", body))["header"]["revision"])

    async def get(self, key: str) -> KeyValue | None:
        kvs = (await self.call("kv/range", {"key": b64(key)})).get("kvs") or []
        return _kv(kvs[0]) if kvs else None

    async def get_prefix(self, prefix: str) -> tuple[list[KeyValue], int]:
        """Every key under `prefix`, and the store's revision they were read at."""
        data = await self.call("kv/range", {"key": b64(prefix), "range_end": b64(prefix_end(prefix))})
        return [_kv(d) for d in data.get("kvs") or []], int(data["header"]["revision"])

    async def get_range(self, key: str, range_end: str) -> list[KeyValue]:
        """Every key from `key` up to, not including, `range_end`."""
        data = await self.call("kv/range", {"key": b64(key), "range_end": b64(range_end)})
        return [_kv(d) for d in data.get("kvs") or []]

    async def delete(self, key: str) -> None:
        await self.call("kv/deleterange", {"key": b64(key)})

    async def create(self, key: str, value: str) -> bool:
        """Put `key` only if it does not exist yet; returns whether it was created."""
        data = await self.call("kv/txn", {
            "compare": [{"key": b64(key), "target": "CREATE", "result": "EQUAL", "create_revision": "0"}],
            "success": [{"request_put": {"key": b64(key), "value": b64(value)}}],
        })
        return bool(data.get("succeeded"))

    # leases

    async def grant(self, ttl: int) -> int:
        return int((await self.call("lease/grant", {"TTL": str(ttl)}))["ID"])

    async def keepalive(self, lease: int, timeout: float | None = None) -> int:
        """Refresh a lease once; returns its TTL, raises LeaseLost when it is gone."""
        data = (await self.call("lease/keepalive", {"ID": str(lease)}, timeout)).get("result") or {}
        ttl = int(data.get("TTL", 0))
        if ttl <= 0:
            raise LeaseLost(f"lease {lease:x} expired")
        return ttl

    async def revoke(self, lease: int) -> None:
        try:
            await self.call("lease/revoke", {"ID": str(lease)})
        except LeaseLost:
            pass

    # watch

    async def watch(self, prefix: str, start_revision: int) -> AsyncIterator[WatchEvent]:
        """Every change under `prefix` from `start_revision` on, until the stream breaks (then
        EtcdError: the caller lists again and resumes)."""
        body = {"create_request": {"key": b64(prefix), "range_end": b64(prefix_end(prefix)),
                                   "start_revision": str(start_revision)}}
        errors = []
        ssl = self._ssl()
        for idx in [self._preferred] + [i for i in range(len(self.endpoints)) if i != self._preferred]:
            url = f"{self.endpoints[idx]}/v3/watch"
            try:
                resp = await self._get().post(url, json=body, timeout=aiohttp.ClientTimeout(
                    total=None, connect=self.timeout, sock_read=None), ssl=ssl)
            except (aiohttp.ClientError, asyncio.TimeoutError) as e:
                errors.append(f"{self.endpoints[idx]}: {e.__class__.__name__} {e}")
                continue
            try:
                async for line in resp.content:
                    if not line.strip():
                        continue
                    msg = json.loads(line)
                    result = msg.get("result")
                    if result is None:
                        raise EtcdError(f"{self.endpoints[idx]}: watch: {msg.get('error') or msg}")
                    if result.get("compact_revision") not in (None, "0"):
                        raise EtcdError(f"watch: revision {start_revision} compacted")
                    revision = int(result["header"]["revision"])
                    for ev in result.get("events") or []:
                        yield WatchEvent("delete" if ev.get("type") == "DELETE" else "put",
                                         _kv(ev["kv"]), revision)
            except (aiohttp.ClientError, asyncio.TimeoutError, ValueError) as e:
                raise EtcdError(f"{self.endpoints[idx]}: watch broke: {e.__class__.__name__} {e}") from None
            finally:
                resp.release()
            raise EtcdError(f"{self.endpoints[idx]}: watch stream ended")
        raise EtcdError("; ".join(errors) or "no etcd endpoint")


class Follower:
    """Runs `follow` (list, then watch; raises EtcdError when it breaks) again and again, and
    probes etcd with a linearizable read: a quiet watch cannot tell a healthy cluster from one
    without quorum. Knows since when etcd is out of reach (`stale_since`)."""

    def __init__(self, etcd: Etcd, follow: Callable[[], Awaitable[None]], what: str,
                 probe_interval: float = 1.0):
        self.etcd = etcd
        self.follow = follow
        self.what = what
        self.probe_interval = probe_interval
        self.stale_since: float | None = None
        self.last_error: str | None = None
        self.synced = asyncio.Event()
        self._follow: asyncio.Task | None = None
        self._probe: asyncio.Task | None = None

    def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._follow = loop.create_task(self._run(), name=f"mitmesh-etcd-{self.what}")
        self._probe = loop.create_task(self._probing(), name=f"mitmesh-etcd-{self.what}-probe")

    async def stop(self) -> None:
        tasks = [t for t in (self._follow, self._probe) if t is not None]
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._follow = self._probe = None

    def status(self) -> dict:
        return {"endpoints": self.etcd.endpoints, "stale": self.stale_since is not None,
                "stale_for": round(time.time() - self.stale_since, 1) if self.stale_since else None,
                "error": self.last_error}

    def in_sync(self) -> None:
        """`follow` calls this once it has listed what it follows."""
        if self.stale_since is not None:
            log.info(f"etcd {self.what}: back after {time.time() - self.stale_since:.1f}s")
        self.stale_since, self.last_error = None, None
        self.synced.set()

    def lost(self, why: str) -> None:
        if self.stale_since is None:
            self.stale_since = time.time()
            log.warning(f"etcd {self.what}: out of reach, serving what it last knew ({why})")
        self.last_error = why

    async def _run(self) -> None:
        while True:
            try:
                await self.follow()
            except EtcdError as e:
                self.lost(str(e))
            except Exception as e:  # a record no check foresaw must not end the following
                log.exception(f"etcd {self.what}: following failed")
                self.last_error = f"internal error: {e!r}"
            await asyncio.sleep(0.5)

    async def _probing(self) -> None:
        while True:
            await asyncio.sleep(self.probe_interval)
            try:
                await self.etcd.call("kv/range", {"key": "Lw==", "count_only": True})
            except EtcdError as e:
                self.lost(str(e))
                if self._follow is not None:  # start over, with another member if one answers
                    self._follow.cancel()
                    self._follow = asyncio.get_running_loop().create_task(self._run())


RETRY_REFRESH = 0.25  # seconds between refreshes of a lease while etcd does not answer


class LeasedKey:
    """One key that lives as long as its owner: put under a lease refreshed every ttl/3, put
    again under a new lease when etcd let the old one expire, deleted at once by `revoke()`."""

    def __init__(self, etcd: Etcd, ttl: int):
        self.etcd = etcd
        self.ttl = ttl
        self.lease = 0
        self._key: str | None = None
        self._value = ""
        self._task: asyncio.Task | None = None

    @property
    def value(self) -> str:
        """What the key was last set to."""
        return self._value

    async def put(self, key: str, value: str) -> None:
        """Set (or change) the key; raises EtcdError when etcd cannot take it now (the keeper
        retries in the background)."""
        if self._key is not None and self._key != key and self.lease:
            await self.revoke()
        self._key, self._value = key, value
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._keep(), name="mitmesh-etcd-lease")
        await self._put()

    async def _put(self) -> None:
        if not self.lease:
            self.lease = await self.etcd.grant(self.ttl)
        try:
            await self.etcd.put(self._key, self._value, self.lease)
        except LeaseLost:
            self.lease = await self.etcd.grant(self.ttl)
            await self.etcd.put(self._key, self._value, self.lease)

    async def _keep(self) -> None:
        # Each refresh waits at most ttl/3 per member, and a failed one is tried again soon: when
        # a lost quorum comes back, the new leader gives every lease a fresh TTL, and one refresh
        # must land within it (a refresh waiting out the client's 2 s on each of three members
        # outlived a 3 s lease that way, and the instance vanished from every proxy for a second).
        delay, failing = self.ttl / 3, False
        while True:
            await asyncio.sleep(delay)
            delay = self.ttl / 3
            try:
                if self.lease:
                    await self.etcd.keepalive(self.lease, timeout=self.ttl / 3)
                else:
                    await self._put()
                if failing:
                    log.info(f"etcd: the lease of {self._key} is refreshed again")
                failing = False
            except LeaseLost:
                log.warning(f"etcd: lease of {self._key} expired (etcd out of reach longer than its "
                            f"TTL); putting it again")
                self.lease, delay = 0, RETRY_REFRESH
            except EtcdError as e:
                if not failing:
                    log.warning(f"etcd: cannot refresh the lease of {self._key} (trying again every "
                                f"{RETRY_REFRESH:g} s): {e}")
                failing, delay = True, RETRY_REFRESH

    async def revoke(self) -> None:
        """Delete the key now (watchers hear it at once), and stop refreshing."""
        if self._task is not None:
            self._task.cancel()
            self._task = None
        if self.lease:
            lease, self.lease = self.lease, 0
            try:
                await self.etcd.revoke(lease)
            except EtcdError as e:
                log.warning(f"etcd: cannot revoke the lease of {self._key} ({e}); it goes within "
                            f"{self.ttl}s")
        self._key = None
