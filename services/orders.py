"""Demo orders service: an order looks up the item in catalog and charges it through payments.

Calls go to http://catalog and http://payments through `--proxy` (the instance's sidecar outbound
listener) with keep-alive connections, or to explicit `--catalog-url`/`--payments-url`.
"""

from __future__ import annotations

import asyncio
import hashlib
import uuid

import aiohttp
from aiohttp import web

from .app import PROPAGATE, arguments, identity, make_app, serve

SESSION = web.AppKey("session", aiohttp.ClientSession)


def build(ident, catalog: str, payments: str, proxy: str | None) -> web.Application:
    app = make_app(ident)

    async def start(app):
        app[SESSION] = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=256, keepalive_timeout=60),
            timeout=aiohttp.ClientTimeout(total=30),
        )

    async def stop(app):
        await app[SESSION].close()

    app.on_startup.append(start)
    app.on_cleanup.append(stop)

    def passed_on(request: web.Request) -> dict:
        return {h: request.headers[h] for h in PROPAGATE if h in request.headers}

    async def call(request, method: str, url: str, headers: dict | None = None, **kw):
        session: aiohttp.ClientSession = request.app[SESSION]
        async with session.request(method, url, headers={**passed_on(request), **(headers or {})},
                                   proxy=proxy, **kw) as r:
            try:
                body = await r.json(content_type=None)
            except ValueError:
                body = {"raw": (await r.text())[:200]}
            return r.status, body

    async def create(request: web.Request):
        try:
            order = await request.json()
            item_id = int(order.get("item_id", 1))
            quantity = int(order.get("quantity", 1))
        except (ValueError, TypeError, AttributeError):
            return web.json_response({**ident.describe(request), "error": "bad_order"}, status=400)
        try:
            status, item = await call(request, "GET", f"{catalog}/items/{item_id}")
            if status != 200:
                return web.json_response({**ident.describe(request), "error": "catalog_failed",
                                          "upstream_status": status, "upstream": item}, status=502)
            details = item.get("item", {})
            price = details.get("price", details.get("price_cents", 0) / 100)
            # one key per order: the client's own Idempotency-Key when it sent one (its retries of
            # the order then charge once), else this request's id, both chosen by the client, so
            # scoped by who placed the order (the caller the gateway verified and forwards): two
            # callers who pick the same key never share a charge (Stripe scopes keys per account)
            chosen = request.headers.get("idempotency-key") or request.headers.get("x-request-id")
            caller = request.headers.get("x-authenticated-userid", "")
            key = (f"order-{chosen}@{hashlib.sha256(caller.encode()).hexdigest()[:16]}" if chosen
                   else f"order-{uuid.uuid4().hex}")
            status, payment = await call(request, "POST", f"{payments}/charge", headers={"idempotency-key": key},
                                         json={"amount": round(price * quantity, 2)})
            if status != 200:
                return web.json_response({**ident.describe(request), "error": "payment_failed",
                                          "upstream_status": status, "upstream": payment}, status=502)
        except (aiohttp.ClientError, asyncio.TimeoutError) as e:
            return web.json_response({**ident.describe(request), "error": "upstream_unreachable",
                                      "reason": str(e) or e.__class__.__name__}, status=502)
        return web.json_response({**ident.describe(request), "order": {
            "item": details, "quantity": quantity, "catalog": item.get("instance"),
            "payment": payment.get("payment_id"), "payments": payment.get("instance")}})

    async def list_orders(request: web.Request):
        return web.json_response({**ident.describe(request), "orders": []})

    async def anything(request: web.Request):
        await request.read()
        return web.json_response(ident.describe(request))

    app.router.add_post("/orders", create)
    app.router.add_get("/orders", list_orders)
    app.router.add_route("*", "/{tail:.*}", anything)
    return app


def main() -> None:
    p = arguments("orders")
    p.add_argument("--catalog-url", default="http://catalog")
    p.add_argument("--payments-url", default="http://payments")
    p.add_argument("--proxy", default=None, help="HTTP proxy for outbound calls (the sidecar)")
    args = p.parse_args()
    ident = identity("orders", args)
    serve(build(ident, args.catalog_url.rstrip("/"), args.payments_url.rstrip("/"), args.proxy), args)


if __name__ == "__main__":
    main()
