"""Output channels: stdout (CloudWatch EMF) and stderr (log lines) against readers that stop
reading, readers that are gone, and values CloudWatch or a log line cannot carry.

The worker runs as a real ``sfn-worker`` process against the in-process fake; its stdout or
stderr is a pipe the test fills before the start and does not read, or whose reader end it
closed. What must hold: tasks are answered and heartbeated, /healthz answers, SIGTERM
exits on time, and the channel's failure is reported (dropped and counted, or stopped and
said once), never the worker's.
"""

from __future__ import annotations

import asyncio
import fcntl
import io
import json
import logging
import os
import signal
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import pytest
import structlog

from sfn_worker import bulkhead, logs, streams
from sfn_worker.metrics import Metrics
from sfn_worker.runtime.emf import EmfPublisher
from sfn_worker.settings import LogFormat, LogLevel
from sfn_worker.testing import FakeStepFunctions

from .. import emf_schema
from ..bounds import BUSY_MACHINE_SLACK
from ..test_operations import free_port, get
from ..test_process import BIN, REPO
from .stream_handlers import HUGE_TEXT

GRACE = 2.0
# Bounds that hold on two busy shared cores: the worker's start, a task's answer.
STARTED = 30.0
ANSWERED = 20.0
# SIGTERM to exit: the grace, the last lines' flush (1 s), and an interpreter's exit.
EXITED = GRACE + 8.0
HANDLERS = "tests.hostile.stream_handlers"
SLEEP = "sfn_worker.examples:sleep_handler"


# -- the harness -----------------------------------------------------------------------------
class Lines:
    """Lines read from a pipe, awaitable; no line length limit (a bug may write 200 KB)."""

    def __init__(self, reader: asyncio.StreamReader) -> None:
        self.lines: list[bytes] = []
        self._reader = reader
        self._changed = asyncio.Condition()
        self.task = asyncio.create_task(self._read())

    async def _read(self) -> None:
        buffered = b""
        while chunk := await self._reader.read(1 << 16):
            buffered += chunk
            *complete, buffered = buffered.split(b"\n")
            self.lines += [line for line in complete if line]
            async with self._changed:
                self._changed.notify_all()
        if buffered:
            self.lines.append(buffered)

    def json(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.lines]

    def events(self) -> list[str]:
        return [str(record.get("event")) for record in self.json()]

    async def wait_for(self, found: Callable[[], bool], timeout: float = ANSWERED) -> None:
        async with asyncio.timeout(timeout), self._changed:
            await self._changed.wait_for(found)


async def read_lines(fd: int) -> Lines:
    """Start reading the read end ``fd`` of a pipe (the test's side)."""
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=1 << 24)
    await loop.connect_read_pipe(
        lambda: asyncio.StreamReaderProtocol(reader), os.fdopen(fd, "rb", buffering=0)
    )
    return Lines(reader)


def full_pipe() -> tuple[int, int]:
    """A pipe already full (of empty lines): the worker's first write to it would block."""
    read, write = os.pipe()
    flags = fcntl.fcntl(write, fcntl.F_GETFL)
    fcntl.fcntl(write, fcntl.F_SETFL, flags | os.O_NONBLOCK)
    try:
        while True:
            os.write(write, b"\n" * 4096)
    except BlockingIOError:
        pass
    fcntl.fcntl(write, fcntl.F_SETFL, flags)
    return read, write


def broken_pipe() -> int:
    """The write end of a pipe whose reader is gone (EPIPE on every write)."""
    read, write = os.pipe()
    os.close(read)
    return write


