"""Many tasks in flight: RSS of a worker holding them with heartbeats, how evenly the
heartbeats are spread, and what each task holds (a tracemalloc census)."""

from __future__ import annotations

import asyncio
import gc
import linecache
import logging
import math
import statistics
import time
import tracemalloc
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog

from report import Report, verdict
from rig import (
    REPO,
    Options,
    beat_intervals,
    percentile,
    progress,
    rss_bytes,
    running,
    sleeping_worker,
)
from sfn_worker import App, TaskContext
from sfn_worker.testing import FakeStepFunctions, run_app

TITLE = "Memory per task in flight"
# RSS for 10,000 in flight. In MiB, the unit of this table: the figures the target was set
# against (186-219 for today's worker) were this table's MiB.
TARGET_MIB = 128.0
# Allocation sites that belong to the handler (its coroutine and what it awaits).
HANDLER_CODE = ("function(task_input, ctx)", "await cast(Awaitable", "self._stopping.wait()")


@dataclass
class HeartbeatStats:
    in_flight: int
    idle_mib: float
    rss_mib: float
    fill_seconds: float
    intervals: int
    interval_p50: float
    interval_p99_error: float  # worst 1 % distance from the configured interval, as a fraction
    burstiness: float  # busiest second / average second


def heartbeat_stats(fake: FakeStepFunctions, interval: float) -> tuple[int, float, float, float]:
    assert fake.heartbeat_times is not None
    intervals = beat_intervals(fake)
    per_second = Counter(int(t) for times in fake.heartbeat_times.values() for t in times)
    full = [per_second[s] for s in sorted(per_second)][1:-1]
    error = percentile([abs(i - interval) / interval for i in intervals], 0.99)
    burstiness = max(full) / statistics.mean(full) if full else math.nan
    return len(intervals), percentile(intervals, 0.5), error, burstiness


async def in_flight(count: int, interval: float, duration: float) -> HeartbeatStats:
    """The worker at default pollers and logs, an async handler that never ends."""
    contender = sleeping_worker(
        "sfn-worker",
        10**6,
        SFN_CONCURRENCY=str(count),
        SFN_HEARTBEAT_SECONDS=str(interval),
    )
    async with FakeStepFunctions(poll_seconds=20) as fake:
        fake.record_calls = False
        fake.heartbeat_times = {}
        async with running(contender, fake) as run:
            await fake.wait_for(lambda: fake.open_polls > 0, timeout=60)
            idle = rss_bytes(run.stats)
            began = time.monotonic()
            fake.feed(count, {"in": "SUCCESS"})
            await fake.wait_for(lambda: fake.issued_count >= count, timeout=300)
            filled = time.monotonic() - began
            await asyncio.sleep(duration)  # a measurement window, not a wait for state
            rss = rss_bytes(run.stats)
        intervals, p50, error, burstiness = heartbeat_stats(fake, interval)
        return HeartbeatStats(
            count, idle / 2**20, rss / 2**20, filled, intervals, p50, error, burstiness
        )


# -- what each task holds -----------------------------------------------------------------
async def _until_shutdown(task_input: Any, ctx: TaskContext) -> Any:
    await ctx.wait_for_shutdown()  # then the census ends in an orderly drain
    return {}


def _site(trace: tracemalloc.Traceback) -> str:
    """The innermost frame in the worker's own code (tracemalloc lists the oldest first)."""
    for frame in reversed(trace):
        path = Path(frame.filename)
        if "sfn_worker" in path.parts and "testing" not in path.parts:
            return f"{path.relative_to(REPO / 'service')}:{frame.lineno}"
    for frame in reversed(trace):
        if "testing" in Path(frame.filename).parts:
            return "the fake endpoint (not the worker)"
    frame = trace[-1]
    return f"{Path(frame.filename).name}:{frame.lineno} (outside the worker)"


