"""Small value types shared by the config schema: durations, host:port, names, regexes."""

from __future__ import annotations

import ipaddress
import re
from typing import Annotated

from pydantic import AfterValidator, BeforeValidator, ConfigDict, BaseModel

from .source import show

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*$")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}
_NAME = re.compile(r"^[a-z0-9]([a-z0-9._-]{0,61}[a-z0-9])?$")


class Model(BaseModel):
    """Base of every config model: frozen, and an unknown key is an error, not a silent no-op."""

    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True)


def parse_duration(value: object) -> float:
    """`250ms`, `2s`, `1.5m`, `1h` or a plain number of seconds, to seconds."""
    if isinstance(value, bool):
        raise ValueError(f"expected a duration like 250ms, 2s or 1m (got {show(value)})")
    if isinstance(value, (int, float)):
        seconds = float(value)
    elif isinstance(value, str) and (m := _DURATION.match(value)):
        seconds = float(m.group(1)) * _UNITS[m.group(2)]
    else:
        raise ValueError(f"expected a duration like 250ms, 2s or 1m (got {show(value)})")
    if seconds < 0:
        raise ValueError(f"expected a duration >= 0 (got {show(value)})")
    return seconds


def check_name(value: str) -> str:
    if not _NAME.match(value):
        raise ValueError(
            f"expected a name of lowercase letters, digits, '.', '-' or '_' (got {show(value)})"
        )
    return value


def check_address(value: str) -> str:
    try:
        ipaddress.ip_address(value)
    except ValueError:
        raise ValueError(f"expected an IP address such as 127.0.0.1 (got {show(value)})") from None
    return value


def check_regex(value: str) -> str:
    try:
        re.compile(value)
    except re.error as e:
        raise ValueError(f"invalid regular expression: {e} (got {show(value)})") from None
    return value


def split_hostport(value: object) -> object:
    """Accept `host:port` as shorthand for `{address: host, port: port}`."""
    if isinstance(value, str):
        host, sep, port = value.rpartition(":")
        if not sep or not port.isdigit() or not host:
            raise ValueError(f"expected host:port such as 127.0.0.1:9101 (got {show(value)})")
        return {"address": host.strip("[]"), "port": int(port)}
    return value


Duration = Annotated[float, BeforeValidator(parse_duration)]
Name = Annotated[str, AfterValidator(check_name)]
Address = Annotated[str, AfterValidator(check_address)]
Regex = Annotated[str, AfterValidator(check_regex)]


_TOKEN = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")


def check_header_name(value: str) -> str:
    if not _TOKEN.match(value):
        raise ValueError(f"expected an HTTP header name (letters, digits, '-', ...) (got {show(value)})")
    return value


HeaderName = Annotated[str, AfterValidator(check_header_name)]
