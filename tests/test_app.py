"""Several activities in one process: limits per activity, lifespan, middleware, settings."""

from __future__ import annotations

import asyncio
import json
import signal
import statistics
from collections.abc import AsyncIterator
from typing import Any

import pytest

from sfn_worker import SHUTDOWN_ERROR, App, TaskContext, TaskFailed
from sfn_worker.config import ActivityConfig, activity_key, resolve
from sfn_worker.exceptions import LifespanFailed
from sfn_worker.runtime.check import check
from sfn_worker.settings import Settings, SettingsError
from sfn_worker.testing import FakeStepFunctions, run_app, run_handler

from . import apps
from .bounds import BUSY_MACHINE_SLACK
from .test_operations import free_port, get
from .test_process import BIN, worker_process


async def test_two_activities_keep_their_own_limits_and_pickup(fake: FakeStepFunctions) -> None:
    """Saturating one activity leaves the other's pickup latency where it was."""
    loop = asyncio.get_running_loop()
    release = asyncio.Event()
    started: dict[int, float] = {}
    app = App()

    @app.activity("slow", concurrency=2)
    async def slow(task_input: Any, ctx: TaskContext) -> Any:
        await release.wait()
        return {"slow": True}

    @app.activity("fast", concurrency=3)
    async def fast(task_input: Any, ctx: TaskContext) -> Any:
        started[task_input["n"]] = loop.time()
        return {"fast": True}

    async def pickup_latencies(first: int) -> list[float]:
        latencies = []
        for n in range(first, first + 10):
            added = loop.time()
            task = fake.add_task({"n": n}, activity="fast")
            await fake.wait_for(lambda: task.state != "open")  # noqa: B023 - awaited here
            latencies.append(started[n] - added)
        return latencies

    async with run_app(app, fake, pollers=2):
        await fake.wait_for(lambda: fake.open_polls == 4)
        idle = await pickup_latencies(0)
        slow_tasks = [fake.add_task({}, activity="slow") for _ in range(10)]
        slow_arn = slow_tasks[0].activity_arn
        await fake.wait_for(lambda: sum(t.issued for t in slow_tasks) == 2)
        saturated = await pickup_latencies(100)
        release.set()
        await fake.wait_for(lambda: all(t.state == "succeeded" for t in slow_tasks))
    fast_arn = fake.tasks[next(iter(fake.tasks))].activity_arn
    assert fake.stats[slow_arn].max_slots_in_use <= 2
    assert fake.stats[fast_arn].max_slots_in_use <= 3
    print(
        f"pickup p50 idle {statistics.median(idle):.4f} s, saturated neighbour "
        f"{statistics.median(saturated):.4f} s"
    )
    # An open poll answers at once: both well under a round trip of any consequence.
    assert statistics.median(saturated) < max(0.05, 3 * statistics.median(idle))


async def test_lifespan_state_reaches_async_and_thread_handlers_and_closes_last(
    fake: FakeStepFunctions,
) -> None:
    events: list[str] = []
    app = App()

    @app.lifespan
    async def resources(app: App) -> AsyncIterator[dict[str, Any]]:
        events.append("entered")
        yield {"session": "shared"}
        events.append(f"exited after {len(fake.closed())} answers")

    @app.activity("async-one")
    async def async_one(task_input: Any, ctx: TaskContext) -> Any:
        return {"saw": ctx.state["session"]}

    @app.activity("thread-one", handler_mode="thread")
    def thread_one(task_input: Any, ctx: TaskContext) -> Any:
        return {"saw": ctx.state["session"]}

    async with run_app(app, fake):
        tasks = [
            fake.add_task({}, activity=name)
            for name in ("async-one", "thread-one", "async-one", "thread-one")
        ]
        await fake.wait_for(lambda: all(t.state != "open" for t in tasks))
        assert events == ["entered"]
    assert events == ["entered", "exited after 4 answers"]
    assert {t.output for t in tasks} == {'{"saw":"shared"}'}


async def test_a_lifespan_that_fails_on_entry_means_no_poll(fake: FakeStepFunctions) -> None:
    with pytest.raises(LifespanFailed, match="database unreachable"):
        async with run_app(apps.fails_on_entry, fake):
            pass
    assert fake.counts.get("GetActivityTask", 0) == 0


