"""RequestId: a sane client id is kept, anything else is replaced; the id is echoed on the response."""

from __future__ import annotations

import pytest

from tests.conftest import BASE

CONFIG = BASE + """
  - {name: d, match: {path: {exact: /d}}, direct: {}}
"""


@pytest.mark.parametrize("sent, kept", [
    ("abc-123", True), ("a" * 128, True), ("a" * 129, False), ("evil\x01", False), ("two words", False),
    ("abc\n", False),  # `$` alone matches before a final newline: the whole value must be sane
])
async def test_request_id(gateway, sent, kept):
    async with gateway(CONFIG) as gw:
        flow = await gw.send("/d", headers={"x-request-id": sent})
        rid = flow.response.headers["x-request-id"]
        assert (rid == sent) is kept
        assert flow.request.headers["x-request-id"] == rid


async def test_generated_ids_are_unique(gateway):
    async with gateway(CONFIG) as gw:
        ids = {(await gw.send("/d")).response.headers["x-request-id"] for _ in range(20)}
        assert len(ids) == 20
