"""``sfn-worker once`` at its boundaries: one token, given at start, that must be answered
whatever happens to the process (signals at every moment, PID 1, a token or input that
is not what the state would pass, an answer whose reply is lost, closed streams)."""

from __future__ import annotations

import json
import signal

import pytest

from sfn_worker import SHUTDOWN_ERROR
from sfn_worker.testing import FakeStepFunctions, Fault

from ..test_once import once_process
from ..test_process import BIN, needs_pid_namespace, spawned_worker, unshare

ONCE = [str(BIN / "sfn-worker"), "once"]


async def test_sigterm_while_the_handler_imports_answers_worker_shutdown(
    fake: FakeStepFunctions,
) -> None:
    """ECS stops the task while the container starts (a slow import): the token was given
    to this process, so it is answered Worker.Shutdown, not left to the state's timeout.
    It used to be left: "stopped before polling began", exit 1."""
    task = fake.open_callback_task({})
    async with once_process(
        SFN_TASK_TOKEN=task.token,
        SFN_HANDLER="tests.slow_import:handler",
        SFN_SHUTDOWN_GRACE_SECONDS="5",
    ) as worker:
        await worker.wait_for_log("slow import started")
        worker.signal_worker(signal.SIGTERM)
        assert await worker.exit_code() == 0
    assert (task.state, task.error) == ("failed", SHUTDOWN_ERROR)
    assert task.terminal_calls == 1
    assert "not started" in (task.cause or "")
    assert not [e for e in worker.events if e.get("event") == "handler started"]


async def test_sigterm_while_the_apps_lifespan_starts_answers_worker_shutdown(
    fake: FakeStepFunctions,
) -> None:
    """A lifespan that never yields, then SIGTERM: the lifespan is cancelled and the token
    answered Worker.Shutdown (it used to be left unanswered, exit 1)."""
    task = fake.open_callback_task({})
    command = [*ONCE, "tests.apps:never_yields", "--source", "render"]
    settings = {"SFN_TASK_TOKEN": task.token, "SFN_SHUTDOWN_GRACE_SECONDS": "5"}
    async with spawned_worker(command, settings) as worker:
        await worker.wait_for_log("lifespan entering")
        worker.signal_worker(signal.SIGTERM)
        assert await worker.exit_code() == 0
    assert (task.state, task.error) == ("failed", SHUTDOWN_ERROR)
    assert task.terminal_calls == 1


@pytest.mark.parametrize(
    "token",
    [
        pytest.param("tok-\udcff-" + "A" * 40, id="not-utf8"),
        pytest.param("tok-" + "A" * 2100, id="over-2048"),
        pytest.param("tok-\n" + "A" * 40, id="control-character"),
        pytest.param('{"in": "SUCCESS"}', id="the-input-instead"),
    ],
)
async def test_a_value_that_is_no_task_token_is_a_configuration_error(
    fake: FakeStepFunctions, token: str
) -> None:
    """SFN_TASK_TOKEN that no state could have passed (bytes that are not UTF-8, longer
    than the API's 2,048, control characters, spaces): one line naming the variable, exit
    2, no call, and the value never in the logs. Bytes that are not UTF-8 used to crash
    the worker ("internal error") with the whole token in its last line."""
    task = fake.open_callback_task({})
    async with once_process(
        SFN_TASK_TOKEN=token, SFN_HANDLER="sfn_worker.examples:seed_handler"
    ) as worker:
        assert await worker.exit_code() == 2
    assert fake.calls == []
    assert task.state == "open"
    (line,) = [line for line in worker.raw if "SFN_TASK_TOKEN" in line]
    assert "configuration error" in line
    assert not any("AAAAAAAAAA" in line or "SUCCESS" in line for line in worker.raw)


