"""Callback queues (SQS) against SQS's own faults: its throttles (HTTP 403 and query-
compatible codes), refused receipt handles, outages of the visibility calls, shutdowns."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
import structlog

from sfn_worker import TaskContext
from sfn_worker.examples import seed_handler
from sfn_worker.retry import POLL_BACKOFF, SEND_BACKOFF
from sfn_worker.tasks.sources.queue.receiver import WAIT_SECONDS
from sfn_worker.testing import FakeStepFunctions, Fault

from ..conftest import running_worker
from ..netfaults import FaultyPath

pytestmark = pytest.mark.timeout(60)


@pytest.mark.parametrize("code", ["RequestThrottled", "OverLimit", "KmsThrottled"])
async def test_sqs_throttles_back_off_and_never_stop_the_worker(
    fake: FakeStepFunctions, code: str
) -> None:
    """A throttled ReceiveMessage (SQS answers 403 with a query-compatible code) is retried
    like Step Functions' ThrottlingException; the activity beside the queue goes on."""
    queue = fake.sqs.add_queue("render-jobs")
    fake.inject("ReceiveMessage", *[Fault.error(code)] * 3)
    async with running_worker(fake, seed_handler, sqs_queue_url=queue.url) as harness:
        await fake.wait_for(
            lambda: sum(c.answer == code for c in fake.calls_of("ReceiveMessage")) == 3
        )
        callback, message = fake.sqs.add_callback_task({"in": "SUCCESS"}, queue=queue)
        activity = fake.add_task({"in": "SUCCESS"})
        await fake.wait_for(lambda: message.deleted and activity.state == "succeeded")
        assert harness.task is not None
        assert not harness.task.done()
    assert callback.state == "succeeded"


async def test_a_stop_adds_no_receive_to_a_released_message(fake: FakeStepFunctions) -> None:
    """Released messages become visible only once the stopping worker's own receives are
    over (SQS keeps a long poll open even when its client has gone, as the fake does), so
    none of them takes a released message back: each stop used to cost about three
    receives, and two rolling deploys moved a live task to the dead-letter queue."""
    queue = fake.sqs.add_queue("render-jobs")
    started = asyncio.Event()

    async def stubborn(task_input: Any, ctx: TaskContext) -> Any:
        started.set()
        await asyncio.Event().wait()

    running, running_message = fake.sqs.add_callback_task({}, queue=queue)
    queued = fake.sqs.add_callback_task({}, queue=queue)
    loop = asyncio.get_running_loop()
    async with running_worker(
        fake,
        stubborn,
        activity_arn=None,
        sqs_queue_url=queue.url,
        concurrency=4,
        pollers=2,
        shutdown_grace_seconds=1,
    ) as harness:
        await started.wait()
        await fake.wait_for(lambda: queued[1].receive_count == 1 and queue.receiving > 0)
        stopped_at = loop.time()
        await harness.stop(release_polls=False)  # its receives stay open at SQS
    fake.release_polls()  # now they end, and would take whatever is visible
    await fake.wait_for(lambda: queue.receiving == 0)
    for task, message in [(running, running_message), queued]:
        assert (task.state, task.terminal_calls) == ("open", 0)
        assert message.receive_count == 1
        # Released: visible again once the receives open at the stop are over.
        assert message.visible_at <= stopped_at + WAIT_SECONDS + 2


