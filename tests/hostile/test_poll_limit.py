"""A fleet past the service's open-poll limit on one activity ARN (ActivityWorkerLimitExceeded):
real worker processes at their defaults back off and lower their open polls instead of
hammering, say so once each, keep serving, and stop cleanly."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import signal

import pytest

from sfn_worker.testing import FakeStepFunctions, FakeTask, Fault

from ..test_process import BIN, WorkerProcess, worker_process

WORKERS = 3  # at defaults: 16 slots, so 16 open polls each (48 wanted)
LIMIT = 6  # open polls the fake allows on the ARN: the rest of the fleet holds the others
LOWERED = "too many workers poll this activity; lowering this worker's open polls and backing off"
# Refused polls over the window below. Each worker halves its target once per volley of
# refusals (16 + 8 + 4 + 2 + 1 at worst), then retries one poll on its backoff: about 110 in
# all at worst. Polls that each retried on their own backoff made ~270 in the same window.
MOST_REFUSED = 150
WINDOW_SECONDS = 15.0


@pytest.mark.timeout(120)
async def test_a_fleet_past_the_open_poll_limit_backs_off(fake: FakeStepFunctions) -> None:
    fake.max_polls_per_activity = LIMIT
    stats = fake.stats[fake.activity_arn]
    async with contextlib.AsyncExitStack() as stack:
        workers: list[WorkerProcess] = [
            await stack.enter_async_context(
                worker_process([str(BIN / "sfn-worker"), "run"], fake, SFN_WORKER_NAME=f"fleet-{n}")
            )
            for n in range(WORKERS)
        ]
        for worker in workers:
            await worker.wait_for_log(LOWERED)
        await fake.wait_for(lambda: stats.open_polls == LIMIT, timeout=20)
        # Not hammering: the refusals stop growing with time (a deadline, not a sleep: the
        # wait ends early, and fails, as soon as there are too many).
        with pytest.raises(TimeoutError):
            await fake.wait_for(lambda: stats.polls_refused > MOST_REFUSED, WINDOW_SECONDS)
        # Still serving: every task answered once, by whichever worker holds a poll.
        tasks = [fake.add_task({"in": "SUCCESS"}) for _ in range(30)]
        await fake.wait_for(lambda: all(t.state == "succeeded" for t in tasks), timeout=30)
        assert all(t.terminal_calls == 1 for t in tasks)
        for worker in workers:
            worker.signal_worker(signal.SIGTERM)
        fake.release_polls()  # open polls end as the service's 60 s would
        codes = await asyncio.gather(*(worker.exit_code() for worker in workers))
    assert codes == [0] * WORKERS
    # Once per worker, however many of its polls were refused.
    assert [sum(e.get("event") == LOWERED for e in w.events) for w in workers] == [1] * WORKERS
    assert not [
        e for w in workers for e in w.events if e.get("event") == "poll failed; backing off"
    ]


POLLS = 200  # open polls of one worker (SFN_POLLERS and SFN_CONCURRENCY)
FAILED = "poll failed; backing off"


@pytest.mark.timeout(120)
async def test_an_outage_under_hundreds_of_open_polls_is_one_log_line(
    fake: FakeStepFunctions,
) -> None:
    """Every open poll fails at once (5xx) and again on its backoff: the worker says so once
    for the source, with how many failed, not once per failed poll (200 polls made ~1,400
    lines in 30 s), and serves again once the service heals."""
    stats = fake.stats[fake.activity_arn]
    failures = 3 * POLLS  # every poll fails, then again on its backoff, and again
    async with worker_process(
        [str(BIN / "sfn-worker"), "run"], fake, SFN_POLLERS=str(POLLS),
        SFN_CONCURRENCY=str(POLLS), SFN_SHUTDOWN_GRACE_SECONDS="5",
    ) as worker:  # fmt: skip
        await fake.wait_for(lambda: stats.open_polls == POLLS, timeout=30)
        fake.inject("GetActivityTask", *[Fault.server_error(500)] * failures)
        fake.release_polls()  # every open poll returns and polls again, into the outage
        fake.resume_polls()
        await fake.wait_for(lambda: failed_polls(fake) == failures, timeout=30)
        task = fake.add_task({"in": "SUCCESS"})  # healed: the next polls get it
        await fake.wait_for(lambda: task.state == "succeeded", timeout=30)
        worker.signal_worker(signal.SIGTERM)
        fake.release_polls()
        assert await worker.exit_code() == 0
    assert task.terminal_calls == 1
    said = [e for e in worker.events if e.get("event") == FAILED]
    assert len(said) == 1, f"{len(said)} lines for {failures} failed polls"
    assert said[0]["error"].startswith("InternalFailure")


def failed_polls(fake: FakeStepFunctions) -> int:
    return sum(c.answer == "InternalFailure" for c in fake.calls_of("GetActivityTask"))


prlimit = shutil.which("prlimit")
WIDE = 250  # slots and open polls of one worker, near its soft file limit below
SOFT_ABOVE = 40  # files the soft limit leaves beside the open polls: all an idle worker needs
HARD = 4096
RAISED = "open files limit raised for the connection pools"


@pytest.mark.skipif(prlimit is None, reason="needs util-linux prlimit")
@pytest.mark.timeout(120)
async def test_open_polls_near_the_soft_file_limit_leave_files_for_answers(
    fake: FakeStepFunctions,
) -> None:
    """A soft open-files limit just above SFN_POLLERS (Docker's 1,024:4,096 on many hosts
    under SFN_POLLERS=1000): the open polls held nearly every file, so answers and
    heartbeats failed with "too many open files" (1,000 polls: 8,000 failed answers, 700
    tokens left at shutdown). The worker raises its soft limit, up to the hard one, to
    what its pools may open: every task is answered once, nothing fails to connect."""
    assert prlimit is not None
    tasks: list[FakeTask] = []
    async with worker_process(
        [prlimit, f"--nofile={WIDE + SOFT_ABOVE}:{HARD}", str(BIN / "sfn-worker"), "run"], fake,
        SFN_HANDLER="sfn_worker.examples:sleep_handler", SFN_POLLERS=str(WIDE),
        SFN_CONCURRENCY=str(WIDE), SFN_HEARTBEAT_SECONDS="1", SFN_SHUTDOWN_GRACE_SECONDS="5",
    ) as worker:  # fmt: skip
        await fake.wait_for(lambda: fake.stats[fake.activity_arn].open_polls == WIDE, 30)
        tasks = [fake.add_task({"seconds": 2}) for _ in range(WIDE)]
        await fake.wait_for(lambda: all(t.state == "succeeded" for t in tasks), timeout=60)
        worker.signal_worker(signal.SIGTERM)
        fake.release_polls()
        assert await worker.exit_code() == 0
    assert all(t.terminal_calls == 1 for t in tasks)
    assert not [e for e in worker.events if "too many open files" in str(e.get("error"))]
    assert not [e for e in worker.events if e.get("event", "").startswith("out of file")]
    raised = [e for e in worker.events if e.get("event") == RAISED]
    assert len(raised) == 1
    assert WIDE + SOFT_ABOVE < raised[0]["open_files_limit"] <= HARD


SHORT = "open files limit below what the connection pools may open"


@pytest.mark.skipif(prlimit is None, reason="needs util-linux prlimit")
@pytest.mark.timeout(60)
async def test_a_hard_file_limit_below_the_open_polls_is_said_at_start(
    fake: FakeStepFunctions,
) -> None:
    """The hard limit leaves no room to raise the soft one: said once at start, with the
    limit, what the pools may want and what to change, before a single answer fails."""
    assert prlimit is not None
    async with worker_process(
        [prlimit, f"--nofile={WIDE + SOFT_ABOVE}:{WIDE + SOFT_ABOVE}", str(BIN / "sfn-worker"),
         "run"], fake, SFN_POLLERS=str(WIDE), SFN_CONCURRENCY=str(WIDE),
    ) as worker:  # fmt: skip
        said = await worker.wait_for_log(SHORT)
        await worker.wait_for_log("worker started")
        worker.signal_worker(signal.SIGTERM)
        fake.release_polls()
        assert await worker.exit_code() == 0
    assert said["open_files_limit"] == WIDE + SOFT_ABOVE
    assert said["wanted"] > WIDE + SOFT_ABOVE
    assert "SFN_POLLERS" in said["hint"]
    assert [e.get("event") for e in worker.events].count(SHORT) == 1
