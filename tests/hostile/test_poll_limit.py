"""A fleet past the service's open-poll limit on one activity ARN (ActivityWorkerLimitExceeded):
real worker processes at their defaults back off and lower their open polls instead of
hammering, say so once each, keep serving, and stop cleanly."""

from __future__ import annotations

import asyncio
import contextlib
import signal

import pytest

from sfn_worker.testing import FakeStepFunctions

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
