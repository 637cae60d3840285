"""SIGTERM with many tasks in flight whose handlers never finish: the worker fails them
inside its grace period; the other loops die and leave them to time out."""

from __future__ import annotations

import asyncio
import signal
import time

from report import Report, verdict
from rig import Contender, Options, baseline, progress, running, sleeping_worker
from sfn_worker.testing import FakeStepFunctions

TITLE = "SIGTERM with tasks in flight"
GRACE = 10.0


async def stop(contender: Contender, in_flight: int, holds: int) -> tuple[int, float, int]:
    """SIGTERM once the contender holds ``holds`` tasks (the seed loop holds one)."""
    async with FakeStepFunctions(poll_seconds=20) as fake:
        fake.record_calls = False
        fake.feed(in_flight, {"in": "SUCCESS"})
        async with running(contender, fake) as run:
            await fake.wait_for(lambda: fake.issued_count >= holds, timeout=120)
            taken = fake.issued_count
            started = time.monotonic()
            run.process.send_signal(signal.SIGTERM)
            await asyncio.wait_for(run.process.wait(), 300)
            took = time.monotonic() - started
        return taken, took, fake.issued_count - fake.closed_count


async def run(options: Options, report: Report) -> None:
    count = 200 if options.quick else 1000
    forever = 10**6
    ours = f"sfn-worker ({count} slots, grace {GRACE:g} s)"
    contenders = [
        baseline("seed", "seed loop (sync boto3)", 1, forever),
        baseline("threaded", f"threaded boto3, {count} threads", count, forever),
        baseline("bare", f"bare aioboto3, {count} coroutines", count, forever),
        sleeping_worker(
            ours,
            forever,
            SFN_POLLERS="20",
            SFN_CONCURRENCY=str(count),
            SFN_SHUTDOWN_GRACE_SECONDS=str(GRACE),
        ),
    ]
    report.section(f"6. {TITLE}: {count:,} held, handlers never finish")
    rows, mine = [], (0, 0.0, 0)
    for contender in contenders:
        progress(f"shutdown: {contender.name}")
        holds = 1 if contender.name.startswith("seed") else count
        result = await stop(contender, count, holds)
        rows.append([contender.name, f"{result[0]:,}", f"{result[1]:.1f}", f"{result[2]:,}"])
        if contender.name == ours:
            mine = result
    report.table(["contender", "tasks held", "seconds to exit", "unanswered tokens"], rows)
    report.paragraph(
        f"Targets: exit inside the grace ({GRACE:g} s): "
        + verdict(mine[1] <= GRACE, f"{mine[1]:.1f} s")
        + "; 0 unanswered: "
        + verdict(mine[2] == 0, f"{mine[2]}")
        + ". The other loops die on SIGTERM: every task they held waits for its timeout."
    )
