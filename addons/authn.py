"""Authn: who is calling, per route: a JWT, an opaque OAuth2 token or an API key (mesh/policies/authn.py).

Missing or bad credentials get a JSON 401 with WWW-Authenticate; a caller without the route's
required scopes or claims gets a 403. On success the caller's name and claims go to FlowState
(for Authz, rate limits, logs), configured claims go upstream in headers, and the credential itself
is removed from the upstream request unless the policy keeps it. Any unexpected error fails closed.

Alone: `mitmdump -s addons/authn.py --set mesh_jwt='{issuer: https://id.example, jwks_uri: https://id.example/jwks}'`
(or mesh_api_key, mesh_oauth2, mesh_require).
"""

from __future__ import annotations

import asyncio
import logging

from mitmproxy import http

from addons import alone, headerfields, keys, replies
from mesh.core.loops import Loop
from mesh.policies import authn
from mesh.config import schema
from mesh.core.state import MeshState

log = logging.getLogger("mitmesh.authn")


class Authn:
    """Checks the credentials the route's plan asks for (`plan.authn`, compiled by the build with
    the runtime's JWKS caches and introspectors, which outlive reloads)."""
    plan_fields = ("authn",)  # runs only for routes whose plan has it (addons/dispatch.py)

    def __init__(self, state: MeshState):
        self.state = state
        self._loop = Loop("mitmesh-jwks", self._refresh_keys)

    @property
    def jwks(self) -> dict:
        """The issuers' key caches the live config uses, by URI or file (they outlive reloads)."""
        return self.state.runtime.jwks

    async def running(self):
        self._loop.start()

    async def done(self):
        await self._loop.stop()
        await self.state.runtime.http.close()

    async def _refresh_keys(self) -> None:
        """Fetch every issuer's keys at start (and after a reload), then whenever they are older
        than their TTL, so requests find them in memory."""
        while True:
            stale = [c for c in list(self.state.runtime.jwks.values()) if c.stale()]
            await asyncio.gather(*(c.refresh() for c in stale))
            await asyncio.sleep(1.0)

    def requestheaders(self, flow: http.HTTPFlow):
        st = keys.routed(flow)
        if st is None:
            return None
        route = st.route.plan.authn
        if route is None:
            return None
        req = flow.request
        try:
            if not route.authenticates:  # only `require`: claims must come from elsewhere
                raise authn.AuthnError(403, "insufficient_scope", f"route {route.route} requires "
                                       "scopes or claims but has no authentication policy")
            if route.key_header is not None and self._api_key(flow, st, route):
                return None
            result = route.authenticate(_header(req), _cookie(req), _query(req))
            if not isinstance(result, authn.Verified):  # a JWKS fetch or an introspection to wait for
                return self._finish(flow, st, route, result)
            self._accept(flow, st, route, result)
        except authn.AuthnError as e:
            self._refuse(flow, st, route, e)
        except Exception:  # a bug must never let a request through unauthenticated
            log.exception("authentication failed unexpectedly")
            self._refuse(flow, st, route, authn.AuthnError(401, "invalid_credentials",
                                                           "credentials could not be verified"))
        return None

    async def _finish(self, flow, st, route, pending) -> None:
        try:
            self._accept(flow, st, route, await pending)
        except authn.AuthnError as e:
            self._refuse(flow, st, route, e)
        except Exception:
            log.exception("authentication failed unexpectedly")
            self._refuse(flow, st, route, authn.AuthnError(401, "invalid_credentials",
                                                           "credentials could not be verified"))

    def _accept(self, flow: http.HTTPFlow, st: keys.FlowState, route: authn.RouteAuthn,
                verified: authn.Verified) -> None:
        self._caller(flow, st, route, verified)
        headers = flow.request.headers
        for claim, header in route.forward:
            value = authn.forwarded_value(verified.claims, claim)
            if value is not None:
                headerfields.put(headers, header, value)
        # every credential source of the route goes, but the one that verified the caller where
        # its policy forwards it: a token next to a verified key (or a key next to a verified
        # token) was checked by no one, forward_token or not, and the upstream is told "none, or
        # a verified one"
        by_key = verified.method == "api_key"
        if route.api_keys is not None and not (route.keep_key and by_key):
            self._strip_key(flow, route)
        if not (route.keep_token and not by_key):
            for src in route.sources:
                if src.header is not None:
                    headerfields.remove(headers, src.header)
                elif src.cookie in flow.request.cookies:
                    del flow.request.cookies[src.cookie]

    def _caller(self, flow: http.HTTPFlow, st: keys.FlowState, route: authn.RouteAuthn,
                verified: authn.Verified) -> None:
        """The route's requirements checked (403), then who the caller is recorded and decided."""
        route.authorize(verified)
        st.authenticated, st.claims = verified.principal, verified.claims
        st.credential = verified.credential
        flow.metadata[keys.PRINCIPAL] = verified.principal
        st.decide("authn", f"{verified.method}: {verified.principal}")

    def _api_key(self, flow: http.HTTPFlow, st: keys.FlowState, route: authn.RouteAuthn) -> bool:
        """The usual API-key route (a key in a header, `route.key_header`): what `authenticate` and
        `_accept` do for it, with one pass over the header fields to read the key, strip it and
        the route's token headers, and see whether a forwarded claim's header is there. False when
        the header is absent or empty: `authenticate` then decides (the key may not be the route's
        only credential)."""
        name, forwarded, tokens = route.key_header, route.forward_names, route.token_headers
        keep = route.keep_key
        headers = flow.request.headers
        values, kept, present = [], [], False
        for field in headers.fields:
            low = field[0].lower()
            if low == name:
                values.append(field[1])
                if keep:
                    kept.append(field)
            elif low not in tokens:  # a token beside the key is unverified: gone, as in `_accept`
                kept.append(field)
                present = present or low in forwarded
        key = b", ".join(values).decode("utf-8", "surrogateescape")
        if not key:
            return False
        verified = route.api_keys.verify(key)
        if present:  # rare (Sanitize removes them before routing): `_accept`'s edits, in its order
            self._accept(flow, st, route, verified)
            return True
        self._caller(flow, st, route, verified)
        # appended, as `headerfields.put` appends an absent one; a consumer's claims are its
        # config's, so its header fields are made once per config
        added = route.key_forwards.get(verified.principal)
        if added is None:
            added = route.key_forwards[verified.principal] = tuple(
                (header.encode("utf-8", "surrogateescape"), value.encode("utf-8", "surrogateescape"))
                for claim, header in route.forward
                if (value := authn.forwarded_value(verified.claims, claim)) is not None)
        headers.fields = tuple(kept) + added
        return True

    def _strip_key(self, flow: http.HTTPFlow, route: authn.RouteAuthn) -> None:
        c = route.api_keys.config
        if c.header:
            headerfields.remove(flow.request.headers, c.header)
        if c.query and c.query in flow.request.query:
            del flow.request.query[c.query]

    def _refuse(self, flow, st, route, e: authn.AuthnError) -> None:
        st.decide("authn", f"{e.status} {e.error}: {e.reason}" + (f" ({e.detail})" if e.detail else ""))
        challenge = route.challenge(e.error) if e.status in (401, 403) else ""
        replies.reply(flow, e.status, e.error, e.reason,
                      headers={"www-authenticate": challenge} if challenge else None)


