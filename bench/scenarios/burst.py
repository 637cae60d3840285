"""Burst pickup and what open polls cost: 16 tasks at once on an idle worker at its defaults
(0 and 20 ms round trips, through the delay proxy), an idle worker's CPU and
GetActivityTask calls, and what a fleet of 100 such workers adds up to against the account's
quota and the per-ARN limit on open polls."""

from __future__ import annotations

import asyncio
import json
import time

import psutil

from report import Report, verdict
from rig import Contender, Options, cpu_seconds, percentile, progress, running, worker
from sfn_worker.testing import FakeStepFunctions

TITLE = "Burst pickup and the cost of open polls"
BURST = 16  # the default concurrency: a burst the default slots can take
ROUND_TRIPS = (0.0, 0.020)
TARGET_P50, TARGET_P99 = 0.020, 0.040  # at 20 ms round trips (issue 22)
# Idle polls end after IDLE_POLL_SECONDS here (60 s at AWS): calls per minute are scaled.
IDLE_POLL_SECONDS = 2.0
SERVICE_POLL_SECONDS = 60.0
FLEET = 100
PER_ARN_LIMIT = 1000
QUOTA_REFILL = (500.0, 300.0)  # GetActivityTask per second: us-east-1 &c., elsewhere


def contenders() -> list[tuple[Contender, int]]:
    """Each with the polls it keeps open when idle."""
    return [
        (worker("sfn-worker, defaults (a poll per free slot)", SFN_HANDLER="handlers:stamp"), 16),
        (worker("sfn-worker, SFN_POLLERS=4 (the old default)", SFN_HANDLER="handlers:stamp",
                SFN_POLLERS="4"), 4),
    ]  # fmt: skip


async def burst(contender: Contender, polls: int, round_trip: float, rounds: int) -> list[float]:
    """Seconds from 16 tasks added together to each handler starting, over ``rounds`` (after
    one burst not counted: a process's first tasks pay one-time imports)."""
    latencies: list[float] = []
    async with FakeStepFunctions(poll_seconds=20) as fake:
        fake.record_calls = False
        async with running(contender, fake, round_trip=round_trip):
            for number in range(rounds + 1):
                await fake.wait_for(lambda: fake.open_polls >= polls, timeout=30)
                available = time.time()
                tasks = [fake.add_task({"in": "SUCCESS"}) for _ in range(BURST)]
                await fake.wait_for(lambda: all(t.state != "open" for t in tasks), timeout=30)  # noqa: B023
                if number:
                    starts = [json.loads(t.output or "{}")["started"] for t in tasks]
                    latencies += [started - available for started in starts]
    return latencies


def _sample(fake: FakeStepFunctions, stats: psutil.Process) -> tuple[int, float, float]:
    return fake.counts.get("GetActivityTask", 0), cpu_seconds(stats), time.monotonic()


async def idle(contender: Contender, polls: int, window: float) -> tuple[float, float]:
    """GetActivityTask calls per minute (scaled to 60 s polls) and CPU share of one core of
    an idle worker."""
    async with FakeStepFunctions(poll_seconds=IDLE_POLL_SECONDS) as fake:
        fake.record_calls = False
        async with running(contender, fake, round_trip=0.0) as run:
            await fake.wait_for(lambda: fake.open_polls >= polls, timeout=30)
            calls0, cpu0, time0 = _sample(fake, run.stats)
            await asyncio.sleep(window)  # a measurement window, not a wait for state
            calls1, cpu1, time1 = _sample(fake, run.stats)
    elapsed = time1 - time0
    per_minute = (calls1 - calls0) / elapsed * 60 * IDLE_POLL_SECONDS / SERVICE_POLL_SECONDS
    return per_minute, (cpu1 - cpu0) / elapsed


