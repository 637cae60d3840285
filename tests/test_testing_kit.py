"""sfn_worker.testing as a team uses it: run_handler answers as the worker does (SystemExit
too), the sync variant, ApiQuotas' summary, and the pytest plugin in a project of its own
(without pytest-asyncio, in its strict mode and in its auto mode)."""

from __future__ import annotations

import asyncio
import datetime
import json
import os
import subprocess
import sys
import textwrap
import threading
from pathlib import Path
from typing import Any

import pytest

from sfn_worker import TaskContext
from sfn_worker.settings import HandlerMode
from sfn_worker.testing import (
    ApiQuotas,
    Failure,
    FakeStepFunctions,
    FakeTask,
    Quota,
    Success,
    run_handler,
    run_handler_sync,
)

from . import handler_mistakes as mistakes
from .conftest import running_worker

# (handler, SFN_HANDLER_MODE); "loop" is a sync handler called on the event loop.
EXITING = {
    "async": (mistakes.exit_the_interpreter_async, "async"),
    "thread": (mistakes.exit_the_interpreter, "thread"),
    "process": (mistakes.exit_the_interpreter, "process"),
    "loop": (mistakes.exit_the_interpreter, "async"),
}


@pytest.mark.parametrize("mode", list(EXITING))
@pytest.mark.parametrize("how", ["exit", "interrupt"])
async def test_run_handler_fails_an_exiting_handler_as_the_worker_does(
    fake: FakeStepFunctions, mode: str, how: str
) -> None:
    handler, handler_mode = EXITING[mode]
    task = fake.add_task({"how": how})
    async with running_worker(fake, handler, handler_mode=handler_mode):
        await fake.wait_for(lambda: task.state != "open", timeout=30)

    outcome = await run_handler(handler, {"how": how}, mode=HandlerMode(handler_mode))

    assert task.state == "failed"
    assert outcome == Failure(task.error or "", task.cause or "")


def _exit(task_input: Any, ctx: Any) -> Any:
    raise SystemExit(3)


def _double(task_input: Any, ctx: Any) -> Any:
    return {"doubled": task_input["n"] * 2}


def test_run_handler_sync_runs_in_a_plain_test() -> None:
    assert run_handler_sync(_double, {"n": 21}) == Success('{"doubled":42}')
    assert run_handler_sync(_exit, {}) == Failure("SystemExit", "handler raised SystemExit: 3")
    failed = run_handler_sync(_double, {})
    assert isinstance(failed, Failure)
    assert failed.error == "KeyError"


def _greet(task_input: Any, ctx: Any) -> Any:
    return f"{ctx.state['greeting']}, {task_input}"


def test_run_handler_gives_the_handler_a_state() -> None:
    assert run_handler_sync(_greet, "ana", state={"greeting": "hi"}) == Success('"hi, ana"')
    with pytest.raises(ValueError, match="either ctx or state"):
        run_handler_sync(_greet, "ana", state={}, ctx=TaskContext(task_token="t", worker_name="w"))


def _where(task_input: Any, ctx: Any) -> Any:
    return {"other_process": os.getpid() != task_input, "thread": threading.current_thread().name}


@pytest.mark.parametrize("mode", ["process", "PROCESS", HandlerMode.PROCESS])
def test_run_handler_takes_a_mode_by_name_as_the_app_does(mode: Any) -> None:
    # A name the enum does not hold was taken for "on the loop" and the handler ran there.
    outcome = run_handler_sync(_where, os.getpid(), mode=mode)
    assert isinstance(outcome, Success)
    assert json.loads(outcome.output)["other_process"]
    threaded = run_handler_sync(_where, os.getpid(), mode="thread")
    assert isinstance(threaded, Success)
    assert json.loads(threaded.output)["thread"].startswith("sfn-handler")
    with pytest.raises(ValueError, match="'threads'"):
        run_handler_sync(_where, 0, mode="threads")


def _input_as_seen(task_input: Any, ctx: Any) -> Any:
    return {"type": type(task_input).__name__, "keys": sorted(map(repr, task_input))}


def test_run_handler_gives_the_input_as_step_functions_delivers_it() -> None:
    # A test passed {1: "a"} or a tuple and the handler saw them; production gives JSON.
    assert run_handler_sync(_input_as_seen, {1: "a"}) == Success('{"type":"dict","keys":["\'1\'"]}')
    assert run_handler_sync(_input_as_seen, (1, 2)) == Success('{"type":"list","keys":["1","2"]}')
    for not_json in ({"when": datetime.date(2024, 1, 1)}, {1, 2}, float("nan"), b"x"):
        with pytest.raises(TypeError, match="task_input is not JSON"):
            run_handler_sync(_input_as_seen, not_json)


