"""Throughput when every API call takes 50 ms and the handler waits 1 s on I/O: what
concurrency buys against the loops users would otherwise write."""

from __future__ import annotations

import os

from report import Report, verdict
from rig import Options, baseline, interleaved_medians, progress, sleeping_worker

TITLE = "Throughput under latency"
LATENCY, SLEEP = 0.05, 1.0


async def run(options: Options, report: Report) -> None:
    concurrency = 200 if options.quick else 1000
    progress(f"latency: {LATENCY * 1000:.0f} ms per call, {SLEEP:g} s handler, {concurrency}")
    tuned = f"sfn-worker ({concurrency // 10} pollers, {concurrency} slots)"
    contenders = [
        baseline("seed", "seed loop (sync boto3)", 1, SLEEP),
        baseline("threaded", f"threaded boto3, {concurrency} threads", concurrency, SLEEP),
        baseline("bare", f"bare aioboto3, {concurrency} coroutines", concurrency, SLEEP),
        sleeping_worker("sfn-worker, defaults (16 slots, a poll per free slot)", SLEEP),
        sleeping_worker(
            tuned, SLEEP, SFN_POLLERS=str(concurrency // 10), SFN_CONCURRENCY=str(concurrency)
        ),
    ]
    results = await interleaved_medians(
        contenders, options, latency=LATENCY, warmup=options.warmup + 2
    )
    seed_rate = results["seed loop (sync boto3)"].tasks_per_second
    # One task cycle: the handler plus its GetActivityTask and SendTaskSuccess round trips.
    ideal = concurrency / (SLEEP + 2 * LATENCY)
    ours = results[tuned]
    report.section(
        f"2. {TITLE}: {LATENCY * 1000:.0f} ms per API call, handler waits {SLEEP:g} s,"
        f" concurrency {concurrency}"
    )
    report.table(
        ["contender", "tasks/s", "vs seed loop", "CPU µs per task", "RSS MiB", "fake endpoint CPU"],
        [
            [
                name,
                f"{result.tasks_per_second:,.1f}",
                f"{result.tasks_per_second / seed_rate:,.0f}×",
                f"{result.cpu_us_per_task:,.0f}",
                f"{result.rss_mib:.0f}",
                f"{result.fake_cpu_share:.0%}",
            ]
            for name, result in results.items()
        ],
    )
    cores = os.cpu_count() or 1
    share = ours.tasks_per_second / ideal
    report.paragraph(
        f"Bound: concurrency / (handler + 2 × latency) = {ideal:,.0f}/s on {cores} cores shared"
        " with the fake endpoint (its column: 100 % is one core, the rig then limits). Target:"
        " ≥ 90 % of the bound: "
        + verdict(share >= 0.9, f"{share:.0%}")
        + "; ≥ 20× the seed loop: "
        + verdict(
            ours.tasks_per_second >= 20 * seed_rate, f"{ours.tasks_per_second / seed_rate:,.0f}×"
        )
        + "."
    )
