"""Process mode at its edges: what crosses the pipe back, when a handler's progress counts,
and what recycling costs. The real ``sfn-worker`` against the fake; the fault comes from
the handler module (its results, its import time)."""

from __future__ import annotations

import json
import signal

import pytest

from sfn_worker.context import token_hash
from sfn_worker.errors import INVALID_OUTPUT_ERROR, PROCESS_DIED_ERROR, SHUTDOWN_ERROR
from sfn_worker.testing import FakeStepFunctions

from ..test_process import BIN, worker_process

# A log line about one task is a few hundred characters; a 100 KB line is a payload.
MAX_LINE_CHARS = 4096


@pytest.mark.timeout(90)
async def test_a_result_whose_pickling_raises_is_invalid_output_and_the_process_lives(
    fake: FakeStepFunctions,
) -> None:
    first = fake.add_task({"kind": "ok"})
    broken = {kind: fake.add_task({"kind": kind}) for kind in ("value_error", "recursion")}
    last = fake.add_task({"kind": "ok"})
    async with worker_process(
        [str(BIN / "sfn-worker"), "run"],
        fake,
        SFN_HANDLER="tests.handler_mistakes:unpicklable_result",
        SFN_HANDLER_MODE="process",
        SFN_CONCURRENCY="1",
        SFN_POLLERS="1",
        SFN_HEARTBEAT_SECONDS="0",
        SFN_SHUTDOWN_GRACE_SECONDS="3",
    ) as worker:
        await fake.wait_for(lambda: all(t.state != "open" for t in fake.tasks.values()), 60)
        await worker.wait_for_log("task ended")
        worker.signal_worker(signal.SIGTERM)
        fake.release_polls()
        assert await worker.exit_code() == 0
    for kind, task in broken.items():
        assert (task.state, task.error) == ("failed", INVALID_OUTPUT_ERROR), kind
        assert task.token not in (task.cause or ""), kind
        assert len(task.cause or "") <= MAX_LINE_CHARS, kind
    assert "ValueError" in (broken["value_error"].cause or "")
    assert "RecursionError" in (broken["recursion"].cause or "")
    # The same process served the task after them: no death, no restart.
    assert json.loads(first.output or "")["pid"] == json.loads(last.output or "")["pid"]
    assert not any(e.get("event") == "handler process died" for e in worker.events)
    for line in worker.raw:
        assert len(line) <= MAX_LINE_CHARS, line[:200]
        assert all(t.token[:40] not in line for t in fake.tasks.values())


@pytest.mark.timeout(90)
async def test_in_progress_mode_the_clock_starts_when_the_handler_starts(
    fake: FakeStepFunctions,
) -> None:
    interval = 0.5
    fake.heartbeat_timeout_seconds = 4 * interval  # the state's HeartbeatSeconds
    # Reports progress all the time it runs; its process takes seconds to start.
    task = fake.add_task({"progress_seconds": 2 * interval, "stall_seconds": 0})
    async with worker_process(
        [str(BIN / "sfn-worker"), "run"],
        fake,
        SFN_HANDLER="tests.handler_mistakes:progress_then_stall",
        SFN_HANDLER_MODE="process",
        SFN_HEARTBEAT_MODE="progress",
        SFN_HEARTBEAT_SECONDS=str(interval),
        SFN_CONCURRENCY="1",
        SFN_POLLERS="1",
        SFN_SHUTDOWN_GRACE_SECONDS="3",
        SLOW_HANDLER_IMPORT_SECONDS="3",
    ) as worker:
        await fake.wait_for(lambda: task.state != "open", timeout=60)
        worker.signal_worker(signal.SIGTERM)
        fake.release_polls()
        assert await worker.exit_code() == 0
    # The seconds its process took to start were not the handler's: heartbeated, not stalled.
    assert task.state == "succeeded", task.state
    assert fake.heartbeat_timeouts == 0
    assert not any(e.get("event", "").startswith("task stalled") for e in worker.events)


@pytest.mark.slow
@pytest.mark.timeout(120)
async def test_recycling_after_every_task_keeps_a_replacement_ready(
    fake: FakeStepFunctions,
) -> None:
    # A process takes 4 s and more to start (a slow import); each task runs 6 s, long enough
    # for a replacement to start while it runs, even on a busy machine.
    tasks = [fake.add_task({"seconds": 6}) for _ in range(3)]
    async with worker_process(
        [str(BIN / "sfn-worker"), "run"],
        fake,
        SFN_HANDLER="tests.handler_mistakes:stamped_sleep",
        SFN_HANDLER_MODE="process",
        SFN_MAX_TASKS_PER_CHILD="1",
        SFN_CONCURRENCY="1",
        SFN_POLLERS="1",
        SFN_HEARTBEAT_SECONDS="0",
        SFN_SHUTDOWN_GRACE_SECONDS="3",
        SLOW_HANDLER_IMPORT_SECONDS="4",
    ) as worker:
        await fake.wait_for(lambda: all(t.state != "open" for t in tasks), timeout=90)
        worker.signal_worker(signal.SIGTERM)
        fake.release_polls()
        assert await worker.exit_code() == 0
    outputs = [json.loads(t.output or "{}") for t in tasks]
    assert len({o["pid"] for o in outputs}) == 3  # a process per task
    # From one answer to the next handler's start: the replacement started while the
    # previous task ran, so no task waits the seconds a start takes.
    waits = [o["started"] - t.closed_at for t, o in zip(tasks, outputs[1:], strict=False)]
    assert max(waits) < 2.0, waits  # a start takes 4 s


