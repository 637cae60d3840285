"""The pytest plugin of ``sfn_worker.testing`` (entry point ``pytest11``; docs/testing.md).

Fixtures for ``async def`` tests of handlers and apps, with no asyncio configuration:

- ``sfn_fake``: a running ``FakeStepFunctions`` serving the activity ``fake-activity``
  (``sfn_fake.activity_arn``), with the AWS environment pointed at it and dummy credentials,
  so nothing in the test reaches a real account;
- ``sfn_queue``: a callback queue (``FakeQueue``) on ``sfn_fake.sqs``;
- ``sfn_loop_runner``: the ``asyncio.Runner`` the fixtures and the test share.

An ``async def`` test that no other plugin runs (pytest-asyncio, anyio, pytest-trio) runs
here, in a fresh event loop; pytest alone would fail it. A test pytest-asyncio runs (its
auto mode, or ``@pytest.mark.asyncio``) keeps pytest-asyncio's loop, and the fixtures use
that loop too. Sync tests, and projects that use none of this, are left as they are.

Loaded by pytest in every project where sfn-activity-worker is installed: it imports
nothing of the worker (nor asyncio) until a fixture or an async test asks.
"""

from __future__ import annotations

import inspect
import os
import sys
from collections.abc import Coroutine, Iterator
from typing import TYPE_CHECKING, Any, TypeVar

import pytest

if TYPE_CHECKING:
    import asyncio

    from .fake_sfn import FakeStepFunctions
    from .fake_sqs import FakeQueue

T = TypeVar("T")
RUNNER_FIXTURE = "sfn_loop_runner"
# Cancelled tasks end within a loop iteration or two; a bound for a busy machine.
LINGER_SECONDS = 5.0
FAKE_HOST = "127.0.0.1"  # FakeStepFunctions.start()'s
# Markers and fixtures of the other plugins that run async tests.
OTHER_ASYNC_MARKERS = ("anyio", "trio")


def _pytest_asyncio_runs(item: pytest.Item) -> bool:
    plugin = sys.modules.get("pytest_asyncio")
    return plugin is not None and bool(plugin.is_async_test(item))


def _runs_here(item: pytest.Item) -> bool:
    """An ``async def`` test that no other plugin runs."""
    if not isinstance(item, pytest.Function) or not inspect.iscoroutinefunction(item.obj):
        return False
    if _pytest_asyncio_runs(item) or "anyio_backend" in item.fixturenames:
        return False
    return not any(item.get_closest_marker(name) for name in OTHER_ASYNC_MARKERS)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if _runs_here(item):
            assert isinstance(item, pytest.Function)
            item.fixturenames.append(RUNNER_FIXTURE)


@pytest.hookimpl(tryfirst=True)
def pytest_pyfunc_call(pyfuncitem: pytest.Function) -> bool | None:
    if not _runs_here(pyfuncitem):
        return None
    runner: asyncio.Runner = pyfuncitem.funcargs[RUNNER_FIXTURE]  # type: ignore[assignment]
    arguments = {name: pyfuncitem.funcargs[name] for name in pyfuncitem._fixtureinfo.argnames}
    runner.run(pyfuncitem.obj(**arguments))
    return True


async def _cancel_leftovers(seconds: float) -> list[str]:
    """Cancel the tasks a test left; the names of those still running ``seconds`` later."""
    import asyncio

    leftovers = asyncio.all_tasks() - {asyncio.current_task()}
    for task in leftovers:
        task.cancel()
    if not leftovers:
        return []
    _, pending = await asyncio.wait(leftovers, timeout=seconds)
    return [task.get_name() for task in pending]


