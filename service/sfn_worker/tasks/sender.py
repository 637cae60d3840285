"""Sends the one terminal call for a token: SendTaskSuccess or SendTaskFailure, with retries."""

from __future__ import annotations

import asyncio

import structlog

from ..aws import SFNClient
from ..aws_errors import (
    KMS_REFUSED_CODES,
    ErrorKind,
    classify,
    error_code,
    is_throttling,
    may_have_been_recorded,
)
from ..errors import INVALID_OUTPUT_ERROR
from ..metrics import SourceMetrics
from ..redact import describe
from ..retry import SEND_BACKOFF, Again, Backoff, Retry, Stop, retrying
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
        maybe_recorded = False
        client = self._client
        gate = self._gate
        sending = outcome  # what the next attempt sends: the outcome, or what replaced it

        async def attempt() -> Answered | Closed | Unanswered:
            began = await gate.acquire(age)
            try:
                # Inline, not a helper coroutine: one frame less on every answer.
                if isinstance(sending, Success):
                    await client.send_task_success(taskToken=token, output=sending.output)
                elif sending == BARE_FAILURE:
                    await client.send_task_failure(taskToken=token)
                else:
                    await client.send_task_failure(
                        taskToken=token, error=sending.error, cause=sending.cause
                    )
            finally:
                gate.release(began)  # a retry waits its backoff without a turn
            gate.settled()
            return Answered(sending)

        def judge(exc: BaseException) -> Again | Stop[Answered | Closed | Unanswered]:
            nonlocal sending, maybe_recorded
            kind = classify(exc)
            if kind is ErrorKind.TASK_GONE:
                gate.settled()
                if maybe_recorded:
                    log.info(
                        "terminal call already recorded by an earlier attempt",
                        answer=error_code(exc),
                    )
                    return Stop(Answered(sending, recorded_earlier=True))
                log.warning("task closed before it was answered", answer=error_code(exc))
                return Stop(Closed.by(error_code(exc), at_answer=True))
            if isinstance(sending, Success) and error_code(exc) in {
                "InvalidOutput",
                "ValidationException",
            }:
                # The service refused the output itself; nothing was recorded, so the task
                # still needs its one answer.
                sending = Failure.of(
                    INVALID_OUTPUT_ERROR, f"Step Functions rejected the output: {describe(exc)}"
                )
                return Again.AT_ONCE
            if error_code(exc) in KMS_REFUSED_CODES and sending != BARE_FAILURE:
                # The token still gets its one answer: a failure without error or cause is
                # not encrypted, so KMS cannot refuse it.
                log.error(
                    "KMS refused the answer; answering with a bare SendTaskFailure",
                    error=describe(exc),
                    hint="give the worker's role kms:Decrypt/GenerateDataKey on the "
                    "activity's key, or check the key's state",
                )
                self._metrics.kms_fallbacks.inc()
                sending = BARE_FAILURE
                return Again.AT_ONCE
            if kind is not ErrorKind.TRANSIENT:
                log.error("terminal call rejected; not retrying", error=describe(exc))
                return Stop(Unanswered())
            maybe_recorded = maybe_recorded or may_have_been_recorded(exc)
            return Again.AFTER_BACKOFF

        def before_wait(exc: BaseException, delay: float, retry: Retry) -> Stop[Unanswered] | None:
            if deadline is not None and loop.time() + delay > deadline:
                return Stop(Unanswered(out_of_time=True))
            if loop.time() + delay > give_up_at:
                log.error(
                    "terminal call still failing; giving up",
                    error=describe(exc),
                    attempts=retry.failures + 1,
                )
                return Stop(Unanswered())
            return None

        def on_retry(exc: BaseException, delay: float, retry: Retry) -> None:
            if not is_throttling(exc):  # throttles go to the process's throttle notice
                log.warning(
                    "terminal call failed; retrying",
                    error=describe(exc),
                    attempt=retry.failures + 1,
                    retry_in=round(delay, 3),
                )
            self._metrics.terminal_retries.inc()

        gate.begin()  # pending from here to the return: the gate measures backlogs
        try:
            return await retrying(
                attempt,
                backoff=self._backoff,
                judge=judge,
                throttle_api=lambda: TERMINAL_API[type(sending)],
                before_wait=before_wait,
                on_retry=on_retry,
            )
        finally:
            gate.end()
