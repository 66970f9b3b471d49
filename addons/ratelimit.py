"""Rate limits per route and key (consumer, claim, API key, client IP, header): RateLimit-* on every
response of a limited route (unless its policy says `headers: false`), a JSON 429 with Retry-After
when over.

Alone: `mitmdump -s addons/ratelimit.py --set mesh_rate_limit='{minute: 60, key: ip}'`.
"""

from __future__ import annotations

import asyncio

from mitmproxy import http

from addons import alone, keys, replies
from mesh.core.loops import Loop
from mesh.policies import ratelimit
from mesh.config import schema
from mesh.core.state import MeshState
from mesh.policies.transform import claim

_LIMIT, _REMAINING, _RESET, _POLICY = (n.encode() for n in ratelimit.FIELDS)


def counter_key(flow: http.HTTPFlow, st: keys.FlowState, policy: ratelimit.Policy) -> str:
    """What is counted; a request without the configured key is counted by its client IP (as Kong).
    A credential is counted as Authn verified it (its identity, never the key or token: Authn has
    stripped it by now), however it was sent; one no one verified is not a key."""
    kind = policy.key
    value = None
    if policy.credential:  # key: api_key, or key: header on a header carrying a credential
        credential = st.credential
        if credential is not None and credential.startswith(policy.credential):
            return credential
    elif kind == "consumer":
        value = st.principal
    elif kind == "claim":
        found = claim(st.claims, policy.claim or "")
        value = None if found is None else str(found)
    elif kind == "header":
        value = flow.request.headers.get(policy.header or "")
    if not value:
        return ratelimit.key_text("ip", flow.client_conn.peername[0])
    return ratelimit.key_text(kind, value, policy.hashed)


class RateLimit:
    plan_fields = ("rate_limit",)  # runs only for routes whose plan has it (addons/dispatch.py)

    def __init__(self, state: MeshState):
        self.state = state
        self.limiters = ratelimit.Limiters()
        self._loop = Loop("mitmesh-ratelimit-expiry", self._sweep)

    def running(self):
        self._loop.start()

    async def _sweep(self):
        while True:  # drop expired memory counters on the loop, not in limits' timer threads
            await asyncio.sleep(1.0)
            self.limiters.expire()

    def request(self, flow: http.HTTPFlow):
        # counted once the request is complete, not at its head: a request the client abandons
        # (an HTTP/2 stream reset, CVE-2023-44487) is never counted and never forwarded
        st = keys.routed(flow)
        if st is None:
            return None
        policy: ratelimit.Policy | None = st.route.plan.rate_limit
        if policy is None:
            return None
        key = counter_key(flow, st, policy)
        if policy.storage == "memory":  # synchronous: no task, no await
            self._apply(flow, st, policy, key, self.limiters.hit_sync(policy, key))
            return None
        return self._hit_async(flow, st, policy, key)

    async def _hit_async(self, flow, st, policy, key):
        self._apply(flow, st, policy, key, await self.limiters.hit_async(policy, key))

    def _apply(self, flow: http.HTTPFlow, st: keys.FlowState, policy: ratelimit.Policy, key: str,
               outcome: ratelimit.Outcome) -> None:
        st.decide("ratelimit", f"{key} on route {policy.route}: {outcome.describe()}")
        if policy.headers:  # what the response hook sends; mitmweb's metadata has them either way
            st.ratelimit_headers = outcome.headers
        if outcome.headers:
            flow.metadata[keys.RATELIMIT] = dict(outcome.headers)
        if outcome.allowed:
            return
        if outcome.unavailable:
            replies.reply(flow, 503, "ratelimit_unavailable",
                          "the rate limit storage is unreachable and this route fails closed")
            return
        replies.reply(flow, 429, "rate_limited",
                      f"over the limit of {outcome.window} for route {policy.route}; "
                      f"retry after {outcome.retry_after}s",
                      headers={"Retry-After": str(outcome.retry_after)})

    def response(self, flow: http.HTTPFlow):
        st = keys.get(flow)
        if st is None or not st.ratelimit_headers or flow.response is None:
            return
        headers = flow.response.headers
        fields = headers.fields
        # the upstream sent its own RateLimit-* fields: ours replace them (a name is sliced and
        # folded only when it starts with r or R, rare)
        for n, _ in fields:
            if n and n[0] | 32 == 114 and n[:9].lower() == b"ratelimit":
                for name, value in st.ratelimit_headers:
                    headers[name] = value
                return
        # one tuple append instead of four Headers.set_all calls (a quarter of this addon's time);
        # the fields are the four `_answer` makes, in its order
        (_, limit), (_, remaining), (_, reset), (_, policy) = st.ratelimit_headers
        headers.fields = fields + ((_LIMIT, limit.encode()), (_REMAINING, remaining.encode()),
                                   (_RESET, reset.encode()), (_POLICY, policy.encode()))

    async def done(self):
        await self._loop.stop()
        await self.limiters.close()


addons = alone.script(RateLimit(alone.state()), blocks=[alone.Block(
    "mesh_rate_limit", "policies", "rate_limit", schema.RateLimit,
    "Rate-limit every request: a rate_limit policy of mesh.yaml in YAML flow style, e.g. "
    "'{minute: 60, key: ip}' or '{second: 5, key: header, header: x-user, storage: "
    "redis://127.0.0.1:6379/0}'. Empty: no limit.")])
