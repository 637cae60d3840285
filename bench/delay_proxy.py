"""A TCP proxy that delays bytes in both directions, so every round trip through it costs
twice the one-way delay: a request, its answer, and a waiting poll's answer alike (the
fake's own ``latency_seconds`` delays a request before it is served, not an answer that a
long poll waited for).

    async with delay_proxy(fake.endpoint_url, 0.010) as url:  # 20 ms round trips
        ...  # point the contender at ``url``

Bytes keep their order and are not rate-limited: each chunk leaves ``delay`` s after it
arrived, as on a long, fat link. A delay of 0 yields the target URL itself (no proxy).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import typing
from collections.abc import AsyncIterator
from urllib.parse import urlsplit


class _Direction:
    """One direction of one connection: chunks written to ``sink`` ``delay`` s after they
    arrived, in order (one timer at a time, so equal deadlines cannot swap)."""

    def __init__(self, loop: asyncio.AbstractEventLoop, delay: float) -> None:
        self._loop = loop
        self._delay = delay
        self._queue: collections.deque[tuple[float, bytes | None]] = collections.deque()
        self._timer: asyncio.TimerHandle | None = None
        self._sink: asyncio.Transport | None = None

    def push(self, data: bytes | None) -> None:
        self._queue.append((self._loop.time() + self._delay, data))
        self._schedule()

    def attach(self, sink: asyncio.Transport) -> None:
        self._sink = sink
        self._schedule()

    def stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._queue.clear()

    def _schedule(self) -> None:
        if self._timer is None and self._sink is not None and self._queue:
            self._timer = self._loop.call_at(self._queue[0][0], self._flush)

    def _flush(self) -> None:
        self._timer = None
        sink, now = self._sink, self._loop.time()
        assert sink is not None
        while self._queue and self._queue[0][0] <= now:
            _, data = self._queue.popleft()
            if data is None:  # the source closed: close the sink once its bytes are out
                self._queue.clear()
                sink.close()
                return
            if not sink.is_closing():
                sink.write(data)
        self._schedule()


class _Side(asyncio.Protocol):
    """One socket of a proxied connection; what it reads goes into ``outgoing``."""

    def __init__(self, outgoing: _Direction, incoming: _Direction, sides: set[_Side]) -> None:
        self.outgoing = outgoing
        self.incoming = incoming
        self._sides = sides
        self.transport: asyncio.Transport | None = None
        self.peer: _Side | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # A stream transport (uvloop's are not asyncio.Transport subclasses).
        self.transport = typing.cast(asyncio.Transport, transport)
        self._sides.add(self)
        self.incoming.attach(self.transport)

    def data_received(self, data: bytes) -> None:
        self.outgoing.push(data)

    def eof_received(self) -> bool:
        self.outgoing.push(None)
        return True  # the other direction may still carry an answer

    def connection_lost(self, exc: Exception | None) -> None:
        self._sides.discard(self)
        self.incoming.stop()
        self.outgoing.push(None)

    # Flow control: a sink that cannot keep up pauses the socket feeding it.
    def pause_writing(self) -> None:
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.pause_reading()

    def resume_writing(self) -> None:
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.resume_reading()


class _Proxy:
    def __init__(self, host: str, port: int, delay: float) -> None:
        self._target = (host, port)
        self._delay = delay
        self._sides: set[_Side] = set()
        self._connecting: set[asyncio.Task[None]] = set()

    def accept(self) -> _Side:
        loop = asyncio.get_running_loop()
        upstream, downstream = _Direction(loop, self._delay), _Direction(loop, self._delay)
        client = _Side(upstream, downstream, self._sides)
        task = loop.create_task(self._connect(client, upstream, downstream))
        self._connecting.add(task)
        task.add_done_callback(self._connecting.discard)
        return client

    async def _connect(self, client: _Side, upstream: _Direction, downstream: _Direction) -> None:
        loop = asyncio.get_running_loop()
        try:
            _, server = await loop.create_connection(
                lambda: _Side(downstream, upstream, self._sides), *self._target
            )
        except OSError:
            if client.transport is not None:
                client.transport.abort()
            return
        client.peer, server.peer = server, client

    async def close(self) -> None:
        for task in list(self._connecting):
            task.cancel()
        for task in list(self._connecting):
            with contextlib.suppress(asyncio.CancelledError):
                await task
        for side in list(self._sides):
            side.outgoing.stop()
            side.incoming.stop()
            if side.transport is not None:
                side.transport.abort()
        self._sides.clear()


@contextlib.asynccontextmanager
async def delay_proxy(target_url: str, one_way_delay: float) -> AsyncIterator[str]:
    """Yield a URL that reaches ``target_url`` (``http://host:port``) with
    ``one_way_delay`` s added each way; 0 yields ``target_url`` unchanged."""
    if one_way_delay <= 0:
        yield target_url
        return
    parts = urlsplit(target_url)
    if parts.hostname is None or parts.port is None:
        raise ValueError(f"delay_proxy needs http://host:port, not {target_url!r}")
    proxy = _Proxy(parts.hostname, parts.port, one_way_delay)
    server = await asyncio.get_running_loop().create_server(proxy.accept, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"{parts.scheme}://127.0.0.1:{port}"
    finally:
        server.close()
        await proxy.close()
        await server.wait_closed()