stopped_when_told = threading.Event()


def _until_told(task_input: Any, ctx: TaskContext) -> Any:
    if ctx.cancel_requested.wait(60):
        stopped_when_told.set()
    return None


async def test_cancelling_run_handler_tells_a_sync_handler_as_the_worker_does() -> None:
    # The handler's thread waited out its 60 s: a test's timeout never reached it.
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.2):
            await run_handler(_until_told, {})
    assert await asyncio.to_thread(stopped_when_told.wait, 30)


async def test_run_handler_sync_inside_a_running_loop_says_what_to_use() -> None:
    with pytest.raises(RuntimeError, match=r"await run_handler\(\.\.\.\)"):
        run_handler_sync(_double, {"n": 1})


def test_api_quotas_summary_counts_calls_and_throttles_per_api() -> None:
    quotas = ApiQuotas(Quota(burst=2, refill_per_second=0.001), clock=lambda: 0.0)
    for _ in range(5):
        quotas.take("SendTaskHeartbeat")
    quotas.take("GetActivityTask")
    quotas.take("DescribeActivity")  # not metered: not in the summary
    rows = {line.split()[0]: line.split()[1:] for line in quotas.summary().splitlines()}
    assert rows == {
        "API": ["calls", "throttled"],
        "GetActivityTask": ["1", "0"],
        "SendTaskSuccess": ["0", "0"],
        "SendTaskFailure": ["0", "0"],
        "SendTaskHeartbeat": ["5", "3"],
    }
    assert str(quotas) == quotas.summary()


async def test_the_plugins_fake_works_in_this_repositorys_pytest_asyncio_loop(
    sfn_fake: FakeStepFunctions,
) -> None:
    """This suite runs in pytest-asyncio's auto mode: the plugin's fixtures share its loop."""
    task: FakeTask = sfn_fake.add_task({"in": "SUCCESS"})
    from sfn_worker import App
    from sfn_worker.examples import seed_handler
    from sfn_worker.testing import run_app

    app = App()
    app.activity(sfn_fake.activity_arn)(seed_handler)
    async with run_app(app, sfn_fake):
        await sfn_fake.wait_for(lambda: task.state != "open")
    assert task.state == "succeeded"


@pytest.fixture
def no_region_set(monkeypatch: pytest.MonkeyPatch) -> None:
    """A developer's shell with no region (asked for before ``sfn_fake``)."""
    for name in ("AWS_REGION", "AWS_DEFAULT_REGION"):
        monkeypatch.delenv(name, raising=False)


async def test_a_teams_own_client_reaches_the_plugins_fake(
    no_region_set: None, sfn_fake: FakeStepFunctions
) -> None:
    # botocore reads AWS_DEFAULT_REGION, not AWS_REGION: a client built with no arguments
    # raised NoRegionError.
    import aioboto3

    async with aioboto3.Session().client("stepfunctions") as client:
        described = await client.describe_activity(activityArn=sfn_fake.activity_arn)
    assert described["activityArn"] == sfn_fake.activity_arn


@pytest.fixture
def a_proxy_that_is_not_there(monkeypatch: pytest.MonkeyPatch) -> None:
    """A developer's shell behind a proxy (asked for before ``sfn_fake``)."""
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy"):
        monkeypatch.setenv(name, "http://127.0.0.1:9")
    for name in ("NO_PROXY", "no_proxy"):
        monkeypatch.delenv(name, raising=False)


async def test_the_plugins_fake_is_reached_past_a_developers_proxy(
    a_proxy_that_is_not_there: None, sfn_fake: FakeStepFunctions
) -> None:
    # Every call went to the proxy: ProxyConnectionError, and no test with sfn_fake passed.
    from sfn_worker import App
    from sfn_worker.examples import seed_handler
    from sfn_worker.testing import run_app

    app = App()
    app.activity("seed")(seed_handler)  # a name: resolved through STS, the fake's too
    sfn_fake.add_activity("seed")
    task = sfn_fake.add_task({"in": "SUCCESS"}, activity="seed")
    async with run_app(app, sfn_fake):
        await sfn_fake.wait_for(lambda: task.state != "open")
    assert task.state == "succeeded"


