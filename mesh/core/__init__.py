"""The core: listeners, routes, clusters, upstreams and the snapshot (MeshState) built from the config. No mitmproxy."""
