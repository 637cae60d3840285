"""SIGTERM with thousands of tasks in flight whose handlers never finish, against graces
from a short `docker stop` to ECS's default: how many tokens the worker answers before it
must leave, and when it is gone; with and without the account's API quota."""

from __future__ import annotations

import asyncio
import json
import signal
import time
from dataclasses import dataclass
from typing import Any

from report import Report, verdict
from rig import Options, progress, running, sleeping_worker
from sfn_worker.testing import ApiQuotas, FakeStepFunctions

TITLE = "Shutdown at scale"
FOREVER = 10**6
# Beats would compete with the answers for the worker's CPU; this scenario is about answers.
HEARTBEAT_SECONDS = 60


@dataclass
class Stop:
    in_flight: int
    grace: float
    quota: bool
    answered: int
    exit_seconds: float
    reported: int  # what the worker's one line says it left unanswered
    reserve: float  # seconds, from the worker's "polling stopped" line
    rate: float  # answers/s the worker assumed when it sized the reserve


async def stop(in_flight: int, grace: float, quota: bool) -> Stop:
    contender = sleeping_worker(
        "sfn-worker",
        FOREVER,
        SFN_POLLERS="50",
        SFN_CONCURRENCY=str(in_flight),
        SFN_HEARTBEAT_SECONDS=str(HEARTBEAT_SECONDS),
        SFN_SHUTDOWN_GRACE_SECONDS=f"{grace:g}",
    )
    async with FakeStepFunctions(poll_seconds=20) as fake:
        fake.record_calls = False
        if quota:
            fake.quotas = ApiQuotas()  # 3,000 burst, 500/s per API
        fake.feed(in_flight, {"in": "SUCCESS"})
        lines: dict[str, dict[str, Any]] = {}
        async with running(contender, fake, stderr=asyncio.subprocess.PIPE) as run:
            reader = asyncio.create_task(_shutdown_lines(run.process.stderr, lines))
            # Every slot taken: the pollers wait for one, no poll is open.
            await fake.wait_for(
                lambda: fake.issued_count >= in_flight and fake.open_polls == 0, timeout=300
            )
            started = time.monotonic()
            run.process.send_signal(signal.SIGTERM)
            await asyncio.wait_for(run.process.wait(), grace + 60)
            took = time.monotonic() - started
            await reader
        stopping = lines.get("shutdown: polling stopped", {})
        left = lines.get("shutdown: deadline reached with tasks unanswered", {})
        return Stop(
            in_flight=in_flight,
            grace=grace,
            quota=quota,
            answered=fake.closed_count,
            exit_seconds=took,
            reported=int(left.get("unanswered", 0)),
            reserve=float(stopping.get("reserve_seconds", 0.0)),
            rate=float(stopping.get("answers_per_second", 0.0)),
        )


async def _shutdown_lines(stream: asyncio.StreamReader | None, into: dict[str, Any]) -> None:
    """Drain the worker's log (a full pipe would block it); keep its shutdown lines."""
    assert stream is not None
    async for raw in stream:
        if b'"shutdown: ' not in raw:
            continue
        event = json.loads(raw)
        into[event["event"].split(";")[0]] = event


async def run(options: Options, report: Report) -> None:
    counts = [1_000, 5_000] if options.quick else [1_000, 5_000, 10_000]
    graces = [2.0, 5.0] if options.quick else [2.0, 10.0, 25.0]
    results: list[Stop] = []
    for quota in (False, True):
        for count in counts:
            for grace in graces:
                progress(f"shutdown at scale: {count:,} in flight, grace {grace:g} s, {quota=}")
                results.append(await stop(count, grace, quota))
    report.section(f"9. {TITLE}: handlers never finish, SIGTERM")
    report.table(
        [
            "in flight",
            "grace s",
            "account quota",
            "answered",
            "answered share",
            "exit after SIGTERM s",
            "reported unanswered",
            "reserve s (at answers/s)",
        ],
        [
            [
                f"{r.in_flight:,}",
                f"{r.grace:g}",
                "3,000 + 500/s" if r.quota else "off",
                f"{r.answered:,}",
                f"{r.answered / r.in_flight:.0%}",
                f"{r.exit_seconds:.2f}",
                f"{r.reported:,}",
                f"{r.reserve:.1f} ({r.rate:,.0f})",
            ]
            for r in results
        ],
    )
    late = [r for r in results if r.exit_seconds > r.grace]
    worst = max(results, key=lambda r: r.exit_seconds - r.grace)
    report.paragraph(
        "The worker answers at most 64 tokens on the wire at once, the oldest task first, and "
        "keeps the end of the grace for them: the tokens in flight at the answer rate it "
        "measured (400/s before any measurement), at most 80 % of the grace. What it cannot "
        "answer is reported in one line (`reported unanswered` also counts requests on the "
        "wire at the deadline, which the service may have recorded). Before the cap, every "
        "answer started at once and none arrived: 0 of 2,000 at a 2 s grace. Heartbeats every "
        f"{HEARTBEAT_SECONDS} s. Target: gone by the end of the grace in every row: "
        + verdict(not late, f"worst {worst.exit_seconds - worst.grace:+.2f} s against the grace")
        + "."
    )
