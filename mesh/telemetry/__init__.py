"""Telemetry: Prometheus metrics and access records. No mitmproxy."""
