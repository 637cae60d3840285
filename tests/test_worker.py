"""The worker against the fake endpoint: outcomes, slots, heartbeats, retries, shutdown."""

from __future__ import annotations

import asyncio
import json
import threading
from dataclasses import dataclass
from typing import Any, cast

import pytest

from sfn_worker import SHUTDOWN_ERROR, TaskContext, TaskFailed, non_blocking
from sfn_worker.examples import seed_handler
from sfn_worker.metrics import Metrics
from sfn_worker.tasks import heartbeat
from sfn_worker.tasks.heartbeat import Heartbeats
from sfn_worker.testing import FakeStepFunctions, Fault

from .conftest import running_worker, sample


async def test_seed_handler_success_and_failure(fake: FakeStepFunctions) -> None:
    ok = fake.add_task({"in": "SUCCESS"})
    bad = fake.add_task({"in": "RANDOM"})
    async with running_worker(fake, seed_handler):
        await fake.wait_for(lambda: ok.state != "open" and bad.state != "open")
    assert ok.state == "succeeded"
    assert json.loads(ok.output or "") == {"result": {"in": "SUCCESS"}}
    assert (bad.state, bad.error, bad.cause) == (
        "failed",
        "NO_SUCCESS_INPUT",
        'Input is not "SUCCESS"',
    )
    assert ok.worker_name == "test-worker"
    assert not fake.rejections


@pytest.mark.parametrize(
    ("handler_result", "error", "cause_part"),
    [
        (TaskFailed("Custom.Error", "it broke"), "Custom.Error", "it broke"),
        (ValueError("bad value"), "ValueError", "bad value"),
        ({1, 2}, "Worker.InvalidOutput", "not JSON-serialisable"),
        (b"bytes", "Worker.InvalidOutput", "not JSON-serialisable"),
        (float("nan"), "Worker.InvalidOutput", "not JSON-serialisable"),
        ("x" * 262_143, "Worker.OutputTooLarge", "262,145 bytes"),
        (TaskFailed("E" * 300, "c" * 40_000), "E" * 244 + "…[truncated]", "…[truncated]"),
    ],
    ids=["task-failed", "exception", "set", "bytes", "nan", "oversize", "truncated"],
)
@pytest.mark.parametrize("on_loop", [False, True], ids=["thread", "non-blocking"])
async def test_handler_results_that_become_failures(
    fake: FakeStepFunctions, handler_result: Any, error: str, cause_part: str, on_loop: bool
) -> None:
    def handler(task_input: Any, ctx: TaskContext) -> Any:
        if isinstance(handler_result, BaseException):
            raise handler_result
        return handler_result

    if on_loop:
        handler = non_blocking(handler)
    task = fake.add_task({"n": 1})
    after = fake.add_task({"in": "SUCCESS"})
    async with running_worker(fake, handler):
        await fake.wait_for(lambda: task.state != "open")
    assert task.state == "failed"
    assert task.error == error
    assert cause_part in (task.cause or "")
    assert len(task.error or "") <= 256
    assert len(task.cause or "") <= 32_768
    assert not fake.rejections
    assert after.terminal_calls == 1  # the worker kept serving


async def test_output_exactly_at_the_limit_succeeds(fake: FakeStepFunctions) -> None:
    task = fake.add_task({})
    async with running_worker(fake, lambda _input, _ctx: "é" * 131_071):  # 262,144 bytes
        await fake.wait_for(lambda: task.state != "open")
    assert task.state == "succeeded"


async def test_invalid_input_json_is_a_task_failure(fake: FakeStepFunctions) -> None:
    called = []
    broken = fake.add_task(raw_input="{not json")
    async with running_worker(fake, lambda task_input, _ctx: called.append(task_input)):
        await fake.wait_for(lambda: broken.state != "open")
    assert (broken.state, broken.error) == ("failed", "Worker.InvalidInput")
    assert "not valid JSON" in (broken.cause or "")
    assert called == []


async def test_concurrency_is_bounded_and_no_poll_without_a_free_slot(
    fake: FakeStepFunctions,
) -> None:
    release = asyncio.Event()
    all_slots_busy = asyncio.Event()
    running = 0
    peak = 0

    async def handler(task_input: Any, ctx: TaskContext) -> Any:
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        if running == 5:
            all_slots_busy.set()
        await release.wait()
        running -= 1
        return task_input

    tasks = [fake.add_task({"n": n}) for n in range(30)]
    async with running_worker(fake, handler, pollers=3, concurrency=5):
        await all_slots_busy.wait()
        # Every slot is busy: no poll may be open now.
        assert len(fake.issued) == 5
        assert fake.open_polls == 0
        release.set()
        await fake.wait_for(lambda: all(t.state == "succeeded" for t in tasks))
    assert peak == 5
    assert fake.max_slots_in_use <= 5
    assert all(t.terminal_calls == 1 for t in tasks)


