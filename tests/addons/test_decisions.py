"""Decisions: the decision log lands in flow metadata and in the comment mitmweb shows."""

from __future__ import annotations

from addons import keys
from tests.conftest import BASE


async def test_decisions_in_metadata_and_comment(gateway):
    async with gateway(BASE) as gw:
        flow = await gw.send("/nowhere")
        assert flow.metadata[keys.DECISIONS] == [["router", "no route for GET /nowhere on host example.com"]]
        assert flow.comment == "router: no route for GET /nowhere on host example.com"