class Worker:
    def __init__(self, process: asyncio.subprocess.Process, url: str | None) -> None:
        self.process = process
        self.url = url
        self.stdout = Lines(process.stdout) if process.stdout else None
        self.stderr = Lines(process.stderr) if process.stderr else None

    async def health(self) -> dict[str, Any]:
        """/healthz, which must answer within seconds (the loop is free)."""
        assert self.url is not None
        async with asyncio.timeout(5):
            status, body = await get(f"{self.url}/healthz")
        assert status == 200, body
        return dict(json.loads(body))

    async def stop(self, fake: FakeStepFunctions) -> tuple[int, float]:
        """SIGTERM; the exit code and the seconds it took."""
        signalled = time.monotonic()
        self.process.send_signal(signal.SIGTERM)
        fake.release_polls()
        async with asyncio.timeout(EXITED + 10):
            code = await self.process.wait()
        took = time.monotonic() - signalled
        for lines in (self.stdout, self.stderr):
            if lines is not None:
                await lines.task
        return code, took


@asynccontextmanager
async def worker(
    fake: FakeStepFunctions,
    *,
    stdout: int = asyncio.subprocess.PIPE,
    stderr: int = asyncio.subprocess.PIPE,
    http: bool = False,
    env: dict[str, str] | None = None,
    **settings: str,
) -> AsyncIterator[Worker]:
    """``sfn-worker run`` with these streams (a descriptor is handed over: closed here)."""
    settings = {**settings, **(env or {})}
    env = {k: v for k, v in os.environ.items() if not k.startswith("SFN_")}
    port = free_port()
    env.update(
        SFN_ACTIVITY_ARN=fake.activity_arn,
        SFN_HANDLER="sfn_worker.examples:seed_handler",  # required; a test's own wins
        SFN_WORKER_NAME="streams-test",
        SFN_SHUTDOWN_GRACE_SECONDS=str(GRACE),
        SFN_HEARTBEAT_SECONDS="1",
        PYTHONPATH=str(REPO),
    )
    if http:
        env.update(SFN_HTTP_PORT=str(port), SFN_HTTP_HOST="127.0.0.1")
    env.update(settings)
    process = await asyncio.create_subprocess_exec(
        str(BIN / "sfn-worker"),
        "run",
        env=env,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=stdout,
        stderr=stderr,
        limit=1 << 24,
    )
    for fd in (stdout, stderr):
        if fd >= 0:
            os.close(fd)
    running = Worker(process, f"http://127.0.0.1:{port}" if http else None)
    try:
        yield running
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
        for lines in (running.stdout, running.stderr):
            if lines is not None:
                await lines.task


async def answered(fake: FakeStepFunctions, *tasks: Any, timeout: float = ANSWERED) -> None:
    await fake.wait_for(lambda: all(t.state != "open" for t in tasks), timeout=timeout)


async def serves_while_stalled(fake: FakeStepFunctions, running: Worker) -> None:
    """What a free loop does: a 3.5 s task heartbeated every second and answered, a second
    task answered, /healthz answering."""
    long = fake.add_task({"seconds": 3.5})
    await fake.wait_for(lambda: long.issued, timeout=STARTED)
    await answered(fake, long)
    assert long.state == "succeeded"
    assert long.heartbeats >= 2  # the loop kept beating all along
    short = fake.add_task({"seconds": 0})
    await answered(fake, short)
    assert short.state == "succeeded"
    await running.health()


# -- stdout: CloudWatch EMF --------------------------------------------------------------------
async def test_a_stdout_nobody_reads_never_blocks_the_loop(fake: FakeStepFunctions) -> None:
    read, write = full_pipe()
    async with worker(
        fake,
        stdout=write,
        http=True,
        SFN_HANDLER=SLEEP,
        SFN_METRICS="emf",
        SFN_METRICS_INTERVAL_SECONDS="1",
    ) as running:
        await serves_while_stalled(fake, running)  # three or more intervals written meanwhile
        stdout = await read_lines(read)  # the reader is back: what was kept comes out
        await stdout.wait_for(lambda: len(stdout.lines) >= 3)
        code, took = await running.stop(fake)
        assert code == 0
        assert took < EXITED
        await stdout.task
    for record in stdout.json():
        emf_schema.validate(record)
    assert running.stderr is not None
    assert "emf: failing" not in running.stderr.events()


