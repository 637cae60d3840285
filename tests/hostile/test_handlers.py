"""A handler's mistake costs its own task, never the worker, in async, thread and process mode.

Handlers that exit the interpreter, kill their process, return unencodable text, ignore
cancellation; and a defect in the worker's own machinery.
"""

from __future__ import annotations

import asyncio
import json
import signal
from typing import Any

import psutil
import pytest

from sfn_worker import SHUTDOWN_ERROR, TaskContext, TaskFailed
from sfn_worker.errors import PROCESS_DIED_ERROR
from sfn_worker.exceptions import WorkerCrashed
from sfn_worker.tasks.handlers.procpool import CANCEL_GRACE_SECONDS
from sfn_worker.tasks.sources.activity.poller import Poller
from sfn_worker.tasks.task import Task
from sfn_worker.testing import FakeStepFunctions

from .. import handler_mistakes as mistakes
from ..bounds import BUSY_MACHINE_SLACK
from ..conftest import running_worker, sample
from ..test_operations import get, worker_with_http
from ..test_process import BIN, worker_process

# (handler, SFN_HANDLER_MODE): "loop" is a sync handler on the event loop, how a
# @non_blocking handler runs, called without a task of its own.
MODES = {
    "async": (mistakes.exit_the_interpreter_async, "async"),
    "thread": (mistakes.exit_the_interpreter, "thread"),
    "process": (mistakes.exit_the_interpreter, "process"),
    "loop": (mistakes.exit_the_interpreter, "async"),
}


@pytest.mark.parametrize("mode", list(MODES))
@pytest.mark.parametrize(
    ("how", "error"),
    [
        ("exit", "SystemExit"),
        ("interrupt", "KeyboardInterrupt"),
        ("generator-exit", "GeneratorExit"),
    ],
)
async def test_a_handler_that_exits_the_interpreter_fails_only_its_task(
    fake: FakeStepFunctions, mode: str, how: str, error: str
) -> None:
    exiting = fake.add_task({"how": how})
    handler, handler_mode = MODES[mode]
    async with running_worker(fake, handler, handler_mode=handler_mode, concurrency=2) as harness:
        await fake.wait_for(lambda: exiting.state != "open", timeout=30)
        assert harness.task is not None
        assert not harness.task.done()  # the worker goes on
    assert (exiting.state, exiting.error) == ("failed", error)
    assert error in (exiting.cause or "")


@pytest.mark.parametrize("mode", ["async", "thread", "process"])
async def test_output_with_a_lone_surrogate_is_invalid_output(
    fake: FakeStepFunctions, mode: str
) -> None:
    task = fake.add_task({})
    async with running_worker(fake, mistakes.lone_surrogate, handler_mode=mode):
        await fake.wait_for(lambda: task.state != "open", timeout=30)
    assert (task.state, task.error) == ("failed", "Worker.InvalidOutput")
    assert "lone surrogate '\\ud800'" in (task.cause or "")
    assert not fake.rejections


async def test_a_failure_text_with_a_lone_surrogate_is_still_answered(
    fake: FakeStepFunctions,
) -> None:
    def handler(task_input: Any, ctx: TaskContext) -> Any:
        raise TaskFailed("Bad.\ud800", "cause \udfff here")

    task = fake.add_task({})
    async with running_worker(fake, handler):
        await fake.wait_for(lambda: task.state != "open")
    assert (task.state, task.error, task.cause) == ("failed", "Bad.?", "cause ? here")


async def test_junk_results_and_broken_exceptions_are_task_failures(
    fake: FakeStepFunctions,
) -> None:
    class Unprintable(Exception):
        def __str__(self) -> str:
            raise RuntimeError("no")

    class Exploding(dict[str, Any]):
        def items(self) -> Any:
            raise RuntimeError("no items")

    async def coroutine() -> None:
        return None

    def handler(task_input: Any, ctx: TaskContext) -> Any:
        kind = task_input["kind"]
        if kind == "unprintable":
            raise Unprintable
        if kind == "exploding":
            return {"value": Exploding(a=1)}
        if kind == "deep":
            nested: Any = []
            for _ in range(100_000):
                nested = [nested]
            return nested
        return coroutine()  # forgot to await: a sync handler returning a coroutine

    tasks = {k: fake.add_task({"kind": k}) for k in ("unprintable", "exploding", "deep", "coro")}
    async with running_worker(fake, handler):
        await fake.wait_for(lambda: all(t.state != "open" for t in tasks.values()))
    assert tasks["unprintable"].error == "Unprintable"
    for kind in ("exploding", "deep", "coro"):
        assert tasks[kind].error == "Worker.InvalidOutput", kind
    assert "awaitable" in (tasks["coro"].cause or "")


# -- process mode: a handler process that dies ------------------------------------------------


