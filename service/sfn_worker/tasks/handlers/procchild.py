"""The inside of one handler process (process mode): runs calls the worker sends, one at a time.

Two pipes from the worker, each message a tuple:
  calls (duplex)    worker -> child  ("call", id, input, ctx fields, trace carrier, announce)
                                     | ("exit", seconds to export the last spans, run exit hooks)
                    child -> worker  ("ready",) | ("init_failed", text)
                                     | ("result", id, ok, value or error)
                                     | ("started", id): the handler starts now (only if
                                       ``announce``: the worker did not know this process up)
                                     | ("progress", id): ctx.heartbeat() (at most every 0.05 s)
  control           worker -> child  ("cancel", id) | ("shutdown",)

The main thread reads calls itself and runs their handlers: nothing between a call's
arrival and its handler but the read. A control thread takes cancels and shutdown, so they
reach ``ctx.cancel_requested`` / ``ctx.shutdown_requested`` while a handler runs. Logging
is configured as in the worker (the same format on stderr, warnings included); spans leave
in batches from the SDK's thread, never between a handler and its reply, and what is left
is exported within the time the worker gives when it asks the process to exit.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import pickle
import signal
import sys
import threading
import time
from multiprocessing.connection import Connection
from typing import Any

import structlog

from ...app import import_object
from ...context import STATE_UNAVAILABLE, TaskContext
from ...errors import INVALID_OUTPUT_ERROR, RemoteHandlerError, truncate
from ...exceptions import TaskFailed
from ...logs import LogConfig, configure_logging
from ...redact import describe
from ...tracing import tracing_requested
from .procpipe import read_message

log = structlog.get_logger("sfn_worker.handler_process")

MAX_MESSAGE_CHARS = 4096
# ctx.heartbeat() in a handler process: at most one message this often reaches the worker
# (20/s: nothing next to any heartbeat interval, cheap even from a tight loop).
PROGRESS_SEND_SECONDS = 0.05


def die_with_parent() -> None:
    # Linux: if the worker is SIGKILLed, its handler processes go too instead of idling on.
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PDEATHSIG


def remote_error(exc: BaseException) -> tuple[bool, str, str]:
    """What of an exception crosses back: (True, error, cause) of a TaskFailed, else
    (False, type name, message); the worker rebuilds it with ``local_error``."""
    if isinstance(exc, TaskFailed):
        return (True, str(exc.error), str(exc.cause))
    try:
        message = str(exc)
    except Exception:  # noqa: BLE001 - a broken __str__ must not lose the task
        message = "<the exception's message could not be read>"
    return (False, type(exc).__name__, truncate(message, MAX_MESSAGE_CHARS))


def unpicklable_cause(value: Any, exc: BaseException, task_token: str) -> str:
    """Why a result could not leave its process: bounded, and never with the task token
    (an exception's message may quote anything, the token included)."""
    try:
        message = str(exc)
    except Exception:  # noqa: BLE001 - a broken __str__ must not lose the task
        message = "<the exception's message could not be read>"
    message = message.replace(task_token, "<task token>") if task_token else message
    return truncate(
        f"the handler's result ({type(value).__name__}) cannot leave its process: pickling "
        f"it raised {type(exc).__name__}: {message}",
        MAX_MESSAGE_CHARS,
    )


def local_error(sent: tuple[bool, str, str]) -> Exception:
    task_failed, first, second = sent
    return TaskFailed(first, second) if task_failed else RemoteHandlerError(first, second)


class _Child:
    def __init__(self, conn: Connection, control: Connection) -> None:
        self.conn = conn
        self.control = control
        self.state: Any = STATE_UNAVAILABLE
        self.cancels: dict[int, threading.Event] = {}
        self.cancelled_early: set[int] = set()  # cancels that came before their call
        self._cancels_lock = threading.Lock()
        self.shutdown = threading.Event()
        self.exit_flush_seconds = 0.0  # how long the worker lets it export when it leaves
        self.exit_hooks = True  # False: the worker is exiting, leave at once after export
        self._send_lock = threading.Lock()

    def send(self, message: tuple[Any, ...]) -> None:
        with self._send_lock:
            self.conn.send(message)

    def watch_control(self) -> None:
        """Control thread: flag cancels and shutdown."""
        try:
            while True:
                message = self.control.recv()
                if message[0] == "cancel":
                    self._cancel(message[1])
                elif message[0] == "shutdown":
                    self.shutdown.set()
        except (EOFError, OSError):
            os._exit(0)  # the worker is gone: no one is left to read a result

    def _cancel(self, call_id: int) -> None:
        with self._cancels_lock:
            event = self.cancels.get(call_id)
            if event is None:
                self.cancelled_early.add(call_id)
        if event is not None:
            event.set()

    def _registered(self, call_id: int) -> threading.Event:
        """The call's cancel flag; already set if its cancel came first. Calls come in
        order, so an earlier one's late cancel is forgotten here."""
        event = threading.Event()
        with self._cancels_lock:
            self.cancels[call_id] = event
            if self.cancelled_early:
                if call_id in self.cancelled_early:
                    event.set()
                self.cancelled_early = {i for i in self.cancelled_early if i > call_id}
        return event

    def _next_call(self) -> tuple[Any, ...] | None:
        try:
            message: tuple[Any, ...] = read_message(self.conn.fileno())
        except (EOFError, OSError):
            os._exit(0)  # the worker is gone: no one is left to read a result
        if message[0] == "exit":
            self.exit_flush_seconds, self.exit_hooks = message[1], message[2]
            return None
        return message

    def serve(self, handler: Any, tracing: Any) -> None:
        while (call := self._next_call()) is not None:
            _, call_id, task_input, fields, carrier, announce = call
            cancel = self._registered(call_id)
            progress = _Progress(self, call_id)
            ctx = TaskContext(
                **fields,
                cancel_requested=cancel,
                shutdown_requested=self.shutdown,
                _state=self.state,
                _progress=progress,
            )
            reply: tuple[Any, ...]
            if cancel.is_set():  # cancelled while this process was still starting: skip it
                reply = ("result", call_id, False, (True, "Worker.Cancelled", "not started"))
            else:
                if announce:
                    progress.handler_started()
                try:
                    with tracing.attached(carrier) if tracing else contextlib.nullcontext():
                        reply = ("result", call_id, True, handler(task_input, ctx))
                except BaseException as exc:  # noqa: BLE001 - SystemExit too: ends the call only
                    reply = ("result", call_id, False, remote_error(exc))
            with self._cancels_lock:
                del self.cancels[call_id]
            self.send_reply(reply, ctx.task_token)

    def send_reply(self, reply: tuple[Any, ...], task_token: str) -> None:
        """Send a call's result. Pickling runs the result's own code (``__reduce__``, a
        nesting too deep): whatever it raises fails that task with Worker.InvalidOutput,
        never this process."""
        try:
            data = pickle.dumps(reply, protocol=pickle.HIGHEST_PROTOCOL)
        except BaseException as exc:  # noqa: BLE001 - the user's object, its failure is the task's
            failure = TaskFailed(INVALID_OUTPUT_ERROR, unpicklable_cause(reply[3], exc, task_token))
            failed = (*reply[:2], False, remote_error(failure))
            data = pickle.dumps(failed, protocol=pickle.HIGHEST_PROTOCOL)
        with self._send_lock:
            self.conn.send_bytes(data)


class _Progress:
    """ctx.heartbeat() in a handler process: cheap in a tight loop, throttled on the pipe."""

    def __init__(self, child: _Child, call_id: int) -> None:
        self._child = child
        self._call_id = call_id
        self._sent_at = float("-inf")

    def handler_started(self) -> None:
        """The worker's progress clock for this call starts now."""
        self._child.send(("started", self._call_id))

    def report_progress(self) -> None:
        now = time.monotonic()
        if now - self._sent_at >= PROGRESS_SEND_SECONDS:
            self._sent_at = now
            self._child.send(("progress", self._call_id))


def child_main(
    conn: Connection,
    control: Connection,
    handler_path: str,
    init_path: str | None,
    log_config: LogConfig | None,
) -> None:
    """Entry point of a spawned handler process: log as the worker does, load the handler,
    run the app's ``process_init`` (its result is ``ctx.state`` here), then serve calls
    until asked to exit."""
    if log_config is not None:
        configure_logging(log_config.level, log_config.fmt, log_config.worker_name)
    try:
        _serve(conn, control, handler_path, init_path)
    except Exception:
        # A defect here, not the handler's (that is its task's answer): logged as the
        # worker logs, not printed raw by multiprocessing; the worker sees the death.
        log.exception("handler process failed")
        sys.stderr.flush()
        os._exit(1)


def _serve(conn: Connection, control: Connection, handler_path: str, init_path: str | None) -> None:
    die_with_parent()
    # Ctrl-C in a terminal reaches the whole process group; the worker decides what stops.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    child = _Child(conn, control)
    # Before the handler's import: a cancel or shutdown sent meanwhile is taken, not queued.
    threading.Thread(target=child.watch_control, name="sfn-handler-control", daemon=True).start()
    try:
        handler = import_object(handler_path, "handler")
        if init_path is not None:
            child.state = import_object(init_path, "process_init")()
    except BaseException as exc:  # noqa: BLE001 - reported to the worker, then this process ends
        child.send(("init_failed", truncate(f"{type(exc).__name__}: {exc}", MAX_MESSAGE_CHARS)))
        sys.exit(1)
    tracing = _tracing()
    child.send(("ready",))
    child.serve(handler, tracing)
    if tracing is not None:
        tracing.close(child.exit_flush_seconds)
    if not child.exit_hooks:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)


