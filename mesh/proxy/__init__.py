"""The proxy process: mitmproxy's Master with the addon chain (master) and its entry point (worker)."""