@pytest.mark.timeout(120)
async def test_one_process_death_among_40_tasks_costs_one_task(fake: FakeStepFunctions) -> None:
    before = [fake.add_task({"in": "SUCCESS", "seconds": 0.05}) for _ in range(10)]
    dying = fake.add_task({"die": True, "code": 3})
    after = [fake.add_task({"in": "SUCCESS", "seconds": 0.05}) for _ in range(29)]
    async with running_worker(
        fake, mistakes.die_when_asked, handler_mode="process", concurrency=4, pollers=2
    ) as harness:
        await fake.wait_for(lambda: all(t.state != "open" for t in fake.tasks.values()), timeout=90)
        deaths = sample(harness.worker, "sfn_worker_handler_process_deaths_total")
    assert (dying.state, dying.error) == ("failed", PROCESS_DIED_ERROR)
    assert "exited with code 3" in (dying.cause or "")
    assert all((t.state, t.terminal_calls) == ("succeeded", 1) for t in before + after)
    assert deaths == 1


@pytest.mark.slow
@pytest.mark.timeout(120)
@pytest.mark.timeout(90)
async def test_a_handler_that_always_dies_is_backed_off_and_shown_in_healthz(
    fake: FakeStepFunctions,
) -> None:
    fake.feed(1000, {"any": "input"})
    # A process per slot: four die at once, then the backoff holds the pollers.
    async with worker_with_http(
        fake, mistakes.always_die, handler_mode="process", concurrency=4, processes=4
    ) as (_, url):
        # Four processes must start (and die) first: seconds of CPU each on a busy machine.
        await fake.wait_for(lambda: len(fake.closed("failed")) >= 4, timeout=60)
        status, body = await get(f"{url}/healthz")
        failed = len(fake.closed("failed"))
    health = json.loads(body)["activities"]["fake-activity"]["processes"]
    # Unchecked, four slots would fail hundreds of tasks a second; backed off, a handful.
    assert 4 <= failed <= 12, failed
    assert health["deaths"] == failed
    assert health["consecutive_deaths"] >= 4
    assert health["start_delayed_seconds"] > 0 or health["processes"] > 0
    assert status == 200
    assert {t.error for t in fake.closed("failed")} == {PROCESS_DIED_ERROR}


@pytest.mark.timeout(60)
@pytest.mark.parametrize("kind", ["cooperative", "stubborn"])
async def test_a_cancelled_process_handler_is_told_and_a_stubborn_one_is_replaced(
    fake: FakeStepFunctions, kind: str
) -> None:
    loop = asyncio.get_running_loop()
    warm = fake.add_task({})  # the handler process is up before the task under test starts
    async with running_worker(
        fake,
        mistakes.cancellable,
        handler_mode="process",
        heartbeat_seconds=0.1,
        concurrency=1,
        pollers=1,
    ) as harness:
        await fake.wait_for(lambda: warm.state == "succeeded", timeout=30)
        first = fake.add_task({kind: True})
        await fake.wait_for(lambda: first.heartbeats >= 2, timeout=30)
        after = fake.add_task({})
        expired = loop.time()
        fake.expire(first)  # the next heartbeat learns it is gone and cancels the handler
        # One slot: the next task runs once the cancelled handler's process is free.
        await fake.wait_for(lambda: after.state != "open", timeout=30)
        took = loop.time() - expired
        health = harness.worker.state().sources[0].processes
    assert health is not None
    assert after.state == "succeeded"
    assert first.terminal_calls == 0
    assert health.deaths == 0  # a process the worker ended is not a death
    if kind == "cooperative":
        assert took < CANCEL_GRACE_SECONDS  # it saw ctx.cancel_requested and returned
        assert health.processes == 1  # and its process served the next task
    else:
        assert took >= CANCEL_GRACE_SECONDS  # terminated after the grace, then replaced


@pytest.mark.slow
@pytest.mark.timeout(90)
async def test_sigterm_while_a_replacement_process_is_starting(fake: FakeStepFunctions) -> None:
    dying = fake.add_task({"die": True})
    waiting = fake.add_task({"in": "SUCCESS"})
    async with worker_process(
        [str(BIN / "sfn-worker"), "run"],
        fake,
        SFN_HANDLER="tests.handler_mistakes:die_when_asked",
        SFN_HANDLER_MODE="process",
        SFN_POLLERS="1",
        SFN_CONCURRENCY="1",
        SFN_HEARTBEAT_SECONDS="0",
        SFN_SHUTDOWN_GRACE_SECONDS="3",
        SLOW_HANDLER_IMPORT_SECONDS="1",
    ) as worker:
        await worker.wait_for_log("handler process died", timeout=30)
        await fake.wait_for(lambda: waiting.issued, timeout=30)
        # The replacement is importing its handler now (1 s per start).
        children = psutil.Process(worker.process.pid).children(recursive=True)
        loop = asyncio.get_running_loop()
        signalled = loop.time()
        worker.signal_worker(signal.SIGTERM)
        fake.release_polls()
        assert await worker.exit_code() == 0
        took = loop.time() - signalled
    assert took < 3 + BUSY_MACHINE_SLACK
    assert (dying.state, dying.error) == ("failed", PROCESS_DIED_ERROR)
    assert waiting.terminal_calls == 1
    assert waiting.state in ("succeeded", "failed")
    # No handler process outlives the worker (nor does multiprocessing's resource tracker,
    # which leaves when its pipe from the worker closes).
    _, alive = psutil.wait_procs(children, timeout=5)
    assert alive == []


