"""mitmesh's public API for your own code: `mitmesh.plugin` (read what mitmesh decided about a flow,
answer it) and `mitmesh.testing` (pytest fixtures). Stable: internals (`mesh`, `addons`) may move."""
