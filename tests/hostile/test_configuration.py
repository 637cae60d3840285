"""Configuration as an operator can get it wrong: two sources on one activity or queue,
per-source variables in the single form, misspelt names. Each is one line and exit 2,
before any poll, from the real command."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

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


SEED = "sfn_worker.examples:seed_handler"


@pytest.mark.parametrize(
    ("args", "env", "message"),
    [
        # The single form: a misspelt setting, and a misspelt required one (named, not
        # reported as missing).
        (
            ["run"],
            {"SFN_ACTIVITY_ARN": ARN + "jobs", "SFN_HANDLER": SEED, "SFN_CONCURENCY": "4"},
            "SFN_CONCURENCY: not a setting (did you mean SFN_CONCURRENCY?)",
        ),
        (
            ["run"],
            {"SFN_ACTIVTY_ARN": ARN + "jobs", "SFN_HANDLER": SEED},
            "SFN_ACTIVTY_ARN: not a setting (did you mean SFN_ACTIVITY_ARN?)",
        ),
        (
            ["check"],
            {"SFN_SQS_QUEUE_URL": URL + "render-jobs", "SFN_HANDLER": SEED, "SFN_HANDLR": "x"},
            "SFN_HANDLR: not a setting (did you mean SFN_HANDLER?)",
        ),
        # An app: a misspelt global, and a per-activity one, each with the closest name.
        (
            ["run", "tests.apps:media"],
            {"SFN_HEARTBEAT_SECOND": "5"},
            "SFN_HEARTBEAT_SECOND: not a setting (did you mean SFN_HEARTBEAT_SECONDS?)",
        ),
        (
            ["check", "tests.apps:media"],
            {"SFN_RENDER_CONCURENCY": "4"},
            "(did you mean SFN_RENDER_CONCURRENCY?)",
        ),
        (
            ["settings", "tests.apps:media"],
            {"SFN_RENDR_CONCURRENCY": "4"},
            "SFN_RENDR_CONCURRENCY matches no activity or queue (have: activity 'render', "
            "activity 'notify') (did you mean SFN_RENDER_CONCURRENCY?)",
        ),
        # Names are upper-case (a lower-case global setting used to be read, a lower-case
        # per-activity one ignored).
        (
            ["run", "tests.apps:media"],
            {"sfn_render_concurrency": "4"},
            "sfn_render_concurrency: not a setting (names are upper-case) "
            "(did you mean SFN_RENDER_CONCURRENCY?)",
        ),
        # A lower-case global next to its upper-case name: the lower-case one is named (it
        # used to be read, and its error named SFN_CONCURRENCY, which was valid).
        (
            ["run", "tests.apps:media"],
            {"SFN_CONCURRENCY": "8", "sfn_concurrency": "abc"},
            "sfn_concurrency: not a setting (names are upper-case) (did you mean SFN_CONCURRENCY?)",
        ),
        # A variable of the user's own in the worker's prefix (the Makefile's cache
        # directory was one); with nothing close, the line points at the list.
        (
            ["run", "tests.apps:media"],
            {"SFN_WORKER_CACHE": "/tmp/cache"},
            "SFN_WORKER_CACHE: not a setting",
        ),
        (
            ["run", "tests.apps:media"],
            {"SFN_BUILD_ID": "1234"},
            "SFN_BUILD_ID: not a setting (see sfn-worker settings)",
        ),
    ],
)
def test_an_unknown_sfn_variable_is_refused_with_the_closest_name(
    args: list[str], env: dict[str, str], message: str
) -> None:
    """A misspelt SFN_* name used to be ignored: the setting silently kept its default."""
    result = sfn_worker(*args, **env)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1
    assert message in lines[0]


@pytest.mark.parametrize(
    ("variable", "typed", "valid"),
    [
        ("LOG_LEVEL", "verbose", "DEBUG, INFO, WARNING, ERROR, CRITICAL"),
        ("SFN_LOG_FORMAT", "Pretty", "json, console"),
        ("SFN_HANDLER_MODE", "Fork", "async, thread, process"),
        ("SFN_HEARTBEAT_MODE", "Often", "timer, progress"),
        ("SFN_METRICS", "StatsD", "prometheus, emf"),
        ("SFN_SQS_ON_SHUTDOWN", "Drop", "release, fail"),
        ("SFN_JOBS_HANDLER_MODE", "Fork", "async, thread, process"),  # per activity
    ],
)
def test_an_enum_setting_quotes_the_value_as_typed_and_lists_the_valid_ones(
    variable: str, typed: str, valid: str
) -> None:
    result = sfn_worker("run", SFN_ACTIVITY_ARN=ARN + "jobs", SFN_HANDLER=SEED, **{variable: typed})
    assert result.returncode == 2, result.stderr
    (line,) = result.stderr.strip().splitlines()
    assert f"{variable}={typed!r} is invalid: expected one of {valid} (any case)" in line


def test_enum_settings_take_any_case(monkeypatch: pytest.MonkeyPatch) -> None:
    from sfn_worker.settings import HandlerMode, LogFormat, LogLevel, MetricsOutput, load_settings

    for name, value in {
        "LOG_LEVEL": "debug",
        "SFN_LOG_FORMAT": "CONSOLE",
        "SFN_HANDLER_MODE": "Process",
        "SFN_METRICS": " Emf",
    }.items():
        monkeypatch.setenv(name, value)
    settings = load_settings()
    assert settings.log_level is LogLevel.DEBUG
    assert settings.log_format is LogFormat.CONSOLE
    assert settings.handler_mode is HandlerMode.PROCESS
    assert settings.metrics is MetricsOutput.EMF


@pytest.mark.parametrize(
    "env",
    [{"SFN_ACTIVITY_ARN": ARN + "jobs"}, {"SFN_SQS_QUEUE_URL": URL + "jobs", "SFN_HANDLER": ""}],
)
def test_the_single_form_requires_a_handler(env: dict[str, str]) -> None:
    """It used to default to the demo's seed handler, which failed every real task with
    NO_SUCCESS_INPUT."""
    result = sfn_worker("run", **env)
    assert result.returncode == 2, result.stderr
    (line,) = result.stderr.strip().splitlines()
    assert "SFN_HANDLER is required but not set" in line
    assert "SFN_HANDLER=sfn_worker.examples:seed_handler" in line  # the demo's, as a hint


def test_a_handler_set_beside_an_app_is_refused() -> None:
    """The app names each source's handler; a SFN_HANDLER beside it would be ignored."""
    result = sfn_worker("run", "tests.apps:media", SFN_HANDLER=SEED)
    assert result.returncode == 2, result.stderr
    (line,) = result.stderr.strip().splitlines()
    assert "SFN_HANDLER is set but the worker runs the app 'tests.apps:media'" in line


