"""Demo payments service: charges an amount and returns a payment id."""

from __future__ import annotations

import itertools

from aiohttp import web

from .app import arguments, identity, make_app, serve


def build(ident) -> web.Application:
    app = make_app(ident)
    ids = itertools.count(1)

    async def charge(request: web.Request):
        try:
            body = await request.json()
            amount = float(body["amount"])
        except (ValueError, KeyError, TypeError):
            return web.json_response({**ident.describe(request), "error": "bad_charge",
                                      "reason": "expected JSON with a numeric amount"}, status=400)
        return web.json_response({**ident.describe(request), "payment_id": f"{ident.instance}-{next(ids)}",
                                  "amount": amount, "status": "charged"})

    async def anything(request: web.Request):
        await request.read()
        return web.json_response(ident.describe(request))

    app.router.add_post("/charge", charge)
    app.router.add_route("*", "/{tail:.*}", anything)
    return app


def main() -> None:
    args = arguments("payments").parse_args()
    serve(build(identity("payments", args)), args)


if __name__ == "__main__":
    main()
