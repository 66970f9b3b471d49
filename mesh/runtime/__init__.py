"""The process shell below the addons: supervisor, inherited sockets, reload watcher, admin server, processes."""