async def test_emf_records_a_full_stdout_cannot_take_are_dropped_and_counted() -> None:
    read, write = full_pipe()
    accessory = bulkhead.Accessory("emf", Metrics())
    output = streams.OutputStream(write, "stdout", limit_bytes=8_192)
    output.report_to(accessory.drop, lambda error: accessory.failed(error, stopped=True))
    publisher = EmfPublisher(Metrics(), list, namespace="Test", service_name="test", output=output)
    started = time.monotonic()
    for _ in range(100):
        publisher.publish()  # about 300 bytes each: the buffer holds some, the rest drops
    assert time.monotonic() - started < BUSY_MACHINE_SLACK  # never waited for the pipe
    assert 0 < accessory.dropped == output.dropped < 100
    assert accessory.snapshot().dropped == accessory.dropped
    stdout = await read_lines(read)
    assert await asyncio.to_thread(output.flush, 10)  # off the loop, which reads the pipe
    os.close(write)
    await stdout.task
    records = stdout.json()
    assert len(records) == 100 - accessory.dropped  # the kept ones, whole
    for record in records:
        emf_schema.validate(record)


async def test_a_broken_stdout_stops_the_metrics_not_the_worker(fake: FakeStepFunctions) -> None:
    async with worker(
        fake,
        stdout=broken_pipe(),
        http=True,
        SFN_METRICS="emf",
        SFN_METRICS_INTERVAL_SECONDS="1",
    ) as running:
        assert running.stderr is not None
        first = fake.add_task({"in": "SUCCESS"})
        await answered(fake, first, timeout=STARTED)
        stderr = running.stderr
        await stderr.wait_for(lambda: "emf: stopped" in stderr.events())
        later = fake.add_task({"in": "SUCCESS"})
        await answered(fake, later)
        health = await running.health()
        assert health["accessories"]["emf"]["state"] == "stopped"
        assert "BrokenPipeError" in health["accessories"]["emf"]["last_error"]
        code, took = await running.stop(fake)
    assert (code, first.state, later.state) == (0, "succeeded", "succeeded")
    assert took < EXITED
    events = running.stderr.events()
    assert events.count("emf: stopped") == 1  # said once
    assert "emf: failing" not in events


async def test_error_names_cloudwatch_cannot_take_become_valid_dimensions(
    fake: FakeStepFunctions,
) -> None:
    async with worker(
        fake,
        SFN_HANDLER=f"{HANDLERS}:fail_with_error",
        SFN_METRICS="emf",
        SFN_METRICS_INTERVAL_SECONDS="1",
    ) as running:
        tasks = [fake.add_task({"error": error}) for error in ("Échec", " ", "Échec", "a\x07b")]
        await answered(fake, *tasks, timeout=STARTED)
        stdout = running.stdout
        assert stdout is not None

        def by_error() -> dict[str, float]:
            counts: dict[str, float] = {}
            for record in stdout.json():
                if "Error" in record:
                    counts[record["Error"]] = counts.get(record["Error"], 0) + record["TasksFailed"]
            return counts

        await stdout.wait_for(lambda: sum(by_error().values()) == 4)
        later = fake.add_task({"error": "Échec"})  # the interval after: still published
        await answered(fake, later)
        await stdout.wait_for(lambda: sum(by_error().values()) == 5)
        code, _ = await running.stop(fake)
    assert code == 0
    assert [t.error for t in tasks] == ["Échec", " ", "Échec", "a\x07b"]  # the task keeps it
    assert by_error() == {"Echec": 3.0, "(blank)": 1.0, "a?b": 1.0}
    for record in stdout.json():
        emf_schema.validate(record)
        for dimension in record["_aws"]["CloudWatchMetrics"][0]["Dimensions"][0]:
            value = record[dimension]
            assert value.isascii()
            assert value.isprintable()
            assert value.strip()
    assert running.stderr is not None
    assert not [e for e in running.stderr.events() if e.startswith("emf:")]


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("SFN_METRICS_NAMESPACE", "AWS/States"),
        ("SFN_METRICS_NAMESPACE", "My Workers"),
        ("SFN_METRICS_NAMESPACE", "Tâches"),
        ("SFN_METRICS_SERVICE_NAME", "référence"),
        ("SFN_METRICS_SERVICE_NAME", "tab\there"),
        ("SFN_METRICS_SERVICE_NAME", "   "),
    ],
)
async def test_metrics_namespace_and_service_name_are_checked_at_start(
    fake: FakeStepFunctions, variable: str, value: str
) -> None:
    async with worker(fake, SFN_METRICS="emf", env={variable: value}) as running:
        async with asyncio.timeout(STARTED):
            code = await running.process.wait()
        assert running.stderr is not None
        await running.stderr.task
    lines = running.stderr.lines
    assert code == 2
    assert len(lines) == 1
    assert lines[0].decode().startswith(f"sfn-worker: configuration error: {variable}=")
    assert fake.calls_of("GetActivityTask") == []


