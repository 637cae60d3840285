"""Handlers a user could write by mistake, importable by path (process mode spawns them)."""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import os
import stat
import threading
import time
from typing import Any

from sfn_worker import TaskContext
from sfn_worker.examples import seed_handler

# Process mode: a slow import in a handler process (SIGTERM while a replacement starts).
if multiprocessing.parent_process() is not None and (
    delay := float(os.environ.get("SLOW_HANDLER_IMPORT_SECONDS", "0"))
):
    time.sleep(delay)


def die_when_asked(task_input: Any, ctx: TaskContext) -> Any:
    """Ends its process abruptly (as a segfault or the OOM killer would) when asked."""
    if task_input.get("die"):
        os._exit(task_input.get("code", 3))
    time.sleep(task_input.get("seconds", 0))
    return seed_handler(task_input, ctx)


def always_die(task_input: Any, ctx: TaskContext) -> Any:
    os._exit(3)


def exit_the_interpreter(task_input: Any, ctx: TaskContext) -> Any:
    if task_input.get("how") == "interrupt":
        raise KeyboardInterrupt
    if task_input.get("how") == "generator-exit":
        raise GeneratorExit  # a BaseException too, as a generator's close() raises it
    raise SystemExit(task_input.get("code", 2))


async def exit_the_interpreter_async(task_input: Any, ctx: TaskContext) -> Any:
    await asyncio.sleep(0)
    return exit_the_interpreter(task_input, ctx)


def lone_surrogate(task_input: Any, ctx: TaskContext) -> Any:
    return {"text": "broken \ud800 text"}


def cancellable(task_input: Any, ctx: TaskContext) -> Any:
    """``cooperative`` stops when the worker asks; ``stubborn`` ignores it."""
    if task_input.get("cooperative"):
        return {"stopped": ctx.cancel_requested.wait(60)}
    if task_input.get("stubborn"):
        time.sleep(60)
    return {"quick": True}


# Thread mode: stuck handlers that the test releases at the end.
release_stuck = threading.Event()


def stuck_until_released(task_input: Any, ctx: TaskContext) -> Any:
    if task_input.get("stuck"):
        release_stuck.wait(120)  # ignores ctx.cancel_requested on purpose
        return {"late": True}
    return {"quick": True}


async def swallow_cancellation(task_input: Any, ctx: TaskContext) -> Any:
    """Catches CancelledError and carries on, for ever."""
    while True:
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            continue


def progress_then_stall(task_input: Any, ctx: TaskContext) -> Any:
    """Reports progress for a while, then goes quiet (stuck in a call), then returns."""
    deadline = time.monotonic() + task_input["progress_seconds"]
    while time.monotonic() < deadline:
        ctx.heartbeat()
        time.sleep(0.02)
    time.sleep(task_input["stall_seconds"])
    return {"done": True}


async def progress_then_stall_async(task_input: Any, ctx: TaskContext) -> Any:
    deadline = time.monotonic() + task_input["progress_seconds"]
    while time.monotonic() < deadline:
        ctx.heartbeat()
        await asyncio.sleep(0.02)
    await asyncio.sleep(task_input["stall_seconds"])
    return {"done": True}


_leaked: list[bytes] = []
LEAK_BYTES = 40 * 1024 * 1024


def leak(task_input: Any, ctx: TaskContext) -> Any:
    """Keeps 40 MB for ever on every call, and says how big its process has grown."""
    import psutil

    _leaked.append(b"x" * LEAK_BYTES)
    return {"pid": os.getpid(), "rss": psutil.Process().memory_info().rss}


def leave_an_orphan(task_input: Any, ctx: TaskContext) -> Any:
    """Starts a program in the background and returns: the program outlives its parent (a
    shell), so it is re-parented to PID 1 and must be reaped there when it exits."""
    import subprocess

    subprocess.run(["sh", "-c", "sleep 0.05 &"], check=True)
    return {"ok": True}


class _PicklingRaises:
    """An object whose pickling raises, with a huge message that carries the task token (as
    a careless library's might)."""

    def __init__(self, message: str) -> None:
        self.message = message

    def __reduce__(self) -> Any:
        raise ValueError(self.message)


def unpicklable_result(task_input: Any, ctx: TaskContext) -> Any:
    """Returns what cannot leave a handler process, or (``ok``) its pid."""
    kind = task_input.get("kind")
    if kind == "value_error":
        return {"result": _PicklingRaises(f"cannot pickle this for {ctx.task_token}. " * 100)}
    if kind == "recursion":
        nested: Any = []
        for _ in range(100_000):
            nested = [nested]
        return nested
    return {"pid": os.getpid()}


def stamped_sleep(task_input: Any, ctx: TaskContext) -> Any:
    """Says when it started (wall clock) and in which process, after blocking ``seconds``."""
    started = time.time()
    time.sleep(task_input.get("seconds", 0))
    return {"pid": os.getpid(), "started": started}


def die_leaving_a_child(task_input: Any, ctx: TaskContext) -> Any:
    """With ``die``: forks a child that outlives this process for ``child_seconds`` (as the
    workers of a ``multiprocessing.Pool`` do when the OOM killer takes their parent), so
    the child holds this process's end of its pipe; then ends abruptly."""
    if task_input.get("die"):
        if os.fork() == 0:
            _keep_only_sockets()  # the test reads the worker's streams to their end
            time.sleep(task_input.get("child_seconds", 30))
            os._exit(0)
        os._exit(3)
    return {"pid": os.getpid()}


def _keep_only_sockets() -> None:
    """Close every descriptor but sockets (a handler process's calls pipe is one): the
    worker's streams and the resource tracker's pipe (which keeps the tracker, and so
    those streams, open) are not."""
    for name in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):
            if not stat.S_ISSOCK(os.fstat(int(name)).st_mode):
                os.close(int(name))