async def test_run_app_without_the_plugins_fixture_reaches_its_fake_past_a_proxy(
    a_proxy_that_is_not_there: None,
) -> None:
    """A fake of the test's own (no NO_PROXY from the plugin): run_app's clients go direct."""
    from sfn_worker import App
    from sfn_worker.examples import seed_handler
    from sfn_worker.testing import run_app

    app = App()
    app.activity("seed")(seed_handler)  # a name: STS goes direct too
    async with FakeStepFunctions() as fake:
        fake.add_activity("seed")
        task = fake.add_task({"in": "SUCCESS"}, activity="seed")
        async with run_app(app, fake):
            await fake.wait_for(lambda: task.state != "open")
    assert task.state == "succeeded"


async def test_a_wait_that_times_out_says_where_the_tasks_are(sfn_fake: FakeStepFunctions) -> None:
    sfn_fake.add_task({"n": 1})
    with pytest.raises(TimeoutError, match=r"still false after 0\.1 s; tasks at the fake: 1 open$"):
        await sfn_fake.wait_for(lambda: False, timeout=0.1)


def test_the_plugin_imports_nothing_of_the_worker() -> None:
    code = (
        "import sys, sfn_worker.testing.pytest_plugin\n"
        "heavy = {'aioboto3', 'aiohttp', 'botocore', 'sfn_worker.app',\n"
        "         'sfn_worker.testing.fake_sfn', 'sfn_worker.testing.harness'}\n"
        "print(sorted(heavy & set(sys.modules)))\n"
    )
    loaded = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert loaded.stdout.strip() == "[]"


# A team's test module: no asyncio configuration, no markers.
USER_TESTS = """
import asyncio
from typing import Any

import pytest

from sfn_worker import App, TaskContext
from sfn_worker.testing import Failure, Success, run_app, run_handler, run_handler_sync


def double(task_input: Any, ctx: TaskContext) -> Any:
    return {"n": task_input["n"] * 2}


def leave(task_input: Any, ctx: TaskContext) -> Any:
    raise SystemExit(1)


def test_sync_variant() -> None:
    assert run_handler_sync(double, {"n": 2}) == Success('{"n":4}')
    assert run_handler_sync(leave, {}) == Failure("SystemExit", "handler raised SystemExit: 1")


async def test_async_helper() -> None:
    assert await run_handler(double, {"n": 3}) == Success('{"n":6}')


async def test_an_activity(sfn_fake) -> None:
    app = App()
    app.activity(sfn_fake.activity_arn)(double)
    task = sfn_fake.add_task({"n": 5})
    async with run_app(app, sfn_fake):
        await sfn_fake.wait_for(lambda: task.state != "open")
    assert (task.state, task.output) == ("succeeded", '{"n":10}')


@pytest.fixture
def loop_of_fixtures(sfn_loop_runner):
    async def running_loop():
        return asyncio.get_running_loop()

    return sfn_loop_runner.run(running_loop())


async def test_fixtures_and_test_share_one_loop(loop_of_fixtures) -> None:
    assert asyncio.get_running_loop() is loop_of_fixtures


async def test_a_callback_queue(sfn_fake, sfn_queue) -> None:
    app = App()
    app.callback_queue(sfn_queue.url)(double)
    task, message = sfn_fake.sqs.add_callback_task({"n": 7}, queue=sfn_queue)
    async with run_app(app, sfn_fake):
        await sfn_fake.wait_for(lambda: task.state != "open")
    assert (task.state, task.output, message.deleted) == ("succeeded", '{"n":14}', True)
"""

# Only with pytest-asyncio: a marked test keeps its loop and the fixtures use it.
MARKED_TEST = """

import pytest


@pytest.mark.asyncio
async def test_marked_for_pytest_asyncio(sfn_fake) -> None:
    app = App()
    app.activity(sfn_fake.activity_arn)(double)
    task = sfn_fake.add_task({"n": 1})
    async with run_app(app, sfn_fake):
        await sfn_fake.wait_for(lambda: task.state != "open")
    assert task.state == "succeeded"
"""

# pytest-asyncio, when a team has it, warns (an error here) without its loop scope setting.
LOOP_SCOPE = "asyncio_default_fixture_loop_scope = function\n"
CONFIGS = {
    "no pytest-asyncio": ("", ["-p", "no:asyncio"], 5),
    "pytest-asyncio strict": (LOOP_SCOPE, [], 6),
    "pytest-asyncio auto": (LOOP_SCOPE + "asyncio_mode = auto\n", [], 6),
}


def _team_pytest(
    folder: Path, name: str, source: str, *options: str
) -> subprocess.CompletedProcess[str]:
    """A team's test module run by pytest in a folder of its own."""
    (folder / name).write_text(source)
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *options],
        cwd=folder,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@pytest.mark.slow
