"""What differs between the sources of tasks, as the task runner sees it.

An activity's task is answered, whatever happens (Worker.Shutdown when the worker stops).
A callback queue's task came in an SQS message: a redelivered message is checked before it
runs, the message is kept invisible while its handler runs, deleted once the task is
answered or closed, and released (visible again at once) when the worker stops, so another
worker finishes it (tasks/callback.py).
"""

from __future__ import annotations

import asyncio
from typing import Protocol

from .ended import Closed, TaskEnd
from .task import Task


class TaskSource(Protocol):
    kind: str  # "activity" | "queue": the metrics label, the span's messaging.system
    # Whether a task the worker cannot finish is answered with Worker.Shutdown (True) or
    # released for another worker (False).
    answers_at_shutdown: bool
    # False: admit, keep and settle do nothing, and the runner skips them.
    tracks_deliveries: bool

    async def admit(self, task: Task) -> Closed | None:
        """Before the handler runs: None to run it, or the service says it is closed."""
        ...

    def keep(self, task: Task) -> asyncio.Task[None] | None:
        """As the handler starts: a task that keeps the task's delivery alive, if one is
        needed; the runner cancels it once the handler is done."""
        ...

    async def settle(self, task: Task, ended: TaskEnd) -> None:
        """After the task ended (answered, gone, released...)."""
        ...

    async def aclose(self) -> None:
        """The worker stops: finish what settling is under way."""
        ...


class ActivitySource:
    """Activities need nothing around their tasks: the token is the whole delivery."""

    kind = "activity"
    answers_at_shutdown = True
    tracks_deliveries = False

    async def admit(self, task: Task) -> Closed | None:
        return None

    def keep(self, task: Task) -> asyncio.Task[None] | None:
        return None

    async def settle(self, task: Task, ended: TaskEnd) -> None:
        return None

    async def aclose(self) -> None:
        return None
