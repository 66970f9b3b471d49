"""Resilience: retries, circuit breakers, outlier detection, fault injection and their per-route settings. No mitmproxy."""
