"""A TCP proxy whose path can fail the ways real networks do, for tests in front of the fake.

- ``black_hole()``: a NAT or load balancer that lost its state: every open connection and
  every new one goes dark (bytes are dropped both ways, nothing is closed). After ``heal()``
  new connections pass again; the dark ones stay dark, as connections through a middlebox
  that forgot them do.
- ``reset()``: every open connection is reset (RST), and so is every new one until healed.
- ``stall()``: the endpoint accepts connections and reads requests but never answers; on
  ``heal()`` it closes those connections (as a restarted server would) and serves again.

It also checks the client side: a connection the client sent a request on that was never
answered (it went dark) must not carry another request (``reused_failed_connections``).
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
from dataclasses import dataclass, field

REQUEST_START = b"POST "


@dataclass(eq=False)
class _Connection:
    client: asyncio.StreamWriter
    upstream: asyncio.StreamWriter | None = None
    dark: bool = False
    awaiting_response: bool = False
    # Requests that went unanswered on this connection: at most one may ever exist.
    unanswered: int = 0
    pumps: list[asyncio.Task[None]] = field(default_factory=list)


def _abort_with_rst(writer: asyncio.StreamWriter) -> None:
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


class FaultyPath:
    def __init__(self, target_host: str, target_port: int) -> None:
        self._target = (target_host, target_port)
        self.mode = "pass"  # pass | black_hole | reset | stall
        self.connections: set[_Connection] = set()
        self.opened = 0
        self.reused_failed_connections = 0
        self._server: asyncio.Server | None = None
        self.url = ""

    async def __aenter__(self) -> FaultyPath:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        port = self._server.sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        for connection in list(self.connections):
            self._close(connection, reset=True)
        await self._server.wait_closed()

    # -- faults ----------------------------------------------------------------------------
    def black_hole(self) -> None:
        self.mode = "black_hole"
        for connection in self.connections:
            self._go_dark(connection)

    def reset(self) -> None:
        self.mode = "reset"
        for connection in list(self.connections):
            self._close(connection, reset=True)

    def stall(self) -> None:
        self.mode = "stall"
        for connection in self.connections:
            self._go_dark(connection)

    def heal(self) -> None:
        stalled = self.mode == "stall"
        self.mode = "pass"
        if stalled:
            for connection in [c for c in self.connections if c.dark]:
                self._close(connection, reset=False)

    # -- the proxy -------------------------------------------------------------------------
    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.opened += 1
        if self.mode == "reset":
            _abort_with_rst(writer)
            return
        connection = _Connection(client=writer)
        self.connections.add(connection)
        try:
            if self.mode == "pass":
                up_reader, connection.upstream = await asyncio.open_connection(*self._target)
                connection.pumps.append(asyncio.create_task(self._pump_back(up_reader, connection)))
            else:
                connection.dark = True
            await self._pump_out(reader, connection)
        except (ConnectionError, OSError):
            pass
        finally:
            self._close(connection, reset=False)

    async def _pump_out(self, reader: asyncio.StreamReader, connection: _Connection) -> None:
        """Client to upstream; in the dark, count requests and drop them."""
        while data := await reader.read(65536):
            starts = data.count(REQUEST_START)
            if connection.dark:
                if starts:
                    connection.unanswered += starts
                    if connection.unanswered > 1:
                        self.reused_failed_connections += 1
                continue
            if starts:
                connection.awaiting_response = True
            assert connection.upstream is not None
            connection.upstream.write(data)
            await connection.upstream.drain()

    async def _pump_back(self, reader: asyncio.StreamReader, connection: _Connection) -> None:
        with contextlib.suppress(ConnectionError, OSError):
            while data := await reader.read(65536):
                if connection.dark:
                    continue
                connection.awaiting_response = False
                connection.client.write(data)
                await connection.client.drain()
        if not connection.dark:
            connection.client.close()

    def _go_dark(self, connection: _Connection) -> None:
        connection.dark = True
        if connection.awaiting_response:
            connection.unanswered += 1

    def _close(self, connection: _Connection, *, reset: bool) -> None:
        if connection not in self.connections:
            return
        self.connections.discard(connection)
        for writer in (connection.client, connection.upstream):
            if writer is None:
                continue
            if reset:
                _abort_with_rst(writer)
            else:
                writer.close()
        for pump in connection.pumps:
            pump.cancel()
