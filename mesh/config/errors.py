"""The command line's one error: a sentence for the user and an exit code (2: bad input, 1: failed)."""

from __future__ import annotations

BAD_INPUT = 2  # what was typed names nothing usable: a missing file, a malformed URL or value
FAILED = 1  # the input was fine and the operation failed: an invalid config, an unreachable admin


class CommandError(Exception):
    """Raised by a command's code below the CLI; `mitmesh` prints `mitmesh CMD: MESSAGE` and exits
    with `code`, never with a traceback."""

    def __init__(self, message: str, code: int = FAILED):
        super().__init__(message)
        self.code = code
