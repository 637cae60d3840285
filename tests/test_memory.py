"""100,000 tasks through a real worker process: memory stays flat after warm-up."""

from __future__ import annotations

import asyncio
import functools
import os
import sys
from pathlib import Path

import psutil
import pytest

from sfn_worker.testing import FakeStepFunctions

TOTAL = 100_000
WARM_UP = 20_000
# A leak of ~160 bytes per task would already cross this over the 80,000 measured tasks.
ALLOWED_GROWTH_BYTES = 12 * 1024 * 1024


def _answered_at_least(fake: FakeStepFunctions, count: int) -> bool:
    return fake.closed_count >= count


@pytest.mark.slow
@pytest.mark.timeout(900)
async def test_rss_is_flat_over_100k_tasks(fake: FakeStepFunctions) -> None:
    fake.record_calls = False
    fake.forget_closed = True  # the fake keeps counters only, so it does not grow either
    fake.feed(TOTAL, {"in": "SUCCESS"})
    env = {k: v for k, v in os.environ.items() if not k.startswith("SFN_")}
    env.update(
        SFN_ACTIVITY_ARN=fake.activity_arn,
        SFN_HANDLER="sfn_worker.examples:seed_handler",
        SFN_POLLERS="8",
        SFN_CONCURRENCY="32",
        SFN_HEARTBEAT_SECONDS="1",
        SFN_SHUTDOWN_GRACE_SECONDS="5",
    )
    worker = await asyncio.create_subprocess_exec(
        str(Path(sys.executable).parent / "sfn-worker"),
        "run",
        env=env,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,  # one JSON line per start and end: logged, not kept
    )
    process = psutil.Process(worker.pid)
    samples: dict[int, int] = {}
    try:
        for mark in range(WARM_UP, TOTAL + 1, 20_000):
            await fake.wait_for(functools.partial(_answered_at_least, fake, mark), timeout=300)
            samples[mark] = process.memory_info().rss
        worker.terminate()
        assert await asyncio.wait_for(worker.wait(), 30) == 0
    finally:
        if worker.returncode is None:
            worker.kill()
            await worker.wait()
    growth = samples[TOTAL] - samples[WARM_UP]
    shown = {k: f"{v / 2**20:.1f} MiB" for k, v in samples.items()}
    print(f"worker RSS by tasks answered: {shown}")
    assert growth < ALLOWED_GROWTH_BYTES, f"RSS grew {growth / 2**20:.1f} MiB: {shown}"
    assert fake.issued_count == fake.closed_count  # every task handed out was answered