class _LoopRunner:
    """What the fixtures use of an ``asyncio.Runner``, for a loop pytest-asyncio owns."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop

    def run(self, coroutine: Coroutine[Any, Any, T]) -> T:
        return self._loop.run_until_complete(coroutine)

    def get_loop(self) -> asyncio.AbstractEventLoop:
        return self._loop


@pytest.fixture
def sfn_loop_runner(request: pytest.FixtureRequest) -> Iterator[asyncio.Runner]:
    """The event loop's runner of this test: pytest-asyncio's when it runs the test."""
    if _pytest_asyncio_runs(request.node):
        # pytest-asyncio names its runners by loop scope; its tests and async fixtures run
        # in that runner, so ours must too (an object of one loop does not work in another).
        scope = getattr(request.node, "_loop_scope", "function")
        try:
            yield request.getfixturevalue(f"_{scope}_scoped_runner")
        except pytest.FixtureLookupError:
            # pytest-asyncio before 1.0 has no runners: a test of a function-scoped loop
            # runs in `event_loop`; other loops are out of reach.
            marker = request.node.get_closest_marker("asyncio")
            wider = marker and (marker.kwargs.get("loop_scope") or marker.kwargs.get("scope"))
            if wider and wider != "function":
                pytest.fail(
                    f"the sfn_worker fixtures need pytest-asyncio 1.0 or later for a test in "
                    f"a {wider}-scoped loop; with this version, use a function-scoped loop",
                    pytrace=False,
                )
            yield _LoopRunner(request.getfixturevalue("event_loop"))  # type: ignore[misc]
        return
    import asyncio

    runner = asyncio.Runner()
    try:
        yield runner
    finally:
        # Closing a runner waits for every task it cancels: for ever, for one that swallows
        # CancelledError (a handler's), and the run hung with no word. Name them instead.
        stubborn = runner.run(_cancel_leftovers(LINGER_SECONDS))
        if not stubborn:
            runner.close()
        else:
            runner.get_loop().close()
            pytest.fail(
                f"the test left {len(stubborn)} task(s) that ignore cancellation "
                f"(a handler that swallows CancelledError?): {', '.join(sorted(stubborn))}",
                pytrace=False,
            )


def _needs_the_loop_running(request: pytest.FixtureRequest) -> None:
    """The fake answers only while its loop runs: in an ``async def`` test, or a plain one
    that drives the loop itself (``sfn_loop_runner.run(...)``). A plain test's own calls to
    it waited on botocore's retries for minutes, with no word."""
    test = getattr(request.node, "obj", None)
    if test is None or inspect.iscoroutinefunction(test):
        return
    if RUNNER_FIXTURE in inspect.signature(test).parameters:
        return
    pytest.fail(
        f"{request.node.name} is a plain test: the fake Step Functions answers only while the "
        "test's event loop runs. Make it `async def`, or drive the loop with "
        "sfn_loop_runner.run(...)",
        pytrace=False,
    )


@pytest.fixture
def sfn_fake(
    sfn_loop_runner: asyncio.Runner,
    monkeypatch: pytest.MonkeyPatch,
    request: pytest.FixtureRequest,
) -> Iterator[FakeStepFunctions]:
    """A running ``FakeStepFunctions``; the AWS environment points at it."""
    _needs_the_loop_running(request)
    from .fake_sfn import REGION, FakeStepFunctions

    fake = FakeStepFunctions()
    sfn_loop_runner.run(fake.start())
    try:
        for service in ("SFN", "SQS", "STS"):
            monkeypatch.setenv(f"AWS_ENDPOINT_URL_{service}", fake.endpoint_url)
        monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
        for name in ("AWS_SESSION_TOKEN", "AWS_PROFILE", "AWS_DEFAULT_PROFILE"):
            monkeypatch.delenv(name, raising=False)
        # The worker reads AWS_REGION; botocore, and so a team's own clients, the other.
        for name in ("AWS_REGION", "AWS_DEFAULT_REGION"):
            monkeypatch.setenv(name, REGION)
        # A developer's HTTP(S)_PROXY would take the fake's calls to the proxy.
        for name in ("NO_PROXY", "no_proxy"):
            kept = os.environ.get(name, "")
            monkeypatch.setenv(name, f"{kept},{FAKE_HOST}" if kept else FAKE_HOST)
        yield fake
    finally:
        sfn_loop_runner.run(fake.close())


@pytest.fixture
def sfn_queue(sfn_fake: FakeStepFunctions) -> FakeQueue:
    """A callback queue named ``callbacks`` on ``sfn_fake``: serve it with
    ``app.callback_queue(sfn_queue.url)``, fill it with
    ``sfn_fake.sqs.add_callback_task(input, queue=sfn_queue)``."""
    return sfn_fake.sqs.add_queue("callbacks")
