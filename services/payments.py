"""Demo payments service: charges an amount and returns a payment id. Each charge can be written
to a ledger file with its Idempotency-Key (knob `ledger`), and the instance can crash right after
making one (knob `crash_after_charge`), so a scenario can count charges per order at payments."""

from __future__ import annotations

import itertools
import os

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
        payment = f"{ident.instance}-{next(ids)}"
        key = request.headers.get("idempotency-key", "")
        if ident.knobs.ledger:  # written before any answer: the charge is made, whatever happens next
            with open(ident.knobs.ledger, "a") as ledger:
                ledger.write(f"{payment} {key or '-'} {amount}\n")
        if ident.knobs.crash_after_charge:
            os._exit(70)  # a crash right after the charge: no answer, the connection resets
        return web.json_response({**ident.describe(request), "payment_id": payment, "amount": amount,
                                  "status": "charged"})

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
