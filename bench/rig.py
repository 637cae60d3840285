"""What every scenario shares: the contenders, starting one against a fake endpoint, and
measuring its CPU, memory and throughput.

Each contender runs as its own process, so its CPU and memory are its own (psutil); the
fake endpoint runs in the benchmark's process.
"""

from __future__ import annotations

import asyncio
import itertools
import math
import os
import statistics
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

from delay_proxy import delay_proxy
from sfn_worker.testing import FakeStepFunctions

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
BIN = Path(sys.executable).parent
PYTHON = sys.executable


@dataclass(frozen=True)
class Options:
    """The run's knobs (bench/run.py's flags)."""

    quick: bool = False
    repeats: int = 3
    input_padding: int = 0  # bytes added to each task input (and so to its echoed output)
    round_trip: float = 0.0  # s added to every round trip to the fake (delay_proxy.py)

    @property
    def warmup(self) -> float:
        return 1.0 if self.quick else 3.0

    @property
    def window(self) -> float:
        return 2.0 if self.quick else 8.0

    def task_input(self) -> dict[str, Any]:
        payload: dict[str, Any] = {"in": "SUCCESS"}
        if self.input_padding:
            payload["pad"] = "x" * self.input_padding
        return payload


def progress(text: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)


# -- contenders ---------------------------------------------------------------------------
@dataclass(frozen=True)
class Contender:
    name: str
    command: list[str]
    env: dict[str, str] = field(default_factory=dict)


def baseline(kind: str, label: str, concurrency: int, sleep: float, *extra: str) -> Contender:
    """A loop from contenders.py: seed, threaded or bare."""
    command = [PYTHON, str(HERE / "contenders.py"), kind, "--arn", "{arn}"]
    command += ["--concurrency", str(concurrency), "--sleep", str(sleep), *extra]
    return Contender(label, command)


def worker(label: str, **settings: str) -> Contender:
    """``sfn-worker run`` with these environment variables (the seed handler and defaults
    for the rest)."""
    env = {"PYTHONPATH": str(HERE), "SFN_HANDLER": "sfn_worker.examples:seed_handler"}
    env.update(settings)
    return Contender(label, [str(BIN / "sfn-worker"), "run"], env)


def sleeping_worker(label: str, sleep: float, **settings: str) -> Contender:
    """The worker running the seed handler after an asyncio.sleep of ``sleep`` s."""
    return worker(
        label, SFN_HANDLER="handlers:seed_then_sleep", BENCH_SLEEP_SECONDS=str(sleep), **settings
    )


def contender_env(endpoint_url: str, arn: str, extra: dict[str, str]) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SFN_", "AWS_"))}
    env.pop("LOG_LEVEL", None)
    env.update(
        AWS_ENDPOINT_URL_SFN=endpoint_url,
        AWS_ACCESS_KEY_ID="bench",
        AWS_SECRET_ACCESS_KEY="bench",
        AWS_REGION="us-east-1",
        AWS_DEFAULT_REGION="us-east-1",
        AWS_EC2_METADATA_DISABLED="true",
        SFN_ACTIVITY_ARN=arn,
        SFN_WORKER_NAME="bench",
    )
    env.update(extra)
    return env


@dataclass
class Running:
    process: asyncio.subprocess.Process
    stats: psutil.Process  # for CPU and memory; waiting is done through ``process``


# The run's --round-trip-ms, for scenarios that do not choose their own (run.py sets it).
ROUND_TRIP = {"seconds": 0.0}


@asynccontextmanager
async def running(
    contender: Contender,
    fake: FakeStepFunctions,
    *,
    stderr: int | None = None,
    round_trip: float | None = None,
) -> AsyncIterator[Running]:
    """The contender against ``fake``, through a proxy adding ``round_trip`` s to every
    round trip (None: the run's --round-trip-ms; 0: straight to the fake)."""
    command = [part.replace("{arn}", fake.activity_arn) for part in contender.command]
    delay = ROUND_TRIP["seconds"] if round_trip is None else round_trip
    async with delay_proxy(fake.endpoint_url, delay / 2) as url:
        process = await asyncio.create_subprocess_exec(
            *command,
            env=contender_env(url, fake.activity_arn, contender.env),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL if stderr is None else stderr,
        )
        try:
            yield Running(process, psutil.Process(process.pid))
        finally:
            if process.returncode is None:
                process.kill()
            await process.wait()


