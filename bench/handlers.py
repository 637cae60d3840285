"""Handlers the benchmark runs in `sfn-worker` (imported via PYTHONPATH=bench)."""

from __future__ import annotations

import asyncio
import os
import time
from typing import Any

from sfn_worker import TaskContext
from sfn_worker.examples import seed_handler

SLEEP_SECONDS = float(os.environ.get("BENCH_SLEEP_SECONDS", "0"))
BURN_SECONDS = float(os.environ.get("BENCH_BURN_SECONDS", "5"))


async def seed_then_sleep(task_input: Any, ctx: TaskContext) -> Any:
    """The seed handler after an I/O wait of BENCH_SLEEP_SECONDS (0 = none)."""
    if SLEEP_SECONDS:
        await asyncio.sleep(SLEEP_SECONDS)
    return seed_handler(task_input, ctx)


def burn_cpu(task_input: Any, ctx: TaskContext) -> Any:
    """Pure-Python CPU work for BENCH_BURN_SECONDS (holds the GIL between switches)."""
    return {"burned": BURN_SECONDS, "checksum": burn_for(BURN_SECONDS)}


def burn_for(seconds: float) -> int:
    """``seconds`` of this process's CPU in pure Python (multiprocessing.Pool runs it too)."""
    deadline = time.process_time() + seconds
    total = 0
    while time.process_time() < deadline:
        total += sum(i * i for i in range(200))
    return total % 997


def echo(task_input: Any, ctx: TaskContext) -> Any:
    """Returns its input: a process hop's cost is all there is."""
    return task_input


def echo_bytes(conn: Any) -> None:
    """A raw pipe's other end (multiprocessing.Pool-free): sends back what it reads."""
    try:
        while True:
            conn.send_bytes(conn.recv_bytes())
    except EOFError:
        pass


async def stamp(task_input: Any, ctx: TaskContext) -> Any:
    """When the handler started (wall clock, for pickup latency), after BENCH_SLEEP_SECONDS."""
    started = time.time()
    if SLEEP_SECONDS:
        await asyncio.sleep(SLEEP_SECONDS)
    return {"started": started}


async def wait_event(task_input: Any, ctx: TaskContext) -> Any:
    """Waits for shutdown: an async handler holding nothing but its coroutine."""
    await ctx.wait_for_shutdown()
    return seed_handler(task_input, ctx)


def sleep_sync(task_input: Any, ctx: TaskContext) -> Any:
    """A sync handler blocked for BENCH_SLEEP_SECONDS inside a span of its own (a no-op
    unless tracing is on): process mode's quick task."""
    from opentelemetry import trace

    with trace.get_tracer("bench").start_as_current_span("work"):
        if SLEEP_SECONDS:
            time.sleep(SLEEP_SECONDS)
    return seed_handler(task_input, ctx)