@pytest.mark.parametrize("env", [{"SFN_ACTIVITY_ARN": ARN + "jobs"}, {}])
@pytest.mark.parametrize("command", ["run", "check", "settings"])
def test_a_handler_given_where_the_app_goes_says_to_use_handler(
    env: dict[str, str], command: str
) -> None:
    """`sfn-worker run my_jobs:handle` said SFN_ACTIVITY_ARN conflicted with an app."""
    result = sfn_worker(command, SEED, **env)
    assert result.returncode == 2, result.stderr
    (line,) = result.stderr.strip().splitlines()
    assert f"app={SEED!r} is a function, not an sfn_worker.App: run a handler with " in line
    assert f"--handler {SEED} (or SFN_HANDLER)" in line


def test_log_level_under_both_its_names_must_agree() -> None:
    """Two names for one setting: LOG_LEVEL used to win silently over SFN_LOG_LEVEL."""
    base = {"SFN_ACTIVITY_ARN": ARN + "jobs", "SFN_HANDLER": SEED}
    result = sfn_worker("settings", LOG_LEVEL="info", SFN_LOG_LEVEL="DEBUG", **base)
    assert result.returncode == 2, result.stderr
    (line,) = result.stderr.strip().splitlines()
    assert "LOG_LEVEL='info' and SFN_LOG_LEVEL='DEBUG' are both set and differ" in line
    agreeing = sfn_worker("settings", LOG_LEVEL="debug", SFN_LOG_LEVEL="DEBUG", **base)
    assert agreeing.returncode == 0, agreeing.stderr


