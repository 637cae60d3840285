"""Configuration as an operator can get it wrong: two sources on one activity or queue,
per-source variables in the single form, misspelt names. Each is one line and exit 2,
before any poll, from the real command."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys

import pytest

from sfn_worker import App
from sfn_worker.examples import seed_handler
from sfn_worker.runtime.runtime import Runtime
from sfn_worker.settings import SettingsError
from sfn_worker.testing import FakeStepFunctions, fake_clients
from sfn_worker.testing.fake_sfn import ACCOUNT, REGION

from ..conftest import make_settings
from ..test_process import REPO

ARN = "arn:aws:states:us-east-1:123456789012:activity:"
URL = "https://sqs.us-east-1.amazonaws.com/123456789012/"


def sfn_worker(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("SFN_")}
    full_env.update(env, PYTHONPATH=str(REPO))
    return subprocess.run(
        [sys.executable, "-m", "sfn_worker", *args],
        env=full_env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.mark.parametrize(
    ("app", "env", "both"),
    [
        # tests.apps:media has activities "render" and "notify" (by name).
        (
            "tests.apps:media",
            {"SFN_RENDER_ACTIVITY_ARN": ARN + "jobs", "SFN_NOTIFY_ACTIVITY_ARN": ARN + "jobs"},
            ("activity 'render'", "activity 'notify'"),
        ),
        # tests.apps:two_queues has queues "first" and "second" (by URL).
        (
            "tests.apps:two_queues",
            {"SFN_SECOND_QUEUE_URL": URL + "first"},
            ("queue 'first'", "queue 'second'"),
        ),
    ],
)
@pytest.mark.parametrize("command", ["run", "check"])
def test_two_sources_on_one_arn_or_queue_url_are_refused(
    app: str, env: dict[str, str], both: tuple[str, str], command: str
) -> None:
    result = sfn_worker(command, app, **env)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1
    assert all(name in lines[0] for name in both)
    assert "configuration error" in lines[0]


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"SFN_RENDER_JOBS_CONCURENCY": "4"}, "SFN_RENDER_JOBS_CONCURENCY: queue 'render-jobs'"),
        ({"SFN_RENDER_JOBS_VISIBILITY_SECONDS": "1"}, "SFN_RENDER_JOBS_VISIBILITY_SECONDS='1'"),
    ],
)
def test_the_single_form_checks_its_per_source_variables_as_an_app_does(
    env: dict[str, str], message: str
) -> None:
    result = sfn_worker(
        "run",
        SFN_SQS_QUEUE_URL=URL + "render-jobs",
        SFN_HANDLER="sfn_worker.examples:seed_handler",
        **env,
    )
    assert result.returncode == 2, result.stderr
    assert message in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


async def test_a_name_that_resolves_to_another_sources_arn_is_refused_before_any_poll(
    fake: FakeStepFunctions,
) -> None:
    app = App()
    app.activity("jobs")(seed_handler)  # resolved at start: ...:123456789012:activity:jobs
    app.activity("other")(seed_handler)
    environ = {"SFN_OTHER_ACTIVITY_ARN": f"arn:aws:states:{REGION}:{ACCOUNT}:activity:jobs"}
    fake.add_activity("jobs")
    settings = make_settings(fake, activity_arn=None)
    runtime = Runtime(app, settings, client_factory=fake_clients(fake), environ=environ)
    with pytest.raises(SettingsError, match=r"activity 'other' .* are both arn:aws:states"):
        await runtime.run(asyncio.Event())
    assert fake.counts.get("GetActivityTask", 0) == 0
