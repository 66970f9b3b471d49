"""Watches the config (a file, or the revisions in etcd) and hands each valid change to a
callback; bad edits change nothing."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
from typing import Callable

from discovery.etcdwire import EtcdError
from mesh.config import ConfigError
from mesh.config.files import stamp
from mesh.core.loops import Loop
from mesh.core.state import Snapshot
from mesh.runtime.store import (PRESENCE_REFRESH, Floor, Location, Revision, Store,
                                check_revision, current_key, load_json, proxy_key,
                                signed_presence, signed_until, wanted_revision)
from mesh.security.signing import Signer
from mesh.telemetry import metrics

log = logging.getLogger("mitmesh.config")
PRESENCE_TTL = 5
REFUSED_KEPT = 64  # refusals a proxy remembers, the oldest forgotten first (tried again if chosen)


class Watcher:
    """Polls (mtime, size, inode) every `interval`: portable, and cheap next to a request."""

    def __init__(self, path: str, build: Callable[[str], Snapshot], on_valid: Callable[[Snapshot], None],
                 on_invalid: Callable[[str], None], interval: float = 0.25):
        self.path = path
        self.build = build  # blocking, so it runs in a thread: the loop keeps serving meanwhile
        self.on_valid = on_valid
        self.on_invalid = on_invalid
        self.interval = interval
        self._seen = stamp(path)
        self._loop = Loop("mitmesh-config-watch", self._run)

    def start(self) -> None:
        self._loop.start()

    async def stop(self) -> None:
        await self._loop.stop()

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            now = stamp(self.path)
            if now is None or now == self._seen:
                continue
            # an editor may still be writing: wait until the file holds still for one interval
            await asyncio.sleep(self.interval / 2)
            if stamp(self.path) != now:
                continue
            self._seen = now
            await self.check_now()

    async def check_now(self) -> None:
        await hand_over(lambda: self.build(self.path), self.path, self.on_valid, self.on_invalid)


async def hand_over(make: Callable[[], Snapshot], label: str, on_valid: Callable[[Snapshot], object],
                    on_invalid: Callable[[str], None]) -> bool:
    """Build off the loop; a valid snapshot goes to on_valid (False from it: not applied)."""
    try:
        snap = await asyncio.to_thread(make)
    except ConfigError as e:
        on_invalid(str(e))
        return False
    except Exception as e:  # a bug in compilation must not kill the watcher
        log.exception("config reload failed")
        on_invalid(f"{label}:1: internal error while loading: {e!r}")
        return False
    return on_valid(snap) is not False


# how long before the signing certificate's end a proxy warns: after it, a proxy that starts (a
# restart, a new worker, a new pod) refuses the revision, as TUF clients refuse expired metadata
EXPIRY_WARNING = 14 * 86400


def note_signature(rev: Revision, location: Location) -> float | None:
    """When the operator certificate that signed `rev` (an etcds:// store's) expires: exported as
    mitmesh_config_signature_expiry_timestamp_seconds, and a warning in its last EXPIRY_WARNING
    seconds, the time to push again (`mitmesh config push`, or `rollback N`, which signs anew)."""
    until = signed_until(rev) if location.secure else None
    if until is None:
        return None
    metrics.CONFIG_SIGNED_UNTIL.set(until)
    left = until - time.time()
    if left < EXPIRY_WARNING:
        log.warning(f"config revision {rev.revision} from {location}: its signature's certificate "
                    f"expires in {max(left, 0) / 86400:.1f} days; a proxy that starts after that "
                    f"refuses it: push the config again (mitmesh config push, or rollback "
                    f"{rev.revision}, signs it anew)")
    return until


class EtcdWatcher:
    """Follows the config store: the revision selected for this proxy (by name, for a canary) is
    built and handed to the same callbacks as a file edit. A revision the operator did not sign
    (etcds://), or that does not build or install, is not retried until another is selected; the
    proxy keeps the one it runs."""

    def __init__(self, location: Location, proxy: str, applied: Revision,
                 build_text: Callable[[str, str, str], Snapshot],
                 on_valid: Callable[[Snapshot], object], on_invalid: Callable[[str], None],
                 describe: Callable[[], dict] = dict, probe_interval: float = 1.0):
        self.location = location
        self.proxy = proxy
        self.applied = applied
        self.build_text = build_text  # (text, label, digest) → Snapshot, blocking: run in a thread
        self.on_valid = on_valid
        self.on_invalid = on_invalid
        from discovery.etcdapi import Etcd, Follower, LeasedKey  # a config from etcd: its client

        self.etcd = Etcd(list(location.endpoints), tls=location.tls)
        self.store = Store(self.etcd, location.mesh, location=location)
        self.follower = Follower(self.etcd, self._follow, "config", probe_interval)
        self.wanted: int | None = applied.revision
        self.selection_made: tuple[int, float] | None = None  # (latest, at) of what it follows
        self.refused: dict[int, str] = {}  # revision → why it was not applied
        # this proxy (one key per worker) and the revision it runs, for `mitmesh config rollout`
        self.describe = describe
        self.presence = LeasedKey(self.etcd, PRESENCE_TTL)
        self.reported = False  # once the follower has read the selection: then kept fresh
        self._refresh = Loop("mitmesh-config-presence", self._refresh_presence)
        metrics.CONFIG_REVISION.set(applied.revision)

    def start(self) -> None:
        self.follower.start()
        if self.location.secure:
            self._refresh.start()

    async def stop(self) -> None:
        await self._refresh.stop()
        await self.follower.stop()
        await self.presence.revoke()
        await self.etcd.close()

    async def _refresh_presence(self) -> None:
        """A signed presence record is believed PRESENCE_MAX_AGE: said again before that."""
        while True:
            await asyncio.sleep(PRESENCE_REFRESH)
            if self.reported:
                await self._report()

    def _record(self) -> dict:
        record = {**self.describe(), "proxy": self.proxy, "pid": os.getpid(),
                  "revision": self.applied.revision, "wanted": self.wanted,
                  "refused": self.refused.get(self.wanted) if self.wanted is not None else None}
        tls = self.location.tls
        if not self.location.secure or tls is None:
            return record
        try:  # read each time: the workload certificate is renewed under the proxy (24 h)
            return signed_presence(self.location.mesh, record, Signer.load(tls.cert, tls.key))
        except ValueError as e:
            log.warning(f"etcd config: cannot sign this proxy's presence record ({e}); "
                        f"`mitmesh config rollout` will not count it")
            return record

    async def _report(self) -> None:
        self.reported = True
        record = self._record()
        try:
            await self.presence.put(proxy_key(self.location.mesh, self.proxy, os.getpid()), json.dumps(record))
        except EtcdError as e:
            log.warning(f"etcd config: cannot report revision {self.applied.revision}: {e}")

    def status(self) -> dict:
        wanted = self.wanted
        until = signed_until(self.applied) if self.location.secure else None
        return {**self.follower.status(), "source": str(self.location), "proxy": self.proxy,
                "revision": self.applied.revision, "digest": self.applied.digest,
                "signed_until": (time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(until))
                                 if until is not None else None),
                "wanted": wanted, "refused": self.refused.get(wanted) if wanted is not None else None}

    async def _follow(self) -> None:
        kv = await self.etcd.get(current_key(self.location.mesh))
        revision = kv.mod_revision if kv else 0
        self.follower.in_sync()
        if kv is not None:
            await self._select(kv.value)
        await self._report()
        async for ev in self.etcd.watch(current_key(self.location.mesh), revision + 1):
            if ev.kind == "put" and ev.kv.key == current_key(self.location.mesh):
                await self._select(ev.kv.value)
                await self._report()

    async def _selection_problem(self, selection: dict) -> str | None:
        """Why this proxy may not follow `selection` (etcds://): not the operator's, a copy of
        an older one (`Store.selection_problem`), or older than the one it follows."""
        if not self.location.secure:
            return None
        problem = await self.store.selection_problem(selection)
        if problem:
            return problem
        made = (selection["latest"], selection.get("at", 0))
        if self.selection_made is not None and made < self.selection_made:
            return (f"the selection was made before the one this proxy follows (latest revision "
                    f"{made[0]} at {made[1]:.0f}, against {self.selection_made[0]} at "
                    f"{self.selection_made[1]:.0f}): a copy of an old selection, refused")
        floor = Floor.of(self.location, self.etcd.cluster_id)
        if floor is not None:
            older = floor.problem(selection)
            if older:
                return older
            floor.raise_to(selection)
        self.selection_made = made
        return None

    def _refuse(self, n: int, why: str) -> None:
        self.refused[n] = why
        while len(self.refused) > REFUSED_KEPT:  # a workload may select numbers without end
            del self.refused[next(iter(self.refused))]

    async def _select(self, current: str) -> None:
        # anyone who may write to etcd may write junk: it is refused, and the watch goes on
        try:
            selection = load_json(current)
            n = wanted_revision(selection, self.proxy)
        except (ValueError, TypeError, KeyError, AttributeError) as e:
            self.on_invalid(f"{self.location}: selection refused, still running "
                            f"{self.applied.revision}: not a revision's selection "
                            f"(got {current[:80]!r}: {e!r})")
            return
        problem = await self._selection_problem(selection)
        if problem:
            self.on_invalid(f"{self.location}: selection refused, still running "
                            f"{self.applied.revision}: {problem}")
            return
        self.wanted = n
        if n is None or n == self.applied.revision or n in self.refused:
            return
        try:
            rev = await self.store.get(n)
        except (ValueError, TypeError, KeyError) as e:
            self._refuse(n, f"revision {n} not applied, still running {self.applied.revision}:"
                         f"\n{self.location}: revision {n} is no revision record ({e!r})")
            self.on_invalid(self.refused[n])
            return
        if rev is None:
            self._refuse(n, f"{self.location}: revision {n} is selected but not stored")
            self.on_invalid(self.refused[n])
            return
        try:
            check_revision(rev, n, self.location)  # a workload's push, or edited after signing
        except ValueError as e:
            still = self.applied.revision
            self._refuse(n, f"revision {n} not applied, still running {still}:\n{e}")
            self.on_invalid(self.refused[n])
            return
        errors: list[str] = []

        def refused(text: str) -> None:
            errors.append(f"revision {n} not applied, still running {self.applied.revision}:\n{text}")
            self.on_invalid(errors[-1])
        if await hand_over(lambda: self.build_text(rev.text, rev.label, rev.digest), rev.label,
                           self.on_valid, refused):
            self.applied = rev
            metrics.CONFIG_REVISION.set(n)
            note_signature(rev, self.location)
            log.info(f"config revision {n} ({rev.digest}) from {self.location} in service")
        else:
            self._refuse(n, errors[-1] if errors else "not applied")
