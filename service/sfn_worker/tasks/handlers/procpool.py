"""Handler processes for process mode: one call per process at a time, each on its own pipe.

Why not ``concurrent.futures.ProcessPoolExecutor``: one process that dies (a segfault, the
OOM killer, ``os._exit``) breaks the whole executor, failing every task in it and every task
after. Why not pebble or loky: pebble is LGPL, polls its workers, and breaks when a worker
dies idle; loky fails every running task when one worker dies. None can tell a running call
that its task was cancelled. Here each process has its own pipe, so:

- a death fails only the call that process was running, with ``HandlerProcessDied``;
- a cancelled call is told (``ctx.cancel_requested`` in the child) and, if it does not
  return within ``CANCEL_GRACE_SECONDS``, its process is terminated and replaced;
- repeated deaths back off the start of new processes (``wait_ready``), so a handler that
  always dies cannot burn through tasks at full speed;
- with ``max_tasks_per_child`` a process is replaced after that many calls (a leaking
  handler); its replacement starts when its last call starts, so it starts up while that
  call runs and the next call does not wait for it (if the call outlasts a start).
Processes start on demand (spawn), at most ``max_processes`` (by default one per CPU the
container may use: cpus.py) and, with recycling, one replacement beside a process on its
last call; they are reused. A call takes a process that is up if there is one, else the one
that has been starting longest, else starts one if it may; else it waits, first come first
served, holding its task's slot (and heartbeated), until a process is free. More slots than
processes keep the next tasks at hand while the answers' round trips overlap the work.
The loop reads and writes every process's pipe itself (procpipe.py): no thread per process.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import contextvars
import itertools
import multiprocessing
import os
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from typing import Any

import structlog

from ...aio import retrieve_exception
from ...context import TaskContext
from ...errors import INVALID_OUTPUT_ERROR, SHUTDOWN_ERROR, HandlerProcessDied, describe_exit
from ...exceptions import TaskFailed
from ...logs import current_log_config
from ...retry import Backoff
from .procchild import child_main, local_error
from .procpipe import Pipe, widen
from .safe_spawn import start_children_with_safe_path

log = structlog.get_logger("sfn_worker.processes")

CANCEL_GRACE_SECONDS = 2.0
KILL_AFTER_TERMINATE_SECONDS = 1.0
# Consecutive deaths delay the next process start: 0.25-0.5 s after the first, up to 30 s.
DEATH_BACKOFF = Backoff(base_seconds=0.5, cap_seconds=30.0)
# A process that closed its pipe is reaped within this long, or killed.
REAP_SECONDS = 2.0
CLOSE_TIMEOUT_SECONDS = 5.0
# A recycled process is asked to exit; it is killed if still there this long after.
RETIRE_SECONDS = 10.0
# A process asked to exit may export its last spans for this long (at the worker's exit,
# no longer than the grace leaves).
EXIT_FLUSH_SECONDS = 2.0


@dataclass(frozen=True)
class PoolHealth:
    processes: int
    deaths: int
    consecutive_deaths: int
    start_delayed_seconds: float


@dataclass(eq=False)
class _Call:
    id: int
    future: asyncio.Future[Any]
    ctx: TaskContext  # the worker's side: progress reported in the child lands here


class _Process:
    """The worker's handle on one handler process: its calls pipe (read by the loop) and
    its control pipe (cancels, shutdown)."""

    def __init__(self, process: BaseProcess, conn: Connection, control: Connection) -> None:
        self.process = process
        self._conn = conn
        self._control = control
        self.pipe: Pipe | None = None
        self.call: _Call | None = None
        self.calls_done = 0
        self.ready = False  # its handler is imported: a call sent now starts at once
        self.init_failure = ""
        self.stopping = False  # the worker ended it: its death is not the handler's fault
        self.last_call = False  # recycled: its replacement started with its last call
        self._reap_timer: asyncio.TimerHandle | None = None
        self._exit_fd = _exit_fd(process)

    @property
    def pid(self) -> int | None:
        return self.process.pid

    @property
    def counted(self) -> bool:
        """Counts against the pool's limit: neither leaving nor on its last call."""
        return not (self.stopping or self.last_call)

    def watch(
        self,
        on_message: Callable[[_Process, tuple[Any, ...]], None],
        on_exit: Callable[[_Process, int | None], None],
    ) -> None:
        """From now on the loop reads its messages; ``on_exit`` once it is gone and reaped.
        Its end is its exit, not its pipe's end of file: a child it leaves behind (a fork,
        a ``multiprocessing`` pool) may hold its end of the pipe open."""
        self.pipe = Pipe(self._conn, lambda message: on_message(self, message), self._pipe_closed)
        asyncio.get_running_loop().add_reader(self._exit_fd, self._ended, on_exit)

    def send(self, message: tuple[Any, ...]) -> None:
        if self.pipe is not None:
            self.pipe.send(message)

    def control(self, message: tuple[Any, ...]) -> None:
        """A few bytes its control thread always reads: a write that blocks cannot happen."""
        with contextlib.suppress(OSError):  # it died; its pipe reports the death
            self._control.send(message)

    def stop(self) -> None:
        """Terminate now, kill a little later if it ignores SIGTERM."""
        self.stopping = True
        if self.process.exitcode is None:
            self.process.terminate()
            asyncio.get_running_loop().call_later(KILL_AFTER_TERMINATE_SECONDS, self._kill)

    def retire(self) -> None:
        """Idle and done (recycled): ask it to exit, exporting its last spans and running
        its exit hooks; kill it if it lingers."""
        self.stopping = True
        self.send(("exit", EXIT_FLUSH_SECONDS, True))
        asyncio.get_running_loop().call_later(RETIRE_SECONDS, self._kill)

    def leave(self, flush_seconds: float) -> None:
        """The worker is exiting: export the last spans for at most ``flush_seconds``, then
        end at once (a terminated process runs no exit hooks either)."""
        self.stopping = True
        self.send(("exit", flush_seconds, False))
        loop = asyncio.get_running_loop()
        loop.call_later(flush_seconds + KILL_AFTER_TERMINATE_SECONDS, self._kill)

    def _kill(self) -> None:
        if self.process.exitcode is None:
            self.process.kill()

    def _pipe_closed(self) -> None:
        """Its pipe closed: it is ending; killed if it lives on without its pipe."""
        self._reap_timer = asyncio.get_running_loop().call_later(REAP_SECONDS, self._kill)

    def _ended(self, on_exit: Callable[[_Process, int | None], None]) -> None:
        """It has ended: what it wrote before is read, then its exit reported."""
        asyncio.get_running_loop().remove_reader(self._exit_fd)
        if self._exit_fd != self.process.sentinel:
            os.close(self._exit_fd)
        if self._reap_timer is not None:
            self._reap_timer.cancel()
        self.process.join()  # it has ended: returns at once
        if self.pipe is not None:
            self.pipe.finish()
        self._control.close()
        on_exit(self, self.process.exitcode)

    def finished_call(self, message: tuple[Any, ...]) -> tuple[_Call, bool, Any] | None:
        """The current call and its outcome (ok, value or exception), if ``message`` ends
        it; None for the process's other messages."""
        kind, call = message[0], self.call
        if kind == "init_failed":
            self.init_failure = f"it failed to start: {message[1]}"
        if call is None or kind not in ("result", "unreadable"):
            return None
        if kind == "unreadable":
            reason = f"the handler's answer could not be read by the worker: {message[1]}"
            outcome: tuple[bool, Any] = (False, TaskFailed(INVALID_OUTPUT_ERROR, reason))
        else:
            _, call_id, ok, value = message
            if call_id != call.id:
                return None
            outcome = (ok, value if ok else local_error(value))
        self.call = None
        self.calls_done += 1
        return call, *outcome


