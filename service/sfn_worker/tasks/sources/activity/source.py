"""An activity's TaskSource: nothing around its tasks, the token is the whole delivery."""

from __future__ import annotations

import asyncio

from ...ended import Closed, TaskEnd
from ...source import Origin
from ...task import Task


class ActivitySource:
    """Activities need nothing around their tasks: the token is the whole delivery."""

    kind = "activity"
    # OpenTelemetry registers no messaging.system for Step Functions activities.
    trace_system = "aws.stepfunctions"
    answers_at_shutdown = True
    tracks_deliveries = False

    def __init__(self, arn: str) -> None:
        self._arn = arn
        self.origin = Origin(activity_arn=arn)

    def span_attributes(self, task: Task) -> dict[str, str]:
        return {"aws.step_functions.activity.arn": self._arn}

    async def admit(self, task: Task) -> Closed | None:
        return None

    def keep(self, task: Task) -> asyncio.Task[None] | None:
        return None

    async def settle(self, task: Task, ended: TaskEnd) -> None:
        return None

    async def aclose(self) -> None:
        return None
