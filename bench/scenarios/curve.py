"""Tasks/s against concurrency, for each contender (a plot)."""

from __future__ import annotations

import math
from collections.abc import Callable

from report import Report, line_plot
from rig import Contender, Options, baseline, progress, sleeping_worker, throughput

TITLE = "Tasks/s against concurrency"
LATENCY, SLEEP = 0.05, 0.2


def makers() -> dict[str, Callable[[int], Contender]]:
    return {
        "seed loop": lambda n: baseline("seed", "seed", 1, SLEEP),
        "threaded boto3": lambda n: baseline("threaded", "threaded", n, SLEEP),
        "bare aioboto3": lambda n: baseline("bare", "bare", n, SLEEP),
        "sfn-worker": lambda n: sleeping_worker(
            "sfn-worker",
            SLEEP,
            SFN_POLLERS=str(max(1, math.ceil(n / 4))),
            SFN_CONCURRENCY=str(n),
        ),
    }


async def run(options: Options, report: Report) -> None:
    levels = [1, 16, 64] if options.quick else [1, 4, 16, 64, 256, 1024]
    curves: dict[str, list[float]] = {}
    for label, make in makers().items():
        curves[label] = []
        for level in levels:
            if label == "seed loop" and curves[label]:
                curves[label].append(curves[label][0])  # one loop: concurrency does not apply
                continue
            progress(f"curve: {label} at {level}")
            point = await throughput(
                make(level),
                options,
                latency=LATENCY,
                warmup=options.warmup,
                window=options.window / 2,
            )
            curves[label].append(point.tasks_per_second)
    path = report.plot_path("concurrency")
    line_plot(
        path,
        {label: (levels, values) for label, values in curves.items()},
        title=f"{LATENCY * 1000:.0f} ms per API call, handler {SLEEP:g} s",
        xlabel="concurrency (threads / coroutines / slots)",
        ylabel="tasks per second",
        log=True,
    )
    report.section(f"7. {TITLE} ({LATENCY * 1000:.0f} ms latency, {SLEEP:g} s handler)")
    report.image(path, "tasks per second against concurrency")
    report.table(
        ["concurrency", *curves],
        [
            [level, *(f"{curves[label][index]:,.1f}" for label in curves)]
            for index, level in enumerate(levels)
        ],
    )
