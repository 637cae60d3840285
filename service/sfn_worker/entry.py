"""``sfn-worker``'s first instructions: stop signals are caught before anything heavy loads.

Importing the worker takes over a second (botocore, aiohttp, pydantic). A SIGTERM in that
window used to kill it with no log line or, as PID 1 in a container (where the kernel gives
no default handlers), be dropped: the worker then started, took tasks, and lost them to the
SIGKILL that followed. So signals are recorded from the first instruction and honoured once
the runtime exists (runtime/signals.py); only the standard library is imported here, and the
package's own ``__init__`` loads nothing until asked. Closed standard descriptors are
reopened (on /dev/null) before anything else opens a file (streams.py).
"""

from __future__ import annotations

import signal
import sys
from types import FrameType

# Recorded until the runtime's own handlers take over, then replayed to them.
EARLY_SIGNALS: list[int] = []
CAUGHT = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGQUIT, signal.SIGUSR1)


def _record(signum: int, frame: FrameType | None) -> None:
    EARLY_SIGNALS.append(signum)


def main(argv: list[str] | None = None) -> int:
    for signum in CAUGHT:
        signal.signal(signum, _record)
    signal.signal(signal.SIGUSR2, signal.SIG_IGN)  # ignored throughout (runtime/signals.py)
    from .streams import reopen_closed_standard_fds  # the standard library only

    reopen_closed_standard_fds()  # before the imports below open any file
    from .cli import main as cli_main

    return cli_main(argv, early_signals=EARLY_SIGNALS)


if __name__ == "__main__":  # pragma: no cover - python -m sfn_worker goes through __main__
    sys.exit(main())
