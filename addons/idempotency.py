"""Idempotency: a request with an Idempotency-Key runs once; a duplicate in flight gets 409, a later
one the first answer again (`Idempotent-Replayed: true`), the same key on another request 422, and a
request without a key 400 where the route's policy requires one (mesh/policies/idempotency.py decides).
"""

from __future__ import annotations

import logging

from mitmproxy import http

from mesh.core.upstream import HOP_BY_HOP
from mesh.policies import idempotency

from . import keys, replies
from .forward import ATTEMPTS_HEADER

log = logging.getLogger(__name__)
# not kept: framing (recomputed), this hop's attempt count and the first request's id
_NOT_KEPT = HOP_BY_HOP | {b"content-length", ATTEMPTS_HEADER.encode(), b"x-request-id"}
_MARK = (idempotency.REPLAYED.encode(), b"true")


class Held:
    """A key this flow holds in flight, until its answer is kept or the key is let go."""

    __slots__ = ("store", "key", "record", "ttl")

    def __init__(self, store, key: str, record: idempotency.Record, ttl: float):
        self.store, self.key, self.record, self.ttl = store, key, record, ttl


class Idempotency:
    plan_fields = ("idempotency",)  # runs only for routes whose plan has it (addons/dispatch.py)

    def __init__(self):
        self.stores = idempotency.Stores()  # outlive reloads: kept answers survive config edits

    async def done(self):
        await self.stores.close()

    def request(self, flow: http.HTTPFlow):
        st = keys.routed(flow)
        if st is None:
            return None
        policy = st.route.plan.idempotency
        if policy is None or flow.request.method not in policy.methods:
            return None
        key = flow.request.headers.get(policy.header)
        if key is None:
            if policy.required:
                replies.reply(flow, 400, "idempotency_key_missing",
                              f"this route needs an {policy.header} header on {flow.request.method} requests")
            return None
        if (problem := idempotency.check_key(key)) is not None:
            replies.reply(flow, 400, "bad_idempotency_key", problem)
            return None
        return self._begin(flow, st, policy, key)

    async def _begin(self, flow: http.HTTPFlow, st: keys.FlowState, policy: idempotency.Policy, key: str):
        query = flow.request.path.partition("?")[2]
        fp = idempotency.fingerprint(flow.request.method, (st.path or "/") + ("?" + query if query else ""),
                                     flow.request.raw_content or b"")
        rkey = idempotency.record_key(st.route.name, st.caller, key)
        record = idempotency.Record(fp, idempotency.new_token())
        store = self.stores.get(policy.storage)
        try:
            found = await store.begin(rkey, record, policy.lock)
        except Exception as e:  # an unreachable storage: no promise can be kept, so none is made
            log.warning(f"idempotency storage unreachable: {e.__class__.__name__}")
            st.decide("idempotency", f"storage unreachable ({e.__class__.__name__}): refused")
            replies.reply(flow, 503, "idempotency_unavailable", "the idempotency key could not be checked")
            return
        verdict = idempotency.judge(found, fp, record.token)
        if verdict.kind == "forward":
            st.idempotency = Held(store, rkey, record, policy.ttl)
            st.decide("idempotency", f"new key: forwarding, the answer is kept {policy.ttl:g}s")
        elif verdict.kind == "in_flight":
            st.decide("idempotency", "the key's first request is still in flight: 409")
            replies.reply(flow, 409, "idempotency_key_in_flight",
                          "a request with this idempotency key is still being processed", headers={"retry-after": "1"})
        elif verdict.kind == "mismatch":
            st.decide("idempotency", "the key was used for another request: 422")
            replies.reply(flow, 422, "idempotency_key_reused",
                          "this idempotency key was used for a different request")
        else:
            answer = verdict.answer
            st.decide("idempotency", f"duplicate: the kept answer ({answer.status}) replayed")
            replies.kept(flow, answer.status, answer.headers, answer.body, _MARK)

    def response(self, flow: http.HTTPFlow):
        st = keys.get(flow)
        held = st.idempotency if st is not None else None
        if held is None:
            return None
        st.idempotency = None
        return self._settle(flow, st, held)

    async def _settle(self, flow: http.HTTPFlow, st: keys.FlowState, held: Held):
        """Keep the answer for the key, or let the key go when the request surely did not run."""
        try:
            if not st.sent:  # no byte reached an upstream: the request surely did not run, a retry may
                await held.store.release(held.key, held.record.token)
                st.decide("idempotency", "nothing was sent upstream: the key is free again")
                return
            resp = flow.response
            answer = idempotency.Answer(resp.status_code,
                                        tuple((n, v) for n, v in resp.headers.fields if n.lower() not in _NOT_KEPT),
                                        resp.raw_content or b"")
            await held.store.keep(held.key, idempotency.Record(held.record.fingerprint, held.record.token, answer),
                                  held.ttl)
        except Exception as e:  # the answer still goes out; the key stays in flight until its lock expires
            log.warning(f"idempotency storage unreachable: {e.__class__.__name__}")
            st.decide("idempotency", f"the answer could not be kept ({e.__class__.__name__})")

    def error(self, flow: http.HTTPFlow):
        """The flow ended without an answer (the client went away): a request never sent frees its key;
        one that may have run keeps it in flight until the lock expires."""
        st = keys.get(flow)
        held = st.idempotency if st is not None else None
        if held is None or st.sent:
            return None
        st.idempotency = None
        return self._release(held)

    async def _release(self, held: Held):
        try:
            await held.store.release(held.key, held.record.token)
        except Exception as e:
            log.warning(f"idempotency storage unreachable: {e.__class__.__name__}")
