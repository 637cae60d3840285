"""Trace exporters are accessories: a collector that never answers, an exporter that is not
installed, output that would mix with the worker's own, never stop, slow or garble the
worker. Each case runs the real ``sfn-worker`` against the fake, the fault from outside."""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from sfn_worker.testing import FakeStepFunctions

from ..bounds import BUSY_MACHINE_SLACK
from ..test_operations import free_port
from ..test_process import BIN, WorkerProcess, worker_process

GRACE = 3.0


@contextlib.asynccontextmanager
async def black_hole() -> AsyncIterator[str]:
    """A collector that accepts connections, reads what it is sent and never answers; its
    URL. Connections stay open until the test ends."""
    held: list[asyncio.StreamWriter] = []

    async def accept(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)
        with contextlib.suppress(ConnectionError):
            while await reader.read(65536):
                pass

    server = await asyncio.start_server(accept, "127.0.0.1", 0)
    try:
        yield f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
    finally:
        for writer in held:
            writer.close()
        server.close()


async def _stop(worker: WorkerProcess, fake: FakeStepFunctions) -> tuple[int, float]:
    """SIGTERM; the exit code and how long the exit took."""
    loop = asyncio.get_running_loop()
    signalled = loop.time()
    worker.signal_worker(signal.SIGTERM)
    fake.release_polls()
    code = await worker.exit_code(timeout=60)
    return code, loop.time() - signalled


@pytest.mark.timeout(90)
@pytest.mark.parametrize("mode", ["thread", "process"])
async def test_a_black_holed_collector_never_holds_the_exit_past_the_grace(
    fake: FakeStepFunctions, mode: str
) -> None:
    tasks = [fake.add_task({"in": "x"}) for _ in range(3)]
    async with (
        black_hole() as collector,
        worker_process(
            [str(BIN / "sfn-worker"), "run"],
            fake,
            SFN_HANDLER="tests.traced_handlers:traced",
            SFN_HANDLER_MODE=mode,
            SFN_HEARTBEAT_SECONDS="0",
            SFN_SHUTDOWN_GRACE_SECONDS=str(GRACE),
            OTEL_EXPORTER_OTLP_ENDPOINT=collector,
        ) as worker,
    ):
        await fake.wait_for(lambda: all(t.state != "open" for t in tasks), timeout=30)
        # Spans of these tasks wait in the exporter's batch: the exit has to deal with them.
        code, took = await _stop(worker, fake)
    assert code == 0
    # The SDK's own exit hook waits 10-30 s for the collector.
    assert took < GRACE + BUSY_MACHINE_SLACK, took
    assert all(t.state == "succeeded" for t in tasks)
    assert not any("Traceback" in line for line in worker.raw)


@pytest.mark.timeout(90)
async def test_a_dead_collector_never_slows_process_mode_answers(
    fake: FakeStepFunctions,
) -> None:
    warm = fake.add_task({"in": "x"})
    async with (
        black_hole() as collector,
        worker_process(
            [str(BIN / "sfn-worker"), "run"],
            fake,
            SFN_HANDLER="tests.traced_handlers:traced",
            SFN_HANDLER_MODE="process",
            SFN_CONCURRENCY="1",
            SFN_POLLERS="1",
            SFN_HEARTBEAT_SECONDS="0",
            SFN_SHUTDOWN_GRACE_SECONDS=str(GRACE),
            OTEL_EXPORTER_OTLP_ENDPOINT=collector,
            OTEL_BSP_SCHEDULE_DELAY="100",  # the handler process tries to export at once
        ) as worker,
    ):
        await fake.wait_for(lambda: warm.state != "open", timeout=60)  # its process is up
        loop = asyncio.get_running_loop()
        started = loop.time()
        tasks = [fake.add_task({"in": "x"}) for _ in range(10)]
        await fake.wait_for(lambda: all(t.state != "open" for t in tasks), timeout=60)
        took = loop.time() - started
        code, _ = await _stop(worker, fake)
    # One slot, ten quick tasks: well under a second here. Waiting for the collector (its
    # export timeout is 10 s) before each answer would take 100 s.
    assert took < 8.0, took
    assert all(t.state == "succeeded" for t in [warm, *tasks])
    assert code == 0


@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    ("otel", "variable"),
    [
        ({"OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"}, "OTEL_EXPORTER_OTLP_PROTOCOL"),
        (
            {"OTEL_TRACES_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": "http/json"},
            "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
        ),
        ({"OTEL_TRACES_EXPORTER": "zipkin"}, "OTEL_TRACES_EXPORTER"),
        ({"OTEL_TRACES_EXPORTER": "console", "SFN_METRICS": "emf"}, "SFN_METRICS"),
    ],
    ids=["grpc-not-installed", "protocol-unknown", "zipkin-not-installed", "console-with-emf"],
)
async def test_an_exporter_that_cannot_run_is_refused_at_start(
    fake: FakeStepFunctions, otel: dict[str, str], variable: str
) -> None:
    fake.add_task({"in": "x"})
    async with worker_process(
        [str(BIN / "sfn-worker"), "run"],
        fake,
        OTEL_EXPORTER_OTLP_ENDPOINT=f"http://127.0.0.1:{free_port()}",
        SFN_HANDLER_MODE="process",
        **otel,
    ) as worker:
        code = await worker.exit_code(timeout=30)
    assert code == 2
    assert len(worker.raw) == 1, worker.raw
    assert worker.raw[0].startswith("sfn-worker: configuration error:")
    assert variable in worker.raw[0]
    assert fake.counts.get("GetActivityTask", 0) == 0


@pytest.mark.timeout(90)
@pytest.mark.parametrize("mode", ["thread", "process"])
async def test_in_json_mode_every_line_of_every_process_is_one_json_object(
    fake: FakeStepFunctions, mode: str
) -> None:
    task = fake.add_task({"in": "x"})
    async with worker_process(
        [str(BIN / "sfn-worker"), "run"],
        fake,
        SFN_HANDLER="tests.traced_handlers:noisy",
        SFN_HANDLER_MODE=mode,
        SFN_HEARTBEAT_SECONDS="0",
        SFN_SHUTDOWN_GRACE_SECONDS=str(GRACE),
        # Nothing listens there: the exporters (the handler process's too) log their failures.
        OTEL_EXPORTER_OTLP_ENDPOINT=f"http://127.0.0.1:{free_port()}",
        OTEL_BSP_SCHEDULE_DELAY="100",
    ) as worker:
        await fake.wait_for(lambda: task.state != "open", timeout=60)
        await _wait_for_event(worker, lambda e: e["event"] == "a log line from the handler")
        await _wait_for_event(worker, lambda e: "a warning from the handler" in e["event"])
        await _wait_for_event(
            worker, lambda e: "a thread of the handler failed" in e.get("exception", "")
        )
        await _wait_for_event(worker, lambda e: e.get("logger", "").startswith("opentelemetry."))
        code, _ = await _stop(worker, fake)
    assert code == 0
    assert task.state == "succeeded"
    for line in worker.raw:
        assert isinstance(json.loads(line), dict), line


async def _wait_for_event(worker: WorkerProcess, found: Callable[[dict[str, Any]], bool]) -> None:
    async with asyncio.timeout(30), worker._changed:
        await worker._changed.wait_for(lambda: any(found(e) for e in worker.events))
