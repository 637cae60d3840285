"""CPU per call of a handler process that returns its input, one call at a time, through
the worker's process pool: `python bench/hop.py SIZE CALLS` prints microseconds.

A script of its own so that the same measurement runs against an earlier commit's code
(PYTHONPATH=<that tree's service>:bench): the pool's constructor is the only difference
it allows for.
"""

from __future__ import annotations

import asyncio
import inspect
import sys
from typing import Any

import psutil
import uvloop

from sfn_worker.context import TaskContext
from sfn_worker.tasks.handlers.procpool import HandlerProcessPool

WARM_UP_CALLS = 20


def own_cpu(process: psutil.Process) -> float:
    times = process.cpu_times()
    return times.user + times.system


def tree_cpu(process: psutil.Process) -> float:
    """This process's CPU and its children's (the handler process, the resource tracker)."""
    total = own_cpu(process)
    for child in process.children(recursive=True):
        try:
            total += own_cpu(child)
        except psutil.NoSuchProcess:
            continue
    return total


async def hop_us(size: int, count: int) -> float:
    options: dict[str, Any] = {}
    if "max_processes" in inspect.signature(HandlerProcessPool).parameters:
        options["max_processes"] = 1
    pool = HandlerProcessPool("handlers:echo", **options)
    ctx = TaskContext(task_token="t" * 1000, worker_name="bench", activity_arn="arn")
    payload: dict[str, Any] = {"in": "SUCCESS", "pad": "x" * size}
    try:
        for _ in range(WARM_UP_CALLS):
            await pool.call(payload, ctx)  # started, imported, warm
        me = psutil.Process()
        cpu0 = tree_cpu(me)
        for _ in range(count):
            await pool.call(payload, ctx)
        cpu1 = tree_cpu(me)
    finally:
        await pool.close()
    return (cpu1 - cpu0) / count * 1e6


if __name__ == "__main__":
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        print(runner.run(hop_us(int(sys.argv[1]), int(sys.argv[2]))))
