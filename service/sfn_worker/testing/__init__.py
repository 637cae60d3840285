"""Helpers for testing handlers and apps without AWS (docs/testing.md).

- ``run_handler(handler, input)``: what the worker would send for one call (with the app's
  middleware when ``app`` is given); ``run_handler_sync`` for a plain ``def test_...``;
- ``FakeStepFunctions``: an in-process fake of the activity API (and, as ``fake.sqs``, a
  ``FakeSqs`` of the SQS calls callback queues use) that real boto3 clients talk to; with
  ``fake.quotas = ApiQuotas()`` it throttles like the service (one token bucket per API,
  ``print(fake.quotas)`` sums them up), with ``fake.heartbeat_timeout_seconds`` it times
  tasks out like a state's HeartbeatSeconds;
- ``run_app(app, fake)``: the whole app, in this process, against the fake:

      async with FakeStepFunctions() as fake, run_app(app, fake):
          task = fake.add_task({"url": "https://example.com"}, activity="render")
          await fake.wait_for(lambda: task.state != "open")

- a pytest plugin (``pytest_plugin``, loaded by pytest wherever this package is installed):
  fixtures ``sfn_fake`` and ``sfn_queue``, and ``async def`` tests that need
  no asyncio configuration.

The names below load on first use: pytest imports this package for its plugin in every
project where the worker is installed, and that must cost nothing.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ..tasks.outcome import Failure, Outcome, Success
    from .fake_sfn import DEFAULT_ACTIVITY_ARN, Call, FakeStepFunctions, FakeTask, Fault
    from .fake_sqs import FakeMessage, FakeQueue, FakeSqs
    from .harness import fake_clients, run_app, run_handler, run_handler_sync
    from .quotas import LARGE_REGIONS, OTHER_REGIONS, ApiQuotas, Quota

_EXPORTS = {
    "Failure": "..tasks.outcome",
    "Outcome": "..tasks.outcome",
    "Success": "..tasks.outcome",
    "DEFAULT_ACTIVITY_ARN": ".fake_sfn",
    "Call": ".fake_sfn",
    "FakeStepFunctions": ".fake_sfn",
    "FakeTask": ".fake_sfn",
    "Fault": ".fake_sfn",
    "FakeMessage": ".fake_sqs",
    "FakeQueue": ".fake_sqs",
    "FakeSqs": ".fake_sqs",
    "fake_clients": ".harness",
    "run_app": ".harness",
    "run_handler": ".harness",
    "run_handler_sync": ".harness",
    "LARGE_REGIONS": ".quotas",
    "OTHER_REGIONS": ".quotas",
    "ApiQuotas": ".quotas",
    "Quota": ".quotas",
}

__all__ = [
    "DEFAULT_ACTIVITY_ARN",
    "LARGE_REGIONS",
    "OTHER_REGIONS",
    "ApiQuotas",
    "Call",
    "Failure",
    "FakeMessage",
    "FakeQueue",
    "FakeSqs",
    "FakeStepFunctions",
    "FakeTask",
    "Fault",
    "Outcome",
    "Quota",
    "Success",
    "fake_clients",
    "run_app",
    "run_handler",
    "run_handler_sync",
]


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name], __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])