# -- stderr: log lines -----------------------------------------------------------------------
async def test_a_stderr_nobody_reads_never_blocks_the_loop(fake: FakeStepFunctions) -> None:
    read, write = full_pipe()
    async with worker(fake, stderr=write, http=True, SFN_HANDLER=SLEEP) as running:
        await serves_while_stalled(fake, running)
        code, took = await running.stop(fake)  # nobody reads: the exit is not held
    os.close(read)
    assert code == 0
    assert took < EXITED


async def test_a_stderr_read_again_gets_every_line_in_order_and_the_last_ones(
    fake: FakeStepFunctions,
) -> None:
    read, write = full_pipe()
    async with worker(fake, stderr=write, SFN_HANDLER=SLEEP) as running:
        tasks = [fake.add_task({"seconds": 0}) for _ in range(20)]
        await answered(fake, *tasks, timeout=STARTED)
        stderr = await read_lines(read)
        await stderr.wait_for(lambda: stderr.events().count("task ended") == 20)
        code, _ = await running.stop(fake)
        await stderr.task
    assert code == 0
    records = stderr.json()  # every line whole JSON: none cut or interleaved
    events = [r["event"] for r in records]
    assert events[-1] == "worker stopped"  # the last line, flushed at exit
    assert events.index("worker started") < events.index("task started")
    assert events.index("signal received: shutting down") < events.index("worker stopped")
    stamps = [r["timestamp"] for r in records]
    assert stamps == sorted(stamps)  # in the order they were logged


