"""Open polls follow the free slots, up to SFN_POLLERS (default 32), and fewer while the
service answers ActivityWorkerLimitExceeded (tasks/open_polls.py)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import structlog

from sfn_worker import TaskContext
from sfn_worker.app import Handler
from sfn_worker.settings import DEFAULT_POLLERS, Settings
from sfn_worker.tasks.open_polls import OpenPolls
from sfn_worker.testing import FakeStepFunctions, Fault
from sfn_worker.worker import Worker
from tests.conftest import FAST_BACKOFF, WorkerHarness

LOWERED = "too many workers poll this activity; lowering this worker's open polls and backing off"


@contextlib.asynccontextmanager
async def default_worker(
    fake: FakeStepFunctions, handler: Handler, **settings: Any
) -> AsyncIterator[WorkerHarness]:
    """A worker with SFN_POLLERS left at its default."""
    values: dict[str, Any] = {
        "activity_arn": fake.activity_arn,
        "worker_name": "test-worker",
        "heartbeat_seconds": 0,
        "shutdown_grace_seconds": 5,
        **settings,
    }
    worker = Worker(Settings(**values), handler, poll_backoff=FAST_BACKOFF)
    harness = WorkerHarness(worker, fake)
    harness.start()
    try:
        yield harness
    finally:
        await harness.stop()


async def test_at_defaults_every_free_slot_has_an_open_poll(fake: FakeStepFunctions) -> None:
    release = asyncio.Event()
    started = 0
    three_running = asyncio.Event()

    async def handler(task_input: Any, ctx: TaskContext) -> Any:
        nonlocal started
        started += 1
        if started == 3:
            three_running.set()
        await release.wait()
        return task_input

    async with default_worker(fake, handler):
        await fake.wait_for(lambda: fake.open_polls == 16)
        for _ in range(3):
            fake.add_task({})
        await three_running.wait()
        # The three polls that got a task are not replaced: their slots are taken.
        await fake.wait_for(lambda: fake.open_polls == 13)
        assert fake.max_open_polls == 16
        release.set()
        await fake.wait_for(lambda: fake.closed_count == 3 and fake.open_polls == 16)


async def test_a_burst_the_slots_can_take_is_taken_in_one_round(fake: FakeStepFunctions) -> None:
    release = asyncio.Event()
    started = 0
    all_running = asyncio.Event()

    async def handler(task_input: Any, ctx: TaskContext) -> Any:
        nonlocal started
        started += 1
        if started == 16:
            all_running.set()
        await release.wait()
        return task_input

    async with default_worker(fake, handler):
        await fake.wait_for(lambda: fake.open_polls == 16)
        burst = [fake.add_task({"n": n}) for n in range(16)]
        await all_running.wait()
        # Each task went to a poll already open: 16 answered polls, none made after.
        polls = fake.calls_of("GetActivityTask")
        assert [c.answer for c in polls] == ["ok"] * 16
        assert fake.open_polls == 0
        release.set()
        await fake.wait_for(lambda: all(t.state == "succeeded" for t in burst))


async def test_thousands_of_slots_open_no_more_polls_than_the_cap(
    fake: FakeStepFunctions,
) -> None:
    async def handler(task_input: Any, ctx: TaskContext) -> Any:
        return task_input

    async with default_worker(fake, handler, concurrency=5000) as harness:
        await fake.wait_for(lambda: fake.open_polls == DEFAULT_POLLERS)
        task = fake.add_task({})
        await fake.wait_for(lambda: task.state == "succeeded")
        assert harness.worker.settings.pollers == DEFAULT_POLLERS
    assert fake.max_open_polls == DEFAULT_POLLERS


async def test_limit_exceeded_lowers_the_target_and_says_so_once(
    fake: FakeStepFunctions,
) -> None:
    fake.max_polls_per_activity = 5  # the rest of the fleet holds all but 5 of the 1,000

    async def handler(task_input: Any, ctx: TaskContext) -> Any:
        return task_input

    with structlog.testing.capture_logs() as logs:
        async with default_worker(fake, handler):
            # 16 polls at once, 11 refused: halved once (to 8) for that volley, then again
            # for the next refusals until the target is at most the 5 that stay open.
            await fake.wait_for(lambda: fake.stats[fake.activity_arn].polls_refused >= 11)
            await fake.wait_for(lambda: fake.open_polls == 5)
            tasks = [fake.add_task({"n": n}) for n in range(20)]
            await fake.wait_for(lambda: all(t.state == "succeeded" for t in tasks), timeout=30)
    refused = fake.stats[fake.activity_arn].polls_refused
    lowered = [e for e in logs if e["event"] == LOWERED]
    assert len(lowered) == 1, lowered
    assert lowered[0]["error"] == "ActivityWorkerLimitExceeded"
    assert lowered[0]["open_polls"] == 8
    # Not one warning per refused poll.
    assert not [e for e in logs if e["event"] == "poll failed; backing off"]
    assert refused >= 11
    assert all(t.terminal_calls == 1 for t in tasks)


async def test_polls_refused_together_halve_the_target_once() -> None:
    polls = OpenPolls(16)
    tickets = [await polls.enter() for _ in range(16)]
    for ticket in tickets[5:]:
        polls.leave(answered=False)
        polls.too_many("ActivityWorkerLimitExceeded", ticket)
    assert (polls.target(), polls.times_lowered) == (8, 1)
    # A request begun after the lowering and refused again lowers it again.
    tickets.append(await polls.enter())
    polls.too_many("ActivityWorkerLimitExceeded", tickets[-1])
    polls.leave(answered=False)
    assert polls.target() == 4
    # With 5 open and a target of 4, the next request waits for one to end.
    waiting = asyncio.create_task(polls.enter())
    await asyncio.sleep(0)
    assert not waiting.done()
    polls.leave(answered=True)
    polls.leave(answered=True)
    await waiting
    assert polls.open() == 4


async def test_the_target_grows_back_to_the_cap_slowly() -> None:
    polls = OpenPolls(16)
    polls.too_many("ActivityWorkerLimitExceeded", await polls.enter())
    polls.leave(answered=False)
    assert polls.target() == 8
    answered = 0
    while polls.target() < 16:
        await polls.enter()
        polls.leave(answered=True)
        answered += 1
    # One more open poll per target's worth of answered polls: 8 + 9 + ... + 15.
    assert answered == sum(range(8, 16))
    polls.too_many("ActivityWorkerLimitExceeded", await polls.enter())
    assert polls.target() == 8


async def test_a_refused_poll_keeps_its_place_through_its_backoff() -> None:
    polls = OpenPolls(4)
    tickets = [await polls.enter() for _ in range(4)]
    polls.too_many("ActivityWorkerLimitExceeded", tickets[0])  # held, not left
    assert (polls.target(), polls.open()) == (2, 4)
    # Over the target: the first two give their places up, the last two go again.
    assert [polls.keep(), polls.keep(), polls.keep(), polls.keep()] == [None, None, 1, 1]
    assert polls.open() == 2


async def test_throttled_polls_lower_the_target_without_a_warning(
    fake: FakeStepFunctions,
) -> None:
    """Hundreds of open polls each retried within a second of a throttle would keep the
    account throttled: a throttled volley halves the open polls, as a refused one does; the
    process's throttle notice reports it, not the too-many-workers warning."""
    fake.inject("GetActivityTask", *[Fault.throttle() for _ in range(16)])

    async def handler(task_input: Any, ctx: TaskContext) -> Any:
        return task_input

    with structlog.testing.capture_logs() as logs:
        async with default_worker(fake, handler):
            await fake.wait_for(lambda: fake.open_polls == 8)
            task = fake.add_task({})
            await fake.wait_for(lambda: task.state == "succeeded")
            await fake.wait_for(lambda: fake.open_polls == 8)
    assert fake.max_open_polls == 8
    assert not [e for e in logs if e["event"] == LOWERED]
    assert task.terminal_calls == 1