# -- what holds (kept as cases) --------------------------------------------------------------
@needs_pid_namespace
async def test_as_pid_1_a_handler_that_swallows_cancellation_is_answered_within_the_grace(
    fake: FakeStepFunctions,
) -> None:
    task = fake.open_callback_task({})
    command = [str(unshare), "--pid", "--fork", "--mount-proc", *ONCE]
    async with spawned_worker(
        command,
        {
            "SFN_TASK_TOKEN": task.token,
            "SFN_HANDLER": "tests.handler_mistakes:swallow_cancellation",
            "SFN_SHUTDOWN_GRACE_SECONDS": "2",
        },
    ) as worker:
        await worker.wait_for_log("task started")
        worker.signal_worker(signal.SIGTERM)
        assert await worker.exit_code() == 0
    assert (task.state, task.error) == ("failed", SHUTDOWN_ERROR)
    assert task.terminal_calls == 1


async def test_a_token_gone_at_a_heartbeat_exits_1_past_a_stubborn_handler(
    fake: FakeStepFunctions,
) -> None:
    """The state timed out (the heartbeat says so) and the handler swallows cancellation:
    nothing more is sent for the token, and the process exits 1 instead of waiting for
    the handler."""
    task = fake.open_callback_task({})
    fake.inject("SendTaskHeartbeat", Fault.error("TaskTimedOut"))
    async with once_process(
        SFN_TASK_TOKEN=task.token,
        SFN_HANDLER="tests.handler_mistakes:swallow_cancellation",
        SFN_HEARTBEAT_SECONDS="1",
        SFN_SHUTDOWN_GRACE_SECONDS="3",
    ) as worker:
        assert await worker.exit_code() == 1
    assert [c.operation for c in fake.calls] == ["SendTaskHeartbeat"]
    assert task.calls_after_told_closed == 0
    ended = [e for e in worker.events if e.get("event") == "task ended"]
    assert [e["outcome"] for e in ended] == ["gone"]


async def test_an_answer_recorded_whose_reply_is_lost_exits_0(fake: FakeStepFunctions) -> None:
    """The success is recorded, the connection drops before the reply: the retry meets
    TaskTimedOut, which is this answer, not a failure: exit 0, one terminal call."""
    task = fake.open_callback_task({})
    fake.inject("SendTaskSuccess", Fault.reset_after())
    async with once_process(
        SFN_TASK_TOKEN=task.token,
        SFN_TASK_INPUT=json.dumps({"in": "SUCCESS"}),
        SFN_HANDLER="sfn_worker.examples:seed_handler",
    ) as worker:
        assert await worker.exit_code() == 0
    assert (task.state, task.terminal_calls) == ("succeeded", 1)
    assert [c.answer for c in fake.calls_of("SendTaskSuccess")] == ["reset", "TaskTimedOut"]


async def test_input_with_bytes_that_are_not_utf8_is_answered(fake: FakeStepFunctions) -> None:
    """The environment carries bytes, not text: a value that is not UTF-8 reaches the
    handler as lone surrogates, and an output carrying them fails the task with
    Worker.InvalidOutput instead of crashing the answer."""
    task = fake.open_callback_task({})
    async with once_process(
        SFN_TASK_TOKEN=task.token,
        SFN_TASK_INPUT='{"seconds": 0, "in": "\udcff"}',
        SFN_HANDLER="sfn_worker.examples:sleep_handler",
    ) as worker:
        assert await worker.exit_code() == 0
    assert (task.state, task.error) == ("failed", "Worker.InvalidOutput")
    assert task.terminal_calls == 1


async def test_an_explicit_handler_mode_is_kept_for_a_non_blocking_handler(
    fake: FakeStepFunctions,
) -> None:
    """SFN_HANDLER_MODE=process with a ``@non_blocking`` handler: ``run`` keeps the mode
    asked for, and so must ``once`` (it ran the handler on the event loop instead)."""
    task = fake.open_callback_task({})
    async with once_process(
        SFN_TASK_TOKEN=task.token,
        SFN_TASK_INPUT=json.dumps({"in": "SUCCESS"}),
        SFN_HANDLER="sfn_worker.examples:seed_handler",  # @non_blocking
        SFN_HANDLER_MODE="process",
    ) as worker:
        started = await worker.wait_for_log("worker started")
        assert await worker.exit_code() == 0
    assert started["handler_mode"] == "process"
    assert task.state == "succeeded"
