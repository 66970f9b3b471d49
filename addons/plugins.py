"""User plugins in the chain: placed by stage, dispatched by route, failures and slowness contained.

Each plugin of this proxy's chain gets a `Hooks` object that mitmproxy calls like any addon, placed
right before (or after) the built-in stage its config names; it is registered with the addon
manager the way mitmproxy's script loader registers a script, so the proxy pays nothing for a hook
no plugin has. A `Hooks` object only has the flow hooks its plugin has, and calls them only for the
flows of routes (or services) that list the plugin. An exception answers the flow with a JSON 500
naming the plugin; a hook over its budget is reported; an async hook over its timeout is cancelled
(504). A sync hook that blocks the event loop cannot be interrupted: it is measured and reported.

An edit of a plugin's file loads it again in every worker (each polls its own files); a version
that fails to import or to validate its options is refused and the previous one keeps running,
with the error and its line in /status.
"""

from __future__ import annotations

import asyncio
import contextvars
import dataclasses
import inspect
import logging
import re
import time
from typing import Callable

from mitmproxy import ctx, http

from mesh.runtime import plugins as loader
from mesh.telemetry import metrics
from mesh.config import ConfigError
from mesh.config.plugins import GATEWAY, SIDECAR_INBOUND, SIDECAR_OUTBOUND, STAGES, PluginSpec
from mesh.core.state import INBOUND, OUTBOUND, MeshState, Snapshot

from . import keys, replies
from .dispatch import Dispatch

log = logging.getLogger("mitmesh.plugins")

FLOW_HOOKS = ("requestheaders", "request", "responseheaders", "response", "error")
CHAINS = {"gateway": (GATEWAY,), "sidecar": (SIDECAR_INBOUND, SIDECAR_OUTBOUND)}
DIRECTION = {GATEWAY: None, SIDECAR_INBOUND: INBOUND, SIDECAR_OUTBOUND: OUTBOUND}
POLL = 0.5  # seconds between checks of the plugins' files

# the plugin whose hook is running (mitmesh.plugin.decide and reply name it in the decision log)
current: contextvars.ContextVar[str | None] = contextvars.ContextVar("mitmesh_plugin", default=None)


def who(name: str) -> str:
    """How a plugin is named in decision logs: `plugin tenant`."""
    return f"plugin {name}"


class Hooks:
    """The flow hooks of one plugin instance, as the addon manager sees them."""

    def __init__(self, spec: PluginSpec, instance: object):
        self.name = f"plugin:{spec.name}"  # the addon manager's name for it
        self.spec = spec
        self.instance = instance
        self.direction = DIRECTION[spec.chain]
        self.by_service = spec.chain != GATEWAY
        for hook in FLOW_HOOKS:
            func = getattr(instance, hook, None)
            if callable(func):
                setattr(self, hook, self._wrap(hook, func))

    def applies(self, flow: http.HTTPFlow) -> keys.FlowState | None:
        st = keys.get(flow)
        if st is None or st.direction != self.direction:
            return None
        if self.spec.all_routes:
            return st
        route = st.route
        if route is None:
            return None
        key = getattr(route.action, "service", None) if self.by_service else route.name
        return st if key in self.spec.routes else None

    def _wrap(self, hook: str, func: Callable) -> Callable:
        spec, applies = self.spec, self.applies
        took = metrics.PLUGIN_DURATION.labels(spec.name, hook)
        if inspect.iscoroutinefunction(func):
            async def call_async(flow: http.HTTPFlow):
                st = applies(flow)
                if st is None:
                    return
                token, start = current.set(spec.name), time.perf_counter()
                try:
                    await asyncio.wait_for(func(flow), spec.timeout)
                except TimeoutError:
                    failed(flow, st, spec, hook, None)
                except Exception as e:
                    failed(flow, st, spec, hook, e)
                finally:
                    current.reset(token)
                    measured(st, spec, hook, took, time.perf_counter() - start)
            return call_async

        def call(flow: http.HTTPFlow):
            st = applies(flow)
            if st is None:
                return
            token, start = current.set(spec.name), time.perf_counter()
            try:
                func(flow)
            except Exception as e:
                failed(flow, st, spec, hook, e)
            finally:
                current.reset(token)
                measured(st, spec, hook, took, time.perf_counter() - start)
        return call


def measured(st: keys.FlowState, spec: PluginSpec, hook: str, took, seconds: float) -> None:
    took.observe(seconds)
    if seconds > spec.budget:
        metrics.PLUGIN_SLOW.labels(spec.name, hook).inc()
        st.decide(who(spec.name), f"{hook} took {seconds * 1000:.0f} ms, over its "
                                  f"{spec.budget * 1000:.0f} ms {replies.OVER_BUDGET}")


