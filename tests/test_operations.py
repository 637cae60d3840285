"""Operations: /healthz, /metrics, the healthcheck command, ECS task scale-in protection."""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from sfn_worker import App, TaskContext
from sfn_worker.app import Handler
from sfn_worker.bulkhead import Accessories
from sfn_worker.cli import main
from sfn_worker.examples import seed_handler
from sfn_worker.metrics import Metrics
from sfn_worker.runtime import ecs_protection, http
from sfn_worker.runtime.ecs_protection import task_protection
from sfn_worker.runtime.http import healthcheck, serve_http
from sfn_worker.runtime.runtime import Runtime
from sfn_worker.settings import HandlerMode, Settings
from sfn_worker.tasks.sources.once.worker import OnceConfig
from sfn_worker.testing import FakeStepFunctions, run_app
from sfn_worker.testing.harness import fake_clients
from sfn_worker.worker import Worker

from .conftest import WorkerHarness, make_settings


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


async def get(url: str) -> tuple[int, str]:
    async with aiohttp.ClientSession() as session, session.get(url) as response:
        return response.status, await response.text()


@asynccontextmanager
async def worker_with_http(
    fake: FakeStepFunctions,
    handler: Handler,
    port: int = 0,
    host: str = "127.0.0.1",
    **overrides: Any,
) -> AsyncIterator[tuple[WorkerHarness, str]]:
    """A running worker with its HTTP server on ``host`` (loopback); yields the harness and
    the base URL on IPv4 loopback."""
    port = port or free_port()
    settings = make_settings(fake, http_port=port, http_host=host, **overrides)
    worker = Worker(settings, handler)
    harness = WorkerHarness(worker, fake)
    async with serve_http(settings, worker):
        harness.start()
        try:
            await fake.wait_for(lambda: fake.open_polls == settings.pollers)
            yield harness, f"http://127.0.0.1:{port}"
        finally:
            if harness.task is not None and not harness.task.done():
                await harness.stop()


async def test_healthz_and_metrics(fake: FakeStepFunctions) -> None:
    release = asyncio.Event()

    async def handler(task_input: Any, ctx: TaskContext) -> Any:
        if task_input.get("wait"):
            await release.wait()
        return seed_handler(task_input, ctx)

    done = fake.add_task({"in": "SUCCESS"})
    failed = fake.add_task({"in": "RANDOM"})
    async with worker_with_http(fake, handler) as (harness, url):
        await fake.wait_for(lambda: done.state != "open" and failed.state != "open")
        await fake.wait_for(lambda: fake.open_polls == harness.worker.settings.pollers)
        status, body = await get(f"{url}/healthz")
        assert status == 200
        assert json.loads(body)["status"] == "ok"

        status, metrics = await get(f"{url}/metrics")
        assert status == 200
        # Labels in alphabetical order, as Prometheus renders them.
        source = 'kind="activity",source="fake-activity"'
        assert f"sfn_worker_tasks_succeeded_total{{{source}}} 1.0" in metrics
        failure = f'error="NO_SUCCESS_INPUT",{source}}} 1.0'
        assert "sfn_worker_tasks_failed_total{" + failure in metrics
        for name in (
            "sfn_worker_tasks_started_total",
            "sfn_worker_tasks_in_flight",
            "sfn_worker_queue_depth",
            "sfn_worker_empty_polls_total",
            "sfn_worker_heartbeats_sent_total",
            "sfn_worker_handler_duration_seconds_bucket",
            "sfn_worker_terminal_call_retries_total",
            "sfn_worker_heartbeat_lag_seconds_bucket",
            "sfn_worker_polls_open",
        ):
            assert name in metrics, name

        slow = fake.add_task({"wait": True, "in": "SUCCESS"})
        await fake.wait_for(lambda: slow.issued)
        harness.stop_event.set()
        fake.release_polls()
        await asyncio.sleep(0)
        status, body = await get(f"{url}/healthz")
        assert status == 503
        assert json.loads(body)["status"] == "stopping"
        release.set()
        await harness.wait()
    assert slow.state == "succeeded"


async def test_healthcheck_command(
    monkeypatch: pytest.MonkeyPatch, fake: FakeStepFunctions
) -> None:
    port = free_port()
    monkeypatch.setenv("SFN_HTTP_PORT", str(port))
    assert await asyncio.to_thread(healthcheck, 1.0) == 1  # nothing listening
    async with worker_with_http(fake, seed_handler, port) as (harness, _):
        assert await asyncio.to_thread(healthcheck, 2.0) == 0
        await harness.stop()
    monkeypatch.setenv("SFN_HTTP_PORT", "0")
    assert await asyncio.to_thread(healthcheck, 1.0) == 1


