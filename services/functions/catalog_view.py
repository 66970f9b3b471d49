"""A demo function that calls another service through the mesh: the catalog's items, summarized.

It calls `http://catalog/items` by name; the HTTP_PROXY its runtime sets (the outbound listener of
the sidecar it runs beside) carries the call into the mesh with the function's own workload
identity. Only the standard library, as in a plain AWS Lambda deployment.
"""

import json
import os
import urllib.request

CATALOG = os.environ.get("CATALOG_URL", "http://catalog/items")


def handler(event, context):
    request = urllib.request.Request(CATALOG, headers={"x-request-id": context.aws_request_id})
    timeout = max(0.1, context.get_remaining_time_in_millis() / 1000 - 0.1)
    with urllib.request.urlopen(request, timeout=timeout) as resp:
        catalog = json.load(resp)
    items = catalog.get("items", [])
    prices = [i.get("price", i.get("price_cents", 0) / 100) for i in items]
    return {  # any JSON value is a 200 with content-type application/json
        "items": len(items),
        "cheapest": min(items, key=lambda i: i.get("price", i.get("price_cents", 0)))["name"] if items else None,
        "total": round(sum(prices), 2),
        "served_by": {"service": catalog.get("service"), "version": catalog.get("version")},
    }
