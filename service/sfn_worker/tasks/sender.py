"""Sends the one terminal call for a token: SendTaskSuccess or SendTaskFailure, with retries."""

from __future__ import annotations

import asyncio

import structlog

from ..aws import SFNClient
from ..errors import (
    API_ERRORS,
    INVALID_OUTPUT_ERROR,
    KMS_REFUSED_CODES,
    ErrorKind,
    classify,
    describe,
    error_code,
    is_throttling,
    may_have_been_recorded,
)
from ..metrics import SourceMetrics
from ..retry import SEND_BACKOFF, Backoff, Retry, note_throttled
from .answering import AnswerGate
from .ended import Answered, Closed, Unanswered
from .outcome import BARE_FAILURE, Failure, Outcome, Success

log = structlog.get_logger("sfn_worker.sender")

# How long transient errors are retried before the worker gives up on a terminal call
# (the execution then waits for its own timeout). Shutdown passes a shorter deadline.
SEND_RETRY_SECONDS = 30 * 60.0

TERMINAL_API: dict[type[Outcome], str] = {
    Success: "SendTaskSuccess",
    Failure: "SendTaskFailure",
}


class ResultSender:
    def __init__(
        self,
        client: SFNClient,
        metrics: SourceMetrics,
        backoff: Backoff = SEND_BACKOFF,
        gate: AnswerGate | None = None,
    ) -> None:
        self._client = client
        self._metrics = metrics
        self._backoff = backoff
        # Shared by every source of the process (the calls share one connection pool).
        self._gate = gate or AnswerGate()

    async def send(
        self, token: str, outcome: Outcome, deadline: float | None = None, age: float = 0.0
    ) -> Answered | Closed | Unanswered:
        """Send ``outcome`` once; says how the task ended and what was actually sent. ``age``:
        when the task started (loop time): while answers queue, the oldest goes first."""
        loop = asyncio.get_running_loop()
        give_up_at = loop.time() + SEND_RETRY_SECONDS
        if deadline is not None:
            give_up_at = min(give_up_at, deadline)
        retry = Retry(self._backoff)
        maybe_recorded = False
        client = self._client
        gate = self._gate
        gate.begin()  # pending from here to the return: the gate measures backlogs
        try:
            while True:
                began = await gate.acquire(age)
                try:
                    try:
                        # Inline, not a helper coroutine: one frame less on every answer.
                        if isinstance(outcome, Success):
                            await client.send_task_success(taskToken=token, output=outcome.output)
                        elif outcome == BARE_FAILURE:
                            await client.send_task_failure(taskToken=token)
                        else:
                            await client.send_task_failure(
                                taskToken=token, error=outcome.error, cause=outcome.cause
                            )
                    finally:
                        gate.release(began)  # a retry waits its backoff without a turn
                except API_ERRORS as exc:
                    kind = classify(exc)
                    if kind is ErrorKind.TASK_GONE:
                        gate.settled()
                        if maybe_recorded:
                            log.info(
                                "terminal call already recorded by an earlier attempt",
                                answer=error_code(exc),
                            )
                            return Answered(outcome, recorded_earlier=True)
                        log.warning("task closed before it was answered", answer=error_code(exc))
                        return Closed.by(error_code(exc), at_answer=True)
                    if isinstance(outcome, Success) and error_code(exc) in {
                        "InvalidOutput",
                        "ValidationException",
                    }:
                        # The service refused the output itself; nothing was recorded, so the
                        # task still needs its one answer.
                        outcome = Failure.of(
                            INVALID_OUTPUT_ERROR,
                            f"Step Functions rejected the output: {describe(exc)}",
                        )
                        continue
                    if error_code(exc) in KMS_REFUSED_CODES and outcome != BARE_FAILURE:
                        # The token still gets its one answer: a failure without error or cause
                        # is not encrypted, so KMS cannot refuse it.
                        log.error(
                            "KMS refused the answer; answering with a bare SendTaskFailure",
                            error=describe(exc),
                            hint="give the worker's role kms:Decrypt/GenerateDataKey on the "
                            "activity's key, or check the key's state",
                        )
                        self._metrics.kms_fallbacks.inc()
                        outcome = BARE_FAILURE
                        continue
                    if kind is not ErrorKind.TRANSIENT:
                        log.error("terminal call rejected; not retrying", error=describe(exc))
                        return Unanswered()
                    maybe_recorded = maybe_recorded or may_have_been_recorded(exc)
                    throttled = is_throttling(exc)
                    delay = retry.next_delay(throttled)
                    if deadline is not None and loop.time() + delay > deadline:
                        return Unanswered(out_of_time=True)
                    if loop.time() + delay > give_up_at:
                        log.error(
                            "terminal call still failing; giving up",
                            error=describe(exc),
                            attempts=retry.failures + 1,
                        )
                        return Unanswered()
                    if throttled:
                        note_throttled(TERMINAL_API[type(outcome)])
                    else:
                        log.warning(
                            "terminal call failed; retrying",
                            error=describe(exc),
                            attempt=retry.failures + 1,
                            retry_in=round(delay, 3),
                        )
                    self._metrics.terminal_retries.inc()
                    await retry.wait(delay)
                else:
                    gate.settled()
                    return Answered(outcome)
        finally:
            gate.end()
