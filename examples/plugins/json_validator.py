"""JSON request validator: refuses (400) a request body that does not match a JSON schema.

    plugins:
      orders-schema:
        plugin: examples/plugins/json_validator.py:JsonValidator
        before: forward
        options:
          methods: [POST, PUT]
          schema: {type: object, required: [item], properties: {item: {type: string}}}
"""

from __future__ import annotations

import json

import jsonschema
from mitmproxy import http
from pydantic import BaseModel, ConfigDict, Field, field_validator

from mitmesh import plugin


class Options(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    json_schema: dict = Field(alias="schema", description="the JSON schema (draft 2020-12) bodies must match")
    methods: list[str] = Field(["POST", "PUT", "PATCH"], description="methods whose body is checked")

    @field_validator("json_schema")
    @classmethod
    def _valid_schema(cls, value: dict) -> dict:
        try:
            jsonschema.Draft202012Validator.check_schema(value)
        except jsonschema.SchemaError as e:
            raise ValueError(f"not a valid JSON schema: {e.message}") from None
        return value


class JsonValidator:
    Options = Options

    def __init__(self, options: Options):
        self.validator = jsonschema.Draft202012Validator(options.json_schema)
        self.methods = frozenset(m.upper() for m in options.methods)

    def request(self, flow: http.HTTPFlow) -> None:
        if flow.response or flow.error or not flow.live or flow.request.method not in self.methods:
            return
        try:
            body = json.loads(flow.request.content or b"")
        except ValueError as e:
            plugin.reply(flow, 400, "invalid_json", f"the request body is not JSON: {e}")
            return
        error = jsonschema.exceptions.best_match(self.validator.iter_errors(body))
        if error is not None:
            where = "/".join(str(p) for p in error.absolute_path) or "(the body)"
            plugin.reply(flow, 400, "schema_violation", f"{where}: {error.message}")
            return
        plugin.decide(flow, "body matches the schema")