async def test_healthcheck_goes_straight_to_the_worker_past_any_proxy(
    monkeypatch: pytest.MonkeyPatch, fake: FakeStepFunctions
) -> None:
    """ECS tasks behind a proxy set HTTP_PROXY for the handlers' calls; the probe of a
    healthy worker must not go to the proxy (here: nothing listens there)."""
    port = free_port()
    monkeypatch.setenv("SFN_HTTP_PORT", str(port))
    async with worker_with_http(fake, seed_handler, port) as (harness, _):
        # Set once the worker's clients exist: the probe alone is the subject here.
        for name in ("HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy"):
            monkeypatch.setenv(name, f"http://127.0.0.1:{free_port()}")
        monkeypatch.delenv("NO_PROXY", raising=False)
        monkeypatch.delenv("no_proxy", raising=False)
        assert await asyncio.to_thread(healthcheck, 2.0) == 0
        await harness.stop()


@pytest.mark.parametrize(
    ("port_text", "bind", "host_env"),
    [
        (" {port}", "127.0.0.1", None),  # the worker reads " 8080" as 8080
        ("{port} ", "127.0.0.1", None),  # a trailing space kept by docker --env-file
        ("{port}", "::", "::"),  # IPv6 only: not on 127.0.0.1
        ("{port}", "::1", "::1"),
        ("{port}", "127.0.0.2", "127.0.0.2"),
    ],
)
async def test_healthcheck_finds_the_worker_its_variables_configure(
    monkeypatch: pytest.MonkeyPatch,
    fake: FakeStepFunctions,
    port_text: str,
    bind: str,
    host_env: str | None,
) -> None:
    port = free_port()
    monkeypatch.setenv("SFN_HTTP_PORT", port_text.format(port=port))
    if host_env is None:
        monkeypatch.delenv("SFN_HTTP_HOST", raising=False)
    else:
        monkeypatch.setenv("SFN_HTTP_HOST", host_env)
    async with worker_with_http(fake, seed_handler, port, host=bind) as (harness, _):
        assert await asyncio.to_thread(healthcheck, 2.0) == 0
        await harness.stop()


@pytest.mark.parametrize("port_text", ["\u00b2", "abc", "99999", "-1", "8080.5"])
def test_healthcheck_says_a_port_it_cannot_read_in_one_line(
    monkeypatch: pytest.MonkeyPatch, capsys: Any, port_text: str
) -> None:
    monkeypatch.setenv("SFN_HTTP_PORT", port_text)
    assert healthcheck(1.0) == 1
    err = capsys.readouterr().err
    assert f"SFN_HTTP_PORT={port_text!r} is not a port" in err
    assert len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("seconds", ["inf", "nan", "1e400", "0", "-1"])
def test_healthcheck_refuses_a_timeout_it_cannot_wait(capsys: Any, seconds: str) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["healthcheck", "--timeout", seconds])
    assert exited.value.code == 2
    assert "argument --timeout" in capsys.readouterr().err


