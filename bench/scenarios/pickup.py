"""Pickup latency: from a task becoming available to its handler starting, with pollers
waiting (idle) and with every slot busy (from the slot's release)."""

from __future__ import annotations

import functools
import json
import tempfile
import time
from datetime import datetime

import aioboto3
from botocore.config import Config

from report import Report, verdict
from rig import Options, percentile, progress, running, worker
from sfn_worker.runtime.client import USER_AGENT
from sfn_worker.testing import FakeStepFunctions, FakeTask

TITLE = "Pickup latency"


def _closed(task: FakeTask) -> bool:
    return task.state != "open"


async def idle(count: int) -> list[float]:
    """Default settings, pollers open: each task is added while nothing else runs."""
    latencies = []
    contender = worker("sfn-worker", SFN_HANDLER="handlers:stamp")
    async with FakeStepFunctions(poll_seconds=20) as fake:
        fake.record_calls = False
        async with running(contender, fake):
            for _ in range(count):
                # At the defaults a poll per free slot: 16 (4 before SFN_POLLERS followed them).
                await fake.wait_for(lambda: fake.open_polls >= 16, timeout=30)
                available = time.time()
                task = fake.add_task({"in": "SUCCESS"})
                await fake.wait_for(functools.partial(_closed, task), timeout=30)
                assert task.output is not None
                latencies.append(json.loads(task.output)["started"] - available)
    return latencies


async def busy(count: int, sleep: float) -> tuple[list[float], list[float]]:
    """One slot, tasks always waiting. From the worker's slot release (its "task ended"
    line, logged as the slot frees) and from the fake recording the previous answer, to
    the next handler starting: that needs one GetActivityTask round trip."""
    contender = worker(
        "sfn-worker",
        SFN_HANDLER="handlers:stamp",
        BENCH_SLEEP_SECONDS=str(sleep),
        SFN_CONCURRENCY="1",
        SFN_POLLERS="1",
    )
    with tempfile.TemporaryFile() as log:
        async with FakeStepFunctions(poll_seconds=20) as fake:
            fake.record_calls = False
            tasks = [fake.add_task({"in": "SUCCESS"}) for _ in range(count)]
            async with running(contender, fake, stderr=log.fileno()):
                await fake.wait_for(lambda: fake.closed_count >= count, timeout=120)
        log.seek(0)
        released = [
            datetime.fromisoformat(str(line["timestamp"])).timestamp()
            for line in map(json.loads, log.read().splitlines())
            if line.get("event") == "task ended"
        ]
    starts = [json.loads(task.output or "{}")["started"] for task in tasks]
    from_release = [later - free for free, later in zip(released, starts[1:], strict=False)]
    from_recorded = [later - t.closed_at for t, later in zip(tasks, starts[1:], strict=False)]
    return from_release, from_recorded


async def round_trips(count: int) -> list[float]:
    """One GetActivityTask that finds a task waiting, from an aioboto3 client configured as
    the worker's (uvloop aside): the unit of the busy target."""
    async with FakeStepFunctions() as fake:
        fake.record_calls = False
        fake.feed(count + 10, {"in": "SUCCESS"})
        session = aioboto3.Session(
            aws_access_key_id="bench", aws_secret_access_key="bench", region_name="us-east-1"
        )
        config = Config(
            retries={"total_max_attempts": 1, "mode": "legacy"},
            parameter_validation=False,
            user_agent=USER_AGENT,
        )
        async with session.client(
            "stepfunctions", endpoint_url=fake.endpoint_url, config=config
        ) as client:
            times = []
            for _ in range(count + 10):
                began = time.perf_counter()
                await client.get_activity_task(activityArn=fake.activity_arn, workerName="b")
                times.append(time.perf_counter() - began)
    return times[10:]


async def run(options: Options, report: Report) -> None:
    count = 50 if options.quick else 300
    progress(f"pickup: idle ({count} tasks)")
    idle_times = await idle(count)
    progress("pickup: busy")
    busy_times, recorded_times = await busy(count if options.quick else 1000, 0.02)
    trips = await round_trips(count)

    def ms(values: list[float], fraction: float) -> str:
        return f"{percentile(values, fraction) * 1000:.2f}"

    report.section(f"8. {TITLE}: task available → handler started")
    report.table(
        ["case", "p50 ms", "p99 ms", "from"],
        [
            ["idle (16 polls waiting)", ms(idle_times, 0.5), ms(idle_times, 0.99),
             "the task added to the fake"],
            ["busy (every slot taken, tasks waiting)", ms(busy_times, 0.5),
             ms(busy_times, 0.99), "the slot's release (the worker's `task ended` line)"],
            ["busy, measured at the endpoint", ms(recorded_times, 0.5),
             ms(recorded_times, 0.99), "the previous answer recorded by the fake"],
            ["one GetActivityTask round trip (a task waiting)", ms(trips, 0.5),
             ms(trips, 0.99), "—"],
        ],
    )  # fmt: skip
    beyond = percentile(busy_times, 0.5) - percentile(idle_times, 0.5)
    trip = percentile(trips, 0.5)
    report.paragraph(
        "Never polling without a free slot means a busy worker asks for the next task only"
        " once a slot frees: one GetActivityTask round trip, then the same hand-off as when"
        " idle. Target: busy no slower than one round trip beyond the idle hand-off (p50): "
        + verdict(beyond <= trip, f"{beyond * 1000:.2f} ms vs {trip * 1000:.2f} ms")
        + "."
    )