@pytest.mark.parametrize(
    ("name", "value", "reason"),
    [
        # config/worker.env.example's line uncommented: docker --env-file keeps the comment.
        (
            "AWS_ENDPOINT_URL_SFN",
            "http://localhost:4566   # an emulator such as LocalStack",
            "Port could not be cast to integer value as '4566   '",
        ),
        ("AWS_ENDPOINT_URL", "localhost:4566", "Invalid endpoint: localhost:4566"),
    ],
)
@pytest.mark.parametrize("command", ["run", "check"])
def test_an_endpoint_url_botocore_cannot_use_is_one_line_and_exit_2(
    monkeypatch: pytest.MonkeyPatch, command: str, name: str, value: str, reason: str
) -> None:
    for other in ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_SFN", "AWS_ENDPOINT_URL_STS"):
        monkeypatch.delenv(other, raising=False)
    monkeypatch.setenv(name, value)
    result = sfn_worker(
        command, SFN_ACTIVITY_ARN=ARN + "render", SFN_HANDLER="sfn_worker.examples:seed_handler"
    )
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip().splitlines() == [
        f"sfn-worker: configuration error: {name}={value!r} is invalid: {reason}"
    ]


@pytest.mark.parametrize(
    "env",
    [
        {"SFN_SQS_QUEUE_URL": "https://admin:hunter2@sqs.us-east-1.amazonaws.com/123456789012/q"},
        {
            "SFN_SQS_QUEUE_URL": URL + "q",
            "SFN_Q_QUEUE_URL": "https://admin:hunter2@sqs.us-east-1.amazonaws.com/123456789012/r",
        },
    ],
)
@pytest.mark.parametrize("command", ["settings", "run"])
def test_a_queue_url_carrying_a_password_is_refused_without_showing_it(
    command: str, env: dict[str, str]
) -> None:
    """SQS never reads user:password@; the URL is printed by settings and check and logged
    at start, so it is refused, masked in the one line."""
    result = sfn_worker(
        command,
        SFN_HANDLER="sfn_worker.examples:seed_handler",
        AWS_ENDPOINT_URL="http://127.0.0.1:9",  # were it not refused: nothing leaves the host
        **env,
    )
    assert result.returncode == 2, result.stderr
    assert "hunter2" not in result.stdout + result.stderr
    [line] = result.stderr.strip().splitlines()
    assert "QUEUE_URL='https://***@sqs." in line
    assert "must not carry user:password@" in line


@pytest.mark.parametrize(
    ("env", "names"),
    [
        (
            {"SFN_ACTIVITY_ARN": ARN + "render", "SFN_RENDER_ACTIVITY_ARN": ARN + "other"},
            ("SFN_ACTIVITY_ARN=", "SFN_RENDER_ACTIVITY_ARN="),
        ),
        (
            {"SFN_SQS_QUEUE_URL": URL + "jobs", "SFN_JOBS_QUEUE_URL": URL + "other"},
            ("SFN_SQS_QUEUE_URL=", "SFN_JOBS_QUEUE_URL="),
        ),
    ],
)
@pytest.mark.parametrize("command", ["settings", "run"])
def test_the_single_form_refuses_its_source_named_twice_differently(
    command: str, env: dict[str, str], names: tuple[str, str]
) -> None:
    """The per-source variable silently won: the worker served 'other' while the log and
    SFN_ACTIVITY_ARN said 'render', and 'render' was left unworked."""
    result = sfn_worker(
        command,
        SFN_HANDLER="sfn_worker.examples:seed_handler",
        AWS_ENDPOINT_URL="http://127.0.0.1:9",  # were it not refused: nothing leaves the host
        **env,
    )
    assert result.returncode == 2, result.stderr
    [line] = result.stderr.strip().splitlines()
    assert all(name in line for name in names)
    assert "differ; keep one" in line


@pytest.mark.parametrize("name", ["SFN_X\nSFN_Y", "SFN_X\x1b[2J", "SFN_X\r"])
def test_an_unknown_name_with_control_characters_is_one_quoted_line(name: str) -> None:
    """A line break in a name split the one line in two; an escape sequence reached the
    terminal as it was."""
    result = sfn_worker(
        "settings",
        SFN_ACTIVITY_ARN=ARN + "render",
        SFN_HANDLER="sfn_worker.examples:seed_handler",
        **{name: "1"},
    )
    assert result.returncode == 2, result.stderr
    assert result.stderr.count("\n") == 1
    assert "\x1b" not in result.stderr
    assert f"configuration error: {name!r}: not a setting" in result.stderr


