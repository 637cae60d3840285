"""Control over handlers: heartbeats driven by progress, process recycling."""

from __future__ import annotations

import collections
from typing import Any

import pytest
import structlog

from sfn_worker.testing import FakeStepFunctions

from . import handler_mistakes as mistakes
from .conftest import running_worker, sample

INTERVAL = 0.2
PROGRESS_SECONDS = 0.8
STALL_SECONDS = 1.6

HANDLERS = {
    "async": mistakes.progress_then_stall_async,
    "thread": mistakes.progress_then_stall,
    "process": mistakes.progress_then_stall,
}


@pytest.mark.timeout(60)
@pytest.mark.parametrize("mode", list(HANDLERS))
async def test_progress_mode_heartbeats_only_while_the_handler_reports_progress(
    fake: FakeStepFunctions, mode: str
) -> None:
    times: dict[int, list[float]] = {}
    fake.heartbeat_times = times
    warm = fake.add_task({"progress_seconds": 0, "stall_seconds": 0})  # a process is up
    with structlog.testing.capture_logs() as logs:
        async with running_worker(
            fake,
            HANDLERS[mode],
            handler_mode=mode,
            heartbeat_seconds=INTERVAL,
            heartbeat_mode="progress",
            concurrency=1,
            pollers=1,
        ) as harness:
            await fake.wait_for(lambda: warm.state == "succeeded", timeout=30)
            # Starting a handler process can take longer than an interval: not counted.
            before = sample(harness.worker, "sfn_worker_tasks_stalled_total")
            task = fake.add_task(
                {"progress_seconds": PROGRESS_SECONDS, "stall_seconds": STALL_SECONDS}
            )
            await fake.wait_for(lambda: task.issued)
            issued_at = _now()
            await fake.wait_for(lambda: task.state != "open", timeout=30)
            stalled = sample(harness.worker, "sfn_worker_tasks_stalled_total") - before
    beats = [t - issued_at for t in times.get(task.number, [])]
    # Heartbeats while the handler reports progress, none once it went quiet.
    assert len([b for b in beats if b < PROGRESS_SECONDS]) >= 2, beats
    quiet = [b for b in beats if b > PROGRESS_SECONDS + 2 * INTERVAL]
    assert quiet == [], beats
    assert stalled == 1
    assert any(e["event"].startswith("task stalled") for e in logs)
    assert task.state == "succeeded"


@pytest.mark.timeout(60)
async def test_timer_mode_heartbeats_a_quiet_handler_too(fake: FakeStepFunctions) -> None:
    times: dict[int, list[float]] = {}
    fake.heartbeat_times = times
    task = fake.add_task({"progress_seconds": 0.1, "stall_seconds": 1.0})
    async with running_worker(
        fake, mistakes.progress_then_stall_async, heartbeat_seconds=INTERVAL
    ) as harness:
        await fake.wait_for(lambda: task.state != "open", timeout=30)
        stalled = sample(harness.worker, "sfn_worker_tasks_stalled_total")
    assert len(times[task.number]) >= 3
    assert stalled == 0


@pytest.mark.slow
@pytest.mark.timeout(120)
async def test_process_recycling_keeps_a_leaking_pool_bounded(fake: FakeStepFunctions) -> None:
    tasks = [fake.add_task({}) for _ in range(8)]
    async with running_worker(
        fake,
        mistakes.leak,
        handler_mode="process",
        max_tasks_per_child=2,
        concurrency=1,
        pollers=1,
    ) as harness:
        await fake.wait_for(lambda: all(t.state != "open" for t in tasks), timeout=90)
        health = harness.worker.state().sources[0].processes
    outputs = [_output(t.output) for t in tasks]
    per_process = collections.Counter(o["pid"] for o in outputs)
    assert all(t.state == "succeeded" for t in tasks)  # nothing failed around a recycling
    assert len(per_process) == 4
    assert set(per_process.values()) == {2}
    rss = [o["rss"] for o in outputs]
    # Two leaks at most in any process: without recycling the last one would hold eight.
    assert max(rss) - min(rss) < 2 * mistakes.LEAK_BYTES
    assert health is not None
    assert health.deaths == 0  # recycled processes leave; they do not die


def _output(text: str | None) -> dict[str, Any]:
    import json

    return dict(json.loads(text or "{}"))


def _now() -> float:
    import asyncio

    return asyncio.get_running_loop().time()


async def test_in_progress_mode_a_timed_out_answer_still_cancels_the_handler(
    fake: FakeStepFunctions,
) -> None:
    import asyncio

    from sfn_worker import TaskContext

    cancelled = asyncio.Event()

    async def busy(task_input: Any, ctx: TaskContext) -> Any:
        try:
            while True:
                ctx.heartbeat()
                await asyncio.sleep(0.01)
        except asyncio.CancelledError:
            cancelled.set()
            raise

    task = fake.add_task({})
    async with running_worker(
        fake, busy, heartbeat_seconds=0.05, heartbeat_mode="progress"
    ) as harness:
        await fake.wait_for(lambda: task.heartbeats >= 2)
        fake.expire(task)
        await asyncio.wait_for(cancelled.wait(), 10)
    gone = sample(harness.worker, "sfn_worker_tasks_gone_total")  # every task ended by now
    assert task.terminal_calls == 0
    assert task.calls_after_told_closed == 0
    assert gone == 1