async def test_a_lifespan_that_fails_on_exit_is_logged_and_the_shutdown_stands(
    fake: FakeStepFunctions,
) -> None:
    import structlog

    with structlog.testing.capture_logs() as logs:
        async with run_app(apps.fails_on_exit, fake):
            task = fake.add_task({}, activity="render")
            await fake.wait_for(lambda: task.state != "open")
    assert task.state == "succeeded"
    assert any("lifespan failed on exit" in e["event"] for e in logs)


async def test_middleware_order_result_replacement_and_failures(fake: FakeStepFunctions) -> None:
    order: list[str] = []
    app = App()

    @app.middleware
    async def outer(task_input: Any, ctx: TaskContext, call_next: Any) -> Any:
        order.append("outer in")
        if task_input.get("refuse"):
            raise TaskFailed("Audit.Refused", "refused by the middleware")
        result = await call_next(task_input, ctx)
        order.append("outer out")
        return {"wrapped": result}

    @app.middleware
    async def inner(task_input: Any, ctx: TaskContext, call_next: Any) -> Any:
        order.append("inner in")
        if task_input.get("crash"):
            raise KeyError("inner middleware bug")
        try:
            return await call_next(task_input, ctx)
        finally:
            order.append("inner out")

    @app.activity("work", handler_mode="thread")
    def work(task_input: Any, ctx: TaskContext) -> Any:
        order.append("handler")
        if task_input.get("fail"):
            raise ValueError("handler failed")
        return {"done": True}

    async with run_app(app, fake, pollers=1, concurrency=1):
        ok = fake.add_task({}, activity="work")
        await fake.wait_for(lambda: ok.state != "open")
        assert order == ["outer in", "inner in", "handler", "inner out", "outer out"]
        refused = fake.add_task({"refuse": True}, activity="work")
        crashed = fake.add_task({"crash": True}, activity="work")
        failed = fake.add_task({"fail": True}, activity="work")
        await fake.wait_for(lambda: all(t.state != "open" for t in (refused, crashed, failed)))
    assert json.loads(ok.output or "") == {"wrapped": {"done": True}}
    assert (refused.error, refused.cause) == ("Audit.Refused", "refused by the middleware")
    assert crashed.error == "KeyError"
    assert failed.error == "ValueError"  # the handler's exception passes through unchanged


@pytest.mark.timeout(60)
async def test_process_mode_gets_its_state_from_process_init(fake: FakeStepFunctions) -> None:
    async with run_app(apps.media, fake):
        rendered = fake.add_task({"name": "a"}, activity="render")
        notified = fake.add_task({"name": "b"}, activity="notify")
        await fake.wait_for(lambda: rendered.state != "open" and notified.state != "open", 30)
    render_output = json.loads(rendered.output or "")
    assert render_output["rendered"] == "a"
    assert render_output["activity"] == "render"  # the middleware ran around it
    assert isinstance(render_output["pid"], int)
    assert json.loads(notified.output or "") == {
        "notified": "b",
        "greeting": "hello from the lifespan",
        "activity": "notify",
    }


@pytest.mark.timeout(60)
async def test_ctx_state_in_process_mode_without_process_init_is_a_clear_error(
    fake: FakeStepFunctions,
) -> None:
    async with run_app(apps.no_process_state, fake):
        task = fake.add_task({}, activity="render")
        await fake.wait_for(lambda: task.state != "open", 30)
    assert task.error == "StateUnavailable"
    assert "@app.process_init" in (task.cause or "")


async def test_run_handler_runs_the_apps_middleware() -> None:
    outcome = await run_handler(apps.notify, {"name": "x"}, app=apps.media, ctx=_ctx())
    assert json.loads(getattr(outcome, "output", "{}")) == {
        "notified": "x",
        "greeting": "hi",
        "activity": "notify",
    }


def _ctx() -> TaskContext:
    return TaskContext(
        task_token="t",
        worker_name="test",
        activity_arn="arn:aws:states:us-east-1:123456789012:activity:notify",
        _state={"greeting": "hi"},
    )


# -- settings from code and environment -------------------------------------------------------


def _app(*names: str, **options: Any) -> App:
    app = App()
    for name in names:
        app.activity(name, **options)(apps.quick)
    return app


def _settings(**values: Any) -> Settings:
    return Settings(app="tests.apps:media", **values)