def _exit_fd(process: BaseProcess) -> int:
    """A descriptor readable once ``process`` has ended: its pidfd (Linux 5.3), else its
    sentinel, whose other end a child it forks inherits (then its end is seen only when
    that child ends too). Opened at its start, before anything may reap it."""
    if process.pid is not None and hasattr(os, "pidfd_open"):
        with contextlib.suppress(OSError):
            return os.pidfd_open(process.pid)
    return process.sentinel


class _Restarts:
    """Deaths and the backoff they impose on starting new processes."""

    def __init__(self, backoff: Backoff, on_may_start: Callable[[], None]) -> None:
        self._backoff = backoff
        self._on_may_start = on_may_start
        self.deaths = 0
        self.consecutive = 0
        self._not_before = 0.0
        # Cleared after a death until the backoff has passed: no new process starts meanwhile.
        self.may_start = asyncio.Event()
        self.may_start.set()
        self._timer: asyncio.TimerHandle | None = None

    def died(self) -> float:
        """Count a death; returns the delay before the next process may start."""
        loop = asyncio.get_running_loop()
        self.deaths += 1
        self.consecutive += 1
        delay = self._backoff.delay(self.consecutive - 1)
        self._not_before = loop.time() + delay
        self.may_start.clear()
        if self._timer is not None:
            self._timer.cancel()
        self._timer = loop.call_later(delay, self._passed)
        return delay

    def _passed(self) -> None:
        self.may_start.set()
        self._on_may_start()

    def delayed_seconds(self) -> float:
        return max(0.0, self._not_before - asyncio.get_running_loop().time())


