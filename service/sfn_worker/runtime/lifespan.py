"""The app's lifespan around the process's work: entered before the first poll, exited after
the last answer. User code on both sides, so both are bounded:

- entry ends when the worker is asked to stop (a signal while the lifespan is starting, or
  a lifespan that never yields): it is cancelled and the worker exits 1 without polling;
- exit gets what is left of the grace period; a lifespan still exiting then is cancelled,
  and one that ignores cancellation is left behind (the process exits anyway).
A failure on entry stops the worker before it polls; a failure on exit is logged.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from typing import Any

import structlog

from ..app import App
from ..context import NO_STATE
from ..exceptions import LifespanFailed

log = structlog.get_logger("sfn_worker.lifespan")

# A cancelled entry may take this long to unwind (closing what it opened); a cancelled exit
# a moment only: the grace period is over by then.
ENTRY_UNWIND_SECONDS = 1.0
EXIT_UNWIND_SECONDS = 0.25


class Lifespan:
    def __init__(self, app: App) -> None:
        self._manager: AbstractAsyncContextManager[Any] | None = (
            app.lifespan_factory(app) if app.lifespan_factory is not None else None
        )
        self._entered = False

    async def enter(self, stopped: Callable[[], Awaitable[object]]) -> Any:
        """What the lifespan yields (``ctx.state``), or an empty mapping. Raises
        LifespanFailed when it raises, or when ``stopped`` returns first."""
        if self._manager is None:
            return NO_STATE
        entering = asyncio.ensure_future(self._manager.__aenter__())
        stop = asyncio.ensure_future(stopped())
        try:
            await asyncio.wait({entering, stop}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stop.cancel()
        if not entering.done():
            log.error("stopped while the app's lifespan was starting; nothing was polled")
            entering.cancel()
            await asyncio.wait({entering}, timeout=ENTRY_UNWIND_SECONDS)
            if not entering.done():
                log.warning("the app's lifespan ignores cancellation; leaving it behind")
                raise LifespanFailed("stopped while the app's lifespan was starting")
            if entering.cancelled() or entering.exception() is not None:
                raise LifespanFailed("stopped while the app's lifespan was starting")
            # It finished anyway: it holds resources, so it is exited below, bounded.
            self._entered = True
            raise LifespanFailed("stopped while the app's lifespan was starting")
        error = entering.exception()
        if error is not None:
            log.error(
                "the app's lifespan failed on entry; nothing was polled",
                exc_info=(type(error), error, error.__traceback__),
            )
            raise LifespanFailed(f"the app's lifespan failed on entry: {error!r}") from error
        self._entered = True
        return entering.result()

    async def exit(self, seconds: float) -> None:
        """Exit the lifespan if it was entered, within ``seconds`` (then cancelled)."""
        if self._manager is None or not self._entered:
            return
        self._entered = False
        exiting = asyncio.ensure_future(self._manager.__aexit__(None, None, None))
        await asyncio.wait({exiting}, timeout=max(0.0, seconds))
        if not exiting.done():
            log.warning(
                "the app's lifespan did not exit within the grace period; cancelling it",
                seconds=round(seconds, 2),
            )
            exiting.cancel()
            await asyncio.wait({exiting}, timeout=EXIT_UNWIND_SECONDS)
            if not exiting.done():
                log.warning("the app's lifespan ignores cancellation; leaving it behind")
                return
        if exiting.cancelled():
            return
        error = exiting.exception()
        if error is not None:
            log.error(
                "the app's lifespan failed on exit (every task was answered)",
                exc_info=(type(error), error, error.__traceback__),
            )