async def test_heartbeats_while_an_async_handler_runs(fake: FakeStepFunctions) -> None:
    enough = asyncio.Event()

    async def handler(task_input: Any, ctx: TaskContext) -> Any:
        await enough.wait()
        return "done"

    task = fake.add_task({})
    async with running_worker(fake, handler, heartbeat_seconds=0.05):
        await fake.wait_for(lambda: task.heartbeats >= 3)
        enough.set()
        await fake.wait_for(lambda: task.state == "succeeded")
        heartbeats_at_end = task.heartbeats
    # The heartbeat stops before the terminal call.
    assert task.heartbeats == heartbeats_at_end


async def test_heartbeats_while_a_sync_cpu_bound_handler_runs(fake: FakeStepFunctions) -> None:
    enough = threading.Event()

    def handler(task_input: Any, ctx: TaskContext) -> Any:
        total = 0
        while not enough.is_set():  # burns CPU holding the GIL between switches
            total += sum(range(1000))
        return total > 0

    task = fake.add_task({})
    async with running_worker(fake, handler, heartbeat_seconds=0.05):
        await fake.wait_for(lambda: task.heartbeats >= 3)
        enough.set()
        await fake.wait_for(lambda: task.state == "succeeded")


async def test_heartbeat_task_timed_out_cancels_handler_and_sends_nothing(
    fake: FakeStepFunctions,
) -> None:
    cancelled = asyncio.Event()

    async def handler(task_input: Any, ctx: TaskContext) -> Any:
        if task_input.get("in") == "SUCCESS":
            return "next one"
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            cancelled.set()
            raise
        return "never"

    doomed = fake.add_task({"in": "LONG"})
    async with running_worker(fake, handler, heartbeat_seconds=0.05, pollers=1, concurrency=1):
        await fake.wait_for(lambda: doomed.heartbeats >= 1)
        fake.expire(doomed)  # the state's HeartbeatSeconds/TimeoutSeconds passed
        await asyncio.wait_for(cancelled.wait(), 5)
        following = fake.add_task({"in": "SUCCESS"})
        await fake.wait_for(lambda: following.state == "succeeded")
    terminal = [
        c
        for c in fake.calls
        if c.token == doomed.token and c.operation in ("SendTaskSuccess", "SendTaskFailure")
    ]
    assert terminal == []
    assert doomed.state == "timed_out"


async def test_a_non_blocking_handler_runs_on_the_loop_unless_told_otherwise(
    fake: FakeStepFunctions,
) -> None:
    threads: list[bool] = []

    @non_blocking
    def handler(task_input: Any, ctx: TaskContext) -> Any:
        threads.append(threading.current_thread() is threading.main_thread())
        return {}

    first = fake.add_task({})
    async with running_worker(fake, handler):
        await fake.wait_for(lambda: first.state == "succeeded")
    second = fake.add_task({})
    async with running_worker(fake, handler, handler_mode="thread"):
        await fake.wait_for(lambda: second.state == "succeeded")
    assert threads == [True, False]


async def test_a_heartbeat_on_the_wire_is_heard_before_the_answer(
    fake: FakeStepFunctions,
) -> None:
    """The handler returns while a heartbeat is in flight: the worker waits for its answer
    (not cancelling it), and an answer of TaskTimedOut means no terminal call at all."""
    finish = asyncio.Event()

    async def handler(task_input: Any, ctx: TaskContext) -> Any:
        await finish.wait()
        return "too late"

    held = Fault.delay(0.5)  # a worker that did not wait would answer meanwhile
    fake.inject("SendTaskHeartbeat", held)
    task = fake.add_task({})
    async with running_worker(fake, handler, heartbeat_seconds=0.05, pollers=1, concurrency=1):
        await asyncio.wait_for(held.arrived.wait(), 5)
        fake.expire(task)  # the delayed heartbeat will be answered TaskTimedOut
        finish.set()
        await fake.wait_for(lambda: task.told_closed)
    assert task.terminal_calls == 0
    assert task.calls_after_told_closed == 0
    assert [c.operation for c in fake.calls if c.token == task.token] == ["SendTaskHeartbeat"]


