"""Per-route request policies: authentication, authorization, API keys, CORS, rate limits, transforms. No mitmproxy."""
