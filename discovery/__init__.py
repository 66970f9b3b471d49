"""Service discovery: sources (static config, mDNS) feed one registry of instances; no mitmproxy here."""

from .registry import Event, Instance, Registry
from .source import Source
from .static import StaticSource

__all__ = ["Event", "Instance", "Registry", "Source", "StaticSource"]
