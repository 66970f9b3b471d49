"""Header enricher: adds headers from a lookup table keyed by the verified caller (or a header).

    plugins:
      tenant:
        plugin: examples/plugins/header_enricher.py:HeaderEnricher
        after: authn          # the caller is verified by then
        options:
          key: identity       # or header:x-api-client
          table: {alice: {x-tenant: acme, x-plan: gold}}
          unknown: reject     # 403 for a caller not in the table (default: pass unchanged)
"""

from __future__ import annotations

from typing import Literal

from mitmproxy import http
from pydantic import BaseModel, ConfigDict, Field, field_validator

from mitmesh import plugin


class Options(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    key: str = Field("identity", description="what is looked up: identity (the verified caller) or "
                                             "header:NAME (a request header)")
    table: dict[str, dict[str, str]] = Field(description="key → the headers to add")
    unknown: Literal["pass", "reject"] = Field("pass", description="a key not in the table: pass the "
                                                                   "request unchanged, or reject it (403)")

    @field_validator("key")
    @classmethod
    def _key(cls, value: str) -> str:
        if value != "identity" and not (value.startswith("header:") and len(value) > 7):
            raise ValueError(f"expected identity or header:NAME (got {value!r})")
        return value


class HeaderEnricher:
    Options = Options

    def __init__(self, options: Options):
        self.header = options.key[7:].lower() if options.key.startswith("header:") else None
        self.table = options.table
        self.reject = options.unknown == "reject"

    def request(self, flow: http.HTTPFlow) -> None:
        if flow.response or flow.error or not flow.live:
            return
        key = plugin.identity(flow) if self.header is None else flow.request.headers.get(self.header)
        headers = self.table.get(key) if key is not None else None
        if headers is None:
            if self.reject:
                plugin.reply(flow, 403, "unknown_caller", f"no table entry for caller {key!r}")
            else:
                plugin.decide(flow, f"no table entry for {key!r}: passed unchanged")
            return
        for name, value in headers.items():
            flow.request.headers[name] = value
        plugin.decide(flow, f"added {', '.join(headers)} for {key}")