class _ChildTracing:
    """OpenTelemetry in a handler process: the SDK configured from the same OTEL_*."""

    def __init__(self, otel: Any, owned: bool) -> None:
        self._otel = otel
        self._owned = owned

    def attached(self, carrier: dict[str, str] | None) -> contextlib.AbstractContextManager[None]:
        return self._otel.attached(carrier)  # type: ignore[no-any-return]

    def close(self, timeout_seconds: float) -> None:
        """Export what is left, for at most ``timeout_seconds``; then the process exits
        without waiting for the rest."""
        if not self._otel.close_sdk(self._owned).wait(max(0.0, timeout_seconds)):
            log.warning(
                "tracing: spans not exported before this handler process ended; dropped",
                accessory="tracing",
                timeout_seconds=round(timeout_seconds, 2),
            )


def _tracing() -> _ChildTracing | None:
    """Tracing, configured, when the environment asks for it; else None. A failure here
    costs this process its spans, never its tasks (the worker checked the configuration at
    start)."""
    if not tracing_requested(os.environ):
        return None
    try:
        from ... import otel

        return _ChildTracing(otel, otel.configure_sdk())
    except ImportError:
        return None
    except Exception as exc:  # noqa: BLE001 - tracing is an accessory
        log.warning(
            "tracing: off in this handler process", accessory="tracing", error=describe(exc)
        )
        return None
