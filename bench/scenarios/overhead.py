"""CPU per task with a no-op handler and no added latency: the worker's own cost against a
bare aioboto3 loop, and each saving measured on its own."""

from __future__ import annotations

import logging
import os
import threading
import timeit
from collections.abc import Callable
from typing import Any

import structlog

from report import Report, verdict
from rig import Options, Throughput, baseline, interleaved_medians, progress, worker
from sfn_worker.logs import configure_logging, reset_logging
from sfn_worker.settings import LogFormat, LogLevel

TITLE = "CPU per task: no-op seed handler, no added latency"
TARGET = 0.75  # default settings, INFO logs, against the bare loop

BARE = "bare aioboto3, 16 coroutines"
DEFAULTS = "sfn-worker, defaults (INFO logs)"
SAVINGS = {
    "uvloop": "+ uvloop",
    "user-agent": "+ pinned User-Agent (no per-call platform probe)",
    "no-validation": "+ no client-side parameter validation",
    "lean-handlers": "+ unused botocore handlers unregistered, legacy retry mode",
}


def contenders() -> list[Any]:
    bare = [baseline("bare", BARE, 16, 0)]
    one_each = [
        baseline("bare", f"bare {label}", 16, 0, "--with", saving)
        for saving, label in SAVINGS.items()
    ]
    every = [arg for saving in SAVINGS for arg in ("--with", saving)]
    return [
        *bare,
        *one_each,
        baseline("bare", "bare + all four", 16, 0, *every),
        baseline("seed", "seed loop (sync boto3)", 1, 0),
        baseline("threaded", "threaded boto3, 16 threads", 16, 0),
        worker(DEFAULTS),
        worker("sfn-worker, defaults, WARNING logs", LOG_LEVEL="WARNING"),
        worker("sfn-worker, defaults, seed handler in the thread pool", SFN_HANDLER_MODE="thread"),
    ]


async def run(options: Options, report: Report) -> None:
    progress(f"overhead: {TITLE}")
    results = await interleaved_medians(contenders(), options, latency=0.0, warmup=options.warmup)
    bare = results[BARE]
    report.section(f"1. {TITLE}")
    report.table(
        ["contender", "tasks/s", "CPU µs per task", "vs bare aioboto3", "RSS MiB"],
        [row(name, result, bare) for name, result in results.items()],
    )
    ratio = results[DEFAULTS].cpu_us_per_task / bare.cpu_us_per_task
    report.paragraph(
        f"Target: CPU per task at default settings with INFO logs ≤ {TARGET}× the bare loop: "
        + verdict(ratio <= TARGET, f"{ratio:.2f}×")
        + ". The fake endpoint shares the two cores, so tasks/s is bounded by it; CPU per task"
        " is the contender's own. The `bare +` rows apply the worker's client settings one at"
        " a time to the bare loop; the last two worker rows show what INFO logs and a thread"
        " hop for a sync handler cost."
    )
    report.say("Rendering one log line (the `task ended` line, in-process, median of 5):", "")
    report.table(["renderer", "µs per line", "vs structlog defaults"], log_rows())
    report.paragraph(SAVINGS_EXPLAINED)


SAVINGS_EXPLAINED = """Where the savings come from, each measured alone above. None patches
botocore or aiobotocore; each uses a setting or a public API:

- **uvloop**: the event loop in C (libuv) instead of asyncio's selector loop.
- **Pinned User-Agent** (`Config(user_agent=...)`): botocore otherwise rebuilds the header
  on every request, probing the platform and the installed packages.
- **No client-side parameter validation** (`Config(parameter_validation=False)`): the
  worker builds every request itself, checks the output's size and JSON before sending
  (`Worker.InvalidOutput`, `Worker.OutputTooLarge`), and the service validates anyway.
- **Unused botocore handlers unregistered** through the client's events API
  (`client.meta.events.unregister`): idempotency-token filling (none of these operations
  has one), Lambda's recursion-detection header, the endpoint-discovery API-version
  header, retry telemetry headers, and botocore's retry handler, which with one attempt
  allowed (`retries={"mode": "legacy", "total_max_attempts": 1}`; the worker retries
  itself, with its own rules for what may have been recorded) only decides on every
  response not to retry.
- **`@non_blocking` handlers on the loop**: the built-in seed handler is marked, so it is
  called directly instead of being handed to a thread and back (the last row shows that
  hand-off's cost).
- **Log rendering**: orjson writes each line straight to bytes on stderr's binary buffer,
  and the timestamp's date and time are formatted once per second.
- **Less per-task bookkeeping**: gauges for tasks in flight and queue depth are read when
  reported instead of updated per task; a sync handler's result that is already there is
  not awaited through a Task."""


def row(name: str, result: Throughput, bare: Throughput) -> list[str]:
    return [
        name,
        f"{result.tasks_per_second:,.0f}",
        f"{result.cpu_us_per_task:,.0f}",
        f"{result.cpu_us_per_task / bare.cpu_us_per_task:.2f}×",
        f"{result.rss_mib:.0f}",
    ]


# -- log rendering ------------------------------------------------------------------------
def log_rows() -> list[list[str]]:
    read, write = os.pipe()
    drain = threading.Thread(target=_drain, args=(read,), daemon=True)
    drain.start()
    stream = os.fdopen(write, "w", buffering=1)
    try:
        default = _per_line(lambda: _structlog_defaults(stream))
        ours = _per_line(lambda: configure_logging(LogLevel.INFO, LogFormat.JSON, "bench", stream))
    finally:
        reset_logging()
        stream.close()
        drain.join()
    return [
        ["structlog defaults (TimeStamper, json.dumps, text stream)", f"{default:.1f}", "1.00×"],
        ["sfn-worker (orjson to bytes, cached timestamp)", f"{ours:.1f}", f"{ours / default:.2f}×"],
    ]


def _drain(fd: int) -> None:
    while os.read(fd, 65536):
        pass
    os.close(fd)


def _structlog_defaults(stream: Any) -> None:
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            structlog.processors.JSONRenderer(),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.INFO),
        logger_factory=structlog.WriteLoggerFactory(file=stream),
        cache_logger_on_first_use=True,
    )
    structlog.contextvars.bind_contextvars(worker="bench")


def _per_line(configure: Callable[[], None], lines: int = 20_000) -> float:
    configure()
    structlog.contextvars.bind_contextvars(
        source="seed-activity", kind="activity", token="0123456789ab"
    )
    log = structlog.get_logger("bench")
    timings = timeit.repeat(
        lambda: log.info("task ended", outcome="succeeded", seconds=0.001), number=lines, repeat=5
    )
    structlog.reset_defaults()
    structlog.contextvars.clear_contextvars()
    return sorted(timings)[2] / lines * 1e6