def failed(flow: http.HTTPFlow, st: keys.FlowState, spec: PluginSpec, hook: str,
           e: Exception | None) -> None:
    """A hook raised (e) or an async hook ran out of time (None): answer, count, log."""
    if e is None:
        metrics.PLUGIN_ERRORS.labels(spec.name, hook, "timeout").inc()
        st.decide(who(spec.name), f"{hook} still running after its {spec.timeout:g}s timeout: cancelled")
        log.error(f"plugin {spec.name}: {hook} still running after {spec.timeout:g}s: cancelled")
        status, error = 504, "plugin_timeout"
        reason = f"plugin {spec.name} did not finish its {hook} hook in time"
    else:
        metrics.PLUGIN_ERRORS.labels(spec.name, hook, "exception").inc()
        line = loader.code_line(st_file(spec), e) or "?"
        st.decide(who(spec.name), f"{hook} raised {type(e).__name__}: {e} ({st_file(spec)}:{line})")
        log.error(f"plugin {spec.name}: {hook} raised {type(e).__name__}: {e}", exc_info=e)
        status, error, reason = 500, "plugin_failed", f"plugin {spec.name} failed in its {hook} hook"
    if hook != "error" and flow.live:
        replies.reply(flow, status, error, reason, plugin=spec.name)


def st_file(spec: PluginSpec) -> str:
    return loader.source_file(spec) or spec.source


class Plugins:
    """Keeps this proxy's plugins loaded, placed and current (config changes and file edits)."""

    def __init__(self, state: MeshState, role: str = "gateway"):
        self.state = state
        self.chains = CHAINS[role]
        self.active: dict[str, tuple[loader.Loaded, Hooks]] = {}
        self.errors: dict[str, dict] = {}  # plugin → its last refused (re)load: error, line, at
        self.versions: dict[str, int] = {}
        self.is_running = False
        self._task: asyncio.Task | None = None
        state.preparers.append(self.prepare)
        state.status_sections["plugins"] = self.status

    # -- a config snapshot: load what is new or changed, or refuse the snapshot -------------------

    def prepare(self, snap: Snapshot) -> Callable[[], None]:
        wanted = snap.plugins.for_chain(*self.chains)
        made: dict[str, tuple[loader.Loaded, bool]] = {}  # name → (instance, new?)
        problems = []
        for spec in wanted:
            old = self.active.get(spec.name)
            if old is not None and _same_code(old[0], spec):
                # the same instance; where it runs and for which routes may change
                made[spec.name] = (dataclasses.replace(old[0], spec=spec), False)
                continue
            try:
                made[spec.name] = (loader.load(spec), True)
            except ConfigError as e:
                problems.extend(e.problems)
        if problems:
            raise ConfigError(problems)
        return lambda: self._commit(wanted, made)

    def _commit(self, wanted: tuple[PluginSpec, ...], made: dict[str, tuple[loader.Loaded, bool]]) -> None:
        for name in list(self.active):
            self._unplace(name, retire=name not in made or made[name][1])
        for spec in wanted:  # in declaration order: the order within one position
            loaded, fresh = made[spec.name]
            container, index = self._slot(spec)
            self._place(loaded, fresh, container, index)
        self.errors = {n: e for n, e in self.errors.items() if n in self.active}

    # -- placing in the addon manager's chain ----------------------------------------------------

    def _place(self, loaded: loader.Loaded, fresh: bool, container: list, index: int) -> None:
        spec = loaded.spec
        hooks = Hooks(spec, loaded.instance)
        if fresh:
            self._lifecycle(spec, loaded.instance, "load", _loader())
        ctx.master.addons.register(hooks)
        container.insert(index, hooks)
        _changed(ctx.master.addons)
        if fresh:
            self._lifecycle(spec, loaded.instance, "configure", set(ctx.options.keys()))
            if self.is_running:
                self._lifecycle(spec, loaded.instance, "running")
            self.versions[spec.name] = self.versions.get(spec.name, 0) + 1
        self.active[spec.name] = (loaded, hooks)

    def _unplace(self, name: str, retire: bool) -> tuple[list, int]:
        """Take a plugin out of the chain; returns where it was."""
        loaded, hooks = self.active.pop(name)
        manager = ctx.master.addons
        container, index = next(((c, i) for c in _containers(manager) for i, a in enumerate(c)
                                 if a is hooks), ([], 0))
        top = container is manager.chain
        if not top:
            del container[index]
            _changed(manager)
        manager.remove(hooks)  # also takes it out of (a new copy of) the manager's own chain
        if retire:
            self._lifecycle(loaded.spec, loaded.instance, "done")
        return (manager.chain if top else container), index

    def _slot(self, spec: PluginSpec) -> tuple[list, int]:
        """The list holding the stage the plugin sits next to, and the index to insert at."""
        stages = STAGES[spec.chain]
        anchor = stages[spec.slot] if spec.slot < len(stages) else stages[-1]
        for container in _containers(ctx.master.addons):
            for i, addon in enumerate(container):
                if _name(addon) == anchor:
                    if spec.slot < len(stages):
                        return container, i
                    i += 1  # after the last stage, after the plugins already there
                    while i < len(container) and isinstance(container[i], Hooks):
                        i += 1
                    return container, i
        raise ConfigError([loader.Problem(*spec.where(("after",)),
                                          f"this chain has no stage {anchor} (got {anchor})")])

    def _lifecycle(self, spec: PluginSpec, instance: object, hook: str, *args) -> None:
        func = getattr(instance, hook, None)
        if not callable(func):
            return
        token = current.set(spec.name)
        try:
            res = func(*args)
            if inspect.isawaitable(res):
                asyncio.get_running_loop().create_task(res)
        except Exception as e:
            log.error(f"plugin {spec.name}: {hook} raised {type(e).__name__}: {e}", exc_info=e)
        finally:
            current.reset(token)

    # -- mitmproxy's hooks ------------------------------------------------------------------------

    def configure(self, updated):
        for loaded, _ in list(self.active.values()):
            self._lifecycle(loaded.spec, loaded.instance, "configure", updated)

    def running(self):
        self.is_running = True
        for loaded, _ in list(self.active.values()):
            self._lifecycle(loaded.spec, loaded.instance, "running")
        self._task = asyncio.get_running_loop().create_task(self._watch(), name="mitmesh-plugin-watch")

    async def done(self):
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        for loaded, _ in list(self.active.values()):
            self._lifecycle(loaded.spec, loaded.instance, "done")

    # -- hot reload -------------------------------------------------------------------------------

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(POLL)
            self.check()

    def check(self) -> None:
        """Load again every plugin whose file changed; a refused version changes nothing."""
        for name, (loaded, _) in list(self.active.items()):
            seen = loader.stamp(loaded.file)
            if seen is None or seen == loaded.stamp:
                continue
            loaded.stamp = seen  # one attempt per edit
            try:
                new = loader.load(loaded.spec)
            except ConfigError as e:
                self.errors[name] = {"error": str(e), "line": _code_line(str(e)), "at": time.time()}
                metrics.PLUGIN_RELOADS.labels(name, "rejected").inc()
                log.error(f"plugin {name} not reloaded, version {self.versions.get(name)} keeps "
                          f"running:\n{e}")
                continue
            new.stamp = seen
            # the same place, between the same neighbours (plugins at one position keep their order)
            container, index = self._unplace(name, retire=True)
            self._place(new, True, container, index)
            self.errors.pop(name, None)
            metrics.PLUGIN_RELOADS.labels(name, "ok").inc()
            log.info(f"plugin {name} reloaded from {new.file} (version {self.versions[name]})")

    def status(self) -> list[dict]:
        out = []
        for name, (loaded, _) in self.active.items():
            spec = loaded.spec
            out.append({"name": name, "plugin": spec.plugin,
                        "chain": spec.chain, "position": spec.stage,
                        "routes": "all" if spec.all_routes else sorted(spec.routes),
                        "budget_ms": spec.budget * 1000, "version": self.versions.get(name, 1),
                        "loaded_at": loaded.loaded_at, "file": loaded.file,
                        "last_error": self.errors.get(name)})
        return out