def test_keys_and_per_activity_overrides() -> None:
    assert activity_key("render-video.v2") == "RENDER_VIDEO_V2"
    app = _app("render", "notify", concurrency=8)
    env = {"SFN_RENDER_CONCURRENCY": "2", "SFN_NOTIFY_HANDLER_MODE": "PROCESS"}
    render, notify = resolve(app, _settings(heartbeat_seconds=30), env)
    assert isinstance(render, ActivityConfig)
    assert (render.concurrency, render.sources["concurrency"]) == (
        2,
        "environment (SFN_RENDER_CONCURRENCY)",
    )
    assert (render.pollers, render.sources["pollers"]) == (
        2,
        "default, capped at the concurrency (2)",
    )
    assert (notify.concurrency, notify.sources["concurrency"]) == (8, "app code")
    assert (notify.heartbeat_seconds, notify.sources["heartbeat_seconds"]) == (
        30,
        "environment (SFN_HEARTBEAT_SECONDS)",
    )
    # apps.quick is async def: it runs on the loop whatever the mode says.
    assert notify.sources["handler_mode"] == "the handler is async def"
    assert render.arn is None
    assert render.sources["arn"] == "resolved from the name at start"


@pytest.mark.parametrize(
    ("names", "env", "message"),
    [
        (("render", "RENDER"), {}, "'render' and activity 'RENDER' would share the variables"),
        (("render",), {"SFN_RENDR_CONCURRENCY": "2"}, "SFN_RENDR_CONCURRENCY matches no activity"),
        (("render",), {"SFN_RENDER_CONCURENCY": "2"}, "activity 'render' has no setting"),
        (
            ("render",),
            {"SFN_RENDER_CONCURRENCY": "lots"},
            "SFN_RENDER_CONCURRENCY='lots' is invalid",
        ),
        (
            ("render",),
            {"SFN_RENDER_POLLERS": "8", "SFN_RENDER_CONCURRENCY": "4"},
            "pollers 8 (SFN_RENDER_POLLERS) must not exceed concurrency 4 (SFN_RENDER_CONCURRENCY)",
        ),
        (("render",), {"SFN_RENDER_ACTIVITY_ARN": "nope"}, "SFN_RENDER_ACTIVITY_ARN='nope'"),
        (("bad name",), {}, "'bad name': not a valid activity name"),
    ],
)
def test_configuration_errors_name_the_variable(
    names: tuple[str, ...], env: dict[str, str], message: str
) -> None:
    with pytest.raises(SettingsError) as caught:
        resolve(_app(*names), _settings(), env)
    assert message in str(caught.value)


@pytest.mark.parametrize(
    "name",
    [
        "worker",
        "log",
        "queue",
        "metrics",
        "app",
        "activity",
        "http",
        "handler",
        "heartbeat",
        "ecs",
        "max",
        "concurrency",
        "sqs",
    ],
)
def test_an_activity_named_as_a_settings_prefix_is_served(name: str) -> None:
    """Renaming an AWS activity changes its ARN: only an actual shared variable is refused."""
    env = {f"SFN_{name.upper()}_CONCURRENCY": "3", "SFN_HTTP_PORT": "0", "SFN_WORKER_NAME": "w"}
    (config,) = resolve(_app(name), _settings(), env)
    assert (config.name, config.concurrency) == (name, 3)


def test_a_queue_whose_variable_is_a_process_wide_setting_is_refused() -> None:
    app = App()
    app.callback_queue("https://sqs.us-east-1.amazonaws.com/123456789012/sqs")(apps.quick)
    with pytest.raises(SettingsError) as caught:
        resolve(app, _settings(), {})
    assert str(caught.value) == (
        "queue 'sqs': its variable SFN_SQS_INPUT_FIELD is also a process-wide setting; rename it"
    )


def test_a_bad_value_in_code_names_the_activity() -> None:
    with pytest.raises(SettingsError, match=r"activity 'render': concurrency=0 \(app code\)"):
        resolve(_app("render", concurrency=0), _settings(), {})


async def test_check_prints_every_activity_and_where_its_settings_came_from(
    fake: FakeStepFunctions, capsys: Any
) -> None:
    fake.add_activity("render")
    env = {"SFN_NOTIFY_CONCURRENCY": "7"}
    configs = resolve(apps.media, _settings(), env)
    assert await check(_settings(), configs) == 1  # notify is not served by the fake yet
    captured = capsys.readouterr()
    assert "FAILED: activity 'notify'" in captured.err
    assert "ActivityDoesNotExist" in captured.err
    fake.add_activity("notify")
    assert await check(_settings(), configs) == 0
    out = capsys.readouterr().out
    assert (
        "OK: activity 'render' exists (arn:aws:states:us-east-1:123456789012:activity:render)"
        in out
    )
    assert "concurrency        2 (app code)" in out
    assert "concurrency        7 (environment (SFN_NOTIFY_CONCURRENCY))" in out
    assert "handler_mode       process (app code)" in out
    assert "arn                arn:aws:states:us-east-1:123456789012:activity:notify " in out
    assert "(resolved from the name at start)" in out


