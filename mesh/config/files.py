"""Files a proxy follows while it runs (its config, the certificates it presents): whether one
changed since it was last read."""

from __future__ import annotations

import os


def stamp(path: str) -> tuple | None:
    """What changes when the file at `path` is written or replaced (its modification time, size
    and inode); None when it cannot be read."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_mtime_ns, st.st_size, st.st_ino)
