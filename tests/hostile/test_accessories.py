"""The bulkhead around accessories: a part beside the task path that fails is logged once,
counted, shown in /healthz and restarted; the worker keeps answering tasks."""

from __future__ import annotations

import asyncio
import json

import pytest

from sfn_worker import bulkhead
from sfn_worker.aio import cancel_and_wait
from sfn_worker.examples import seed_handler
from sfn_worker.metrics import Metrics
from sfn_worker.retry import Backoff
from sfn_worker.runtime import runtime as runtime_module
from sfn_worker.testing import FakeStepFunctions

from ..conftest import sample
from ..test_operations import get, worker_with_http


async def test_a_failing_accessory_is_counted_shown_and_restarted_never_fatal(
    fake: FakeStepFunctions, monkeypatch: pytest.MonkeyPatch
) -> None:
    starts = 0
    restarted = asyncio.Event()

    async def broken_monitor(metrics: Metrics) -> None:
        nonlocal starts
        starts += 1
        if starts >= 3:
            restarted.set()
        raise RuntimeError("the monitor broke")

    monkeypatch.setattr(runtime_module, "watch_loop_lag", broken_monitor)
    monkeypatch.setattr(bulkhead, "RESTART_BACKOFF", Backoff(0.001, 0.002))
    async with worker_with_http(fake, seed_handler) as (harness, url):
        await asyncio.wait_for(restarted.wait(), 10)
        task = fake.add_task({"in": "SUCCESS"})
        await fake.wait_for(lambda: task.state == "succeeded")
        status, body = await get(f"{url}/healthz")
        health = json.loads(body)
        assert status == 200  # tasks run: the worker is healthy
        monitor = health["accessories"]["loop_monitor"]
        assert monitor["state"] == "failing"
        assert monitor["failures"] >= 2
        assert "the monitor broke" in monitor["last_error"]
        assert harness.task is not None
        assert not harness.task.done()
        metrics = harness.worker.metrics.registry
        failures = metrics.get_sample_value(
            "sfn_worker_accessory_failures_total", {"accessory": "loop_monitor"}
        )
        assert failures is not None
        assert failures >= 2
    assert sample(harness.worker, "sfn_worker_tasks_succeeded_total") == 1


def test_an_accessory_logs_its_first_failure_then_once_a_minute(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    accessory = bulkhead.Accessory("emf", Metrics(), log_every=3600)
    logged: list[dict[str, object]] = []

    class Capture:
        def warning(self, event: str, **fields: object) -> None:
            logged.append({"event": event, **fields})

        def info(self, event: str, **fields: object) -> None:
            logged.append({"event": event, **fields})

    monkeypatch.setattr(bulkhead, "log", Capture())
    for _ in range(100):
        accessory.failed("stdout is full")
    accessory.failed("broken pipe", stopped=True)
    assert [e["event"] for e in logged] == ["emf: failing", "emf: stopped"]
    assert logged[1]["failures"] == 100  # the ones not logged are counted in the next line
    assert accessory.snapshot().failures == 101


async def test_an_accessory_that_fails_while_cancelled_stops_instead_of_restarting() -> None:
    accessories = bulkhead.Accessories(Metrics())
    started = asyncio.Event()

    async def last_write_fails(accessory: bulkhead.Accessory) -> None:
        try:
            started.set()
            await asyncio.Event().wait()
        finally:
            raise OSError("the last write failed")  # over the CancelledError

    task = asyncio.create_task(accessories.supervise("emf", last_write_fails))
    await started.wait()
    async with asyncio.timeout(5):
        await cancel_and_wait(task)
    assert task.cancelled()
    assert accessories.get("emf").snapshot().state == "stopped"
