"""Starts LocalStack with a shorter GetActivityTask long poll: run by LocalStack's own Python
(its cached environment), never imported by the worker.

LocalStack 2026.3 answers GetActivityTask from a server-side loop that checks the activity
every second for 60 s, whether or not the client is still connected. A worker restarted by
`sfn-worker dev` leaves such loops behind, and the next task goes to one of them: taken, for
a worker that no longer exists, until the state's timeout. With a poll of a few seconds a
stopping worker's polls return before it exits (its grace is longer), so none is left. The
loop also checks every 0.1 s, so a task reaches a waiting worker sooner.
"""

from __future__ import annotations

import os
import sys
import time
from typing import Any


def _shorten_activity_poll(seconds: float) -> None:
    from localstack.services.stepfunctions.provider import StepFunctionsProvider

    if not hasattr(StepFunctionsProvider, "_pull_activity_task"):
        print(
            "sfn-worker dev: this LocalStack has no _pull_activity_task; its 60 s activity "
            "poll is kept (a restarted worker's polls may take a task)",
            file=sys.stderr,
            flush=True,
        )
        return

    def pull(activity: Any) -> Any:
        deadline = time.monotonic() + seconds
        while True:
            try:
                return activity.get_task()
            except IndexError:
                if time.monotonic() >= deadline:
                    return None
                time.sleep(0.1)

    StepFunctionsProvider._pull_activity_task = staticmethod(pull)


def main() -> None:
    _shorten_activity_poll(float(os.environ["SFN_DEV_ACTIVITY_POLL_SECONDS"]))
    from localstack.runtime.main import main as localstack_main

    localstack_main()


if __name__ == "__main__":
    main()