async def test_short_tasks_do_not_pile_up_heartbeat_entries() -> None:
    """Tasks far shorter than the interval: their stopped entries leave the heap long
    before they would come up (a busy worker must not hold one per task of the last
    interval)."""

    @dataclass
    class ShortTask:
        token: str = "t"
        token_hash: str = "h"
        progress: int = 0
        handler_started_at: float | None = 0.0

        def task_gone(self, answer: str) -> None:
            raise AssertionError("no beat is ever due")

    heartbeats = Heartbeats(cast(Any, None), 3600.0, Metrics().for_source("a", "activity"))
    for _ in range(10_000):
        await heartbeats.stop(heartbeats.start(ShortTask()))
    assert heartbeats.scheduled() <= 128


async def test_beats_that_fall_due_together_share_a_few_connections(
    fake: FakeStepFunctions, monkeypatch: pytest.MonkeyPatch
) -> None:
    """40 tasks whose beats fall due together: at most MAX_SENDING requests at once (each
    would otherwise open a connection), and every task still beats."""
    monkeypatch.setattr(heartbeat, "MAX_SENDING", 4)
    on_the_wire, most = 0, 0
    beat = fake._op_SendTaskHeartbeat

    async def slow_beat(params: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        nonlocal on_the_wire, most
        on_the_wire += 1
        most = max(most, on_the_wire)
        await asyncio.sleep(0.02)  # the service's time to answer
        on_the_wire -= 1
        return await beat(params)

    monkeypatch.setattr(fake, "_op_SendTaskHeartbeat", slow_beat)
    done = asyncio.Event()

    async def handler(task_input: Any, ctx: TaskContext) -> Any:
        await done.wait()
        return {}

    tasks = [fake.add_task({}) for _ in range(40)]
    async with running_worker(fake, handler, concurrency=40, pollers=8, heartbeat_seconds=0.1):
        await fake.wait_for(lambda: all(t.heartbeats >= 2 for t in tasks), timeout=20)
        done.set()
        await fake.wait_for(lambda: all(t.state == "succeeded" for t in tasks))
    assert most == 4


async def test_throttled_success_is_retried_and_recorded_once(fake: FakeStepFunctions) -> None:
    fake.inject("SendTaskSuccess", Fault.throttle(), Fault.server_error(503), Fault.throttle())
    task = fake.add_task({"in": "SUCCESS"})
    async with running_worker(fake, seed_handler):
        await fake.wait_for(lambda: task.state != "open")
    attempts = fake.calls_of("SendTaskSuccess")
    assert [c.answer for c in attempts] == [
        "ThrottlingException",
        "ServiceUnavailable",
        "ThrottlingException",
        "ok",
    ]
    assert task.terminal_calls == 1


async def test_lost_answer_then_task_timed_out_counts_as_done(fake: FakeStepFunctions) -> None:
    fake.inject("SendTaskSuccess", Fault.reset_after())
    task = fake.add_task({"in": "SUCCESS"})
    async with running_worker(fake, seed_handler):
        await fake.wait_for(lambda: len(fake.calls_of("SendTaskSuccess")) == 2)
    assert [c.answer for c in fake.calls_of("SendTaskSuccess")] == ["reset", "TaskTimedOut"]
    assert task.terminal_calls == 1
    assert fake.calls_of("SendTaskFailure") == []


async def test_shutdown_lets_running_tasks_finish(fake: FakeStepFunctions) -> None:
    started = asyncio.Event()

    async def handler(task_input: Any, ctx: TaskContext) -> Any:
        started.set()
        await ctx.wait_for_shutdown()
        return {"saved": True}

    task = fake.add_task({})
    async with running_worker(fake, handler) as harness:
        await started.wait()
        await harness.stop()
    assert task.state == "succeeded"
    assert json.loads(task.output or "") == {"saved": True}


async def test_shutdown_fails_leftovers_and_late_tokens(fake: FakeStepFunctions) -> None:
    started = asyncio.Event()
    handled = []

    async def handler(task_input: Any, ctx: TaskContext) -> Any:
        handled.append(task_input)
        started.set()
        await asyncio.Event().wait()  # never finishes on its own

    stuck = fake.add_task({"n": "stuck"})
    async with running_worker(
        fake, handler, pollers=2, concurrency=4, shutdown_grace_seconds=1
    ) as h:
        await started.wait()
        await fake.wait_for(lambda: fake.open_polls == 2)
        h.stop_event.set()
        await asyncio.sleep(0)
        late = fake.add_task({"n": "late"})  # an open poll hands this out after the signal
        await fake.wait_for(lambda: late.state != "open" and late.issued)
        fake.release_polls()
        await h.wait()
    assert (stuck.state, stuck.error) == ("failed", SHUTDOWN_ERROR)
    assert "interrupted" in (stuck.cause or "")
    assert (late.state, late.error) == ("failed", SHUTDOWN_ERROR)
    assert "not started" in (late.cause or "")
    assert handled == [{"n": "stuck"}]


async def test_second_signal_fails_running_tasks_at_once(fake: FakeStepFunctions) -> None:
    started = threading.Event()

    def handler(task_input: Any, ctx: TaskContext) -> Any:
        started.set()
        ctx.cancel_requested.wait(10)  # a sync handler that stops when asked
        return "stopped"

    task = fake.add_task({})
    async with running_worker(fake, handler, shutdown_grace_seconds=600) as harness:
        await asyncio.to_thread(started.wait, 5)
        harness.stop_event.set()
        fake.release_polls()
        await asyncio.sleep(0)
        loop = asyncio.get_running_loop()
        forced_at = loop.time()
        harness.force_event.set()
        await harness.wait(timeout=5)
        assert loop.time() - forced_at < 2
    assert (task.state, task.error) == ("failed", SHUTDOWN_ERROR)


async def test_process_mode_runs_sync_handlers_in_spawned_processes(
    fake: FakeStepFunctions,
) -> None:
    ok = fake.add_task({"in": "SUCCESS"})
    bad = fake.add_task({"in": "RANDOM"})
    async with running_worker(fake, seed_handler, handler_mode="process", concurrency=2):
        await fake.wait_for(lambda: ok.state != "open" and bad.state != "open", timeout=30)
    assert json.loads(ok.output or "") == {"result": {"in": "SUCCESS"}}
    assert (bad.state, bad.error) == ("failed", "NO_SUCCESS_INPUT")


async def test_run_handler_helper_returns_what_the_worker_would_send() -> None:
    from sfn_worker.testing import Failure, Success, run_handler

    assert await run_handler(seed_handler, {"in": "SUCCESS"}) == Success(
        '{"result":{"in":"SUCCESS"}}'
    )
    assert await run_handler(seed_handler, {"in": "x"}) == Failure(
        "NO_SUCCESS_INPUT", 'Input is not "SUCCESS"'
    )


async def test_a_handler_cancelled_by_itself_is_not_reported_as_shutdown(
    fake: FakeStepFunctions,
) -> None:
    async def handler(task_input: Any, ctx: TaskContext) -> Any:
        raise asyncio.CancelledError  # e.g. a library cancelled the handler's own task

    task = fake.add_task({})
    async with running_worker(fake, handler):
        await fake.wait_for(lambda: task.state != "open")
    assert (task.state, task.error) == ("failed", "CancelledError")


@pytest.mark.parametrize("code", ["KmsAccessDeniedException", "KmsInvalidStateException"])
@pytest.mark.parametrize("answer", ["success", "failure"])
async def test_a_kms_refusal_still_gives_the_token_its_one_answer(
    fake: FakeStepFunctions, code: str, answer: str
) -> None:
    operation = "SendTaskSuccess" if answer == "success" else "SendTaskFailure"
    fake.inject(operation, Fault.error(code))
    task = fake.add_task({"in": "SUCCESS" if answer == "success" else "NO"})
    async with running_worker(fake, seed_handler) as harness:
        await fake.wait_for(lambda: task.state != "open")
        fallbacks = sample(harness.worker, "sfn_worker_kms_fallback_answers_total")
    assert (task.state, task.error, task.cause, task.terminal_calls) == ("failed", "", "", 1)
    bare = fake.calls_of("SendTaskFailure")[-1]
    assert set(bare.params) == {"taskToken"}  # no error, no cause: nothing for KMS to encrypt
    assert fallbacks == 1


async def test_kms_throttling_is_retried_like_throttling(fake: FakeStepFunctions) -> None:
    fake.inject("SendTaskSuccess", Fault.error("KmsThrottlingException"))
    task = fake.add_task({"in": "SUCCESS"})
    async with running_worker(fake, seed_handler):
        await fake.wait_for(lambda: task.state != "open")
    assert [c.answer for c in fake.calls_of("SendTaskSuccess")] == ["KmsThrottlingException", "ok"]
    assert task.state == "succeeded"