def _same_code(old: loader.Loaded, spec: PluginSpec) -> bool:
    """The running instance still fits the config: same code, same options, file unchanged."""
    o = old.spec
    return ((o.source, o.attr, o.options) == (spec.source, spec.attr, spec.options)
            and loader.stamp(old.file) == old.stamp)


def _name(addon) -> str:
    return getattr(addon, "name", None) or type(addon).__name__.lower()


def _containers(manager) -> list[list]:
    """The addon lists of the manager: its chain, every `addons` list below it (a script's) and
    every Dispatch's stages (the route stages, which it calls for mitmproxy)."""
    out, todo = [], [manager.chain]
    while todo:
        lst = todo.pop()
        out.append(lst)
        for a in lst:
            sub = a.stages if isinstance(a, Dispatch) else getattr(a, "addons", None)
            if isinstance(sub, list):
                todo.append(sub)
    return out


def _changed(manager) -> None:
    """A plugin went into or out of a Dispatch's stages: it makes its per-plan tables again."""
    for container in _containers(manager):
        for a in container:
            if isinstance(a, Dispatch):
                a.changed()


def _code_line(text: str) -> int | None:
    """The line in the plugin's own file of a load error (`… import failed: f.py:12: …`)."""
    m = re.search(r"\.py:(\d+): ", text)
    return int(m.group(1)) if m else None


def _loader():
    from mitmproxy.addonmanager import Loader

    return Loader(ctx.master)