# -- thread mode: handlers that never return --------------------------------------------------


@pytest.mark.timeout(60)
async def test_stuck_threads_keep_their_slots_and_make_the_worker_unhealthy(
    fake: FakeStepFunctions,
) -> None:
    mistakes.release_stuck.clear()
    stuck = [fake.add_task({"stuck": True}) for _ in range(2)]
    try:
        async with worker_with_http(
            fake,
            mistakes.stuck_until_released,
            concurrency=2,
            pollers=1,
            heartbeat_seconds=0.05,
        ) as (harness, url):
            await fake.wait_for(lambda: all(t.heartbeats >= 1 for t in stuck))
            for task in stuck:
                fake.expire(task)  # the service times them out; the threads go on
            await fake.wait_for(lambda: all(t.calls_after_told_closed == 0 for t in stuck))
            later = [fake.add_task({"quick": True}) for _ in range(2)]
            await asyncio.sleep(1.0)  # a window in which nothing may happen
            # No thread is free, so no slot is: nothing was taken, nothing is heartbeated.
            assert not any(t.issued for t in later)
            assert fake.open_polls == 0
            assert harness.worker.state().sources[0].handlers_stuck == 2
            status, body = await get(f"{url}/healthz")
            assert status == 503
            assert json.loads(body)["activities"]["fake-activity"]["handlers_stuck"] == 2
            _, metrics = await get(f"{url}/metrics")
            gauge = 'sfn_worker_handlers_stuck{kind="activity",source="fake-activity"} 2.0'
            assert gauge in metrics
            mistakes.release_stuck.set()  # the threads return: their slots come back
            await fake.wait_for(lambda: all(t.state == "succeeded" for t in later))
            assert harness.worker.state().sources[0].handlers_stuck == 0
    finally:
        mistakes.release_stuck.set()
    assert all(t.terminal_calls == 0 for t in stuck)


# -- the process always ends by the end of the grace ----------------------------------------


@pytest.mark.timeout(60)
async def test_an_async_handler_that_swallows_cancellation_does_not_outlive_the_grace(
    fake: FakeStepFunctions,
) -> None:
    grace = 3.0
    task = fake.add_task({})
    async with worker_process(
        [str(BIN / "sfn-worker"), "run"],
        fake,
        SFN_HANDLER="tests.handler_mistakes:swallow_cancellation",
        SFN_HEARTBEAT_SECONDS="0",
        SFN_SHUTDOWN_GRACE_SECONDS=str(grace),
    ) as worker:
        await fake.wait_for(lambda: task.issued, timeout=30)
        loop = asyncio.get_running_loop()
        signalled = loop.time()
        worker.signal_worker(signal.SIGTERM)
        fake.release_polls()
        assert await worker.exit_code(timeout=grace + 10) == 0
        took = loop.time() - signalled
    assert took < grace + BUSY_MACHINE_SLACK
    assert (task.state, task.error) == ("failed", SHUTDOWN_ERROR)
    assert any(e.get("event", "").startswith("exiting with handlers") for e in worker.events)


# -- a defect in the worker itself ----------------------------------------------------------


async def test_a_defect_in_the_machinery_stops_the_worker_after_answering_what_runs(
    fake: FakeStepFunctions, monkeypatch: pytest.MonkeyPatch
) -> None:
    started = asyncio.Event()
    defect = asyncio.Event()

    fetch = Poller._fetch

    async def broken_poller(self: Poller, count: int) -> list[Task]:
        if defect.is_set():
            raise RuntimeError("a bug in the worker")
        return await fetch(self, count)

    # The task machinery itself (a poller), not an accessory beside it.
    monkeypatch.setattr(Poller, "_fetch", broken_poller)

    async def handler(task_input: Any, ctx: TaskContext) -> Any:
        started.set()
        await asyncio.Event().wait()

    task = fake.add_task({})
    async with running_worker(fake, handler, shutdown_grace_seconds=600) as harness:
        await started.wait()
        defect.set()
        fake.release_polls()
        with pytest.raises(WorkerCrashed, match="a bug in the worker"):
            await harness.wait(timeout=10)
    assert (task.state, task.error) == ("failed", SHUTDOWN_ERROR)
