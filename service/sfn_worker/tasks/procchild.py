"""The inside of one handler process (process mode): runs calls the worker sends, one at a time.

Messages on the pipe, as tuples:
  worker -> child   ("call", id, input, ctx fields, trace carrier) | ("cancel", id)
                    | ("shutdown",) | ("exit",)
  child -> worker   ("ready",) | ("init_failed", text) | ("result", id, ok, value or error)
                    | ("progress", id): ctx.heartbeat() was called (at most every 0.05 s)

The main thread runs handlers; a reader thread takes messages, so a cancel or shutdown
reaches ``ctx.cancel_requested`` / ``ctx.shutdown_requested`` while a handler runs.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import pickle
import queue
import signal
import sys
import threading
import time
from multiprocessing.connection import Connection
from typing import Any

from ..app import import_object
from ..context import STATE_UNAVAILABLE, TaskContext
from ..errors import INVALID_OUTPUT_ERROR, RemoteHandlerError, TaskFailed, truncate
from ..tracing import tracing_requested

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


def local_error(sent: tuple[bool, str, str]) -> Exception:
    task_failed, first, second = sent
    return TaskFailed(first, second) if task_failed else RemoteHandlerError(first, second)


class _Child:
    def __init__(self, conn: Connection) -> None:
        self.conn = conn
        self.state: Any = STATE_UNAVAILABLE
        self.calls: queue.Queue[tuple[int, Any, dict[str, Any], Any] | None] = queue.Queue()
        self.cancels: dict[int, threading.Event] = {}
        self.shutdown = threading.Event()
        self._send_lock = threading.Lock()

    def send(self, message: tuple[Any, ...]) -> None:
        with self._send_lock:
            self.conn.send(message)

    def read(self) -> None:
        """Reader thread: hand calls to the main thread, flag cancels and shutdown."""
        try:
            while True:
                message = self.conn.recv()
                kind = message[0]
                if kind == "call":
                    # Registered here, not when the call starts: a cancel may come first.
                    self.cancels[message[1]] = threading.Event()
                    self.calls.put(message[1:])
                elif kind == "cancel" and (event := self.cancels.get(message[1])) is not None:
                    event.set()
                elif kind == "shutdown":
                    self.shutdown.set()
                elif kind == "exit":
                    self.calls.put(None)
        except (EOFError, OSError):
            os._exit(0)  # the worker is gone: no one is left to read a result

    def serve(self, handler: Any, tracing: Any) -> None:
        while (call := self.calls.get()) is not None:
            call_id, task_input, fields, carrier = call
            cancel = self.cancels[call_id]
            ctx = TaskContext(
                **fields,
                cancel_requested=cancel,
                shutdown_requested=self.shutdown,
                _state=self.state,
                _progress=_Progress(self, call_id),
            )
            reply: tuple[Any, ...]
            if cancel.is_set():  # cancelled while this process was still starting: skip it
                reply = ("result", call_id, False, (True, "Worker.Cancelled", "not started"))
            else:
                try:
                    with tracing.attached(carrier) if tracing else contextlib.nullcontext():
                        reply = ("result", call_id, True, handler(task_input, ctx))
                except BaseException as exc:  # noqa: BLE001 - SystemExit too: ends the call only
                    reply = ("result", call_id, False, remote_error(exc))
                if tracing:
                    tracing.flush()  # this process may be ended at any time from now on
            del self.cancels[call_id]
            try:
                self.send(reply)
            except (pickle.PicklingError, TypeError, AttributeError) as exc:
                failure = TaskFailed(
                    INVALID_OUTPUT_ERROR,
                    f"handler returned a value that cannot leave its process "
                    f"({type(reply[3]).__name__}): {remote_error(exc)[-1]}",
                )
                self.send(("result", call_id, False, remote_error(failure)))


class _Progress:
    """ctx.heartbeat() in a handler process: cheap in a tight loop, throttled on the pipe."""

    def __init__(self, child: _Child, call_id: int) -> None:
        self._child = child
        self._call_id = call_id
        self._sent_at = float("-inf")

    def report_progress(self) -> None:
        now = time.monotonic()
        if now - self._sent_at >= PROGRESS_SEND_SECONDS:
            self._sent_at = now
            self._child.send(("progress", self._call_id))


def child_main(conn: Connection, handler_path: str, init_path: str | None) -> None:
    """Entry point of a spawned handler process: load the handler, run the app's
    ``process_init`` (its result is ``ctx.state`` here), then serve calls."""
    die_with_parent()
    # Ctrl-C in a terminal reaches the whole process group; the worker decides what stops.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    child = _Child(conn)
    try:
        handler = import_object(handler_path, "handler")
        if init_path is not None:
            child.state = import_object(init_path, "process_init")()
    except BaseException as exc:  # noqa: BLE001 - reported to the worker, then this process ends
        child.send(("init_failed", truncate(f"{type(exc).__name__}: {exc}", MAX_MESSAGE_CHARS)))
        sys.exit(1)
    threading.Thread(target=child.read, name="sfn-handler-pipe", daemon=True).start()
    child.send(("ready",))
    child.serve(handler, _tracing())


def _tracing() -> Any:
    """The otel module, configured, when the environment asks for traces; else None."""
    if not tracing_requested(os.environ):
        return None
    try:
        from .. import otel
    except ImportError:
        return None
    otel.configure_sdk()
    return otel
