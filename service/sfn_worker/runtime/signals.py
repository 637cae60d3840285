"""What each signal does to a running worker; the handlers only call the runtime's methods.

- SIGTERM, SIGINT, SIGHUP: stop in order (SIGHUP is what a terminal hang-up, supervisord and
  some init systems send to stop a program: the same ordered stop as SIGTERM, never a reload).
  A second one of them: stop now (answer what runs within seconds).
- SIGQUIT: stop now, as after a second signal.
- SIGUSR1: log what the worker holds (tasks per source, accessories); nothing changes.
- SIGUSR2: ignored (logged): no meaning is given to it, and its default action would end
  the process with every token unanswered.
Signals that arrived before the runtime existed (entry.py) are replayed in order.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import Iterator, Sequence
from typing import Protocol

import structlog

log = structlog.get_logger("sfn_worker.signals")

STOP: tuple[int, ...] = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
STOP_NOW: tuple[int, ...] = (signal.SIGQUIT,)
REPORT: tuple[int, ...] = (signal.SIGUSR1,)
IGNORED: tuple[int, ...] = (signal.SIGUSR2,)
HANDLED = (*STOP, *STOP_NOW, *REPORT, *IGNORED)


class Stoppable(Protocol):
    def request_stop(self) -> None: ...
    def request_forced_stop(self) -> None: ...
    def report(self) -> dict[str, object]: ...


class Signals:
    def __init__(self, runtime: Stoppable) -> None:
        self._runtime = runtime
        self._stopping = False

    def on_signal(self, signum: int) -> None:
        name = signal.Signals(signum).name
        if signum in REPORT:
            log.info("state report", signal=name, **self._runtime.report())
        elif signum in IGNORED:
            log.info("signal ignored", signal=name)
        elif signum in STOP_NOW or self._stopping:
            log.warning("signal received: stopping now", signal=name)
            self._stopping = True
            self._runtime.request_forced_stop()
        else:
            log.info("signal received: shutting down", signal=name)
            self._stopping = True
            self._runtime.request_stop()

    @contextlib.contextmanager
    def installed(self, early: Sequence[int] = ()) -> Iterator[None]:
        """Handle signals on the running loop while the block runs; replay ``early`` ones
        (read after the loop's handlers are in place: none can fall between the two)."""
        loop = asyncio.get_running_loop()
        # Installed explicitly: as PID 1 in a container the kernel gives no default handlers.
        for signum in HANDLED:
            loop.add_signal_handler(signum, self.on_signal, signum)
        try:
            for signum in list(early):
                self.on_signal(signum)
            yield
        finally:
            for signum in HANDLED:
                loop.remove_signal_handler(signum)