async def test_log_lines_a_full_stderr_cannot_take_are_counted_and_reported_where_missing(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(logs, "STDERR_BUFFER_BYTES", 16_384)
    read, write = full_pipe()
    accessory = bulkhead.Accessory("logs", Metrics())
    with os.fdopen(write, "w") as text:
        stderr = await _log_into_a_full_pipe(text, read, accessory)
    await stderr.task
    dropped = accessory.dropped
    records = stderr.json()
    notices = [r for r in records if r["event"].startswith("log lines dropped")]
    assert [n["dropped"] for n in notices] == [dropped]
    assert notices[0]["level"] == "warning"
    assert notices[0]["worker"] == "drops"
    numbers = [r.get("number") for r in records]
    gap = numbers.index(None)  # the notice stands where the lines are missing
    assert numbers[:gap] == list(range(gap))
    assert numbers[gap + 1 :] == [1_000]
    assert gap + dropped == 1_000


async def _log_into_a_full_pipe(
    text: io.TextIOWrapper, read: int, accessory: bulkhead.Accessory
) -> Lines:
    logs.configure_logging(LogLevel.INFO, LogFormat.JSON, "drops", text)
    try:
        logs.report_to(accessory)
        log = structlog.get_logger("test")
        started = time.monotonic()
        for number in range(1_000):
            log.info("line", number=number)  # about 120 bytes each: most are dropped
        assert time.monotonic() - started < 2 * BUSY_MACHINE_SLACK  # never waited for the pipe
        assert 0 < accessory.dropped < 1_000
        stderr = await read_lines(read)  # the reader is back: the stream drains
        assert await asyncio.to_thread(streams.flush_all, 10)  # off the loop that reads
        log.info("after", number=1_000)
        assert await asyncio.to_thread(streams.flush_all, 10)
    finally:
        logs.reset_logging()  # flushes
    return stderr


async def test_a_broken_stderr_never_stops_the_worker(fake: FakeStepFunctions) -> None:
    async with worker(fake, stderr=broken_pipe(), http=True) as running:
        tasks = [fake.add_task({"in": "SUCCESS"}) for _ in range(3)]
        await answered(fake, *tasks, timeout=STARTED)
        health = await running.health()
        assert health["accessories"]["logs"]["state"] == "stopped"
        later = fake.add_task({"in": "SUCCESS"})
        await answered(fake, later)
        code, took = await running.stop(fake)
    assert code == 0
    assert took < EXITED
    assert all(t.state == "succeeded" for t in [*tasks, later])


async def test_a_stdlib_record_with_a_token_and_100_kb_is_one_bounded_redacted_line(
    fake: FakeStepFunctions,
) -> None:
    async with worker(fake, SFN_HANDLER=f"{HANDLERS}:leak_an_exception") as running:
        task = fake.add_task({})
        await answered(fake, task, timeout=STARTED)
        stderr = running.stderr
        assert stderr is not None
        await stderr.wait_for(lambda: any(b"never retrieved" in line for line in stderr.lines))
        code, _ = await running.stop(fake)
    assert code == 0
    assert task.state == "succeeded"
    assert all(len(line) <= logs.MAX_LINE_BYTES for line in stderr.lines)
    records = stderr.json()  # still JSON
    (leak,) = [r for r in records if "never retrieved" in r["event"]]
    assert leak["logger"] == "asyncio"
    assert logs.REDACTED in leak["event"]
    assert logs.CUT_MARK in leak["exception"]
    assert "RuntimeError" in leak["exception"]  # the head and the tail are kept
    everything = b"\n".join(stderr.lines).decode()
    assert task.token[9:40] not in everything  # not even a long piece of the token


@pytest.mark.parametrize("source", ["structlog", "stdlib"])
def test_every_log_line_is_bounded_and_redacted_whoever_wrote_it(source: str) -> None:
    token = "AAAA" + "Zm9vYmFy" * 120  # a task token's shape: one long run
    stream = io.StringIO()
    logs.configure_logging(LogLevel.INFO, LogFormat.JSON, "bounded", stream)
    try:
        error = ValueError(f"token {token} then {HUGE_TEXT}")
        if source == "structlog":
            structlog.get_logger("test").error("handler crashed", exc_info=error, detail=HUGE_TEXT)
        else:
            logging.getLogger("aiohttp.server").error("%s %s", token, HUGE_TEXT, exc_info=error)
        structlog.get_logger("test").info("task ended", outcome="succeeded")
    finally:
        logs.reset_logging()
    lines = stream.getvalue().splitlines()
    assert len(lines) == 2
    assert all(len(line.encode()) <= logs.MAX_LINE_BYTES for line in lines)
    first, second = (json.loads(line) for line in lines)
    assert token[10:40] not in stream.getvalue()
    assert logs.CUT_MARK in first["exception"]
    assert first["exception"].rstrip().endswith("dolor sit amet")  # its tail kept
    assert second == {
        "event": "task ended",
        "outcome": "succeeded",
        "level": "info",
        "timestamp": second["timestamp"],
        "worker": "bounded",
    }  # an ordinary line is left as it was