class HandlerProcessPool:
    def __init__(
        self,
        handler_path: str,
        *,
        max_processes: int,
        init_path: str | None = None,
        max_tasks_per_child: int = 0,
        trace_carrier: Callable[[], dict[str, str] | None] | None = None,
        on_death: Callable[[], None] | None = None,
        death_backoff: Backoff = DEATH_BACKOFF,
    ) -> None:
        self._trace_carrier = trace_carrier
        self._handler_path = handler_path
        self._init_path = init_path
        self._max_processes = max(1, max_processes)
        self._max_tasks = max_tasks_per_child
        self._on_death = on_death
        self._restarts = _Restarts(death_backoff, self._fill)
        start_children_with_safe_path()
        self._context = multiprocessing.get_context("spawn")  # fork is unsafe with threads
        self._processes: set[_Process] = set()
        self._idle: list[_Process] = []
        # Calls waiting for a process, first come first served.
        self._waiting: collections.deque[asyncio.Future[_Process]] = collections.deque()
        self._ids = itertools.count(1)
        self._shutdown = False
        self._closed = False
        self._all_gone = asyncio.Event()
        self._all_gone.set()

    @property
    def max_processes(self) -> int:
        return self._max_processes

    # -- what the worker asks ----------------------------------------------------------------
    def health(self) -> PoolHealth:
        return PoolHealth(
            processes=len(self._processes),
            deaths=self._restarts.deaths,
            consecutive_deaths=self._restarts.consecutive,
            start_delayed_seconds=round(self._restarts.delayed_seconds(), 3),
        )

    async def wait_ready(self) -> None:
        """Returns once a call could start without a backoff after deaths (it may still
        wait for a busy process: its task is held meanwhile)."""
        if not self._idle:
            await self._restarts.may_start.wait()

    async def call(self, task_input: Any, ctx: TaskContext) -> Any:
        """Run the handler in a process; its exception, or HandlerProcessDied."""
        process = await self._acquire()
        while process not in self._processes or process.stopping:
            process = await self._acquire()  # it died before this call could use it
        call = _Call(next(self._ids), asyncio.get_running_loop().create_future(), ctx)
        call.future.add_done_callback(retrieve_exception)  # a result may arrive after nobody waits
        process.call = call
        fields = {
            "task_token": ctx.task_token,
            "worker_name": ctx.worker_name,
            "activity_arn": ctx.activity_arn,
            "queue_url": ctx.queue_url,
            "source_name": ctx.source_name,
            "token_hash": ctx.token_hash,
        }
        # The current trace context (the handler's span) crosses to the child with the call.
        carrier = self._trace_carrier() if self._trace_carrier is not None else None
        # A process known to be up starts the call at once: no "started" message needed.
        announce = not process.ready
        process.send(("call", call.id, task_input, fields, carrier, announce))
        if not announce:
            self._started(process, call)
        try:
            return await call.future
        except asyncio.CancelledError:
            if call.future.cancelled():  # with this task: a new one takes the late result
                call.future = asyncio.get_running_loop().create_future()
                call.future.add_done_callback(retrieve_exception)
            await self._stop_call(process, call)
            raise

    def notify_shutdown(self) -> None:
        """Set ``ctx.shutdown_requested`` in every handler process, now and later."""
        self._shutdown = True
        for process in self._processes:
            process.control(("shutdown",))

    async def close(self, deadline: float | None = None) -> None:
        """End every process (running calls included); returns when all are gone. With a
        ``deadline`` (loop time), idle processes leave on their own, exporting their last
        spans until then; the others are terminated at once. Calls still waiting for a
        process fail with Worker.Shutdown."""
        self._closed = True
        while self._waiting:
            waiter = self._waiting.popleft()
            if not waiter.done():
                waiter.set_exception(
                    TaskFailed(
                        SHUTDOWN_ERROR,
                        "the worker shut down before a handler process was free for this task",
                    )
                )
        flush = 0.0
        if deadline is not None:
            flush = min(EXIT_FLUSH_SECONDS, deadline - asyncio.get_running_loop().time())
        for process in list(self._processes):
            if flush > 0 and process.ready and process.call is None and not process.stopping:
                process.leave(flush)
            else:
                process.stop()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._all_gone.wait(), CLOSE_TIMEOUT_SECONDS)

    # -- inside ------------------------------------------------------------------------------
    async def _acquire(self) -> _Process:
        """A process for a call, waiting in line for one if none is free."""
        process = self._take()
        if process is not None:
            return process
        waiter: asyncio.Future[_Process] = asyncio.get_running_loop().create_future()
        self._waiting.append(waiter)
        try:
            return await waiter
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled() and waiter.exception() is None:
                self._release(waiter.result())  # handed over as this call was cancelled
            else:
                with contextlib.suppress(ValueError):
                    self._waiting.remove(waiter)
            raise

    def _take(self) -> _Process | None:
        """An idle process that is up (the last one freed: its caches are warm), else the
        idle one starting longest, else a new one if the limit and the backoff allow; None
        when the call must wait (or others wait already: first come first served)."""
        if self._waiting:
            return None
        chosen = next((p for p in reversed(self._idle) if p.ready), None)
        if chosen is None and self._idle:
            chosen = self._idle[0]
        if chosen is not None:
            self._idle.remove(chosen)
            return chosen
        return self._start() if self._may_start() else None

    def _may_start(self) -> bool:
        counted = sum(1 for p in self._processes if p.counted)
        return (
            not self._closed and self._restarts.may_start.is_set() and counted < self._max_processes
        )

    def _release(self, process: _Process) -> None:
        """A free process: to the first waiting call, else idle."""
        while self._waiting:
            waiter = self._waiting.popleft()
            if not waiter.done():
                waiter.set_result(process)
                return
        self._idle.append(process)

    def _fill(self) -> None:
        """Start processes for waiting calls, as far as the limit and the backoff allow."""
        while self._waiting and self._may_start():
            self._release(self._start())

    def _started(self, process: _Process, call: _Call) -> None:
        """The handler of ``call`` starts now."""
        progress = call.ctx._progress
        if progress is not None:
            progress.handler_started()
        if self._max_tasks and process.calls_done + 1 >= self._max_tasks:
            self._start_replacement(process)  # it starts up while this last call runs

    async def _stop_call(self, process: _Process, call: _Call) -> None:
        """The call was cancelled: tell the handler, then end its process if it goes on."""
        if not call.future.done():
            process.control(("cancel", call.id))
        try:
            await asyncio.wait_for(asyncio.shield(call.future), CANCEL_GRACE_SECONDS)
        except TimeoutError:
            log.warning(
                "cancelled handler did not return; terminating its process",
                pid=process.pid,
                grace_seconds=CANCEL_GRACE_SECONDS,
            )
            process.stop()
            await asyncio.gather(call.future, return_exceptions=True)
        except Exception:  # noqa: BLE001, S110 - the call's late result is discarded
            pass

    def _start_replacement(self, process: _Process) -> None:
        """With recycling: the successor of a process whose last call started (then, not
        when the call is handed over: a process still starting would start another, and
        quick calls would pile up starts competing for the cores). Not while stopping (no
        call needs it, unless one waits) or backing off after deaths (the backoff's end
        starts one for a waiting call)."""
        process.last_call = True
        if self._waiting:
            self._fill()
        elif not (self._closed or self._shutdown) and self._may_start():
            self._idle.append(self._start())

    def _start(self) -> _Process:
        parent_end, child_end = self._context.Pipe(duplex=True)
        widen(parent_end)
        widen(child_end)
        control_end, control_child_end = self._context.Pipe(duplex=False)
        process = self._context.Process(
            target=child_main,
            args=(
                child_end,
                control_end,
                self._handler_path,
                self._init_path,
                current_log_config(),
            ),
            name="sfn-handler",
        )
        process.daemon = True  # multiprocessing ends daemonic children at interpreter exit
        process.start()
        # The child's ends live in the child: EOF here means it is gone.
        child_end.close()
        control_end.close()
        handle = _Process(process, parent_end, control_child_end)
        self._processes.add(handle)
        self._all_gone.clear()
        # Its callbacks run in a copy of this context: without the token of the task that
        # happened to start it, or every later line about it would name that task.
        context = contextvars.copy_context()
        context.run(structlog.contextvars.unbind_contextvars, "token")
        context.run(handle.watch, self._on_message, self._on_exit)
        if self._shutdown:
            handle.control(("shutdown",))
        return handle

    def _on_message(self, process: _Process, message: tuple[Any, ...]) -> None:
        if message[0] == "ready":
            process.ready = True
            return
        if message[0] in ("progress", "started"):
            call = process.call
            if call is None or message[1] != call.id:
                return  # a late message of a call that ended
            if message[0] == "started":
                self._started(process, call)
            elif (progress := call.ctx._progress) is not None:
                progress.report_progress()
            return
        finished = process.finished_call(message)
        if finished is None:
            return
        call, ok, value = finished
        self._restarts.consecutive = 0
        if not call.future.done():
            if ok:
                call.future.set_result(value)
            else:
                call.future.set_exception(value)
        if process.stopping:
            return
        if self._closed:
            process.stop()
        elif self._max_tasks and process.calls_done >= self._max_tasks:
            process.retire()  # recycled: its replacement started with its last call
        else:
            self._release(process)

    def _on_exit(self, process: _Process, exitcode: int | None) -> None:
        self._processes.discard(process)
        if process in self._idle:
            self._idle.remove(process)
        if not self._processes:
            self._all_gone.set()
        call, process.call = process.call, None
        died = HandlerProcessDied(process.pid, exitcode, process.init_failure)
        if call is not None and not call.future.done():
            call.future.set_exception(died)
        if process.stopping:
            self._fill()
            return
        delay = self._restarts.died()
        log.error(
            "handler process died",
            pid=process.pid,
            exit=describe_exit(exitcode),
            while_running_a_task=call is not None,
            consecutive_deaths=self._restarts.consecutive,
            next_start_in=round(delay, 2),
            detail=process.init_failure or None,
            **({"token": call.ctx.token_hash} if call is not None else {}),
        )
        if self._on_death is not None:
            self._on_death()