@pytest.mark.slow
@pytest.mark.timeout(60)
async def test_visibility_is_kept_through_an_outage_of_half_of_it(
    fake: FakeStepFunctions, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SQS unreachable for half of a 10 s visibility, just after an extension: extensions
    are retried until the path heals, the message never becomes visible, the handler runs
    once (extensions used to give up after a quarter of the visibility)."""
    queue = fake.sqs.add_queue("render-jobs")
    runs = 0
    host, port = fake.endpoint_url.removeprefix("http://").split(":")
    async with FaultyPath(host, int(port)) as path:
        monkeypatch.setenv("AWS_ENDPOINT_URL_SQS", path.url)
        outage_over = asyncio.Event()

        async def handler(task_input: Any, ctx: TaskContext) -> Any:
            nonlocal runs
            runs += 1
            await asyncio.sleep(3.5)  # just after the first extension (at a third: 3.3 s)
            path.reset()
            await asyncio.sleep(5)
            path.heal()
            outage_over.set()
            await asyncio.sleep(7)  # past the visibility that ran when SQS went away
            return {"ok": True}

        task, message = fake.sqs.add_callback_task({}, queue=queue)
        async with running_worker(
            fake,
            handler,
            activity_arn=None,
            sqs_queue_url=queue.url,
            concurrency=4,
            sqs_visibility_seconds=10,
            heartbeat_seconds=4,  # quick calls time out after 2 s
            poll_backoff=POLL_BACKOFF,
            send_backoff=SEND_BACKOFF,
        ):
            await outage_over.wait()
            await fake.wait_for(lambda: message.deleted, timeout=30)
    assert runs == 1
    assert message.receive_count == 1  # never visible again while it ran
    assert (task.state, task.terminal_calls) == ("succeeded", 1)


async def test_a_lapsed_visibility_is_said_once(fake: FakeStepFunctions) -> None:
    """Another consumer took the message (its visibility lapsed): SQS refuses the worker's
    handle. The worker says so once, not at every extension, and the task still ends."""
    queue = fake.sqs.add_queue("render-jobs")
    started, lapsed = asyncio.Event(), asyncio.Event()

    async def handler(task_input: Any, ctx: TaskContext) -> Any:
        started.set()
        await lapsed.wait()
        await asyncio.sleep(3)  # three more extension rounds of a 2 s visibility
        return {"ok": True}

    task, message = fake.sqs.add_callback_task({}, queue=queue)
    with structlog.testing.capture_logs() as logs:
        async with running_worker(
            fake, handler, activity_arn=None, sqs_queue_url=queue.url,
            sqs_visibility_seconds=2, concurrency=1, pollers=1,
        ):  # fmt: skip
            await started.wait()
            message.receipt_handle = "taken-by-another-worker"  # as a receive elsewhere does
            lapsed.set()
            await fake.wait_for(lambda: task.state != "open", timeout=20)
    said = [e for e in logs if "visibility lapsed" in e["event"]]
    assert len(said) == 1
    assert task.state == "succeeded"


async def test_a_second_message_with_a_running_token_never_runs_it_twice(
    fake: FakeStepFunctions,
) -> None:
    """Two messages carrying one token (a SendMessage retried after a lost answer makes a
    second message, with its own id): while the token runs here the second is left for its
    next delivery, which finds the task closed and deletes it. The handler ran twice at
    once, and the second answer met a closed task."""
    import json

    queue = fake.sqs.add_queue("render-jobs")
    release = asyncio.Event()
    calls: list[Any] = []

    async def handler(task_input: Any, ctx: TaskContext) -> Any:
        calls.append(task_input)
        await release.wait()
        return {"done": True}

    task, first = fake.sqs.add_callback_task({"n": 1}, queue=queue)
    async with running_worker(
        fake, handler, activity_arn=None, sqs_queue_url=queue.url, concurrency=4, pollers=2
    ):
        await fake.wait_for(lambda: len(calls) == 1)
        copy = fake.sqs.send(queue, json.dumps({"TaskToken": task.token, "Input": {"n": 2}}))
        await fake.wait_for(lambda: copy.receive_count == 1)
        release.set()
        await fake.wait_for(lambda: first.deleted)
        fake.sqs.redeliver(copy)  # its visibility ran out
        await fake.wait_for(lambda: copy.deleted)
    assert calls == [{"n": 1}]
    assert task.state == "succeeded"
    assert fake.counts.get("SendTaskSuccess") == 1
