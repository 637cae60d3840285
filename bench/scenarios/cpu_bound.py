"""Heartbeats while sync handlers burn CPU on every core: the loop must stay responsive."""

from __future__ import annotations

import asyncio
import os

from report import Report, verdict
from rig import Options, beat_intervals, percentile, progress, running, worker
from sfn_worker.testing import FakeStepFunctions

TITLE = "Heartbeat lag with CPU-bound sync handlers on every core"
INTERVAL = 1.0


async def lateness(mode: str, duration: float) -> tuple[int, int, float, float]:
    cores = os.cpu_count() or 1
    contender = worker(
        f"sfn-worker ({mode})",
        SFN_HANDLER="handlers:burn_cpu",
        SFN_HANDLER_MODE=mode,
        SFN_POLLERS="1",
        SFN_CONCURRENCY=str(cores),
        SFN_HEARTBEAT_SECONDS=str(INTERVAL),
        BENCH_BURN_SECONDS=str(duration * 2),
    )
    async with FakeStepFunctions(poll_seconds=20) as fake:
        fake.record_calls = False
        fake.heartbeat_times = {}
        fake.feed(cores, {"in": "SUCCESS"})
        async with running(contender, fake):
            await fake.wait_for(lambda: fake.issued_count >= cores, timeout=60)
            await asyncio.sleep(duration)  # a measurement window
    late = [max(0.0, interval - INTERVAL) for interval in beat_intervals(fake)]
    return cores, len(late), percentile(late, 0.5), percentile(late, 0.99)


async def run(options: Options, report: Report) -> None:
    duration = 4.0 if options.quick else 20.0
    report.section(f"5. {TITLE}")
    rows, worst = [], 0.0
    for mode in ("thread", "process"):
        progress(f"cpu-bound: {mode}")
        tasks, intervals, p50, p99 = await lateness(mode, duration)
        worst = max(worst, p99)
        rows.append([mode, tasks, intervals, f"{p50:.3f}", f"{p99:.3f}"])
    report.table(
        ["handler mode", "tasks", "heartbeat intervals seen", "late p50 s", "late p99 s"], rows
    )
    report.paragraph(
        f"Heartbeat every {INTERVAL:g} s. Target: heartbeat lag p99 < 1 s: "
        + verdict(worst < 1.0, f"worst {worst:.3f} s")
        + "."
    )