async def run(options: Options, report: Report) -> None:
    rounds = 5 if options.quick else 20
    window = 20.0 if options.quick else 60.0
    results: dict[tuple[str, float], list[float]] = {}
    for contender, polls in contenders():
        for round_trip in ROUND_TRIPS:
            progress(f"burst: {contender.name}, {round_trip * 1000:g} ms round trips")
            results[contender.name, round_trip] = await burst(contender, polls, round_trip, rounds)
    costs = {}
    for contender, polls in contenders():
        progress(f"burst: idle cost of {contender.name} ({window:g} s)")
        costs[contender.name] = (polls, *await idle(contender, polls, window))

    def ms(values: list[float], fraction: float) -> str:
        return f"{percentile(values, fraction) * 1000:.1f}"

    report.section(f"11. {TITLE}")
    report.paragraph(
        f"{BURST} tasks added to the fake at once, the worker idle with its polls open; from"
        " the tasks' addition to each handler starting (the handler stamps the wall clock)."
        f" {rounds} bursts per case, after one not counted (the process's first tasks pay"
        " one-time imports). Round trips are added by a TCP delay proxy"
        " (`bench/delay_proxy.py`) that delays every byte half the round trip each way, a"
        " waiting poll's answer included."
    )
    report.table(
        ["contender", "round trip ms", "p50 ms", "p99 ms", "max ms"],
        [[name, f"{trip * 1000:g}", ms(v, 0.5), ms(v, 0.99), ms(v, 1.0)]
         for (name, trip), v in results.items()],
    )  # fmt: skip
    ours = results[contenders()[0][0].name, 0.020]
    p50, p99 = percentile(ours, 0.5), percentile(ours, 0.99)
    report.paragraph(
        "Target at the defaults with 20 ms round trips: p50 ≤ 20 ms: "
        + verdict(p50 <= TARGET_P50, f"{p50 * 1000:.1f} ms")
        + "; p99 ≤ 40 ms: "
        + verdict(p99 <= TARGET_P99, f"{p99 * 1000:.1f} ms")
        + ". A task cannot start sooner than half a round trip (the poll's answer on its way"
        " back); the rest is the worker's hand-off and the shared machine."
    )
    report.table(
        ["contender", "open polls idle", "GetActivityTask per minute (60 s polls)",
         "idle CPU (share of a core)"],
        [[name, str(polls), f"{calls:.1f}", f"{cpu:.2%}"]
         for name, (polls, calls, cpu) in costs.items()],
    )  # fmt: skip
    rows = []
    for name, (polls, calls, _) in costs.items():
        open_polls = FLEET * polls
        rate = FLEET * calls / 60
        rows.append([
            name, f"{open_polls:,}", f"{open_polls / PER_ARN_LIMIT:.0%}",
            f"{rate:.1f}", f"{rate / QUOTA_REFILL[0]:.1%} / {rate / QUOTA_REFILL[1]:.1%}",
        ])  # fmt: skip
    report.paragraph(
        f"Idle calls measured with {IDLE_POLL_SECONDS:g} s polls over {window:g} s and scaled"
        f" to the service's {SERVICE_POLL_SECONDS:g} s polls; CPU as measured with the short"
        f" polls, so an upper bound ({SERVICE_POLL_SECONDS / IDLE_POLL_SECONDS:g}× the poll"
        f" churn of an idle worker at AWS). A fleet of {FLEET} idle workers, from these figures:"
    )
    report.table(
        ["contender", f"open polls, {FLEET} workers", f"of the {PER_ARN_LIMIT:,} per ARN",
         "GetActivityTask/s", "of the quota's refill (500/s / 300/s)"],
        rows,
    )  # fmt: skip
    report.paragraph(
        f"{FLEET} default workers want more open polls than one activity ARN allows: the"
        " service refuses the excess with ActivityWorkerLimitExceeded, and each worker"
        " halves its open-poll target and grows it back slowly (docs/scaling.md, Open"
        " polls), so the fleet settles near the limit without hammering; its idle calls stay"
        " a few per cent of the quota. This machine is shared by several jobs: figures are"
        " from one run, read the ratios and percentiles, not the absolute values."
    )