def _header(req: http.Request):
    """A getter for one request header (one pass over the fields)."""
    def get(name: str) -> str | None:
        return headerfields.get(req.headers, name)
    return get


def _cookie(req: http.Request):
    """A lazy getter for one cookie (parsed only when a token source is a cookie)."""
    def get(name: str) -> str | None:
        return req.cookies.get(name)
    return get


def _query(req: http.Request):
    """A lazy getter for one query parameter (API keys may come in the URL)."""
    def get(name: str) -> str | None:
        return req.query.get(name)
    return get


addons = alone.script(Authn(alone.state()), blocks=[
    alone.Block("mesh_jwt", "policies", "jwt", schema.Jwt,
                "Require a JWT on every request: a jwt policy of mesh.yaml in YAML flow style, e.g. "
                "'{issuer: https://id.example, jwks_uri: https://id.example/jwks.json, audiences: [api]}'. "
                "Empty: off."),
    alone.Block("mesh_api_key", "policies", "api_key", schema.ApiKey,
                "Require an API key on every request: an api_key policy of mesh.yaml in YAML flow style, "
                "e.g. '{consumers: {acme: {key_sha256: <64 hex digits>}}}' (`mitmesh apikey new acme` "
                "makes one). Empty: off."),
    alone.Block("mesh_oauth2", "policies", "oauth2", schema.OAuth2,
                "Require an opaque OAuth2 token, checked by introspection: an oauth2 policy of mesh.yaml, "
                "e.g. '{introspection_url: https://id.example/introspect, client_id: gw, "
                "client_secret_env: GW_SECRET}'. Empty: off."),
    alone.Block("mesh_require", "policies", "require", schema.Require,
                "Scopes or claims the caller must hold (403), with mesh_jwt or mesh_oauth2: a require "
                "policy of mesh.yaml, e.g. '{scopes: [orders:read]}'. Empty: off."),
])
