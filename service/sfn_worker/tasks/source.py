"""What differs between the sources of tasks, as the task runner sees it: each kind's
TaskSource lives with its kind (tasks/sources/<kind>/).

An activity's task is answered, whatever happens (Worker.Shutdown when the worker stops).
A callback queue's task came in an SQS message: a redelivered message is checked before it
runs, the message is kept invisible while its handler runs, deleted once the task is
answered or closed, and released (visible again at once) when the worker stops, so another
worker finishes it (tasks/sources/queue/worker.py).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Protocol

from .ended import Closed, TaskEnd
from .task import Task


@dataclass(frozen=True, slots=True)
class Origin:
    """Where a source's tasks come from, as ``TaskContext`` tells the handler."""

    activity_arn: str = ""
    queue_url: str = ""


class TaskSource(Protocol):
    kind: str  # the metrics and log label of the source's kind ("activity", "queue"...)
    trace_system: str  # a task span's messaging.system
    origin: Origin  # what the handler's TaskContext says about where its task came from
    # Whether a task the worker cannot finish is answered with Worker.Shutdown (True) or
    # released for another worker (False).
    answers_at_shutdown: bool
    # False: admit, keep and settle do nothing, and the runner skips them.
    tracks_deliveries: bool

    def span_attributes(self, task: Task) -> dict[str, str]:
        """What a task's span says of its source, beside its name and kind."""
        ...

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
