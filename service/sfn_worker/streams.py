"""The standard streams: never closed.

``reopen_closed_standard_fds`` runs first thing in ``main``: a supervisor that starts the
worker with stdin, stdout or stderr closed (``<&-``) would otherwise let the next file the
process opens take descriptor 0-2, and uvloop aborts at exit closing it.
"""

from __future__ import annotations

import os
import sys


def reopen_closed_standard_fds() -> None:
    """Open /dev/null on whichever of descriptors 0-2 is closed (see the module doc), and
    give Python a stream object for it."""
    for fd in (0, 1, 2):
        try:
            os.fstat(fd)
        except OSError:
            null = os.open(os.devnull, os.O_RDWR)
            if null != fd:
                os.dup2(null, fd)
                os.close(null)
    if sys.stdin is None:
        sys.stdin = open(0, encoding="utf-8", closefd=False)  # noqa: SIM115 - lives as long as the process
    if sys.stdout is None:
        sys.stdout = open(1, "w", encoding="utf-8", closefd=False)  # noqa: SIM115
    if sys.stderr is None:
        sys.stderr = open(2, "w", encoding="utf-8", errors="backslashreplace", closefd=False)  # noqa: SIM115
