"""The standard streams: never closed, never blocking the event loop.

Log lines (stderr) and EMF records (stdout) leave through an ``OutputStream``. While
nothing is queued, a line is written at once with a write that cannot wait (``pwritev2``
with ``RWF_NOWAIT``: a pipe or socket with room takes it, a full one answers EAGAIN), as
cheap as a plain write. Otherwise, and for descriptors that do not take that flag (files,
terminals, older kernels), it goes into a bounded buffer that a daemon thread of its own
writes out. A reader that stops reading (a full pipe, a log driver in blocking mode) then
stalls that thread only: when the buffer is full new output is dropped and counted, and
once the stream drains again a notice says how many were dropped, at the place they were.
A broken stream (EPIPE, EBADF, EIO) stops it: later output is discarded and the failure is
reported once. Order is kept: one buffer, and a line goes straight out only when it is
empty. (Handing every line to the thread cost about 4 % more CPU per task than the plain
write in the bench's overhead scenario: the thread's wake-ups contend for the GIL with a
busy loop.)

Why not asyncio's pipe transport (``loop.connect_write_pipe``)? It makes the descriptor
non-blocking, which a pipe shares with every process holding it (handler processes, the
container runtime), accepts only pipes and sockets (not a file), and needs the loop, while
lines come from handler threads too and must still go out after the loop has closed.
``logging.handlers.QueueHandler`` with a bounded queue reports a full queue as a logging
error with a traceback on stderr, the stream that is full.

``reopen_closed_standard_fds`` runs first thing in ``main``: a supervisor that starts the
worker with stdin, stdout or stderr closed (``<&-``) would otherwise let the next file the
process opens take descriptor 0-2, and uvloop aborts at exit closing it.
"""

from __future__ import annotations

import contextvars
import errno
import os
import select
import sys
import threading
import time
from collections import deque
from collections.abc import Callable

# stderr: about four seconds of a busy worker's lines (two lines of ~250 bytes per task at
# the account's 500 tasks/s); stdout: hundreds of EMF intervals.
STDERR_BUFFER_BYTES = 1 << 20
STDOUT_BUFFER_BYTES = 256 << 10
# pwritev2's RWF_NOWAIT (Linux): a write to a pipe or socket that returns EAGAIN instead of
# waiting for the reader. Where the descriptor does not take it, every write is the thread's.
_NOWAIT = getattr(os, "RWF_NOWAIT", 0)
_NOWAIT_UNSUPPORTED = frozenset({errno.EOPNOTSUPP, errno.EINVAL, errno.ESPIPE, errno.ENOSYS})
# The writer waits this long after the first line of a burst, so one write carries the
# lines of the moment instead of one wake-up and one write each (CPU per task: bench/).
LINGER_SECONDS = 0.005
# At exit, how long output still buffered may take to reach a slow reader.
FLUSH_AT_EXIT_SECONDS = 1.0


