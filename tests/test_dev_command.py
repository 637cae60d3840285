"""``sfn-worker dev`` without LocalStack: what it refuses before starting anything, and the
settings it hands the worker and another shell."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from sfn_worker.dev.discover import Source, Target
from sfn_worker.dev.kinds import DEV_KINDS
from sfn_worker.dev.resources import HEARTBEAT_SECONDS, Created, task_state
from sfn_worker.dev.session import Session, export_lines
from sfn_worker.dev.supervisor import worker_environment
from sfn_worker.tasks.kinds import WORKERS
from sfn_worker.tasks.sources.once.worker import OnceConfig


def sfn_worker(
    project: Path, *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "sfn_worker", *args],
        cwd=project,
        env=env or environment(project),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def environment(project: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "SFN_"))}
    # An empty cache: a command that went as far as LocalStack would say it installs it.
    env["SFNW_CACHE"] = str(project / "cache")
    return env


def test_a_target_that_does_not_load_is_named_with_exit_2_before_localstack(
    tmp_path: Path,
) -> None:
    (tmp_path / "broken.py").write_text("import not_installed_anywhere\n")
    done = sfn_worker(tmp_path, "dev", "broken:handler")
    assert done.returncode == 2
    assert "cannot load 'broken:handler'" in done.stderr
    assert "not_installed_anywhere" in done.stderr
    assert "LocalStack" not in done.stdout + done.stderr
    assert not (tmp_path / "cache").exists()


def test_a_target_that_is_neither_handler_nor_app_is_refused(tmp_path: Path) -> None:
    (tmp_path / "jobs.py").write_text("handler = 42\n")
    done = sfn_worker(tmp_path, "dev", "jobs:handler")
    assert done.returncode == 2
    assert "not a handler nor an App" in done.stderr


def test_dev_start_without_a_session_says_how_to_start_one(tmp_path: Path) -> None:
    done = sfn_worker(tmp_path, "dev", "start", '{"in": 1}')
    assert done.returncode == 2
    assert "no dev session" in done.stderr
    assert "sfn-worker dev module:handler" in done.stderr


def test_dev_start_refuses_input_that_is_not_json(tmp_path: Path) -> None:
    done = sfn_worker(tmp_path, "dev", "start", "{not json")
    assert done.returncode == 2
    assert "the input is not JSON" in done.stderr


def test_a_second_session_in_the_same_directory_is_refused(tmp_path: Path) -> None:
    (tmp_path / "jobs.py").write_text("def handler(task_input, ctx):\n    return 1\n")
    state = tmp_path / ".sfn-worker-dev" / "session.json"
    state.parent.mkdir()
    live = {"pid": os.getpid(), "endpoint_url": "http://127.0.0.1:4566", "port": 4566}
    state.write_text(json.dumps(live))
    done = sfn_worker(tmp_path, "dev", "jobs:handler")
    assert done.returncode == 1
    assert f"another `sfn-worker dev` (pid {os.getpid()}" in done.stderr
    assert json.loads(state.read_text())["pid"] == os.getpid()  # not taken over


def test_reload_without_watchfiles_says_how_to_install_it(tmp_path: Path) -> None:
    script = (
        "import sys; sys.modules['watchfiles'] = None\n"
        "from sfn_worker.cli import main\n"
        "sys.exit(main(['dev', 'jobs:handler']))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script],
        cwd=tmp_path,
        env=environment(tmp_path),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2
    assert "pip install 'sfn-activity-worker[dev]'" in done.stderr
    assert "--no-reload" in done.stderr


APP = Target(
    path="media.worker:app",
    form="app",
    sources=(Source("activity", "render", "RENDER"), Source("queue", "jobs", "JOBS")),
    watch_dir=Path("/src"),
)
CREATED = [
    Created(APP.sources[0], "arn:aws:states:us-east-1:000000000000:activity:render", "arn:m1"),
    Created(APP.sources[1], "http://127.0.0.1:4566/000000000000/jobs", "arn:m2"),
]


def test_the_worker_never_gets_the_shells_aws_settings_or_task_sources() -> None:
    shell = {
        "AWS_PROFILE": "production",
        "AWS_ENDPOINT_URL_SFN": "https://states.eu-west-1.amazonaws.com",
        "SFN_ACTIVITY_ARN": "arn:aws:states:eu-west-1:123456789012:activity:real",
        "SFN_RENDER_ACTIVITY_ARN": "arn:aws:states:eu-west-1:123456789012:activity:render",
        "SFN_OTHER_QUEUE_URL": "https://sqs.eu-west-1.amazonaws.com/123456789012/real",
        "SFN_CONCURRENCY": "3",
        "SFN_LOG_FORMAT": "json",
    }
    env = worker_environment(APP, CREATED, "http://127.0.0.1:4566", shell)
    assert "AWS_PROFILE" not in env
    assert "SFN_ACTIVITY_ARN" not in env
    assert "SFN_OTHER_QUEUE_URL" not in env
    assert env["AWS_ENDPOINT_URL_SFN"] == "http://127.0.0.1:4566"
    assert env["SFN_APP"] == "media.worker:app"
    assert env["SFN_RENDER_ACTIVITY_ARN"] == CREATED[0].address
    assert env["SFN_JOBS_QUEUE_URL"] == CREATED[1].address
    assert env["SFN_CONCURRENCY"] == "3"  # the user's own settings are kept
    assert env["SFN_LOG_FORMAT"] == "json"
    assert env["SFN_SHUTDOWN_GRACE_SECONDS"] == "10"
    assert env["SFN_SQS_VISIBILITY_SECONDS"] == "10"


def test_export_lines_reach_every_source_of_an_app() -> None:
    session = Session(pid=1, endpoint_url="http://127.0.0.1:4566", port=4566, target=APP.path)
    session.record(CREATED)
    lines = export_lines(session, Path("/p/.sfn-worker-dev/session.json"))
    assert "export AWS_ENDPOINT_URL_SFN=http://127.0.0.1:4566" in lines
    assert "export SFN_DEV_SESSION=/p/.sfn-worker-dev/session.json" in lines
    assert "export SFN_APP=media.worker:app" in lines
    assert f"export SFN_RENDER_ACTIVITY_ARN={CREATED[0].address}" in lines
    assert f"export SFN_JOBS_QUEUE_URL={CREATED[1].address}" in lines
    assert "export SFN_DEV_JOBS_MACHINE_ARN=arn:m2" in lines


def test_a_syntax_error_is_shown_as_python_shows_it_for_a_script(tmp_path: Path) -> None:
    (tmp_path / "jobs.py").write_text("def handler(task_input, ctx):\n    return (\n")
    done = sfn_worker(tmp_path, "dev", "jobs:handler")
    assert done.returncode == 2
    assert 'jobs.py", line 2' in done.stderr
    assert "^" in done.stderr
    assert "importlib" not in done.stderr
    assert "discover.py" not in done.stderr
    assert len(done.stderr.strip().splitlines()) <= 5


def test_a_target_that_is_not_module_colon_name_is_one_line(tmp_path: Path) -> None:
    for target in (":handler", "jobs", "jobs:", "jobs:handler:x", "-x:y"):
        done = sfn_worker(tmp_path, "dev", "--", target)
        assert done.returncode == 2, target
        assert "expected module:handler or module:app" in done.stderr, target
        assert len(done.stderr.strip().splitlines()) == 1, done.stderr


def test_a_module_outside_the_project_folder_is_refused(tmp_path: Path) -> None:
    # Before: `sfn-worker dev os:getcwd` ran, watching the standard library's folder.
    done = sfn_worker(tmp_path, "dev", "os:getcwd")
    assert done.returncode == 2
    assert "outside this folder" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "cache").exists()


def test_dev_start_takes_its_input_from_stdin(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "sfn_worker", "dev", "start", "-"],
        cwd=tmp_path,
        env=environment(tmp_path),
        input="not json",
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2
    assert "the input on stdin is not JSON" in done.stderr


def test_each_kind_gets_its_own_task_state_and_every_app_kind_has_a_dev_entry() -> None:
    activity = task_state(APP.sources[0], CREATED[0].address)
    assert activity["Resource"] == CREATED[0].address
    assert "Parameters" not in activity
    queue = task_state(APP.sources[1], CREATED[1].address)
    assert queue["Resource"] == "arn:aws:states:::sqs:sendMessage.waitForTaskToken"
    assert queue["Parameters"]["QueueUrl"] == CREATED[1].address
    for state in (activity, queue):  # what every dev state shares
        assert (state["Type"], state["End"]) == ("Task", True)
        assert state["HeartbeatSeconds"] == HEARTBEAT_SECONDS
    # A kind an app registers (every config class but once's) is one entry of dev/kinds.py.
    assert set(DEV_KINDS) == set(WORKERS) - {OnceConfig}
