"""Shared fixtures: AWS env isolated from the machine, a fake endpoint, a worker harness."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest

from sfn_worker.app import Handler
from sfn_worker.retry import Backoff
from sfn_worker.runtime.runtime import Runtime
from sfn_worker.settings import Settings
from sfn_worker.testing import FakeStepFunctions
from sfn_worker.worker import Worker


@pytest.fixture(autouse=True)
def aws_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Any) -> None:
    """Dummy credentials and no host config, so nothing reaches a real AWS account."""
    for name in ("AWS_PROFILE", "AWS_DEFAULT_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_REGION", "us-east-1")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "aws-credentials"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    for name in list(__import__("os").environ):
        if name.startswith("SFN_"):
            monkeypatch.delenv(name)


class _UnretrievedErrors(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        if "exception was never retrieved" in message:
            self.messages.append(message)


@pytest.fixture(autouse=True)
def no_unretrieved_exceptions() -> Iterator[None]:
    """asyncio logs a future whose exception nobody read when it is collected: a handler
    error the worker lost track of. Collect garbage after each test and fail on one."""
    handler = _UnretrievedErrors()
    logger = logging.getLogger("asyncio")
    logger.addHandler(handler)
    try:
        yield
        gc.collect()
    finally:
        logger.removeHandler(handler)
    assert handler.messages == []


@pytest.fixture
async def fake(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[FakeStepFunctions]:
    async with FakeStepFunctions() as server:
        monkeypatch.setenv("AWS_ENDPOINT_URL_SFN", server.endpoint_url)
        monkeypatch.setenv("AWS_ENDPOINT_URL_STS", server.endpoint_url)
        monkeypatch.setenv("AWS_ENDPOINT_URL_SQS", server.endpoint_url)
        yield server


def make_settings(fake: FakeStepFunctions, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "activity_arn": fake.activity_arn,
        "worker_name": "test-worker",
        "pollers": 2,
        "concurrency": 4,
        "heartbeat_seconds": 0,
        "shutdown_grace_seconds": 5,
    }
    values.update(overrides)
    return Settings(**values)


class WorkerHarness:
    """Runs ``Worker.run`` as a task; stop() triggers and awaits the ordered shutdown."""

    def __init__(self, worker: Worker, fake: FakeStepFunctions) -> None:
        self.worker = worker
        self.fake = fake
        self.stop_event = asyncio.Event()
        self.force_event = asyncio.Event()
        self.task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self.task = asyncio.create_task(self.worker.run(self.stop_event, self.force_event))

    async def stop(self, *, release_polls: bool = True) -> None:
        """Signal stop; open long polls are answered empty (as AWS does within 60 s)."""
        self.stop_event.set()
        if release_polls:
            await asyncio.sleep(0)
            self.fake.release_polls()
        await self.wait()

    async def wait(self, timeout: float = 30.0) -> None:
        assert self.task is not None
        async with asyncio.timeout(timeout):
            await self.task


# Retries in milliseconds, so fault tests run fast; the production curves are in retry.py.
FAST_BACKOFF = Backoff(base_seconds=0.005, cap_seconds=0.05)


@contextlib.asynccontextmanager
async def running_worker(
    fake: FakeStepFunctions,
    handler: Handler,
    *,
    poll_backoff: Backoff = FAST_BACKOFF,
    send_backoff: Backoff = FAST_BACKOFF,
    **overrides: Any,
) -> AsyncIterator[WorkerHarness]:
    worker = Worker(
        make_settings(fake, **overrides),
        handler,
        poll_backoff=poll_backoff,
        send_backoff=send_backoff,
    )
    harness = WorkerHarness(worker, fake)
    harness.start()
    try:
        yield harness
    finally:
        if harness.task is not None and not harness.task.done():
            await harness.stop()


def sample(runtime: Runtime, name: str, **labels: str) -> float:
    """A metric's value for the runtime's (first) activity, 0 when never set."""
    source = runtime.configs[0]
    labels.setdefault("source", source.name)
    labels.setdefault("kind", source.kind)
    value = runtime.metrics.registry.get_sample_value(name, labels)
    return 0.0 if value is None else value