def test_the_source_of_log_level_is_the_name_that_set_it() -> None:
    """LOG_LEVEL= (empty: unset, as docker --env-file writes it) beside SFN_LOG_LEVEL=debug
    was labelled as coming from LOG_LEVEL."""
    result = sfn_worker(
        "settings",
        SFN_ACTIVITY_ARN=ARN + "render",
        SFN_HANDLER="sfn_worker.examples:seed_handler",
        LOG_LEVEL="",
        SFN_LOG_LEVEL="debug",
    )
    assert result.returncode == 0, result.stderr
    [line] = [line for line in result.stdout.splitlines() if "LOG_LEVEL " in line]
    assert line.split()[1:] == ["DEBUG", "environment", "(SFN_LOG_LEVEL)"]


@pytest.mark.parametrize(
    ("env", "message"),
    [
        # A byte that is not UTF-8, a control character, a bracket: no activity is named so
        # (CreateActivity refuses it); the poll failed later with ActivityDoesNotExist.
        ({"SFN_ACTIVITY_ARN": ARN + "jo\udcffbs"}, "SFN_ACTIVITY_ARN='" + ARN + "jo\\udcffbs'"),
        ({"SFN_ACTIVITY_ARN": ARN + "jo\x01bs"}, "the activity name must be 1-80 characters"),
        ({"SFN_ACTIVITY_ARN": ARN + "jo\x85bs"}, "none of white space, control characters"),
        ({"SFN_ACTIVITY_ARN": ARN + "jobs[1]"}, "the activity name must be"),
        # A line break in the worker's name broke the settings table (and went to AWS).
        (
            {"SFN_ACTIVITY_ARN": ARN + "jobs", "SFN_WORKER_NAME": "a\nb"},
            "SFN_WORKER_NAME='a\\nb' is invalid: must not contain control characters",
        ),
        ({"SFN_ACTIVITY_ARN": ARN + "jobs", "SFN_WORKER_NAME": "w\udcff"}, "SFN_WORKER_NAME="),
    ],
)
@pytest.mark.parametrize("command", ["run", "settings"])
def test_names_aws_would_refuse_are_refused_at_start(
    env: dict[str, str], message: str, command: str
) -> None:
    result = sfn_worker(command, SFN_HANDLER=SEED, **env)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1
    assert message in lines[0]


def test_a_process_wide_poller_count_is_capped_at_a_sources_own_concurrency() -> None:
    """SFN_POLLERS=4 (the changelog's way back to the old behaviour) is every source's
    default: a source whose own concurrency is lower (tests.apps:media's render has 2, in
    code) polls at most 2, and the worker starts. It refused to start."""
    result = sfn_worker("settings", "tests.apps:media", SFN_POLLERS="4")
    assert result.returncode == 0, result.stderr
    render = result.stdout.split("activity 'render':")[1].split("activity 'notify':")[0]
    assert "pollers            2 (environment (SFN_POLLERS), capped at the concurrency (2))" in (
        render
    )
    # Set at the same level as the concurrency, or closer to the source, it still conflicts.
    for env in (
        {"SFN_POLLERS": "4", "SFN_CONCURRENCY": "2"},
        {"SFN_RENDER_POLLERS": "4"},
        {"SFN_RENDER_POLLERS": "4", "SFN_RENDER_CONCURRENCY": "2"},
    ):
        refused = sfn_worker("settings", "tests.apps:media", **env)
        assert refused.returncode == 2, (env, refused.stdout)
        assert len(refused.stderr.strip().splitlines()) == 1
        assert "must not exceed" in refused.stderr


