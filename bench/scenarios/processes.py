"""Process mode: what recycling handler processes costs, and what a dead trace collector
costs, in tasks/s of quick sync handlers against process mode without either."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator

from report import Report, verdict
from rig import Contender, Options, progress, running, worker
from sfn_worker.testing import FakeStepFunctions

TITLE = "Process mode: recycling and a dead trace collector"
SLOTS = 2
SLEEP = 0.05  # each task blocks its process this long: at most SLOTS / SLEEP tasks/s


@contextlib.asynccontextmanager
async def black_hole() -> AsyncIterator[str]:
    """A collector that accepts connections and never answers; its URL."""
    held: list[asyncio.StreamWriter] = []

    async def accept(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)  # kept open, never answered

    server = await asyncio.start_server(accept, "127.0.0.1", 0)
    try:
        yield f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
    finally:
        for writer in held:
            writer.close()
        server.close()


def contender(label: str, **settings: str) -> Contender:
    return worker(
        label,
        SFN_HANDLER="handlers:sleep_sync",
        SFN_HANDLER_MODE="process",
        SFN_CONCURRENCY=str(SLOTS),
        SFN_POLLERS=str(SLOTS),
        BENCH_SLEEP_SECONDS=str(SLEEP),
        **settings,
    )


async def tasks_per_second(contender: Contender, window: float) -> float:
    """After every slot's first task (its process started), tasks/s over ``window`` s."""
    async with FakeStepFunctions(poll_seconds=20) as fake:
        fake.record_calls = False
        fake.forget_closed = True
        fake.feed(10**9, {"in": "SUCCESS"})
        async with running(contender, fake):
            await fake.wait_for(lambda: fake.closed_count >= 2 * SLOTS, timeout=120)
            count0, time0 = fake.closed_count, time.monotonic()
            await asyncio.sleep(window)  # a measurement window
            count1, time1 = fake.closed_count, time.monotonic()
    return (count1 - count0) / (time1 - time0)


async def run(options: Options, report: Report) -> None:
    window = 6.0 if options.quick else 20.0
    async with black_hole() as collector:
        contenders = {
            "none": contender("no recycling"),
            "100": contender("recycled every 100 tasks", SFN_MAX_TASKS_PER_CHILD="100"),
            "1": contender("recycled after every task", SFN_MAX_TASKS_PER_CHILD="1"),
            "dead": contender(
                "no recycling, tracing to a dead collector",
                OTEL_EXPORTER_OTLP_ENDPOINT=collector,
                OTEL_SERVICE_NAME="bench",
            ),
        }
        results: dict[str, list[float]] = {key: [] for key in contenders}
        for round_number in range(options.repeats):
            for key, each in contenders.items():
                progress(f"processes: {each.name} (round {round_number + 1}/{options.repeats})")
                results[key].append(await tasks_per_second(each, window))
    rate = {key: sorted(values)[len(values) // 2] for key, values in results.items()}
    report.section(f"9. {TITLE}")
    report.table(
        ["contender", "tasks/s", "of no recycling"],
        [
            [contenders[key].name, f"{rate[key]:.1f}", f"{rate[key] / rate['none']:.2f}×"]
            for key in contenders
        ],
    )
    report.paragraph(
        f"{SLOTS} slots, a sync handler that blocks {SLEEP * 1000:.0f} ms (at most "
        f"{SLOTS / SLEEP:.0f} tasks/s), measured over {window:g} s after each slot's first "
        "task. Targets: recycling every 100 tasks and tracing to a collector that never "
        "answers cost at most 10 %: "
        + verdict(
            min(rate["100"], rate["dead"]) >= 0.9 * rate["none"],
            f"{rate['100'] / rate['none']:.2f}× and {rate['dead'] / rate['none']:.2f}×",
        )
        + ". Recycling after every task costs a process start per task; that is its price."
    )
