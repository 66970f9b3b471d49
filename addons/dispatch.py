"""Per-plan dispatch: the route stages of a chain run for a flow only where its route's plan uses them.

mitmproxy calls every addon that has a hook for every flow; a stage whose policy the route does not
have would only return. `Dispatch` stands in the chain where its stages stood and is the one addon
mitmproxy calls for them: for each hook it runs, in chain order, the stages the flow's plan uses
(`RoutePlan.used` against a stage's `plan_fields`) and the stages that run for every routed flow
(no `plan_fields`), and user plugins placed among them (addons/plugins.py). The tuple of callables is
made once per set of used fields and hook, and again when a plugin is placed or removed.

Everything else is as if mitmproxy called the stages itself: the same order, an async hook awaited
before the next stage, an exception logged ("Addon error") and the next stage called, AddonHalt
ending the hook for the whole chain; `running` and `done` reach every stage. A stage that answers
(sets flow.response) does not stop the stages after it: each checks `flow.response` itself, as before.
"""

from __future__ import annotations

import inspect
import logging

from mitmproxy import exceptions, hooks, http

from . import keys

log = logging.getLogger("mitmproxy.addonmanager")  # where mitmproxy logs an addon's error

FLOW_HOOKS = ("requestheaders", "request", "responseheaders", "response", "error")
LIFECYCLE = ("running", "done")  # what the stages have besides flow hooks (checked when made)
UNROUTED = None  # the key of flows without a route (or not ours): only stages without plan_fields


def runs(stage, used: frozenset[str] | None) -> bool:
    """Whether a stage runs for a plan using `used` (UNROUTED: a flow without a route)."""
    needs = getattr(stage, "plan_fields", None)
    return needs is None or (used is not None and not used.isdisjoint(needs))


class Dispatch:
    """The route stages after routing, called per plan. `name` keeps two in one chain apart."""

    def __init__(self, *stages, name: str = "dispatch"):
        self.name = name
        self.stages: list = list(stages)  # plugins insert their hooks here (then call changed())
        for stage in stages:
            extra = [h for h in hooks.all_hooks if h not in FLOW_HOOKS + LIFECYCLE
                     and callable(getattr(stage, h, None))]
            if extra:  # it would never be called: mitmproxy does not see the stages themselves
                raise ValueError(f"{type(stage).__name__} has {', '.join(extra)}: keep it out of Dispatch")
        self._tables: dict[frozenset[str] | None, dict[str, tuple]] = {}

    def changed(self) -> None:
        """The stage list changed (a plugin placed or removed): make the tables again."""
        self._tables = {}

    def table(self, used: frozenset[str] | None) -> dict[str, tuple]:
        """Hook → the callables a plan using `used` runs, in chain order."""
        found = self._tables.get(used)
        if found is None:
            found = self._tables[used] = {
                hook: tuple(f for s in self.stages if runs(s, used) and callable(f := getattr(s, hook, None)))
                for hook in FLOW_HOOKS}
        return found

    def _run(self, hook: str, flow: http.HTTPFlow):
        st = keys.get(flow)
        route = st.route if st is not None else None
        funcs = self.table(route.plan.used if route is not None else UNROUTED)[hook]
        for i, func in enumerate(funcs):
            try:
                res = func(flow)
            except (exceptions.AddonHalt, exceptions.OptionsError):
                raise
            except Exception as e:
                log.error(f"Addon error: {e}", exc_info=True)
                continue
            if res is not None and inspect.isawaitable(res):
                return self._rest(res, funcs[i + 1:], flow)
        return None

    async def _rest(self, pending, funcs: tuple, flow: http.HTTPFlow) -> None:
        """From the first stage that returned an awaitable on: each awaited before the next."""
        for func in (None, *funcs):
            try:
                res = pending if func is None else func(flow)
                if res is not None and inspect.isawaitable(res):
                    await res
            except (exceptions.AddonHalt, exceptions.OptionsError):
                raise
            except Exception as e:
                log.error(f"Addon error: {e}", exc_info=True)

    def requestheaders(self, flow: http.HTTPFlow):
        return self._run("requestheaders", flow)

    def request(self, flow: http.HTTPFlow):
        return self._run("request", flow)

    def responseheaders(self, flow: http.HTTPFlow):
        return self._run("responseheaders", flow)

    def response(self, flow: http.HTTPFlow):
        return self._run("response", flow)

    def error(self, flow: http.HTTPFlow):
        return self._run("error", flow)

    async def running(self):
        await self._lifecycle("running")

    async def done(self):
        await self._lifecycle("done")

    async def _lifecycle(self, hook: str) -> None:
        for stage in list(self.stages):
            func = getattr(stage, hook, None)
            if not callable(func):
                continue
            try:
                res = func()
                if res is not None and inspect.isawaitable(res):
                    await res
            except Exception as e:
                log.error(f"Addon error: {e}", exc_info=True)


def stages(chain) -> list:
    """A chain's addons with every Dispatch replaced by its stages: the order requests meet them."""
    out = []
    for addon in chain:
        out.extend(stages(addon.stages) if isinstance(addon, Dispatch) else (addon,))
    return out