async def test_metrics_and_health_per_activity(fake: FakeStepFunctions) -> None:
    from sfn_worker.runtime.http import serve_http

    port = free_port()
    async with (
        run_app(apps.media, fake, http_port=port, http_host="127.0.0.1") as runtime,
        serve_http(runtime.settings, runtime),
    ):
        task = fake.add_task({"name": "n"}, activity="notify")
        await fake.wait_for(lambda: task.state != "open")
        await fake.wait_for(lambda: fake.open_polls == 2 + 3, timeout=30)
        _, metrics = await get(f"http://127.0.0.1:{port}/metrics")
        status, health = await get(f"http://127.0.0.1:{port}/healthz")
    assert 'sfn_worker_tasks_succeeded_total{kind="activity",source="notify"} 1.0' in metrics
    assert 'sfn_worker_concurrency{kind="activity",source="render"} 2.0' in metrics
    assert 'sfn_worker_polls_open{kind="activity",source="render"}' in metrics
    assert status == 200
    body = json.loads(health)
    assert set(body["activities"]) == {"render", "notify"}
    assert body["activities"]["notify"]["pollers_alive"] == 3


# -- the whole process ------------------------------------------------------------------------


@pytest.mark.timeout(90)
async def test_sigterm_with_both_activities_busy_answers_every_token_within_one_grace(
    fake: FakeStepFunctions,
) -> None:
    grace = 4.0
    fake.add_activity("render")
    fake.add_activity("notify")
    renders = [fake.add_task({"seconds": 300}, activity="render") for _ in range(2)]
    notifies = [fake.add_task({"seconds": 300}, activity="notify") for _ in range(3)]
    async with worker_process(
        [str(BIN / "sfn-worker"), "run", "tests.apps:media"],
        fake,
        SFN_ACTIVITY_ARN="",
        SFN_HANDLER="",  # the app names its handlers
        SFN_HEARTBEAT_SECONDS="0",
        SFN_SHUTDOWN_GRACE_SECONDS=str(grace),
    ) as worker:
        await fake.wait_for(lambda: all(t.issued for t in renders + notifies), timeout=30)
        loop = asyncio.get_running_loop()
        signalled = loop.time()
        worker.signal_worker(signal.SIGTERM)
        fake.release_polls()
        assert await worker.exit_code() == 0
        took = loop.time() - signalled
    assert took < grace + BUSY_MACHINE_SLACK
    for task in renders + notifies:
        assert (task.state, task.error, task.terminal_calls) == ("failed", SHUTDOWN_ERROR, 1)
    assert not any("Traceback" in line for line in worker.raw)


async def test_a_failing_lifespan_exits_1_without_polling(fake: FakeStepFunctions) -> None:
    fake.add_activity("render")
    async with worker_process(
        [str(BIN / "sfn-worker"), "run", "tests.apps:fails_on_entry"],
        fake,
        SFN_ACTIVITY_ARN="",
        SFN_HANDLER="",
    ) as worker:
        assert await worker.exit_code() == 1
    stopped = [e for e in worker.events if e.get("event") == "worker stopped"]
    assert "lifespan failed on entry" in stopped[-1]["error"]
    assert fake.counts.get("GetActivityTask", 0) == 0


@pytest.mark.parametrize(
    ("app", "env", "message"),
    [
        ("tests.apps:media", {"SFN_RENDR_CONCURRENCY": "2"}, "SFN_RENDR_CONCURRENCY matches no"),
        ("tests.apps:nowhere", {}, "app='tests.apps:nowhere': module 'tests.apps' has no"),
        ("tests.apps:render", {}, "is a function, not an sfn_worker.App"),
    ],
)
def test_app_configuration_errors_exit_2_with_one_line(
    app: str, env: dict[str, str], message: str
) -> None:
    import os
    import subprocess
    import sys

    from .test_process import REPO

    full_env = {k: v for k, v in os.environ.items() if not k.startswith("SFN_")}
    full_env.update(env, PYTHONPATH=str(REPO))
    result = subprocess.run(
        [sys.executable, "-m", "sfn_worker", "run", app],
        env=full_env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
    assert message in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
