"""The app's lifespan around the process's work: entered before the first poll, exited after
the last answer. A failure on entry stops the worker before it polls; on exit, it is logged."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

import structlog

from ..app import App
from ..context import NO_STATE
from ..errors import LifespanFailed

log = structlog.get_logger("sfn_worker.lifespan")


@contextlib.asynccontextmanager
async def lifespan(app: App) -> AsyncIterator[Any]:
    """Yields ``ctx.state``: what the app's lifespan yields, or an empty mapping."""
    factory = app.lifespan_factory
    if factory is None:
        yield NO_STATE
        return
    manager = factory(app)
    try:
        state = await manager.__aenter__()
    except Exception as exc:
        log.exception("the app's lifespan failed on entry; nothing was polled")
        raise LifespanFailed(f"the app's lifespan failed on entry: {exc!r}") from exc
    try:
        yield state
    finally:
        try:
            await manager.__aexit__(None, None, None)
        except Exception:
            log.exception("the app's lifespan failed on exit (every task was answered)")
