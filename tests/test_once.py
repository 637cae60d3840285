"""``sfn-worker once``: the one task an ECS container was started for, as a real process
against the fake service."""

from __future__ import annotations

import asyncio
import json
import os
import signal
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from sfn_worker import SHUTDOWN_ERROR
from sfn_worker.testing import FakeStepFunctions

from .test_operations import free_port
from .test_process import BIN, WorkerProcess, spawned_worker


@asynccontextmanager
async def once_process(**settings: str) -> AsyncIterator[WorkerProcess]:
    command = [str(BIN / "sfn-worker"), "once"]
    async with spawned_worker(command, {"SFN_WORKER_NAME": "once-test", **settings}) as worker:
        yield worker


async def test_answers_success_and_exits_0(fake: FakeStepFunctions) -> None:
    task = fake.open_callback_task({})
    async with once_process(
        SFN_TASK_TOKEN=task.token,
        SFN_TASK_INPUT=json.dumps({"in": "SUCCESS"}),
        SFN_HANDLER="sfn_worker.examples:seed_handler",
    ) as worker:
        assert await worker.exit_code() == 0
    assert task.state == "succeeded"
    assert json.loads(task.output or "") == {"result": {"in": "SUCCESS"}}
    assert task.terminal_calls == 1
    ended = [e for e in worker.events if e.get("event") == "task ended"]
    assert [e["outcome"] for e in ended] == ["succeeded"]
    assert [(e["source"], e["kind"]) for e in ended] == [("once", "once")]
    assert all(task.token not in line for line in worker.raw)
    # It holds no long poll: the note about polls outlasting the grace is not for it.
    assert not any("long polls open" in str(e.get("event")) for e in worker.events)


async def test_a_handler_failure_is_answered_and_exits_0(fake: FakeStepFunctions) -> None:
    task = fake.open_callback_task({})
    async with once_process(
        SFN_TASK_TOKEN=task.token, SFN_HANDLER="sfn_worker.examples:seed_handler"
    ) as worker:  # no SFN_TASK_INPUT: the input is {}
        assert await worker.exit_code() == 0
    assert (task.state, task.error) == ("failed", "NO_SUCCESS_INPUT")


async def test_input_that_is_not_json_fails_the_task(fake: FakeStepFunctions) -> None:
    task = fake.open_callback_task({})
    async with once_process(
        SFN_TASK_TOKEN=task.token,
        SFN_TASK_INPUT="{not json",
        SFN_HANDLER="sfn_worker.examples:seed_handler",
    ) as worker:
        assert await worker.exit_code() == 0
    assert (task.state, task.error) == ("failed", "Worker.InvalidInput")


async def test_a_closed_token_exits_1(fake: FakeStepFunctions) -> None:
    task = fake.open_callback_task({})
    fake.close_callback_task(task)
    async with once_process(
        SFN_TASK_TOKEN=task.token,
        SFN_TASK_INPUT=json.dumps({"in": "SUCCESS"}),
        SFN_HANDLER="sfn_worker.examples:seed_handler",
    ) as worker:
        assert await worker.exit_code() == 1


async def test_no_token_is_a_configuration_error(fake: FakeStepFunctions) -> None:
    async with once_process(SFN_HANDLER="sfn_worker.examples:seed_handler") as worker:
        assert await worker.exit_code() == 2
    assert any("SFN_TASK_TOKEN" in line for line in worker.raw)


async def test_the_concurrency_flag_is_refused(fake: FakeStepFunctions) -> None:
    """One task per container: a flag that would change nothing is said, before any call."""
    task = fake.open_callback_task({})
    command = [str(BIN / "sfn-worker"), "once", "--concurrency", "4"]
    settings = {"SFN_TASK_TOKEN": task.token, "SFN_HANDLER": "sfn_worker.examples:seed_handler"}
    async with spawned_worker(command, settings) as worker:
        assert await worker.exit_code() == 2
    assert any("--concurrency" in line for line in worker.raw)
    assert task.state == "open"