@pytest.mark.timeout(90)
async def test_sigterm_with_tasks_waiting_for_the_one_process_answers_every_token(
    fake: FakeStepFunctions,
) -> None:
    interval = 0.3
    running = fake.add_task({"cooperative": True})  # runs until cancelled
    waiting = [fake.add_task({"quick": True}) for _ in range(3)]  # held: no process is free
    async with worker_process(
        [str(BIN / "sfn-worker"), "run"],
        fake,
        SFN_HANDLER="tests.handler_mistakes:cancellable",
        SFN_HANDLER_MODE="process",
        SFN_PROCESSES="1",
        SFN_CONCURRENCY="4",
        SFN_POLLERS="1",
        SFN_HEARTBEAT_SECONDS=str(interval),
        SFN_SHUTDOWN_GRACE_SECONDS="2",
    ) as worker:
        await fake.wait_for(lambda: all(t.issued and t.heartbeats >= 2 for t in waiting), 60)
        assert all(t.state == "open" for t in [running, *waiting])
        worker.signal_worker(signal.SIGTERM)
        fake.release_polls()
        assert await worker.exit_code() == 0
    # Held, heartbeated, never run; at the end of the grace failed like the running one.
    for task in [running, *waiting]:
        assert (task.state, task.error, task.terminal_calls) == ("failed", SHUTDOWN_ERROR, 1)


@pytest.mark.timeout(90)
async def test_a_process_that_dies_leaving_a_child_with_its_pipe_fails_only_its_task(
    fake: FakeStepFunctions,
) -> None:
    # The child keeps the dead process's end of the pipe open for 30 s: no end of file.
    dying = fake.add_task({"die": True, "child_seconds": 30})
    waiting = [fake.add_task({}) for _ in range(3)]  # held for the one process
    async with worker_process(
        [str(BIN / "sfn-worker"), "run"],
        fake,
        SFN_HANDLER="tests.handler_mistakes:die_leaving_a_child",
        SFN_HANDLER_MODE="process",
        SFN_PROCESSES="1",
        SFN_CONCURRENCY="4",
        SFN_POLLERS="1",
        SFN_HEARTBEAT_SECONDS="0",
        SFN_SHUTDOWN_GRACE_SECONDS="3",
    ) as worker:
        # Seconds on a busy machine; was never (the worker waited for the pipe to close).
        await fake.wait_for(lambda: all(t.state != "open" for t in fake.tasks.values()), 20)
        worker.signal_worker(signal.SIGTERM)
        fake.release_polls()
        assert await worker.exit_code() == 0
    assert (dying.state, dying.error, dying.terminal_calls) == ("failed", PROCESS_DIED_ERROR, 1)
    assert "code 3" in (dying.cause or "")
    assert [(t.state, t.terminal_calls) for t in waiting] == [("succeeded", 1)] * 3


@pytest.mark.timeout(90)
async def test_a_process_death_is_logged_with_the_token_of_its_own_task(
    fake: FakeStepFunctions,
) -> None:
    first = fake.add_task({"in": "SUCCESS"})  # its task starts the process
    dying = fake.add_task({"die": True})
    async with worker_process(
        [str(BIN / "sfn-worker"), "run"],
        fake,
        SFN_HANDLER="tests.handler_mistakes:die_when_asked",
        SFN_HANDLER_MODE="process",
        SFN_PROCESSES="1",
        SFN_CONCURRENCY="1",
        SFN_POLLERS="1",
        SFN_HEARTBEAT_SECONDS="0",
        SFN_SHUTDOWN_GRACE_SECONDS="3",
    ) as worker:
        death = await worker.wait_for_log("handler process died", 30)
        worker.signal_worker(signal.SIGTERM)
        fake.release_polls()
        assert await worker.exit_code() == 0
    assert first.state == "succeeded"
    assert dying.error == PROCESS_DIED_ERROR
    # Was the first task's: the pipe's callbacks ran in the context of the task that
    # started the process, so every death of it and its replacements named that task.
    assert death["token"] == token_hash(dying.token)
    assert death["source"] == "fake-activity"
