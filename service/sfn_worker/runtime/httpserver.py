"""A small HTTP/1.1 server for the worker's two GET endpoints, guarded against slow clients.

Why not aiohttp's server (the worker used it): it has no deadline for reading a request's
headers and no cap on connections, so clients that send a byte at a time (300 of them with
a file limit of 256) held every file descriptor the worker had, and the health check was
reset on a healthy worker. The two endpoints need none of its features. Here:

- a request's line and headers must arrive within HEADER_SECONDS, at most MAX_HEADER_BYTES;
- at most MAX_CONNECTIONS are open; a new one beyond them closes the oldest connection still
  sending its request of the address that holds the most of those, so a flood of slow
  clients from one address costs that address its own connections, never another's: the
  health check (from the container itself) keeps its turn;
- every answer closes its connection (no keep-alive to hold), and is written within
  WRITE_SECONDS;
- only GET and HEAD; anything else is 405, a request with a body 400.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

HEADER_SECONDS = 5.0
WRITE_SECONDS = 10.0
MAX_HEADER_BYTES = 8 * 1024
MAX_CONNECTIONS = 32
REASONS = {200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed",
           503: "Service Unavailable"}  # fmt: skip


@dataclass(frozen=True)
class Response:
    status: int
    body: bytes
    content_type: str = "application/json"


Handler = Callable[[], Awaitable[Response]]


@dataclass(eq=False)
class _Connection:
    writer: asyncio.StreamWriter
    peer: str
    reading: bool = True  # still sending its request


class GuardedServer:
    def __init__(self, routes: dict[str, Handler]) -> None:
        self._routes = routes
        self._connections: list[_Connection] = []
        self._server: asyncio.Server | None = None

    async def start(self, host: str, port: int) -> None:
        # The reader's limit: a request line and headers beyond it end the connection.
        self._server = await asyncio.start_server(self._serve, host, port, limit=MAX_HEADER_BYTES)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for connection in list(self._connections):
            connection.writer.transport.abort()
        if self._server is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._server.wait_closed(), 1.0)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = writer.get_extra_info("peername")
        connection = _Connection(writer, str(peer[0]) if peer else "")
        self._admit(connection)
        try:
            try:
                async with asyncio.timeout(HEADER_SECONDS):
                    head = await reader.readuntil(b"\r\n\r\n")
            except (TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
                return  # too slow, gone, or too large: closed without an answer
            connection.reading = False
            response = await self._answer(head)
            async with asyncio.timeout(WRITE_SECONDS):
                await self._write(writer, response, head.startswith(b"HEAD "))
        except (OSError, TimeoutError):
            return  # the client went away, or does not read
        finally:
            if connection in self._connections:
                self._connections.remove(connection)
            if connection.reading:
                writer.transport.abort()
            else:
                writer.close()

    def _admit(self, connection: _Connection) -> None:
        """Cap the connections: beyond it, the oldest one still sending a request from the
        address with the most of those goes."""
        self._connections.append(connection)
        while len(self._connections) > MAX_CONNECTIONS:
            reading = [c for c in self._connections if c.reading and c is not connection]
            if not reading:
                break
            by_peer = Counter(c.peer for c in reading)
            crowded = max(by_peer, key=lambda peer: by_peer[peer])
            slow = next(c for c in reading if c.peer == crowded)
            self._connections.remove(slow)
            slow.writer.transport.abort()

    async def _answer(self, head: bytes) -> Response:
        if len(head) > MAX_HEADER_BYTES:
            return Response(400, b'{"error":"request too large"}')
        request_line, _, headers = head.partition(b"\r\n")
        parts = request_line.split(b" ")
        if len(parts) != 3 or not parts[2].startswith(b"HTTP/1."):
            return Response(400, b'{"error":"not an HTTP/1 request"}')
        method, target = parts[0], parts[1].split(b"?", 1)[0].decode("latin-1")
        if method not in (b"GET", b"HEAD"):
            return Response(405, b'{"error":"only GET"}')
        lowered = headers.lower()
        if b"\ncontent-length:" in b"\n" + lowered or b"transfer-encoding:" in lowered:
            return Response(400, b'{"error":"no request body expected"}')
        handler = self._routes.get(target)
        if handler is None:
            return Response(404, b'{"error":"not found"}')
        return await handler()

    @staticmethod
    async def _write(writer: asyncio.StreamWriter, response: Response, head_only: bool) -> None:
        reason = REASONS.get(response.status, "")
        writer.write(
            f"HTTP/1.1 {response.status} {reason}\r\n"
            f"Content-Type: {response.content_type}\r\n"
            f"Content-Length: {len(response.body)}\r\n"
            "Connection: close\r\n\r\n".encode("latin-1")
        )
        if not head_only:
            writer.write(response.body)
        await writer.drain()
