"""At the account's API quota: the fake's token buckets throttle like the service."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
import structlog

from sfn_worker import TaskContext, retry
from sfn_worker.examples import seed_handler
from sfn_worker.retry import SEND_BACKOFF, Retry
from sfn_worker.tasks import pacing
from sfn_worker.testing import ApiQuotas, FakeStepFunctions, Quota

from ..conftest import running_worker


async def test_the_fake_throttles_beyond_a_bucket_and_refills(fake: FakeStepFunctions) -> None:
    now = [0.0]
    quotas = fake.quotas = ApiQuotas(Quota(burst=3, refill_per_second=2.0), clock=lambda: now[0])
    assert [quotas.take("SendTaskSuccess") for _ in range(4)] == [True, True, True, False]
    assert quotas.take("GetActivityTask")  # one bucket per API
    assert quotas.take("DescribeActivity")  # not metered
    now[0] = 0.5
    assert quotas.take("SendTaskSuccess")
    assert not quotas.take("SendTaskSuccess")
    assert quotas.throttled["SendTaskSuccess"] == 2
    assert quotas.bound_seconds({"SendTaskSuccess": 13, "GetActivityTask": 5}) == 5.0


async def test_every_task_is_answered_once_at_the_quota(
    fake: FakeStepFunctions, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake.quotas = ApiQuotas(Quota(burst=20, refill_per_second=150.0))
    tasks = [fake.add_task({"in": "SUCCESS"}) for _ in range(200)]
    monkeypatch.setattr(retry, "THROTTLES", retry.ThrottleNotice())
    # A fresh proxy: one another test used under configure_logging stays bound to it.
    monkeypatch.setattr(retry, "log", structlog.get_logger("sfn_worker.retry"))
    with structlog.testing.capture_logs() as logs:
        async with running_worker(fake, seed_handler, concurrency=32, pollers=8):
            await fake.wait_for(lambda: all(t.state != "open" for t in tasks), timeout=30)
    assert {t.state for t in tasks} == {"succeeded"}
    assert all(t.terminal_calls == 1 and t.calls_after_told_closed == 0 for t in tasks)
    assert fake.quotas.throttled["GetActivityTask"] > 0
    assert fake.quotas.throttled["SendTaskSuccess"] > 0
    assert not fake.rejections
    # Hundreds of throttles, one warning per API (per minute), with the count.
    notices = [e for e in logs if e["event"].startswith("calls throttled")]
    assert sorted(e["api"] for e in notices) == ["GetActivityTask", "SendTaskSuccess"]
    assert not [e for e in logs if e["event"] in ("terminal call failed; retrying",
                                                  "poll failed; backing off")]  # fmt: skip


def test_a_throttled_call_never_waits_long_however_often_it_was_throttled() -> None:
    retry = Retry(SEND_BACKOFF)
    retry.failures = 30
    assert max(retry.next_delay(throttled=True) for _ in range(100)) <= 1.0
    assert retry.next_delay() >= SEND_BACKOFF.cap_seconds / 2


async def test_throttled_heartbeats_are_paced_so_no_task_times_out(
    fake: FakeStepFunctions, monkeypatch: pytest.MonkeyPatch
) -> None:
    """60 tasks beating every 0.2 s ask 300/s of a 100/s quota. Paced oldest-first, each
    task still beats about every 0.6 s, well inside a HeartbeatSeconds of 3 s; the
    operator is told once, with an interval that would fit."""
    monkeypatch.setattr(pacing, "MEASURE_SECONDS", 1.0)
    finish = asyncio.Event()

    async def handler(task_input: Any, ctx: TaskContext) -> Any:
        await finish.wait()
        return {}

    fake.record_calls = False
    tasks = [fake.add_task({}) for _ in range(60)]
    fake.quotas = ApiQuotas(Quota(burst=20, refill_per_second=100.0))
    fake.heartbeat_timeout_seconds = 3.0
    with structlog.testing.capture_logs() as logs:
        async with running_worker(fake, handler, concurrency=60, pollers=6, heartbeat_seconds=0.2):
            await fake.wait_for(lambda: fake.issued_count == 60, timeout=10)
            await fake.wait_for(lambda: fake.quotas is not None
                                and fake.quotas.throttled["SendTaskHeartbeat"] > 0)  # fmt: skip
            await fake.wait_for(lambda: sum(t.heartbeats for t in tasks) >= 60 * 6, timeout=20)
            assert fake.expire_overdue() == 0
            finish.set()
            await fake.wait_for(lambda: all(t.state != "open" for t in tasks), timeout=20)
    assert fake.heartbeat_timeouts == 0
    assert {t.state for t in tasks} == {"succeeded"}
    warnings = [e for e in logs if e["event"].startswith("heartbeats throttled")]
    assert len(warnings) == 1
    assert warnings[0]["suggested_heartbeat_seconds"] >= 0.6  # 60 tasks at <= 100/s
