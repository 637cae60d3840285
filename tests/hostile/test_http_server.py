"""The health and metrics port as the network can treat it: clients that send a byte at a
time, more connections than the process has file descriptors, junk requests."""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import signal
from typing import Any

import pytest

from sfn_worker.testing import FakeStepFunctions

from ..test_operations import free_port
from ..test_process import BIN, worker_process

prlimit = shutil.which("prlimit")
needs_prlimit = pytest.mark.skipif(prlimit is None, reason="needs util-linux prlimit")
REQUEST = b"GET /healthz HTTP/1.1\r\nHost: worker\r\nUser-Agent: slow\r\n\r\n"


async def slow_client(port: int, stop: asyncio.Event) -> None:
    """Slowloris: a byte every second, reconnecting whenever the server lets go; from
    another address than the health check's (another host: 127.0.0.2 on the loopback)."""
    while not stop.is_set():
        try:
            _, writer = await asyncio.open_connection(
                "127.0.0.1", port, local_addr=("127.0.0.2", 0)
            )
        except OSError:
            await asyncio.sleep(0.2)  # refused while the server is full: try again soon
            continue
        try:
            for byte in REQUEST:
                writer.write(bytes([byte]))
                await writer.drain()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), 1.0)
                if stop.is_set():
                    break
        except OSError:
            pass  # closed by the server: come back
        finally:
            writer.transport.abort()


async def get_status(port: int, path: str = "/healthz", timeout: float = 3.0) -> int:
    async with asyncio.timeout(timeout):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            writer.write(f"GET {path} HTTP/1.1\r\nHost: worker\r\n\r\n".encode())
            await writer.drain()
            status_line = await reader.readline()
            await reader.read()
        finally:
            writer.close()
    return int(status_line.split()[1])


@needs_prlimit
@pytest.mark.slow
@pytest.mark.timeout(90)
async def test_slow_clients_never_starve_the_health_check(fake: FakeStepFunctions) -> None:
    """300 clients trickling a byte a second at a worker limited to 256 file descriptors:
    /healthz keeps answering 200 and tasks keep being answered. aiohttp's server had no
    header deadline and no cap: the health check was reset on a healthy worker."""
    port = free_port()
    command = [str(prlimit), "--nofile=256:256", str(BIN / "sfn-worker"), "run"]
    async with worker_process(
        command, fake, SFN_HTTP_PORT=str(port), SFN_HTTP_HOST="127.0.0.1"
    ) as worker:
        await worker.wait_for_log("worker started")
        stop = asyncio.Event()
        attackers = [asyncio.create_task(slow_client(port, stop)) for _ in range(300)]
        try:
            statuses = []
            for round_ in range(8):
                await asyncio.sleep(1)  # let the attack build up between checks
                statuses.append(await get_status(port))
                fake.add_task({"in": "SUCCESS", "round": round_})
                await fake.wait_for(lambda: all(t.state != "open" for t in fake.tasks.values()))
        finally:
            stop.set()
            await asyncio.gather(*attackers)
        worker.signal_worker(signal.SIGTERM)
        fake.release_polls()
        assert await worker.exit_code() == 0
    assert statuses == [200] * 8
    assert all(t.state == "succeeded" for t in fake.tasks.values())


@pytest.mark.parametrize(
    ("request_bytes", "status"),
    [
        (b"POST /healthz HTTP/1.1\r\nContent-Length: 2\r\n\r\nhi", 405),
        (b"GET /nowhere HTTP/1.1\r\n\r\n", 404),
        (b"GET /healthz HTTP/1.1\r\nContent-Length: 5\r\n\r\n", 400),
        (b"\x16\x03\x01 not http\r\n\r\n", 400),
    ],
)
async def test_junk_requests_get_a_clean_answer(
    fake: FakeStepFunctions, request_bytes: bytes, status: int
) -> None:
    from sfn_worker.examples import seed_handler

    from ..test_operations import worker_with_http

    async with worker_with_http(fake, seed_handler) as (_, url):
        port = int(url.rsplit(":", 1)[1])
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(request_bytes)
        await writer.drain()
        line = await asyncio.wait_for(reader.readline(), 5)
        writer.close()
        assert int(line.split()[1]) == status
        assert await get_status(port) == 200  # and the server goes on


async def get_json(port: int, path: str = "/healthz", timeout: float = 3.0) -> Any:
    async with asyncio.timeout(timeout):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            writer.write(
                f"GET {path} HTTP/1.1\r\nHost: worker\r\nConnection: close\r\n\r\n".encode()
            )
            await writer.drain()
            answer = await reader.read()
        finally:
            writer.close()
    return json.loads(answer.split(b"\r\n\r\n", 1)[1])


async def test_an_activity_and_a_queue_of_one_name_are_both_in_healthz(
    fake: FakeStepFunctions,
) -> None:
    """The single form serving the activity `fake-activity` and the queue `fake-activity`
    (one handler, one name: a natural choice): /healthz lists both under `sources`. The
    queue's entry replaced the activity's, which vanished from `sources`."""
    queue = fake.sqs.add_queue("fake-activity")
    port = free_port()
    command = [str(BIN / "sfn-worker"), "run"]
    async with worker_process(
        command,
        fake,
        SFN_HTTP_PORT=str(port),
        SFN_HTTP_HOST="127.0.0.1",
        SFN_SQS_QUEUE_URL=queue.url,
    ) as worker:
        await worker.wait_for_log("worker started")
        body = await get_json(port)
        worker.signal_worker(signal.SIGTERM)
        fake.release_polls()
        assert await worker.exit_code() == 0
    kinds = sorted(entry["kind"] for entry in body["sources"].values())
    assert kinds == ["activity", "queue"], body["sources"]
    assert all(name.startswith("fake-activity") for name in body["sources"])
