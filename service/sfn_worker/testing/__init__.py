"""Helpers for testing handlers and workers: a fake Step Functions endpoint and ``run_handler``."""

from __future__ import annotations

from typing import Any

from ..context import TaskContext
from ..handlers import Handler, HandlerInvoker
from ..outcome import Failure, Outcome, encode_output, from_exception
from ..settings import HandlerMode
from .fake_sfn import DEFAULT_ACTIVITY_ARN, Call, FakeStepFunctions, FakeTask, Fault

__all__ = [
    "DEFAULT_ACTIVITY_ARN",
    "Call",
    "Failure",
    "FakeStepFunctions",
    "FakeTask",
    "Fault",
    "Outcome",
    "run_handler",
]


async def run_handler(
    handler: Handler,
    task_input: Any,
    *,
    mode: HandlerMode = HandlerMode.THREAD,
    ctx: TaskContext | None = None,
) -> Outcome:
    """Run a handler the way the worker does and return what it would send.

    >>> outcome = await run_handler(seed_handler, {"in": "SUCCESS"})
    >>> outcome.output
    '{"result":{"in":"SUCCESS"}}'
    """
    invoker = HandlerInvoker(handler, mode, concurrency=1)
    context = ctx or TaskContext(
        task_token="test-token", worker_name="test", activity_arn=DEFAULT_ACTIVITY_ARN
    )
    try:
        result = await invoker.start(task_input, context).result
    except Exception as exc:  # noqa: BLE001 - the handler's failure is the outcome under test
        return from_exception(exc)
    finally:
        await invoker.aclose()
    return encode_output(result)
