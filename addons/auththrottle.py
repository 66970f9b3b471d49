"""AuthThrottle: failed authentications counted per client IP (`gateway.auth_failures`, default 20
per minute); an address over the limit gets a JSON 429 with Retry-After on every route that
authenticates, before its credentials are even looked at, so guessing tokens or API keys is slow.

The counters are rate limits of their own, kept by the RateLimit addon's `limits` storages.
"""

from __future__ import annotations

import asyncio
import time

from mitmproxy import http

from mesh.policies import authn, ratelimit

from . import keys, replies


class AuthThrottle:
    plan_fields = ("authn",)  # runs only for routes whose plan has it (addons/dispatch.py)

    def __init__(self, limiters: ratelimit.Limiters):
        self.limiters = limiters
        self._counting: set[asyncio.Task] = set()
        # addresses with a failure counted in memory storage, and when: an address not here has
        # nothing to peek at (the usual request), one set lookup instead of a counter's
        self._failed: dict[str, float] = {}

    def _policy(self, st: keys.FlowState | None) -> ratelimit.Policy | None:
        if st is None or st.route is None or st.route.plan.authn is None:
            return None
        return st.snapshot.auth_failures

    def requestheaders(self, flow: http.HTTPFlow):
        st = keys.routed(flow)
        policy = self._policy(st)
        if policy is None:
            return None
        ip = flow.client_conn.peername[0]
        if policy.storage == "memory":
            since = self._failed.get(ip)
            if since is None:
                return None
            if time.monotonic() - since > policy.span:  # every window of its failures is over
                del self._failed[ip]
                return None
            self._apply(flow, st, self.limiters.peek_sync(policy, ratelimit.key_text("ip", ip)))
            return None
        return self._peek_async(flow, st, policy, ratelimit.key_text("ip", ip))

    async def _peek_async(self, flow, st, policy, key) -> None:
        self._apply(flow, st, await self.limiters.hit_async(policy, key, peek=True))

    def _apply(self, flow: http.HTTPFlow, st: keys.FlowState, outcome: ratelimit.Outcome) -> None:
        if outcome.allowed:
            return
        st.decide("auththrottle", f"{flow.client_conn.peername[0]} is over {outcome.window} failed "
                                  f"authentications; refused before authentication")
        replies.reply(flow, 429, "too_many_failed_authentications",
                      f"too many failed authentications from this address (limit {outcome.window}); "
                      f"retry after {outcome.retry_after}s",
                      headers={"Retry-After": str(outcome.retry_after)})

    def response(self, flow: http.HTTPFlow):
        st = keys.get(flow)
        if st is None or st.error not in authn.FAILED:
            return
        policy = self._policy(st)
        if policy is None:
            return
        ip = flow.client_conn.peername[0]
        key = ratelimit.key_text("ip", ip)
        if policy.storage == "memory":
            now = time.monotonic()
            if len(self._failed) > 100_000:  # many failing addresses: forget those whose windows are over
                self._failed = {a: t for a, t in self._failed.items() if now - t <= policy.span}
            self._failed[ip] = now
            self.limiters.hit_sync(policy, key)
            return
        task = asyncio.get_running_loop().create_task(self.limiters.hit_async(policy, key))
        self._counting.add(task)  # counted in the background: the 401 does not wait for Redis
        task.add_done_callback(self._counting.discard)

    async def done(self):
        if self._counting:  # before RateLimit closes the storages
            await asyncio.gather(*self._counting, return_exceptions=True)
