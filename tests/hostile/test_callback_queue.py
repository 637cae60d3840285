"""Callback queues (SQS) against SQS's own faults: its throttles (HTTP 403 and query-
compatible codes), refused receipt handles, outages of the visibility calls, shutdowns."""

from __future__ import annotations

import pytest

from sfn_worker.examples import seed_handler
from sfn_worker.testing import FakeStepFunctions, Fault

from ..conftest import running_worker

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