class FakeEcsAgent:
    """Records PUT /task-protection/v1/state; can answer errors first."""

    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        self.fail_next = 0
        self.changed = asyncio.Condition()
        self.url = ""
        self._runner: web.AppRunner | None = None

    async def _state(self, request: web.Request) -> web.Response:
        body = await request.json()
        if self.fail_next:
            self.fail_next -= 1
            response = web.json_response({"error": {"Code": "ServerException"}}, status=500)
        else:
            self.requests.append(body)
            response = web.json_response(
                {"protection": {"ProtectionEnabled": body["ProtectionEnabled"]}}
            )
        async with self.changed:
            self.changed.notify_all()
        return response

    async def wait_for(self, predicate: Any, timeout: float = 10) -> None:
        async with asyncio.timeout(timeout), self.changed:
            await self.changed.wait_for(predicate)

    async def __aenter__(self) -> FakeEcsAgent:
        app = web.Application()
        app.router.add_put("/task-protection/v1/state", self._state)
        self._runner = web.AppRunner(app, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.url = f"http://127.0.0.1:{self._runner.addresses[0][1]}"
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._runner is not None
        await self._runner.cleanup()


@pytest.fixture
async def agent(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[FakeEcsAgent]:
    async with FakeEcsAgent() as fake_agent:
        monkeypatch.setenv("ECS_AGENT_URI", fake_agent.url)
        yield fake_agent


async def test_task_protection_follows_in_flight_work(
    fake: FakeStepFunctions, agent: FakeEcsAgent, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Renew after ~0.1 s instead of 80 % of a minute, to see renewals in a test.
    monkeypatch.setattr(ecs_protection, "RENEW_FRACTION", 0.1 / 60)
    monkeypatch.setattr(ecs_protection, "RETRY_AFTER_ERROR_SECONDS", 0.05)
    release = asyncio.Event()

    async def handler(task_input: Any, ctx: TaskContext) -> Any:
        await release.wait()
        return "done"

    settings = make_settings(fake, ecs_task_protection=True, ecs_protection_minutes=1)
    worker = Worker(settings, handler)
    harness = WorkerHarness(worker, fake)
    async with task_protection(
        settings, worker.in_flight, worker.tasks_changed, worker.accessories
    ) as protection:
        assert protection is not None
        harness.start()
        await fake.wait_for(lambda: fake.open_polls == settings.pollers)
        assert agent.requests == []  # idle: no protection asked for
        agent.fail_next = 1  # the first attempt fails; the worker logs and tries again
        task = fake.add_task({})
        await agent.wait_for(lambda: len(agent.requests) >= 2)  # set, then renewed
        assert agent.requests[0] == {"ProtectionEnabled": True, "ExpiresInMinutes": 1}
        assert agent.requests[1] == {"ProtectionEnabled": True, "ExpiresInMinutes": 1}
        release.set()
        await fake.wait_for(lambda: task.state == "succeeded")
        await agent.wait_for(lambda: agent.requests[-1] == {"ProtectionEnabled": False})
        await harness.stop()
    assert protection.protected is False
    assert agent.requests[-1] == {"ProtectionEnabled": False}


async def test_task_protection_without_agent_is_off(
    fake: FakeStepFunctions, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("ECS_AGENT_URI", raising=False)
    settings = make_settings(fake, ecs_task_protection=True)
    accessories = Accessories(Metrics())
    async with task_protection(settings, lambda: 0, asyncio.Event(), accessories) as protection:
        assert protection is None


async def test_unreachable_agent_is_never_fatal(
    fake: FakeStepFunctions, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ECS_AGENT_URI", f"http://127.0.0.1:{free_port()}")
    settings = make_settings(fake, ecs_task_protection=True)
    worker = Worker(settings, seed_handler)
    harness = WorkerHarness(worker, fake)
    async with task_protection(
        settings, worker.in_flight, worker.tasks_changed, worker.accessories
    ) as protection:
        assert protection is not None
        harness.start()
        task = fake.add_task({"in": "SUCCESS"})
        await fake.wait_for(lambda: task.state == "succeeded")
        await harness.stop()
    assert protection.protected is False
    # Counted and shown, not fatal.
    snapshot = worker.accessories.snapshot()["ecs_protection"]
    assert (snapshot.state, snapshot.failures >= 1) == ("failing", True)


async def test_healthz_is_unhealthy_when_the_loop_was_blocked(
    fake: FakeStepFunctions, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Any measured lag counts as too much: no need to block the loop for seconds here.
    monkeypatch.setattr(http, "LOOP_LAG_UNHEALTHY_SECONDS", -1.0)
    async with worker_with_http(fake, seed_handler) as (_, url):
        status, body = await get(f"{url}/healthz")
        assert (status, json.loads(body)["status"]) == (503, "unhealthy")


async def test_healthz_lists_every_source_under_sources_with_its_kind(
    fake: FakeStepFunctions,
) -> None:
    app = App()

    @app.activity("render")
    def render(task_input: Any, ctx: TaskContext) -> Any:
        return {}

    @app.callback_queue("https://sqs.us-east-1.amazonaws.com/123456789012/notify-jobs")
    def notify(task_input: Any, ctx: TaskContext) -> Any:
        return {}

    async with run_app(app, fake) as runtime:
        await fake.wait_for(lambda: fake.open_polls >= 1)
        status, shown = http.health(runtime)
    body: Any = shown
    assert status == 200
    sources = body["sources"]
    assert {name: s["kind"] for name, s in sources.items()} == {
        "render": "activity",
        "notify-jobs": "queue",
    }
    assert all(s["healthy"] for s in sources.values())
    # Kept for operators' probes (test_app asserts it); queues are under `sources` only.
    assert set(body["activities"]) == {"render"}
    assert "queues" not in body


async def test_a_once_source_is_healthy_while_it_holds_and_once_it_answered_its_task(
    fake: FakeStepFunctions,
) -> None:
    """Its intake ends by design once the task is handed over: that is not a dead poller."""
    started, release = asyncio.Event(), asyncio.Event()

    async def handler(task_input: Any, ctx: TaskContext) -> Any:
        started.set()
        await release.wait()
        return {"ok": True}

    task = fake.open_callback_task({})
    settings = Settings(worker_name="once-health", shutdown_grace_seconds=5)
    config = OnceConfig(
        name="once",
        key="ONCE",
        handler=handler,
        concurrency=1,
        pollers=1,
        queue_size=1,
        heartbeat_seconds=settings.heartbeat_seconds,
        heartbeat_mode=settings.heartbeat_mode,
        handler_mode=HandlerMode.ASYNC,
        max_tasks_per_child=settings.max_tasks_per_child,
        processes=settings.processes,
        sources={},
        token=task.token,
    )
    runtime = Runtime(
        App(), settings, client_factory=fake_clients(fake), environ={}, configs=[config]
    )
    stop = asyncio.Event()
    running = asyncio.create_task(runtime.run(stop))
    try:
        await started.wait()
        status, shown = http.health(runtime)
        body: Any = shown
        assert status == 200, body
        once = body["sources"]["once"]
        assert (once["kind"], once["healthy"], once["pollers_alive"]) == ("once", True, 0)
        assert "queues" not in body
        assert "activities" not in body
        release.set()
        await fake.wait_for(lambda: task.state == "succeeded")
        assert http.health(runtime)[0] == 200
    finally:
        release.set()
        stop.set()
        await running
