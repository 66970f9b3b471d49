"""Small value types shared by the config schema: durations, host:port, names, regexes."""

from __future__ import annotations

import ipaddress
import json
import re
from typing import Annotated

from pydantic import AfterValidator, BeforeValidator, ConfigDict, BaseModel

from mesh.config.source import show

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*$")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}
_NAME = re.compile(r"^[a-z0-9]([a-z0-9._-]{0,61}[a-z0-9])?$")
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(B|KB|KiB|MB|MiB|GB|GiB)?\s*$")
_SIZE_UNITS = {None: 1, "B": 1, "KB": 1000, "KiB": 1024, "MB": 1000**2, "MiB": 1024**2,
               "GB": 1000**3, "GiB": 1024**3}
# RFC 9110 §5.6.2: a field name (§5.1) and a method (§9.1) are tokens; one grammar for the names a
# config writes (str) and those a request or a function's response carries (bytes)
TCHAR = r"[!#$%&'*+\-.^_`|~0-9A-Za-z]"  # one character of a token
_TOKEN = re.compile(TCHAR + "+")
TOKEN = re.compile(TCHAR.encode() + b"+")


METHODS = ("GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "TRACE", "CONNECT")


class Model(BaseModel):
    """Base of every config model: frozen, and an unknown key is an error, not a silent no-op."""

    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True)


def one_of(model: BaseModel, names: tuple[str, ...], *, required: bool = True) -> None:
    """For a model_validator: exactly one (or, not required, at most one) of `names` is set."""
    given = [n for n in names if getattr(model, n) is not None]
    if len(given) > 1 or (required and not given):
        raise ValueError(
            f"expected exactly one of {', '.join(names)} (got {', '.join(given) or 'none'})"
        )


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


def parse_size(value: object) -> int:
    """`512KiB`, `1MiB`, `10MB` or a plain number of bytes, to bytes."""
    if isinstance(value, bool):
        raise ValueError(f"expected a size like 64KiB, 1MiB or 10MB (got {show(value)})")
    if isinstance(value, int):
        size = value
    elif isinstance(value, str) and (m := _SIZE.match(value)):
        size = int(float(m.group(1)) * _SIZE_UNITS[m.group(2)])
    else:
        raise ValueError(f"expected a size like 64KiB, 1MiB or 10MB (got {show(value)})")
    if size < 0:
        raise ValueError(f"expected a size >= 0 (got {show(value)})")
    return size


def check_header(value: object) -> str:
    """A header name, lowercased (HTTP/2 needs lowercase names anyway)."""
    if not isinstance(value, str) or not _TOKEN.fullmatch(value.lower()):
        raise ValueError(f"expected a header name such as x-user (got {show(value)})")
    return value.lower()


def loopback(host: str) -> bool:
    """Whether a host name or address always means this host: localhost, or a loopback address
    (an IPv4 one mapped into IPv6 too, as a dual-stack socket names its IPv4 peers)."""
    if host.lower() == "localhost":
        return True
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return address.is_loopback


def check_cidr(value: str) -> str:
    try:
        return str(ipaddress.ip_network(value, strict=True))
    except ValueError as e:
        raise ValueError(f"expected an address or CIDR block such as 10.0.0.0/8 ({e}) "
                         f"(got {show(value)})") from None


def check_name(value: str) -> str:
    if not _NAME.fullmatch(value):
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


# RFC 9110 §5.5: a field value never holds NUL, CR, LF or another control character but HTAB; a CR
# or LF inside a parsed value is also what an obs-fold (RFC 9112 §5.2) leaves behind
BAD_FIELD_VALUE = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")


def load_json(value: str | bytes) -> object:
    """json.loads, where nesting too deep for the parser (RecursionError, which is no ValueError)
    is a ValueError too: for JSON from anyone (a client's body, an issuer, an etcd record)."""
    try:
        return json.loads(value)
    except RecursionError:
        raise ValueError("JSON nested too deeply") from None


def shown(text: object) -> str:
    """`text` from someone else for a log line or a terminal: a newline (a line of its own), an
    escape sequence (hiding what follows) or a byte that is no UTF-8 (a lone surrogate, which a
    log file cannot even be written with) comes out escaped; printable text as it is."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in str(text))


def clip(raw: bytes) -> str:
    """Wire bytes for a message: escaped, at most 40 of them."""
    text = repr(raw[:40])[1:]
    return text if len(raw) <= 40 else text[:-1] + "…'"


def field_refusal(name: bytes, value: bytes) -> str | None:
    """What makes one header field unfit to send (RFC 9110 §5.1, §5.5), else None: the rules
    mesh/core/heads.py holds a request's fields to, for fields the proxy writes from what something
    else said (a function's response). Names the field, never its value: it may be a secret."""
    if not TOKEN.fullmatch(name):
        return f"header name {clip(name)} is not a token (RFC 9110 §5.1)"
    if BAD_FIELD_VALUE.search(value):
        return f"header {clip(name)} holds a control character (RFC 9110 §5.5)"
    return None


Duration = Annotated[float, BeforeValidator(parse_duration)]
Name = Annotated[str, AfterValidator(check_name)]
Address = Annotated[str, AfterValidator(check_address)]
Regex = Annotated[str, AfterValidator(check_regex)]
Size = Annotated[int, BeforeValidator(parse_size)]
HeaderName = Annotated[str, BeforeValidator(check_header)]
Cidr = Annotated[str, AfterValidator(check_cidr)]


def check_header_name(value: str) -> str:
    if not _TOKEN.fullmatch(value):
        raise ValueError(f"expected an HTTP header name (letters, digits, '-', ...) (got {show(value)})")
    return value


# case kept, for headers the proxy writes (transforms); HeaderName lowercases for matching
HeaderToken = Annotated[str, AfterValidator(check_header_name)]