def cpu_seconds(process: psutil.Process) -> float:
    total = 0.0
    for proc in [process, *process.children(recursive=True)]:
        try:
            times = proc.cpu_times()
        except psutil.NoSuchProcess:
            continue
        total += times.user + times.system
    return total


def rss_bytes(process: psutil.Process) -> int:
    total = 0
    for proc in [process, *process.children(recursive=True)]:
        try:
            total += proc.memory_info().rss
        except psutil.NoSuchProcess:
            continue
    return total


def beat_intervals(fake: FakeStepFunctions) -> list[float]:
    """Seconds between consecutive accepted heartbeats of each task (``fake.heartbeat_times``
    must have been set to record them)."""
    assert fake.heartbeat_times is not None
    return [
        later - earlier
        for times in fake.heartbeat_times.values()
        for earlier, later in itertools.pairwise(times)
    ]


def percentile(values: list[float], fraction: float) -> float:
    if not values:
        return math.nan
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


# -- throughput ---------------------------------------------------------------------------
@dataclass
class Throughput:
    tasks_per_second: float
    cpu_us_per_task: float
    rss_mib: float
    fake_cpu_share: float  # of one core, used by the fake endpoint in this process


async def throughput(
    contender: Contender, options: Options, *, latency: float, warmup: float, window: float
) -> Throughput:
    """Tasks/s and CPU per task over ``window`` s, after ``warmup`` s, with an unlimited
    supply of tasks."""
    async with FakeStepFunctions(latency_seconds=latency, poll_seconds=20) as fake:
        fake.record_calls = False
        fake.forget_closed = True
        fake.feed(10**9, options.task_input())
        async with running(contender, fake) as run:
            await asyncio.sleep(warmup)  # a benchmark window, not a wait for state
            count0, time0, cpu0 = fake.closed_count, time.monotonic(), cpu_seconds(run.stats)
            fake0 = time.process_time()
            await asyncio.sleep(window)
            count1, time1, cpu1 = fake.closed_count, time.monotonic(), cpu_seconds(run.stats)
            fake1 = time.process_time()
            rss = rss_bytes(run.stats)
    done = count1 - count0
    return Throughput(
        tasks_per_second=done / (time1 - time0),
        cpu_us_per_task=(cpu1 - cpu0) / done * 1e6 if done else math.inf,
        rss_mib=rss / 2**20,
        fake_cpu_share=(fake1 - fake0) / (time1 - time0),
    )


def median_of(runs: list[Throughput]) -> Throughput:
    return Throughput(
        tasks_per_second=statistics.median(r.tasks_per_second for r in runs),
        cpu_us_per_task=statistics.median(r.cpu_us_per_task for r in runs),
        rss_mib=statistics.median(r.rss_mib for r in runs),
        fake_cpu_share=statistics.median(r.fake_cpu_share for r in runs),
    )


async def interleaved_medians(
    contenders: list[Contender], options: Options, *, latency: float, warmup: float
) -> dict[str, Throughput]:
    """Each contender ``repeats`` times, in rounds (A B C, A B C, ...), so a noisy minute on
    a shared machine hits every contender alike; the median of each."""
    runs: dict[str, list[Throughput]] = {c.name: [] for c in contenders}
    for round_number in range(options.repeats):
        for contender in contenders:
            progress(f"  {contender.name} (round {round_number + 1}/{options.repeats})")
            runs[contender.name].append(
                await throughput(
                    contender, options, latency=latency, warmup=warmup, window=options.window
                )
            )
    return {name: median_of(results) for name, results in runs.items()}
