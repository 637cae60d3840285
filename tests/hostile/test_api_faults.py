"""No task lost, none answered twice: faults on every call, bad handlers, shutdown at any time."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import io
import json
import time
from typing import Any

import pytest
import structlog
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sfn_worker import SHUTDOWN_ERROR, FatalWorkerError, TaskContext, TaskFailed, aws_errors
from sfn_worker.examples import seed_handler
from sfn_worker.logs import configure_logging, reset_logging
from sfn_worker.retry import Backoff
from sfn_worker.settings import LogFormat, LogLevel
from sfn_worker.testing import FakeStepFunctions, FakeTask, Fault

from ..conftest import running_worker


def test_backoff_is_capped_and_jittered() -> None:
    backoff = Backoff(base_seconds=0.5, cap_seconds=20)
    for attempt in range(40):
        step = min(20.0, 0.5 * 2**attempt)
        delays = {backoff.delay(attempt) for _ in range(50)}
        assert all(step / 2 <= d <= step for d in delays)
        assert len(delays) > 1  # jittered: many workers do not retry in step
    assert max(backoff.delay(100) for _ in range(100)) <= 20


async def test_poll_faults_back_off_and_recover_without_losing_slots(
    fake: FakeStepFunctions,
) -> None:
    fake.inject(
        "GetActivityTask",
        Fault.throttle(),
        Fault.server_error(500),
        Fault.server_error(503),
        Fault.reset_before(),
        Fault.error("ActivityWorkerLimitExceeded"),
        Fault.throttle(),
    )
    release = asyncio.Event()
    both_running = asyncio.Event()
    running = 0

    async def handler(task_input: Any, ctx: TaskContext) -> Any:
        nonlocal running
        running += 1
        if running == 2:
            both_running.set()
        await release.wait()
        return task_input

    tasks = [fake.add_task({"n": n}) for n in range(4)]
    async with running_worker(fake, handler, pollers=2, concurrency=2):
        # Every slot came back after the failed polls: two tasks run at once.
        await asyncio.wait_for(both_running.wait(), 10)
        release.set()
        await fake.wait_for(lambda: all(t.state == "succeeded" for t in tasks))
    answers = [c.answer for c in fake.calls_of("GetActivityTask")]
    assert answers[:6].count("ok") <= 1 or "ThrottlingException" in answers
    assert fake.max_slots_in_use <= 2


@pytest.mark.parametrize(
    ("fault", "code"),
    [(None, "ActivityDoesNotExist"), (Fault.error("AccessDeniedException"), "AccessDenied")],
)
async def test_fatal_poll_errors_stop_the_worker(
    fake: FakeStepFunctions, fault: Fault | None, code: str
) -> None:
    overrides: dict[str, Any] = {"shutdown_grace_seconds": 1}
    if fault is None:
        overrides["activity_arn"] = fake.activity_arn + "-gone"
    else:
        fake.inject("GetActivityTask", fault)
    async with running_worker(fake, seed_handler, **overrides) as harness:
        with pytest.raises(FatalWorkerError, match=code):
            await harness.wait(timeout=20)


async def test_throttled_heartbeat_is_retried_and_the_handler_keeps_running(
    fake: FakeStepFunctions,
) -> None:
    fake.inject(
        "SendTaskHeartbeat", Fault.throttle(), Fault.server_error(503), Fault.reset_before()
    )
    enough = asyncio.Event()

    async def handler(task_input: Any, ctx: TaskContext) -> Any:
        await enough.wait()
        return "finished"

    task = fake.add_task({})
    async with running_worker(fake, handler, heartbeat_seconds=0.03):
        await fake.wait_for(lambda: task.heartbeats >= 2)
        enough.set()
        await fake.wait_for(lambda: task.state != "open")
    answers = [c.answer for c in fake.calls_of("SendTaskHeartbeat")]
    assert answers[:3] == ["ThrottlingException", "ServiceUnavailable", "reset"]
    assert task.state == "succeeded"


async def test_non_ascii_text_round_trips(fake: FakeStepFunctions) -> None:
    text = "José 日本語 🎉 \u0000 \u2028"

    def handler(task_input: Any, ctx: TaskContext) -> Any:
        if task_input.get("fail"):
            raise TaskFailed("Ünïcode.Error", text * 5_000)  # about 55,000 characters
        return {"echo": task_input["text"]}

    ok = fake.add_task({"text": text})
    failed = fake.add_task({"fail": True})
    async with running_worker(fake, handler):
        await fake.wait_for(lambda: ok.state != "open" and failed.state != "open")
    assert json.loads(ok.output or "") == {"echo": text}
    assert failed.error == "Ünïcode.Error"
    assert len(failed.cause or "") == 32_768
    assert not fake.rejections


async def test_a_blocking_async_handler_is_reported(fake: FakeStepFunctions) -> None:
    async def blocking(task_input: Any, ctx: TaskContext) -> Any:
        time.sleep(2.0)  # noqa: ASYNC251 - the mistake under test
        return "blocked the loop"

    task = fake.add_task({})
    with structlog.testing.capture_logs() as logs:
        async with running_worker(fake, blocking) as harness:
            # The monitor's overdue timer fires right after the handler returns, before the
            # answer can reach the fake.
            await fake.wait_for(lambda: task.state != "open")
            assert harness.worker.metrics.last_loop_lag > 1.0
    warnings = [e for e in logs if e["event"].startswith("event loop was blocked")]
    assert warnings
    assert task.state == "succeeded"


async def test_logs_never_contain_tokens_or_payloads(fake: FakeStepFunctions) -> None:
    secret_input = "INPUT-SECRET-7f3a"
    secret_output = "OUTPUT-SECRET-91bc"
    secret_cause = "CAUSE-SECRET-c0de"

    def handler(task_input: Any, ctx: TaskContext) -> Any:
        kind = task_input["kind"]
        if kind == "fail":
            raise TaskFailed("Business.Error", secret_cause)
        if kind == "crash":
            raise ValueError(secret_cause)
        if kind == "set":
            return {secret_output}
        return {"out": secret_output}

    stream = io.StringIO()
    configure_logging(LogLevel.DEBUG, LogFormat.JSON, "secret-test", stream=stream)
    try:
        fake.inject("SendTaskSuccess", Fault.throttle(), Fault.reset_after())
        tasks = [
            fake.add_task({"kind": kind, "secret": secret_input})
            for kind in ("ok", "fail", "crash", "set", "ok")
        ]
        tasks.append(fake.add_task(raw_input=f"not json {secret_input}"))
        async with running_worker(fake, handler, heartbeat_seconds=0.02) as harness:
            await fake.wait_for(lambda: all(t.state != "open" for t in tasks))
            slow = fake.add_task({"kind": "ok", "secret": secret_input})
            await fake.wait_for(lambda: slow.state != "open")
            await harness.stop()
    finally:
        reset_logging()
    logged = stream.getvalue()
    assert "task ended" in [json.loads(line).get("event") for line in logged.splitlines()]
    for secret in (secret_input, secret_output, secret_cause):
        assert secret not in logged
    for task in fake.tasks.values():
        assert task.token[9:40] not in logged  # not even a long piece of a token


# ---------------------------------------------------------------------------------------
# Exactly once, for any schedule of faults, durations and shutdown moment.

OPERATIONS = ["GetActivityTask", "SendTaskSuccess", "SendTaskFailure", "SendTaskHeartbeat"]
FAULTS = st.sampled_from(
    [
        Fault.throttle(),
        Fault.server_error(500),
        Fault.server_error(503),
        Fault.reset_before(),
        Fault.reset_after(),
        Fault.delay(0.05),
    ]
)


@st.composite
def schedules(draw: st.DrawFn) -> dict[str, Any]:
    count = draw(st.integers(min_value=1, max_value=6))
    faults = draw(st.lists(st.tuples(st.sampled_from(OPERATIONS), FAULTS), max_size=8))
    # A poll answer lost on the wire loses its task at the protocol level (it waits for its
    # timeout); that is not the worker's to fix, so the schedule leaves it out.
    faults = [
        (op, f) for op, f in faults if not (op == "GetActivityTask" and f.kind == "reset_after")
    ]
    return {
        "behaviours": draw(
            st.lists(
                st.sampled_from(["ok", "fail", "crash", "slow", "never"]),
                min_size=count,
                max_size=count,
            )
        ),
        "faults": faults,
        "expire": draw(st.sets(st.integers(min_value=0, max_value=count - 1), max_size=2)),
        "stop_after": draw(st.integers(min_value=0, max_value=count)),
        "late": draw(st.integers(min_value=0, max_value=2)),
    }


def _handed_out(task: FakeTask) -> bool:
    return task.issued or task.state != "open"


@settings(
    max_examples=40,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(schedule=schedules())
@pytest.mark.timeout(300)
async def test_every_token_is_answered_exactly_once(
    fake: FakeStepFunctions, schedule: dict[str, Any]
) -> None:
    async def handler(task_input: Any, ctx: TaskContext) -> Any:
        behaviour = task_input["b"]
        if behaviour == "fail":
            raise TaskFailed("Business.Error", "no")
        if behaviour == "crash":
            raise RuntimeError("boom")
        if behaviour == "slow":
            await asyncio.sleep(0.05)
        if behaviour == "never":
            await asyncio.Event().wait()
        return {"b": behaviour}

    fake.resume_polls()
    start = len(fake.tasks)
    for operation, fault in schedule["faults"]:
        fake.inject(operation, fault)
    tasks = [fake.add_task({"b": b}) for b in schedule["behaviours"]]
    async with running_worker(
        fake, handler, pollers=2, concurrency=3, heartbeat_seconds=0.02, shutdown_grace_seconds=1
    ) as harness:
        for index in sorted(schedule["expire"]):
            await fake.wait_for(functools.partial(_handed_out, tasks[index]), timeout=5)
            fake.expire(tasks[index])
        # "never" handlers and faults may keep this from happening: stop anyway.
        with contextlib.suppress(TimeoutError):
            await fake.wait_for(lambda: fake.closed_count >= schedule["stop_after"], timeout=2)
        harness.stop_event.set()
        await asyncio.sleep(0)
        for _ in range(schedule["late"]):
            fake.add_task({"b": "ok"})
        await asyncio.sleep(0)
        fake.release_polls()
        await harness.wait(timeout=30)

    for task in list(fake.tasks.values())[start:]:
        if not task.issued:
            continue
        if task.state == "timed_out":
            assert task.terminal_calls == 0
        else:
            assert task.terminal_calls == 1, (task.number, task.state)
        assert task.calls_after_told_closed == 0, task.number
    assert not fake.rejections
    for operation in OPERATIONS:
        fake.inject(operation)  # nothing left over for the next example
    fake._faults.clear()
    fake.clear_pending()


@pytest.mark.timeout(120)
async def test_shutdown_with_1000_in_flight_answers_every_task(fake: FakeStepFunctions) -> None:
    """Sync handlers in threads that ignore cancellation: all answered within the grace."""
    grace = 8.0
    started = 0
    all_started = asyncio.Event()
    loop = asyncio.get_running_loop()

    def stubborn(task_input: Any, ctx: TaskContext) -> Any:
        nonlocal started

        def count() -> None:
            nonlocal started
            started += 1
            if started == 1000:
                all_started.set()

        loop.call_soon_threadsafe(count)
        time.sleep(grace + 2)  # ignores ctx.cancel_requested on purpose
        return "too late"

    fake.record_calls = False
    tasks = [fake.add_task({"n": n}) for n in range(1000)]
    async with running_worker(
        fake, stubborn, pollers=20, concurrency=1000, shutdown_grace_seconds=grace
    ) as harness:
        await asyncio.wait_for(all_started.wait(), 60)
        signalled = loop.time()
        await harness.stop()
        took = loop.time() - signalled
    assert took < grace + 5
    assert all(t.terminal_calls == 1 for t in tasks)
    assert {(t.state, t.error) for t in tasks} == {("failed", SHUTDOWN_ERROR)}


def test_error_descriptions_never_echo_a_token() -> None:
    from botocore.exceptions import ClientError

    from sfn_worker.redact import describe

    token = "AAAAKgAAAAIAAAAAAAAAA" + "x9Z" * 200
    error = ClientError(
        {"Error": {"Code": "InvalidToken", "Message": f"Invalid token: '{token}'"}},
        "SendTaskSuccess",
    )
    text = describe(error)
    assert text.startswith("InvalidToken: Invalid token:")
    assert token[:64] not in text
    assert "<redacted>" in text
    assert len(describe(ValueError("y " * 1000))) <= 300


def _model_error_codes(service: str) -> set[str]:
    import botocore.session

    model = botocore.session.get_session().get_service_model(service)
    return {name for name in model.shape_names if model.shape_for(name).metadata.get("exception")}


@pytest.mark.parametrize("service", ["stepfunctions", "sqs"])
def test_every_error_code_of_the_services_has_a_deliberate_class(service: str) -> None:
    """Each error botocore's model of the service knows (and, for SQS, its query-compatible
    code, which botocore reports) is in exactly one class; a new one fails here first."""
    codes = _model_error_codes(service)
    if service == "sqs":
        codes |= {aws_errors.SQS_QUERY_CODES.get(code, code) for code in codes}
    classes = {
        "task gone": aws_errors.TASK_GONE_CODES,
        "fatal": aws_errors.FATAL_CODES,
        "transient": aws_errors.TRANSIENT_CODES,
        "rejected": aws_errors.REJECTED_CODES,
    }
    for code in sorted(codes):
        homes = [name for name, members in classes.items() if code in members]
        assert len(homes) == 1, f"{service} error {code!r} is in {homes or 'no class'}"
    assert aws_errors.THROTTLING_CODES <= aws_errors.TRANSIENT_CODES
    assert set(aws_errors.SQS_QUERY_CODES) <= _model_error_codes("sqs")
