"""Callback tasks over SQS: the same worker for states using sqs:sendMessage.waitForTaskToken."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest

from sfn_worker import SHUTDOWN_ERROR, App, TaskContext
from sfn_worker.examples import seed_handler
from sfn_worker.testing import FakeStepFunctions, Fault, run_app
from sfn_worker.testing.fake_sqs import FakeQueue

from .conftest import WorkerHarness, running_worker, sample

pytestmark = pytest.mark.timeout(60)


@asynccontextmanager
async def queue_worker(
    fake: FakeStepFunctions, handler: Any, queue: FakeQueue, **overrides: Any
) -> AsyncIterator[WorkerHarness]:
    """The env-only form: SFN_SQS_QUEUE_URL and a handler, no activity."""
    async with running_worker(
        fake, handler, activity_arn=None, sqs_queue_url=queue.url, **overrides
    ) as harness:
        yield harness


def _queue(fake: FakeStepFunctions, **options: Any) -> FakeQueue:
    return fake.sqs.add_queue("render-jobs", **options)


async def test_seed_flow_over_sqs_answers_once_and_deletes_the_message(
    fake: FakeStepFunctions,
) -> None:
    queue = _queue(fake)
    ok, ok_message = fake.sqs.add_callback_task({"in": "SUCCESS"}, queue=queue)
    bad, bad_message = fake.sqs.add_callback_task({"in": "RANDOM"}, queue=queue)
    async with queue_worker(fake, seed_handler, queue):
        await fake.wait_for(lambda: ok_message.deleted and bad_message.deleted)
    assert (ok.state, json.loads(ok.output or "")) == ("succeeded", {"result": {"in": "SUCCESS"}})
    assert (bad.state, bad.error, bad.cause) == (
        "failed",
        "NO_SUCCESS_INPUT",
        'Input is not "SUCCESS"',
    )
    assert ok.terminal_calls == bad.terminal_calls == 1
    assert queue.messages == []
    assert queue.stale_deletes == 0


async def test_no_message_is_received_without_a_free_slot(fake: FakeStepFunctions) -> None:
    queue = _queue(fake)
    release = asyncio.Event()
    running = 0
    peak = 0

    async def handler(task_input: Any, ctx: TaskContext) -> Any:
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        await release.wait()
        running -= 1
        return {"ok": True}

    pairs = [fake.sqs.add_callback_task({"n": n}, queue=queue) for n in range(12)]
    async with queue_worker(fake, handler, queue, concurrency=3, pollers=2):
        await fake.wait_for(lambda: sum(m.receive_count for _, m in pairs) >= 3)
        await asyncio.sleep(0.3)  # a window: nothing more may be received while all are busy
        assert sum(1 for _, m in pairs if m.receive_count) == 3
        assert queue.receiving == 0  # no receive is even open
        release.set()
        await fake.wait_for(lambda: all(m.deleted for _, m in pairs))
    assert peak == 3
    assert max(queue.requested) <= 3  # never asked for more messages than free slots
    assert all(t.terminal_calls == 1 for t, _ in pairs)


@pytest.mark.slow
async def test_a_long_task_keeps_its_message_invisible(fake: FakeStepFunctions) -> None:
    queue = _queue(fake)

    async def slow(task_input: Any, ctx: TaskContext) -> Any:
        await asyncio.sleep(5)  # two and a half visibility timeouts
        return {"done": True}

    task, message = fake.sqs.add_callback_task({}, queue=queue)
    async with queue_worker(fake, slow, queue, sqs_visibility_seconds=2):
        await fake.wait_for(lambda: message.deleted, timeout=20)
    assert message.receive_count == 1  # never visible again while the handler ran
    assert len(fake.calls_of("ChangeMessageVisibility")) >= 4
    assert task.terminal_calls == 1


async def test_a_second_delivery_while_running_runs_nothing_twice(
    fake: FakeStepFunctions,
) -> None:
    queue = _queue(fake)
    started = asyncio.Event()
    release = asyncio.Event()
    runs = 0

    async def handler(task_input: Any, ctx: TaskContext) -> Any:
        nonlocal runs
        runs += 1
        started.set()
        await release.wait()
        return {"runs": runs}

    task, message = fake.sqs.add_callback_task({}, queue=queue)
    async with queue_worker(fake, handler, queue, pollers=1, concurrency=2):
        await started.wait()
        fake.sqs.redeliver(message)  # SQS delivers it again (a new receipt handle)
        await fake.wait_for(lambda: message.receive_count == 2)
        release.set()
        await fake.wait_for(lambda: message.deleted)
    assert runs == 1
    assert task.terminal_calls == 1
    assert queue.stale_deletes == 0  # deleted with the newest receipt handle


async def test_a_redelivered_message_of_a_closed_task_is_deleted_unanswered(
    fake: FakeStepFunctions,
) -> None:
    queue = _queue(fake)
    ran = []
    answered, message = fake.sqs.add_callback_task({"in": "SUCCESS"}, queue=queue)
    message.receive_count = 1  # an earlier worker received it, answered, and died
    fake.close_callback_task(answered)
    async with queue_worker(fake, lambda i, c: ran.append(i), queue):
        await fake.wait_for(lambda: message.deleted)
    assert ran == []
    assert answered.terminal_calls == 1  # the earlier worker's answer only
    assert answered.calls_after_told_closed <= 1  # the probe, answered TaskTimedOut
    assert [c.answer for c in fake.calls_of("SendTaskHeartbeat")] == ["TaskTimedOut"]


async def test_poison_messages_are_counted_and_left_for_the_redrive_policy(
    fake: FakeStepFunctions,
) -> None:
    queue = _queue(fake, max_receive_count=2)
    not_json = fake.sqs.send(queue, "{not json")
    no_token = fake.sqs.send(queue, json.dumps({"Input": {"a": 1}}))
    malformed = fake.sqs.send(queue, json.dumps({"TaskToken": "not-a-token", "Input": {}}))
    poison = [not_json, no_token, malformed]
    async with queue_worker(fake, seed_handler, queue) as harness:
        # First deliveries: two refused at once, one after its answer met InvalidToken.
        await fake.wait_for(lambda: all(m.receive_count == 1 for m in poison))
        await fake.wait_for(lambda: len(fake.calls_of("SendTaskFailure")) == 1)
        # Their visibility runs out: delivered again (the malformed token is now checked
        # before its handler runs), then the queue's redrive policy takes them.
        for message in poison:
            fake.sqs.redeliver(message)
        await fake.wait_for(lambda: all(m.receive_count == 2 for m in poison))
        await fake.wait_for(lambda: len(fake.calls_of("SendTaskHeartbeat")) == 1)
        for message in poison:
            fake.sqs.redeliver(message)
        await fake.wait_for(lambda: len(queue.dead_letters) == 3)
    reasons = {
        reason: sample(harness.worker, "sfn_worker_poison_messages_total", reason=reason)
        for reason in ("not_json", "no_token", "malformed_token")
    }
    assert reasons == {"not_json": 2, "no_token": 2, "malformed_token": 2}
    assert not any(m.deleted for m in poison)  # never deleted silently
    assert len(fake.calls_of("SendTaskFailure")) == 1  # the handler ran once, not twice


async def test_failed_deletes_are_retried_without_running_the_handler_again(
    fake: FakeStepFunctions,
) -> None:
    queue = _queue(fake)
    fake.inject(
        "DeleteMessageBatch", Fault.throttle(), Fault.server_error(500), Fault.reset_before()
    )
    runs = []

    def handler(task_input: Any, ctx: TaskContext) -> Any:
        runs.append(task_input)
        return {"ok": True}

    task, message = fake.sqs.add_callback_task({"in": "SUCCESS"}, queue=queue)
    async with queue_worker(fake, handler, queue):
        await fake.wait_for(lambda: message.deleted)
    assert len(runs) == 1
    assert task.terminal_calls == 1
    answers = [c.answer for c in fake.calls_of("DeleteMessageBatch")]
    assert answers == ["ThrottlingException", "InternalFailure", "reset", "ok"]


async def test_at_shutdown_messages_are_released_not_failed(fake: FakeStepFunctions) -> None:
    queue = _queue(fake)
    started = asyncio.Event()

    async def stubborn(task_input: Any, ctx: TaskContext) -> Any:
        started.set()
        await asyncio.Event().wait()

    running_task, running_message = fake.sqs.add_callback_task({}, queue=queue)
    queued = [fake.sqs.add_callback_task({}, queue=queue) for _ in range(2)]
    async with queue_worker(
        fake, stubborn, queue, concurrency=3, pollers=1, shutdown_grace_seconds=1
    ) as harness:
        await started.wait()
        await fake.wait_for(lambda: all(m.receive_count for _, m in queued))
        await harness.stop()
        released = sample(harness.worker, "sfn_worker_tasks_released_total")
    # Nothing answered: every token is still open for another worker, its message visible.
    for task, message in [(running_task, running_message), *queued]:
        assert (task.state, task.terminal_calls) == ("open", 0)
        assert not message.deleted
        assert message.visible_at == 0 or message.visible_at <= asyncio.get_running_loop().time()
    assert released >= 1


async def test_on_shutdown_fail_answers_worker_shutdown_and_deletes(
    fake: FakeStepFunctions,
) -> None:
    queue = _queue(fake)
    started = asyncio.Event()

    async def stubborn(task_input: Any, ctx: TaskContext) -> Any:
        started.set()
        await asyncio.Event().wait()

    task, message = fake.sqs.add_callback_task({}, queue=queue)
    async with queue_worker(
        fake, stubborn, queue, sqs_on_shutdown="fail", shutdown_grace_seconds=1
    ) as harness:
        await started.wait()
        await harness.stop()
    assert (task.state, task.error) == ("failed", SHUTDOWN_ERROR)
    assert message.deleted


async def test_activities_and_queues_in_one_process(fake: FakeStepFunctions) -> None:
    app = App()
    url = "https://sqs.us-east-1.amazonaws.com/123456789012/notify-jobs"

    @app.activity("render")
    async def render(task_input: Any, ctx: TaskContext) -> Any:
        return {"rendered": ctx.source_name}

    @app.callback_queue(url, concurrency=5)
    async def notify(task_input: Any, ctx: TaskContext) -> Any:
        return {"notified": ctx.source_name, "queue_url": ctx.queue_url}

    async with run_app(app, fake) as runtime:
        activity_task = fake.add_task({}, activity="render")
        callback_task, message = fake.sqs.add_callback_task({}, queue=fake.sqs.queues[url])
        await fake.wait_for(lambda: activity_task.state != "open" and message.deleted)
        body = runtime.metrics.render().decode()
    assert json.loads(activity_task.output or "") == {"rendered": "render"}
    assert json.loads(callback_task.output or "") == {"notified": "notify-jobs", "queue_url": url}
    assert 'sfn_worker_tasks_succeeded_total{kind="queue",source="notify-jobs"} 1.0' in body
    assert 'sfn_worker_tasks_succeeded_total{kind="activity",source="render"} 1.0' in body


async def test_a_queue_name_can_be_overridden_from_the_environment(
    fake: FakeStepFunctions,
) -> None:
    from sfn_worker.config import CallbackQueueConfig, resolve
    from sfn_worker.settings import Settings

    app = App()
    app.callback_queue("https://sqs.us-east-1.amazonaws.com/123456789012/render-jobs")(seed_handler)
    env = {
        "SFN_RENDER_JOBS_CONCURRENCY": "7",
        "SFN_RENDER_JOBS_VISIBILITY_SECONDS": "120",
        "SFN_RENDER_JOBS_ON_SHUTDOWN": "fail",
    }
    (config,) = resolve(app, Settings(app="x:y"), env)
    assert isinstance(config, CallbackQueueConfig)
    assert (config.concurrency, config.visibility_seconds, config.on_shutdown) == (7, 120, "fail")
    assert (
        config.sources["visibility_seconds"] == "environment (SFN_RENDER_JOBS_VISIBILITY_SECONDS)"
    )


@pytest.mark.parametrize(("grace", "noted"), [(30, False), (20, True)])
async def test_the_long_poll_note_follows_the_queue_receives(
    fake: FakeStepFunctions, grace: int, noted: bool
) -> None:
    """A receive returns within 21 s: a 30 s grace covers it (an activity's 60 s polls would
    need 65 s), so the note at start is the kind's, not one threshold for every source."""
    import structlog

    app = App()

    @app.callback_queue("https://sqs.us-east-1.amazonaws.com/123456789012/notify-jobs")
    def notify(task_input: Any, ctx: TaskContext) -> Any:
        return {}

    with structlog.testing.capture_logs() as logs:
        async with run_app(app, fake, shutdown_grace_seconds=grace):
            pass
    notes = [e for e in logs if "long polls open" in e["event"]]
    assert bool(notes) is noted
    if noted:
        assert "SFN_SHUTDOWN_GRACE_SECONDS >= 21" in notes[0]["hint"]