async def census(count: int) -> tuple[float, list[tuple[float, str]]]:
    """Bytes per task in flight by allocation site, from ``count`` tasks in this process."""
    app = App()
    app.activity("census", concurrency=count, pollers=4)(_until_shutdown)
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.ERROR))
    async with FakeStepFunctions(poll_seconds=5) as fake:
        fake.record_calls = False
        async with run_app(
            app, fake, heartbeat_seconds=60, log_level="WARNING", shutdown_grace_seconds=60
        ) as runtime:
            await fake.wait_for(lambda: fake.open_polls > 0)
            gc.collect()
            tracemalloc.start(30)
            before = tracemalloc.take_snapshot()
            for _ in range(count):
                fake.add_task({"in": "SUCCESS"}, activity="census")
            await fake.wait_for(lambda: fake.issued_count >= count, timeout=120)
            # Handed out, not all started yet; nothing signals that, so sample it.
            while runtime.in_flight() < count:  # noqa: ASYNC110
                await asyncio.sleep(0.05)
            gc.collect()
            after = tracemalloc.take_snapshot()
            tracemalloc.stop()
    sites: Counter[str] = Counter()
    for stat in after.compare_to(before, "traceback"):
        sites[_site(stat.traceback)] += stat.size_diff
    total = sum(size for site, size in sites.items() if not site.startswith("the fake"))
    return total / count, [(size / count, site) for site, size in sites.most_common()]


def _owner(code: str) -> str:
    if not code:
        return "other"
    return "the handler" if any(part in code for part in HANDLER_CODE) else "the worker"


def _code(site: str) -> str:
    path, _, line = site.partition(":")
    if not line.isdigit():
        return ""
    text = linecache.getline(str(REPO / "service" / path), int(line)).strip()
    return f"`{text[:70]}`" if text else ""


async def run(options: Options, report: Report) -> None:
    count, interval, duration = (1000, 5.0, 11.0) if options.quick else (10_000, 60.0, 135.0)
    progress(f"memory: {count} in flight, heartbeat every {interval:g} s")
    stats = await in_flight(count, interval, duration)
    progress("memory: census of what each task holds")
    per_task, sites = await census(500 if options.quick else 2000)
    report.section(f"4. {TITLE}: {count:,} in flight, heartbeat every {interval:g} s")
    report.table(
        [
            "in flight",
            "RSS idle MiB",
            "RSS MiB",
            "seconds to fill",
            "heartbeat intervals seen",
            "interval p50 s",
            "p99 distance from interval",
            "busiest second / average",
        ],
        [
            [
                f"{stats.in_flight:,}",
                f"{stats.idle_mib:.0f}",
                f"{stats.rss_mib:.0f}",
                f"{stats.fill_seconds:.1f}",
                f"{stats.intervals:,}",
                f"{stats.interval_p50:.2f}",
                f"{stats.interval_p99_error:.1%}",
                f"{stats.burstiness:.2f}",
            ]
        ],
    )
    report.paragraph(
        "Default settings but the concurrency (SFN_POLLERS's default 32, INFO logs); the"
        " handler sleeps"
        " (asyncio.sleep) and never returns. Targets: RSS < 128 MiB for 10,000 in flight: "
        + verdict(
            stats.rss_mib < TARGET_MIB or count < 10_000,
            f"{stats.rss_mib:.1f} MiB = {stats.rss_mib * 2**20 / 1e6:.0f} MB",
        )
        + "; every heartbeat interval within 10 % (p99): "
        + verdict(stats.interval_p99_error <= 0.10, f"{stats.interval_p99_error:.1%}")
        + ". Intervals are 90-100 % of the setting by design (never late, spread by jitter)."
        " The target is in MiB, the unit of the 186-219 figures it was set against."
    )
    report.paragraph(
        f"What each task holds: {per_task:,.0f} bytes per task in flight, by where the worker"
        " allocated it (tracemalloc, the innermost frame in `sfn_worker`; a census of"
        f" {500 if options.quick else 2000:,} tasks in one process, the fake endpoint's share"
        " left out). The fake's task tokens are 909 characters, about the size of real ones;"
        " the token and the input come with the GetActivityTask answer."
    )
    rows = [
        [f"{size:,.0f}", f"`{site}`", code, _owner(code)]
        for size, site in sites
        if size >= 16 and not site.startswith("the fake")
        for code in [_code(site)]
    ]
    report.table(["bytes per task", "allocated at", "code", "whose"], rows[:15])
