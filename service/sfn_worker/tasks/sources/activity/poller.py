"""Pollers: take a free slot, long-poll GetActivityTask, hand the task to the queue."""

from __future__ import annotations

from ....aws import SFNClient
from ...intake import IntakeLoop, IntakeParts
from ...outcome import decode_input
from ...task import Task


class Poller(IntakeLoop):
    """One long-poll loop (see IntakeLoop: never cancelled while it holds a task)."""

    API = "GetActivityTask"
    NAME = "poller"
    FAILED = "poll failed; backing off"
    TOO_MANY = frozenset({"ActivityWorkerLimitExceeded"})  # 1,000 open polls on the ARN

    def __init__(
        self, number: int, parts: IntakeParts, *, client: SFNClient, activity_arn: str,
        worker_name: str,
    ) -> None:  # fmt: skip
        super().__init__(number, parts)
        self._client = client
        self._activity_arn = activity_arn
        self._worker_name = worker_name

    async def _fetch(self, count: int) -> list[Task]:
        self._metrics.polls_open.inc()
        try:
            # An empty long poll every minute per poller is noise, not a trace.
            with self._untraced():
                response = await self._client.get_activity_task(
                    activityArn=self._activity_arn, workerName=self._worker_name
                )
        finally:
            self._metrics.polls_open.dec()
        token = response.get("taskToken")
        if not token:
            self._metrics.empty_polls.inc()
            return []
        # A task that arrives once shutdown began is not started: it is failed at once.
        try:
            task_input, problem = decode_input(response.get("input")), None
        except ValueError as exc:
            task_input, problem = None, str(exc)
        return [Task(token, task_input, problem, late=self._stopping.is_set())]