async def test_sigterm_answers_worker_shutdown_within_the_grace(fake: FakeStepFunctions) -> None:
    task = fake.open_callback_task({})
    async with once_process(
        SFN_TASK_TOKEN=task.token,
        SFN_TASK_INPUT=json.dumps({"seconds": 300}),
        SFN_HANDLER="sfn_worker.examples:sleep_handler",
        SFN_SHUTDOWN_GRACE_SECONDS="2",
    ) as worker:
        await worker.wait_for_log("task started")
        worker.process.send_signal(signal.SIGTERM)
        assert await worker.exit_code() == 0
    assert (task.state, task.error) == ("failed", SHUTDOWN_ERROR)
    assert task.terminal_calls == 1


def test_the_ecs_example_passes_token_and_input_to_a_once_container() -> None:
    from .test_config_files import SETTING_NAMES, load_json

    machine = load_json("once-state-machine.json")
    state = machine["States"]["Render"]
    assert state["Resource"] == "arn:aws:states:::ecs:runTask.waitForTaskToken"
    (override,) = state["Parameters"]["Overrides"]["ContainerOverrides"]
    passed = {item["Name"]: item["Value.$"] for item in override["Environment"]}
    assert passed == {"SFN_TASK_TOKEN": "$$.Task.Token", "SFN_TASK_INPUT": "States.JsonToString($)"}
    (container,) = load_json("ecs-task-definition-once.json")["containerDefinitions"]
    assert container["name"] == override["Name"]
    assert container["command"] == ["once"]
    env = {item["name"]: item["value"] for item in container["environment"]}
    assert set(env) <= SETTING_NAMES
    assert "SFN_HANDLER" in env
    # SIGTERM (ECS StopTask) answers Worker.Shutdown within the grace, before SIGKILL.
    assert float(env["SFN_SHUTDOWN_GRACE_SECONDS"]) + 5 <= container["stopTimeout"]
    # A heartbeat every SFN_HEARTBEAT_SECONDS keeps the state's HeartbeatSeconds.
    assert float(env["SFN_HEARTBEAT_SECONDS"]) < state["HeartbeatSeconds"]


async def test_the_task_is_heartbeated_while_its_handler_runs(fake: FakeStepFunctions) -> None:
    task = fake.open_callback_task({})
    async with once_process(
        SFN_TASK_TOKEN=task.token,
        SFN_TASK_INPUT=json.dumps({"seconds": 3}),
        SFN_HANDLER="sfn_worker.examples:sleep_handler",
        SFN_HEARTBEAT_SECONDS="1",
    ) as worker:
        assert await worker.exit_code() == 0
    assert task.state == "succeeded"
    beats = [c for c in fake.calls_of("SendTaskHeartbeat") if c.token == task.token]
    assert beats  # due every 0.9-1 s of a 3 s handler


async def test_the_health_check_passes_while_the_handler_runs(fake: FakeStepFunctions) -> None:
    """ECS replaces a container whose health check fails: a once container reported
    unhealthy as soon as its handler started would be killed mid-task."""
    task = fake.open_callback_task({})
    port = free_port()
    async with once_process(
        SFN_TASK_TOKEN=task.token,
        SFN_TASK_INPUT=json.dumps({"seconds": 300}),
        SFN_HANDLER="sfn_worker.examples:sleep_handler",
        SFN_HTTP_PORT=str(port),
        SFN_HTTP_HOST="127.0.0.1",
        SFN_SHUTDOWN_GRACE_SECONDS="2",
    ) as worker:
        await worker.wait_for_log("task started")
        check = await asyncio.create_subprocess_exec(
            str(BIN / "sfn-worker"),
            "healthcheck",
            env={**os.environ, "SFN_HTTP_PORT": str(port)},
            stdout=asyncio.subprocess.PIPE,
        )
        out, _ = await check.communicate()
        assert check.returncode == 0, out
        source = json.loads(out)["sources"]["once"]
        assert (source["kind"], source["healthy"], source["running"]) == ("once", True, 1)
        worker.process.send_signal(signal.SIGTERM)
        assert await worker.exit_code() == 0
    assert (task.state, task.error) == ("failed", SHUTDOWN_ERROR)
