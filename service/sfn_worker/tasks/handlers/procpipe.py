"""The worker's end of a handler process's pipe, read and written by the event loop itself.

A reader thread per process cost a thread wake-up and a hop back to the loop
(``call_soon_threadsafe``) for every message: about 20 raw pipe round trips per call. Here
the loop reads the pipe when it is readable, into one buffer a message is unpickled from in
place, and writes without blocking (what the pipe cannot take yet waits for it to drain).
The framing is ``multiprocessing.connection``'s, so the process uses a plain
``Connection`` on its end.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import os
import pickle
import socket
import struct
from collections.abc import Callable
from multiprocessing.connection import Connection
from typing import Any

READ_CHUNK = 256 * 1024
# A buffer grown for a large message is dropped once empty, above this size.
KEEP_BUFFER_BYTES = 4 * 1024 * 1024
# Each end's send buffer: a call or a result up to Step Functions' 256 KB goes in one write
# (the default, about 200 KB, split it into writes the other end had to drain first).
SEND_BUFFER_BYTES = 1024 * 1024
_SHORT = struct.Struct("!i")
_LONG = struct.Struct("!Q")


def frame(message: tuple[Any, ...]) -> tuple[bytes, bytes]:
    """A message as ``Connection.recv`` reads it: its length, then its pickle."""
    payload = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
    if len(payload) > 0x7FFFFFFF:
        return _SHORT.pack(-1) + _LONG.pack(len(payload)), payload
    return _SHORT.pack(len(payload)), payload


def widen(conn: Connection) -> None:
    """Raise the send buffer of a socket's end (capped by the kernel, ``wmem_max``)."""
    with socket.socket(fileno=os.dup(conn.fileno())) as end, contextlib.suppress(OSError):
        end.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SEND_BUFFER_BYTES)


def read_message(fd: int) -> Any:
    """One message from a blocking descriptor (the handler process's end), read straight
    into a buffer of its size and unpickled from it: no copy between (``Connection.recv``
    gathers chunks in a BytesIO first). EOFError when the other end is gone."""
    (size,) = _SHORT.unpack(_read_exactly(fd, _SHORT.size))
    if size == -1:
        (size,) = _LONG.unpack(_read_exactly(fd, _LONG.size))
    return pickle.loads(_read_exactly(fd, size))


def _read_exactly(fd: int, size: int) -> bytearray:
    buffer = bytearray(size)
    view = memoryview(buffer)
    done = 0
    while done < size:
        count = os.readv(fd, [view[done:]])
        if count == 0:
            raise EOFError
        done += count
    view.release()
    return buffer


class Pipe:
    """Non-blocking, on the running loop. ``on_message`` gets each message (a message that
    cannot be unpickled here arrives as ``("unreadable", text)``); ``on_closed`` once, when
    the other end is gone."""

    def __init__(
        self,
        conn: Connection,
        on_message: Callable[[tuple[Any, ...]], None],
        on_closed: Callable[[], None],
    ) -> None:
        self._conn = conn  # owns the descriptor: closed with it, even if never closed here
        self._fd = conn.fileno()
        os.set_blocking(self._fd, False)
        self._loop = asyncio.get_running_loop()
        self._on_message = on_message
        self._on_closed = on_closed
        self._buffer = bytearray(READ_CHUNK)
        self._start = 0  # the first unread byte of the buffer
        self._end = 0  # one past the last byte read into it
        self._needed = 0  # bytes of the message being read, its header included
        self._pending: collections.deque[memoryview] = collections.deque()
        self._open = True
        self._loop.add_reader(self._fd, self._readable)

    def send(self, message: tuple[Any, ...]) -> None:
        """Queue ``message``; written now if the pipe takes it. A process that is gone has
        its death reported by ``on_closed``, not here."""
        if not self._open:
            return
        header, payload = frame(message)
        waiting = bool(self._pending)
        self._pending.append(memoryview(header))
        self._pending.append(memoryview(payload))
        if not waiting:
            self._write()

    def finish(self) -> None:
        """The other end's process has ended: deliver what it wrote before, then close,
        without waiting for an end of file (a child it left may hold its end open)."""
        while self._open and self._read_once():
            pass
        self.close()

    def close(self) -> None:
        if self._open:
            self._open = False
            self._loop.remove_reader(self._fd)
            self._loop.remove_writer(self._fd)
            self._pending.clear()
        self._conn.close()

    # -- writing -----------------------------------------------------------------------------
    def _write(self) -> None:
        while self._pending:
            try:
                sent = os.writev(self._fd, _head(self._pending))
            except (BlockingIOError, InterruptedError):
                self._loop.add_writer(self._fd, self._write)
                return
            except OSError:  # the process is gone: its end of the pipe reports it
                self._pending.clear()
                break
            while sent:
                first = self._pending[0]
                if sent >= len(first):
                    sent -= len(first)
                    self._pending.popleft()
                else:
                    self._pending[0] = first[sent:]
                    sent = 0
        self._loop.remove_writer(self._fd)

    # -- reading -----------------------------------------------------------------------------
    def _readable(self) -> None:
        if self._read_once() == 0:
            self._closed()

    def _read_once(self) -> int | None:
        """Read what is there and deliver the messages it completes: the bytes read, 0 when
        the other end is gone, None when nothing was there yet."""
        self._make_room()
        try:
            count = os.readv(self._fd, [memoryview(self._buffer)[self._end :]])
        except (BlockingIOError, InterruptedError):
            return None
        except OSError:
            return 0
        if count:
            self._end += count
            self._deliver()
        return count

    def _make_room(self) -> None:
        """Room for the rest of the message being read (at least a chunk): moved to the
        buffer's start if that makes room, grown if not."""
        unread = self._end - self._start
        want = max(READ_CHUNK, self._needed - unread)
        if len(self._buffer) - self._end >= want:
            return
        if self._start:
            self._buffer[:unread] = self._buffer[self._start : self._end]
            self._start, self._end = 0, unread
        if len(self._buffer) - self._end < want:
            self._buffer.extend(bytes(want - (len(self._buffer) - self._end)))

    def _deliver(self) -> None:
        while self._open:
            unread = self._end - self._start
            if unread < _SHORT.size:
                break
            (size,) = _SHORT.unpack_from(self._buffer, self._start)
            header = _SHORT.size
            if size == -1:
                if unread < _SHORT.size + _LONG.size:
                    break
                (size,) = _LONG.unpack_from(self._buffer, self._start + _SHORT.size)
                header += _LONG.size
            if unread < header + size:
                self._needed = header + size
                break
            begin = self._start + header
            self._start = begin + size
            self._needed = 0
            self._on_message(self._unpickle(begin, begin + size))
        if self._start == self._end:
            self._start = self._end = 0
            if len(self._buffer) > KEEP_BUFFER_BYTES:
                self._buffer = bytearray(READ_CHUNK)

    def _unpickle(self, begin: int, end: int) -> tuple[Any, ...]:
        view = memoryview(self._buffer)[begin:end]
        try:
            message: tuple[Any, ...] = pickle.loads(view)
        except Exception as exc:  # noqa: BLE001 - unpicklable here (a class the worker lacks)
            return ("unreadable", f"{type(exc).__name__}: {exc}")
        finally:
            view.release()
        return message

    def _closed(self) -> None:
        if self._open:
            self.close()
            self._on_closed()


def _head(pending: collections.deque[memoryview]) -> list[memoryview]:
    """At most 64 buffers for one ``writev`` (IOV_MAX is 1024 on Linux)."""
    if len(pending) <= 64:
        return list(pending)
    return [pending[i] for i in range(64)]