class OutputStream:
    """Bytes for one file descriptor, written off the caller's thread; see the module doc.

    ``on_drop(n)`` runs on the caller's thread when ``n`` records are dropped;
    ``on_error(exc)`` once when the stream breaks (on the caller's or the writer's thread);
    ``gap_notice(n)``
    renders the line that marks ``n`` dropped records (called under the buffer's lock: it
    must not write).
    """

    def __init__(
        self,
        fd: int,
        name: str,
        *,
        limit_bytes: int,
        gap_notice: Callable[[int], bytes] | None = None,
    ) -> None:
        self.fd = fd
        self.name = name
        self.on_drop: Callable[[int], None] | None = None
        self.on_error: Callable[[OSError], None] | None = None
        self.dropped = 0
        self.error: OSError | None = None
        self.gap_notice = gap_notice
        self._limit = limit_bytes
        self._gap = 0  # records dropped since the last notice
        self._pending: deque[bytes] = deque()
        self._pending_bytes = 0  # queued, and being written
        self._busy = False  # the writer has work (queued or being written)
        self._closed = False
        self._lock = threading.Lock()
        self._idle = threading.Condition(self._lock)
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._nowait = bool(_NOWAIT)

    def write(self, data: bytes, records: int = 1) -> bool:
        """Write ``data`` (``records`` lines) now if that cannot wait, else queue it unless
        the buffer is full or the stream is broken; never blocks. False: dropped (counted)
        or discarded (broken)."""
        if self.error is not None or self._closed:
            return False
        broken: OSError | None = None
        queued = wake = False
        with self._lock:
            if not self._busy and self._nowait:  # nothing queued: order allows it
                written, broken = self._write_now(data)
                if written == len(data):
                    return True
                data = data[written:]  # the rest follows, through the thread
            if broken is None:
                queued, wake = self._queue(data, records)
        if broken is not None:
            if self.on_error is not None:
                self.on_error(broken)
            return False
        if not queued:
            if self.on_drop is not None:
                self.on_drop(records)
            return False
        if wake:
            if self._thread is None:
                self._start()
            self._wake.set()
        return True

    def _queue(self, data: bytes, records: int) -> tuple[bool, bool]:
        """Into the buffer, unless it is full (under the lock): queued, and whether the
        writer must be woken."""
        # Into an empty buffer anything goes: one interval's records may be large.
        if self._pending_bytes and self._pending_bytes + len(data) > self._limit:
            self._gap += records
            self.dropped += records
            return False, False
        if self._gap:
            self._note_gap()
        self._pending.append(data)
        self._pending_bytes += len(data)
        wake = not self._busy
        self._busy = True
        return True, wake

    def _write_now(self, data: bytes) -> tuple[int, OSError | None]:
        """A write that returns at once (RWF_NOWAIT), under the lock: how much it took, and
        the error if the stream is broken."""
        try:
            return os.pwritev(self.fd, [data], -1, _NOWAIT), None
        except BlockingIOError:
            return 0, None  # full: the thread waits for the reader
        except OSError as exc:
            if exc.errno in _NOWAIT_UNSUPPORTED:
                self._nowait = False  # a file, a terminal, an older kernel: the thread
                return 0, None
            self.error = exc
            self._idle.notify_all()
            return 0, exc

    def report_to(self, dropped: Callable[[int], None], broken: Callable[[OSError], None]) -> None:
        """Call ``dropped(n)`` when records are dropped and ``broken(error)`` once when the
        stream breaks, in a copy of this caller's context (so a line it logs carries the
        caller's bound fields, not those of whichever task's write found it broken)."""
        context = contextvars.copy_context()
        self.on_drop = dropped
        self.on_error = lambda error: context.copy().run(broken, error)
        if self.dropped:
            dropped(self.dropped)  # before anyone was told
        if self.error is not None:
            broken(self.error)

    def flush(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds for what is queued to be written. True: written
        (or the stream is broken, so nothing more will be)."""
        with self._idle:
            return self._idle.wait_for(lambda: not self._busy or self.error is not None, timeout)

    def close(self, timeout: float) -> None:
        """Flush (at most ``timeout`` seconds), then let the writer thread end; later
        writes are discarded."""
        self.flush(timeout)
        with self._lock:
            self._closed = True
        self._wake.set()

    def _note_gap(self) -> None:
        """Queue the notice of the records dropped since the last one (under the lock)."""
        if self.gap_notice is not None:
            notice = self.gap_notice(self._gap)
            self._pending.append(notice)
            self._pending_bytes += len(notice)
        self._gap = 0

    def _start(self) -> None:
        with self._lock:
            if self._thread is not None:
                return
            self._thread = threading.Thread(
                target=self._run, name=f"sfn-worker-{self.name}", daemon=True
            )
        self._thread.start()

    def _run(self) -> None:
        while True:
            self._wake.wait()
            time.sleep(LINGER_SECONDS)  # let the lines of this moment join the write
            with self._lock:
                if not self._pending and self._gap:
                    self._note_gap()  # drained: say what was dropped since
                batch = b"".join(self._pending)
                self._pending.clear()
                if not batch:
                    self._busy = False
                    self._wake.clear()
                    self._idle.notify_all()
                    if self._closed:
                        return
                    continue
            try:
                _write_all(self.fd, batch)
            except OSError as exc:
                self._broken(exc)
                return
            with self._lock:
                self._pending_bytes -= len(batch)

    def _broken(self, error: OSError) -> None:
        with self._lock:
            self.error = error
            self._pending.clear()
            self._pending_bytes = 0
            self._idle.notify_all()
        if self.on_error is not None:
            self.on_error(error)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        try:
            written = os.write(fd, view)
        except BlockingIOError:
            # Someone made the shared descriptor non-blocking: wait here, on this thread.
            select.select([], [fd], [])
            continue
        view = view[written:]


_open: list[OutputStream] = []


def open_stream(
    fd: int,
    name: str,
    *,
    limit_bytes: int,
    gap_notice: Callable[[int], bytes] | None = None,
) -> OutputStream:
    """A new OutputStream, flushed by ``flush_all`` at exit."""
    stream = OutputStream(fd, name, limit_bytes=limit_bytes, gap_notice=gap_notice)
    _open.append(stream)
    return stream


def close(stream: OutputStream, timeout: float) -> None:
    """Flush and close ``stream``; ``flush_all`` no longer waits for it."""
    stream.close(timeout)
    if stream in _open:
        _open.remove(stream)


def flush_all(timeout: float = FLUSH_AT_EXIT_SECONDS) -> bool:
    """Give buffered output ``timeout`` seconds in all to be written; a stream nobody
    reads never holds the exit longer."""
    deadline = time.monotonic() + timeout
    return all(s.flush(max(0.0, deadline - time.monotonic())) for s in list(_open))


def reopen_closed_standard_fds() -> None:
    """Open /dev/null on whichever of descriptors 0-2 is closed (see the module doc), and
    give Python a stream object for it."""
    for fd in (0, 1, 2):
        try:
            os.fstat(fd)
        except OSError:
            null = os.open(os.devnull, os.O_RDWR)
            if null != fd:
                os.dup2(null, fd)
                os.close(null)
    if sys.stdin is None:
        sys.stdin = open(0, encoding="utf-8", closefd=False)  # noqa: SIM115 - lives as long as the process
    if sys.stdout is None:
        sys.stdout = open(1, "w", encoding="utf-8", closefd=False)  # noqa: SIM115
    if sys.stderr is None:
        sys.stderr = open(2, "w", encoding="utf-8", errors="backslashreplace", closefd=False)  # noqa: SIM115