def test_the_single_forms_activity_and_queue_of_one_name_keep_their_own_variables() -> None:
    """The single form serving the activity `jobs` and the queue `jobs` (one key, JOBS):
    each source's own variables are read, the activity's were refused as the queue's
    ("queue 'jobs' has no setting 'ACTIVITY_ARN'")."""
    base = {
        "SFN_ACTIVITY_ARN": ARN + "jobs",
        "SFN_SQS_QUEUE_URL": URL + "jobs",
        "SFN_HANDLER": SEED,
    }
    result = sfn_worker(
        "settings",
        **base,
        SFN_JOBS_ACTIVITY_ARN=ARN + "jobs",
        SFN_JOBS_VISIBILITY_SECONDS="30",
    )
    assert result.returncode == 0, result.stderr
    assert "(environment (SFN_JOBS_ACTIVITY_ARN))" in result.stdout
    assert "visibility_seconds 30 (environment (SFN_JOBS_VISIBILITY_SECONDS))" in result.stdout
    misspelt = sfn_worker("settings", **base, SFN_JOBS_ACTIVITY_RN=ARN + "jobs")
    assert misspelt.returncode == 2
    assert "activity 'jobs' and queue 'jobs' have no setting" in misspelt.stderr
    assert "did you mean SFN_JOBS_ACTIVITY_ARN?" in misspelt.stderr


@pytest.mark.parametrize("field", ["SFN_SQS_TOKEN_FIELD", "SFN_JOBS_INPUT_FIELD"])
def test_a_value_with_a_line_break_is_one_quoted_line_in_settings(field: str) -> None:
    """A field name with a line break or an escape sequence (valid: any JSON key) is shown
    quoted by `sfn-worker settings`, one line per setting; it broke the table in two."""
    env = {"SFN_SQS_QUEUE_URL": URL + "jobs", "SFN_HANDLER": SEED}
    plain = sfn_worker("settings", **env)
    odd = sfn_worker("settings", **env, **{field: "Task\nToken\x1b[2J"})
    assert odd.returncode == 0, odd.stderr
    assert len(odd.stdout.splitlines()) == len(plain.stdout.splitlines())
    assert "'Task\\nToken\\x1b[2J'" in odd.stdout
    assert "\x1b" not in odd.stdout


def test_true_or_false_for_a_number_in_code_is_refused(tmp_path: Path) -> None:
    """`@app.activity("render", concurrency=True)` type-checks (a bool is an int) and ran
    with one slot; `heartbeat_seconds=False` turned heartbeats off. Refused at import, one
    line naming the keyword and the user's line (it named the worker's own), exit 2."""
    (tmp_path / "flags_app.py").write_text(
        "from sfn_worker import App\n"
        "app = App()\n"
        "@app.activity('render', concurrency=True)\n"
        "def render(task_input, ctx):\n"
        "    return task_input\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("SFN_")}
    result = subprocess.run(
        [sys.executable, "-m", "sfn_worker", "settings", "flags_app:app"],
        env={**env, "PYTHONPATH": str(REPO)},
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2, result.stdout
    assert len(result.stderr.strip().splitlines()) == 1
    assert "'concurrency'" in result.stderr
    assert "True" in result.stderr
    assert "flags_app.py, line 3)" in result.stderr  # the user's line, not the worker's


@pytest.mark.parametrize(
    ("env", "field"),
    [
        ({"SFN_SQS_TOKEN_FIELD": "TaskToken "}, "token_field        TaskToken ("),
        ({"SFN_JOBS_INPUT_FIELD": " Input"}, "input_field        Input ("),
    ],
)
def test_white_space_around_a_field_name_is_not_part_of_it(env: dict[str, str], field: str) -> None:
    """`SFN_SQS_TOKEN_FIELD=TaskToken ` (a trailing space, as `docker run --env-file` keeps
    it) made every message a poison one, left for the dead-letter queue: white space around
    a field name is dropped, as around every other value; a blank one is refused."""
    base = {"SFN_SQS_QUEUE_URL": URL + "jobs", "SFN_HANDLER": SEED}
    result = sfn_worker("settings", **base, **env)
    assert result.returncode == 0, result.stderr
    assert field in result.stdout
    blank = sfn_worker("settings", **base, SFN_SQS_TOKEN_FIELD="  ")
    assert blank.returncode == 2
    assert blank.stderr.startswith("sfn-worker: configuration error: SFN_SQS_TOKEN_FIELD=")
    assert len(blank.stderr.strip().splitlines()) == 1
