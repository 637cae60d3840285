"""The ``once`` source: one task whose token and input the process was started with (an ECS
task started by a ``arn:aws:states:::ecs:runTask.waitForTaskToken`` state).

The intake hands that one task to the queue; the runner works it like any other task
(heartbeats, output checks, the KMS fallback, tracing, the answer). The source keeps no
delivery: it only records how the task ended, so the command can stop the process and
say whether the token was answered.
"""

from __future__ import annotations

import asyncio
from typing import ClassVar, Self

from pydantic import Field

from ....config import SourceConfig
from ....metrics import SourceMetrics
from ...ended import Answered, Closed, TaskEnd
from ...intake import IntakeParts
from ...outcome import decode_input
from ...source import Origin
from ...source_worker import Intake, SourceParts, SourceWorker
from ...task import Task


class OnceConfig(SourceConfig):
    kind: ClassVar[str] = "once"
    token: str = Field(default="", repr=False)
    input_text: str | None = Field(default=None, repr=False)  # JSON; None: {}


class OnceSource:
    kind = "once"
    trace_system = "aws.stepfunctions"
    # Its one token must be answered: at shutdown with Worker.Shutdown.
    answers_at_shutdown = True
    tracks_deliveries = True  # only to hear how the task ended (settle)
    origin = Origin()

    def __init__(self) -> None:
        self.ended: TaskEnd | None = None
        self.finished = asyncio.Event()

    def span_attributes(self, task: Task) -> dict[str, str]:
        return {}

    async def admit(self, task: Task) -> Closed | None:
        return None

    def keep(self, task: Task) -> asyncio.Task[None] | None:
        return None

    async def settle(self, task: Task, ended: TaskEnd) -> None:
        self.ended = ended
        self.finished.set()

    async def aclose(self) -> None:
        return None


def once_task(config: OnceConfig, late: bool = False) -> Task:
    text = config.input_text if config.input_text is not None else "{}"
    try:
        return Task(config.token, decode_input(text), None, late)
    except ValueError as exc:
        return Task(config.token, None, str(exc), late)


class OnceIntake:
    """Queues the one task once the handler can start. Never cancelled before that (it
    "holds" the task from the start): a stop that comes first makes the task late, and a
    late task is answered Worker.Shutdown, not dropped."""

    def __init__(self, config: OnceConfig, parts: IntakeParts) -> None:
        self._config = config
        self._slots = parts.slots
        self._ready = parts.ready
        self._queue = parts.queue
        self._stopping = parts.stopping
        self._stop_requested = parts.stop_requested
        self._holds_task = True

    def holds_task(self) -> bool:
        return self._holds_task

    async def run(self) -> None:
        taken = await self._slots.take(1)
        try:
            await self._ready()
        except BaseException:
            self._slots.give(taken)
            raise
        late = self._stopping.is_set() or self._stop_requested.is_set()
        await self._queue.put(once_task(self._config, late))
        self._holds_task = False


class OnceWorker(SourceWorker):
    holds_task_from_start = True

    def __init__(self, config: OnceConfig, parts: SourceParts, metrics: SourceMetrics):
        self.once = OnceSource()
        super().__init__(config, parts, metrics, self.once)
        self._once_config = config

    @classmethod
    def serving(cls, config: SourceConfig, parts: SourceParts, metrics: SourceMetrics) -> Self:
        assert isinstance(config, OnceConfig)
        return cls(config, parts, metrics)

    def healthy(self) -> bool:
        """While it holds its task (before the hand-over, queued or running) or once it
        answered it: its intake ends by design as soon as the task is handed over."""
        ended = self.once.ended
        holds_or_answered = ended is None or isinstance(ended, Answered)
        return holds_or_answered and not self._too_many_stuck()

    def _make_intakes(self, parts: IntakeParts) -> list[Intake]:
        return [OnceIntake(self._once_config, parts)]
