"""Config model of serverless functions: a Python handler that runs in its own processes, only
when called (`functions: {name: {...}}`; a route targets one with `function: NAME`)."""

from __future__ import annotations

import re
from typing import Annotated

from pydantic import AfterValidator, Field, model_validator

from mesh.config.source import show
from mesh.config.types import Duration, Model

_HANDLER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*:[A-Za-z_][A-Za-z0-9_]*$")
_ENV = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def check_handler(value: str) -> str:
    if not _HANDLER.fullmatch(value):
        raise ValueError(f"expected module:function, e.g. services.functions.greet:handler (got {show(value)})")
    return value


def _check_env(value: dict[str, str]) -> dict[str, str]:
    for key in value:
        if not _ENV.fullmatch(key):
            raise ValueError(f"expected environment variable names like LOG_LEVEL (got {show(key)})")
    return value


class Function(Model):
    """One function: its handler and how many processes may run it (Lambda's and Knative's knobs)."""

    handler: Annotated[str, AfterValidator(check_handler)] = Field(
        description="module:function called with (event, context), AWS Lambda's Python signature")
    code: str = Field(".", description="directory put first on the handler's import path, relative to "
                                       "the config file (default: the config file's directory)")
    timeout: Annotated[Duration, Field(gt=0, le=900)] = Field(
        3.0, description="longest call; then 504 and the instance is replaced (default 3s, like Lambda)")
    concurrency: Annotated[int, Field(ge=1, le=1000)] = Field(
        1, description="calls in flight at once in one instance process (default 1, like Lambda)")
    min_instances: Annotated[int, Field(ge=0, le=100)] = Field(
        0, description="instances kept warm even when idle (default 0: scale to zero)")
    max_instances: Annotated[int, Field(ge=1, le=100)] = Field(
        4, description="most instance processes per proxy worker process (default 4)")
    idle: Annotated[Duration, Field(gt=0)] = Field(
        60.0, description="an instance with no call for this long is stopped, down to min_instances (default 60s)")
    queue: Annotated[int, Field(ge=0, le=10_000)] = Field(
        16, description="calls waiting for a free instance; one more is refused with 429 (default 16)")
    queue_timeout: Annotated[Duration | None, Field(gt=0)] = Field(
        None, description="longest wait in the queue before 429 (default: the function's timeout)")
    environment: Annotated[dict[str, str], AfterValidator(_check_env)] = Field(
        default_factory=dict, description="environment variables of the instance processes")
    outbound: str | None = Field(
        None, description="host:port of a sidecar's outbound listener the function calls mesh services "
                          "through (set as HTTP_PROXY; default none; `mitmesh function` sets its own)")

    @model_validator(mode="after")
    def _bounds(self) -> Function:
        if self.min_instances > self.max_instances:
            raise ValueError(f"min_instances: expected at most max_instances ({self.max_instances}) "
                             f"(got {self.min_instances})")
        return self