@pytest.mark.parametrize("config", list(CONFIGS))
def test_the_plugin_runs_a_teams_tests_with_no_asyncio_configuration(
    tmp_path: Path, config: str
) -> None:
    ini, options, passed = CONFIGS[config]
    (tmp_path / "pytest.ini").write_text(
        "[pytest]\nfilterwarnings = error\naddopts = --strict-markers --strict-config\n" + ini
    )
    source = USER_TESTS if "no:asyncio" in options else USER_TESTS + MARKED_TEST
    result = _team_pytest(tmp_path, "test_team.py", textwrap.dedent(source), *options)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"{passed} passed" in result.stdout, result.stdout


STUBBORN_TEST = """
import asyncio

import pytest

from sfn_worker.testing import run_handler


async def swallow(task_input, ctx):
    while True:
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            continue


async def test_times_out() -> None:
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(run_handler(swallow, {}), 0.1)
"""


@pytest.mark.slow
def test_a_handler_that_swallows_cancellation_fails_the_teardown_instead_of_hanging(
    tmp_path: Path,
) -> None:
    # Closing the test's loop waited for the handler's task: the run hung with no word.
    result = _team_pytest(tmp_path, "test_stubborn.py", STUBBORN_TEST, "-p", "no:asyncio")
    assert result.returncode == 1, result.stdout + result.stderr
    assert "1 passed, 1 error" in result.stdout, result.stdout
    assert "left 1 task(s) that ignore cancellation" in result.stdout, result.stdout


PLAIN_TESTS = """
import boto3


def test_plain(sfn_fake) -> None:
    boto3.client("stepfunctions").describe_activity(activityArn=sfn_fake.activity_arn)


def test_plain_that_drives_the_loop(sfn_fake, sfn_loop_runner) -> None:
    async def added():
        return sfn_fake.add_task({"n": 1})

    assert sfn_loop_runner.run(added()).state == "open"
"""


@pytest.mark.slow
def test_the_fake_in_a_plain_test_is_refused_with_one_line(tmp_path: Path) -> None:
    # Its loop does not run there: botocore's own retries held the test for minutes.
    result = _team_pytest(tmp_path, "test_plain.py", PLAIN_TESTS, "-p", "no:asyncio")
    assert "1 passed, 1 error" in result.stdout, result.stdout + result.stderr
    assert "test_plain is a plain test: the fake Step Functions answers only" in result.stdout


def test_an_exception_without_a_message_is_named_once() -> None:
    def bare(task_input: Any, ctx: TaskContext) -> None:
        raise KeyboardInterrupt

    outcome = run_handler_sync(bare, {})
    assert outcome == Failure("KeyboardInterrupt", "handler raised KeyboardInterrupt")


@pytest.mark.parametrize(
    ("burst", "refill"), [(0, 1.0), (-1, 1.0), (10, 0.0), (10, -1.0), (10, float("nan"))]
)
def test_a_quota_that_would_throttle_for_ever_is_refused(burst: int, refill: float) -> None:
    with pytest.raises(ValueError, match=r"burst|refill"):
        Quota(burst=burst, refill_per_second=refill)


def test_thread_mode_run_handler_restores_the_switch_interval() -> None:
    """The worker's process keeps a short interval; a test session must not."""
    before = sys.getswitchinterval()
    outcome = run_handler_sync(lambda task_input, ctx: task_input, {"a": 1}, mode="thread")
    assert outcome == Success('{"a":1}')
    assert sys.getswitchinterval() == before


def test_a_process_handler_that_cannot_be_imported_is_refused_up_front() -> None:
    with pytest.raises(ValueError, match=r"needs a handler importable as module:function"):
        run_handler_sync(lambda task_input, ctx: task_input, {"a": 1}, mode="process")


async def test_the_fake_sqs_refuses_an_empty_message_body_as_sqs_does() -> None:
    import aioboto3
    from botocore.exceptions import ClientError

    async with FakeStepFunctions() as fake:
        queue = fake.sqs.add_queue("jobs")
        session = aioboto3.Session(
            region_name="us-east-1", aws_access_key_id="t", aws_secret_access_key="t"
        )
        async with session.client("sqs", endpoint_url=fake.endpoint_url) as sqs:
            with pytest.raises(ClientError) as caught:
                await sqs.send_message(QueueUrl=queue.url, MessageBody="")
            await sqs.send_message(QueueUrl=queue.url, MessageBody="x")
    assert caught.value.response["Error"]["Code"] == "MissingParameter"
    assert [m.body for m in queue.messages] == ["x"]
