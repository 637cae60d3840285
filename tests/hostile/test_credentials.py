"""AWS credentials as the ECS agent serves them: not ready at container start (404, a body
that is not JSON, 500), never ready, or black-holed while the credentials near expiry."""

from __future__ import annotations

import asyncio
import itertools
import json
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
from aiohttp import web

from sfn_worker import TaskContext
from sfn_worker.examples import seed_handler
from sfn_worker.testing import FakeStepFunctions

from ..bounds import BUSY_MACHINE_SLACK
from ..conftest import running_worker
from ..test_process import BIN, worker_process


class FakeCredentialsEndpoint:
    """The ECS agent's credentials endpoint (AWS_CONTAINER_CREDENTIALS_FULL_URI): fails its
    first ``failures`` requests the given way, then serves credentials that expire
    ``expires_in`` seconds later; while ``dark``, it never answers."""

    def __init__(self, failure: str = "", failures: int = 0, expires_in: float = 3600) -> None:
        self.failure = failure
        self.failures = failures
        self.expires_in = expires_in
        self.dark = False
        self.requests = 0
        self.served = 0
        self.url = ""
        self._runner: web.AppRunner | None = None

    async def _credentials(self, request: web.Request) -> web.Response:
        self.requests += 1
        if self.dark:
            await asyncio.Event().wait()  # accepts, never answers (cancelled at close)
        if self.requests <= self.failures:
            if self.failure == "404":
                return web.Response(status=404, text="no credentials for this task yet")
            if self.failure == "not_json":
                return web.Response(status=200, text="{not json")
            return web.Response(status=500, text="agent starting")
        self.served += 1
        expiry = time.gmtime(time.time() + self.expires_in)
        return web.json_response(
            {
                "AccessKeyId": "ASIAFAKE",
                "SecretAccessKey": "fake-secret",
                "Token": "fake-token",
                "Expiration": time.strftime("%Y-%m-%dT%H:%M:%SZ", expiry),
            }
        )

    async def __aenter__(self) -> FakeCredentialsEndpoint:
        app = web.Application()
        app.router.add_get("/credentials", self._credentials)
        self._runner = web.AppRunner(app, handler_cancellation=True)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.url = f"http://127.0.0.1:{port}/credentials"
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._runner is not None
        await self._runner.cleanup()


@asynccontextmanager
async def task_role(
    monkeypatch: pytest.MonkeyPatch, endpoint: FakeCredentialsEndpoint
) -> AsyncIterator[None]:
    """No static keys: credentials come from the endpoint, as on ECS."""
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    monkeypatch.setenv("AWS_CONTAINER_CREDENTIALS_FULL_URI", endpoint.url)
    yield


def _all_json(lines: list[str]) -> bool:
    for line in lines:
        try:
            json.loads(line)
        except ValueError:
            return False
    return True


@pytest.mark.parametrize("failure", ["404", "not_json", "500"])
async def test_a_credentials_endpoint_not_ready_at_start_is_waited_for(
    fake: FakeStepFunctions, monkeypatch: pytest.MonkeyPatch, failure: str
) -> None:
    """The agent fails its first five requests: the worker waits, then works. It used to
    end with an 86-line traceback (exit 1): a crash loop at every container start."""
    task = fake.add_task({"in": "SUCCESS"})
    async with (
        FakeCredentialsEndpoint(failure, failures=5) as endpoint,
        task_role(monkeypatch, endpoint),
        worker_process([str(BIN / "sfn-worker"), "run"], fake) as worker,
    ):
        await fake.wait_for(lambda: task.state != "open", timeout=30)
    assert task.state == "succeeded"
    assert endpoint.requests > 5
    assert _all_json(worker.raw)


async def test_credentials_that_never_come_end_the_worker_with_one_line(
    fake: FakeStepFunctions, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with (
        FakeCredentialsEndpoint("500", failures=10**6) as endpoint,
        task_role(monkeypatch, endpoint),
        worker_process(
            [str(BIN / "sfn-worker"), "run"], fake, SFN_CREDENTIALS_WAIT_SECONDS="3"
        ) as worker,
    ):
        assert await worker.exit_code(timeout=30) == 1
    assert _all_json(worker.raw)
    stopped = [e for e in worker.events if e.get("event") == "worker stopped"]
    assert len(stopped) == 1
    assert "cannot get AWS credentials" in stopped[0]["error"]
    assert fake.counts.get("GetActivityTask", 0) == 0


@pytest.mark.slow
@pytest.mark.timeout(90)
async def test_a_dark_credentials_endpoint_near_expiry_never_holds_heartbeats_back(
    fake: FakeStepFunctions, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Credentials 9 minutes from expiry (botocore's window where every call refreshes
    them first) and their endpoint dark for 20 s: heartbeats every second go on, the
    refresh is retried in the background and lands once the endpoint is back. They used
    to stop for 12.8 s, and tasks timed out."""
    beats: dict[int, list[float]] = {}
    fake.heartbeat_times = beats
    done = asyncio.Event()

    async def long_job(task_input: Any, ctx: TaskContext) -> Any:
        await done.wait()
        return seed_handler({"in": "SUCCESS"}, ctx)

    tasks = [fake.add_task({}) for _ in range(4)]
    async with (
        FakeCredentialsEndpoint(expires_in=9 * 60) as endpoint,
        task_role(monkeypatch, endpoint),
    ):
        endpoint.dark = False
        async with running_worker(fake, long_job, heartbeat_seconds=1, concurrency=4) as harness:
            await fake.wait_for(lambda: all(t.issued for t in tasks), timeout=20)
            endpoint.dark = True
            await asyncio.sleep(20)
            endpoint.dark = False
            await fake.wait_for(lambda: endpoint.served >= 2, timeout=60)  # refreshed
            done.set()
            await fake.wait_for(lambda: all(t.state != "open" for t in tasks), timeout=20)
            refreshed = harness.worker.accessories.snapshot()["credentials"]
    assert all(t.state == "succeeded" for t in tasks)
    gaps = [b - a for times in beats.values() for a, b in itertools.pairwise(times)]
    assert max(gaps) < 1 + BUSY_MACHINE_SLACK, max(gaps)  # never held for the 20 s spell
    assert refreshed.failures >= 1  # the dark spell was seen, counted, never fatal
