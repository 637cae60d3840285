"""`sfn-worker dev` attacked from outside: user code that prints at exit, and a session that
stops while `dev start` waits. Each case failed before its fix."""

from __future__ import annotations

import asyncio
import io
import json
import os
import threading
from collections.abc import AsyncIterator, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from sfn_worker.dev.discover import DiscoveryError, Source, Target, discover, discover_unless
from sfn_worker.dev.resources import Created
from sfn_worker.dev.session import (
    Session,
    SessionError,
    SourceRecord,
    claim,
    default_path,
    find,
    read,
    write,
)
from sfn_worker.dev.start import StartError, read_input, start
from sfn_worker.dev.supervisor import Supervisor

AT_EXIT = """\
import atexit
import threading

print("loading jobs")  # a debug print at import
atexit.register(lambda: print("goodbye from jobs"))  # output after discovery's answer


def handler(task_input, ctx):
    return task_input
"""


def test_a_module_that_prints_at_exit_is_still_discovered(tmp_path: Path) -> None:
    # Before: discovery read its answer from stdout's last line, the module's goodbye, and
    # `sfn-worker dev` (or a running session, on the next save) crashed on JSONDecodeError.
    (tmp_path / "jobs.py").write_text(AT_EXIT)
    target = discover("jobs:handler", tmp_path, dict(os.environ))
    assert target.form == "handler"
    assert [source.name for source in target.sources] == ["dev-jobs-handler"]


class _OneAnswer(BaseHTTPRequestHandler):
    """Answers StartExecution; the server then goes away, as a stopped session's does."""

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers["Content-Length"]))
        body = json.dumps(
            {"executionArn": "arn:aws:states:us-east-1:000000000000:execution:m:e", "startDate": 0}
        ).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/x-amz-json-1.0")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def session_that_stops(tmp_path: Path) -> Iterator[Path]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _OneAnswer)
    port = server.server_address[1]
    machine = "arn:aws:states:us-east-1:000000000000:stateMachine:m"
    session = Session(pid=os.getpid(), endpoint_url=f"http://127.0.0.1:{port}", port=port)
    session.sources = [SourceRecord("activity", "a", "", "arn:a", machine)]
    write(default_path(tmp_path), session)

    def answer_once() -> None:
        server.handle_request()
        server.server_close()  # the session's LocalStack is gone: connections refused

    serving = threading.Thread(target=answer_once)
    serving.start()
    yield tmp_path
    serving.join()


def test_dev_start_says_the_session_is_gone_without_a_traceback(
    session_that_stops: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Before: EndpointConnectionError escaped with a 150-line traceback.
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")  # refused at once, not after retries
    code = start("{}", None, session_that_stops, {})
    captured = capsys.readouterr()
    assert code == 1
    assert "lost the dev session" in captured.err
    assert "Traceback" not in captured.err


def test_the_dev_export_lines_are_not_refused_by_the_worker() -> None:
    # Before: `sfn-worker run` in a shell holding the export lines (as docs/dev.md suggests),
    # and a second `sfn-worker dev` started from it, exited 2: "SFN_DEV_MACHINE_ARN: not a
    # setting".
    from sfn_worker.config import check_variables, source_keys

    exported = {
        "SFN_DEV_SESSION": "/p/.sfn-worker-dev/session.json",
        "SFN_DEV_MACHINE_ARN": "arn:aws:states:us-east-1:000000000000:stateMachine:m",
        "SFN_DEV_RENDER_MACHINE_ARN": "arn:aws:states:us-east-1:000000000000:stateMachine:r",
    }
    check_variables(exported, source_keys(["render"], []))


def test_a_misspelt_setting_beside_the_dev_exports_is_still_refused() -> None:
    from sfn_worker.config import check_variables, source_keys
    from sfn_worker.settings import SettingsError

    with pytest.raises(SettingsError, match="SFN_DEV_SESION"):
        check_variables({"SFN_DEV_SESION": "x"}, source_keys(["render"], []))


class _FakeResources:
    """What LocalStack would create, without LocalStack: the worker exits before any call."""

    def ensure(self, sources: tuple[Source, ...]) -> list[Created]:
        arn = "arn:aws:states:us-east-1:000000000000"
        return [Created(s, f"{arn}:activity:{s.name}", f"{arn}:stateMachine:m") for s in sources]


async def test_without_reload_a_worker_that_exits_ends_the_session(tmp_path: Path) -> None:
    # Before: "waiting for a change to start it again", forever: with --no-reload no change
    # ever comes, LocalStack stays up and every execution hangs.
    (tmp_path / "jobs.py").write_text("def handler(task_input, ctx):\n    return task_input\n")
    target = Target(
        path="jobs:handler",
        form="handler",
        sources=(Source("activity", "dev-jobs-handler", ""),),
        watch_dir=tmp_path,
    )
    environ = {**os.environ, "SFN_CONCURENCY": "4"}  # misspelt: the worker exits 2 at start
    session = Session(pid=os.getpid(), endpoint_url="http://127.0.0.1:9", port=9)
    said: list[str] = []
    supervisor = Supervisor(
        target,
        tmp_path,
        environ,
        _FakeResources(),  # type: ignore[arg-type]
        session,
        default_path(tmp_path),
        said.append,
        reload=False,
    )
    stop, force = asyncio.Event(), asyncio.Event()
    async with asyncio.timeout(50):  # the worker's start and refusal, on a busy machine
        await supervisor.run(stop, force)
    assert supervisor.gave_up
    assert any("without --reload nothing restarts it" in line for line in said)


def test_a_second_session_is_refused_while_the_first_still_starts(tmp_path: Path) -> None:
    # Before: the first session wrote its file only once LocalStack was up (10-60 s); a
    # second `sfn-worker dev` started meanwhile ran too, and the first to stop removed the
    # other's session file (`dev start`: "no dev session" while one ran).
    path = default_path(tmp_path)
    with claim(path), pytest.raises(SessionError, match="still starting"):
        claim(path)
    claim(path).close()  # the first one's end frees the directory


def test_a_killed_sessions_pid_reused_by_another_process_is_not_a_session(
    tmp_path: Path,
) -> None:
    # Before: after a reboot or a container restart, the pid in a killed session's file
    # often belongs to another process: `sfn-worker dev` was refused for good and `dev start`
    # talked to a LocalStack that was gone.
    path = default_path(tmp_path)
    claim(path).close()  # a session ran here, then was killed: its lock is free
    write(path, Session(pid=os.getppid(), endpoint_url="http://127.0.0.1:9", port=9))
    with pytest.raises(SessionError, match="has ended"):
        find(tmp_path, {})
    claim(path).close()  # replaced, not refused


def test_a_session_file_of_another_shape_is_replaced_not_a_traceback(tmp_path: Path) -> None:
    path = default_path(tmp_path)
    path.parent.mkdir()
    path.write_text('{"pid": 1, "written_by": "a later version"}')
    with pytest.raises(SessionError, match="cannot read the dev session"):
        find(tmp_path, {})
    claim(path).close()


async def test_a_stop_during_a_slow_reimport_ends_it_at_once(tmp_path: Path) -> None:
    # Before: a save that made the import slow (a model loaded at import), then SIGTERM, and
    # even a second one: the session went on until the import ended (up to 120 s).
    ready = tmp_path / "ready"
    os.mkfifo(ready)
    (tmp_path / "slow.py").write_text(
        "import os, time\n"
        f"with open({str(ready)!r}, 'w') as ready:\n"
        "    ready.write(str(os.getpid()))\n"
        "time.sleep(600)\n"
        "def handler(task_input, ctx):\n"
        "    return task_input\n"
    )
    stop = asyncio.Event()
    loading = asyncio.ensure_future(
        discover_unless(stop, "slow:handler", tmp_path, dict(os.environ))
    )
    pid = int(await asyncio.to_thread(ready.read_text))  # the import has begun
    stop.set()
    async with asyncio.timeout(30):  # the import alone would take 600 s
        assert await loading is None
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)  # the importing process is gone, not left behind


def test_a_misspelt_setting_is_refused_before_localstack_starts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # Before: LocalStack started (10-60 s), then each worker exited 2 and the session said
    # "waiting for a change to start it again": no save fixes an environment variable.
    from sfn_worker.dev import command

    (tmp_path / "jobs.py").write_text("def handler(task_input, ctx):\n    return task_input\n")
    monkeypatch.setenv("SFN_CONCURENCY", "4")

    def no_localstack() -> None:
        raise AssertionError("LocalStack started for a session the worker refuses")

    monkeypatch.setattr(command, "ensure_installed", no_localstack)
    assert command.run("jobs:handler", False, tmp_path) == 2
    err = capsys.readouterr().err
    assert "SFN_CONCURENCY: not a setting (did you mean SFN_CONCURRENCY?)" in err
    assert len(err.strip().splitlines()) == 1


def test_a_correct_setting_is_not_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "jobs.py").write_text("def handler(task_input, ctx):\n    return task_input\n")
    monkeypatch.setenv("SFN_CONCURRENCY", "4")
    monkeypatch.setenv("SFN_ACTIVITY_ARN", "arn:aws:states:eu-west-1:123456789012:activity:x")
    assert discover("jobs:handler", tmp_path, dict(os.environ)).refused is None


def test_dev_start_says_at_once_that_no_worker_runs_and_why(
    session_that_stops: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Before: the execution waited silently for its timeout (300 s) while the session's
    # worker waited for a change (a syntax error, a worker that exited on its settings).
    path = default_path(session_that_stops)
    session = read(path)
    session.worker, session.reason = "waiting", "SyntaxError in my_jobs.py line 3"
    write(path, session)
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")
    start("{}", None, session_that_stops, {})
    err = capsys.readouterr().err
    assert (
        "the dev worker is not running (waiting for a change: SyntaxError in my_jobs.py "
        "line 3); the execution waits for it" in err
    )


def _supervisor(
    project: Path, environ: dict[str, str], said: list[str], event: asyncio.Event, text: str
) -> Supervisor:
    def say(line: str) -> None:
        said.append(line)
        if text in line:
            event.set()

    target = Target(
        path="jobs:handler",
        form="handler",
        sources=(Source("activity", "dev-jobs-handler", ""),),
        watch_dir=project,
    )
    session = Session(pid=os.getpid(), endpoint_url="http://127.0.0.1:9", port=9)
    return Supervisor(
        target,
        project,
        environ,
        _FakeResources(),  # type: ignore[arg-type]
        session,
        default_path(project),
        say,
        reload=True,
    )


async def test_a_worker_that_exited_is_recorded_for_dev_start(tmp_path: Path) -> None:
    (tmp_path / "jobs.py").write_text("def handler(task_input, ctx):\n    return task_input\n")
    environ = {**os.environ, "SFN_CONCURENCY": "4"}  # misspelt: the worker exits 2 at start
    said: list[str] = []
    waiting = asyncio.Event()
    supervisor = _supervisor(tmp_path, environ, said, waiting, "waiting for a change")
    stop, force = asyncio.Event(), asyncio.Event()
    async with asyncio.timeout(50), asyncio.TaskGroup() as group:
        group.create_task(supervisor.run(stop, force))
        await waiting.wait()
        recorded = read(default_path(tmp_path))
        stop.set()
    assert (recorded.worker, recorded.reason) == ("waiting", "the worker exited with code 2")


async def test_a_syntax_error_saved_shows_the_users_lines_only_and_is_recorded(
    tmp_path: Path,
) -> None:
    # Before: ~25 lines of discover.py and importlib frames before the user's line.
    (tmp_path / "jobs.py").write_text("def handler(task_input, ctx):\n    return (\n")
    said: list[str] = []
    waiting = asyncio.Event()
    supervisor = _supervisor(tmp_path, dict(os.environ), said, waiting, "waiting for a change")
    write(default_path(tmp_path), supervisor.session)
    stop = asyncio.Event()
    async with asyncio.timeout(50), asyncio.TaskGroup() as group:
        group.create_task(supervisor._rediscover(stop))
        await waiting.wait()
        recorded = read(default_path(tmp_path))
        stop.set()
    assert (recorded.worker, recorded.reason) == ("waiting", "SyntaxError in jobs.py line 2")
    shown = said[-1]
    assert f'\n  File "{tmp_path / "jobs.py"}", line 2\n' in shown  # indented, as Python does
    assert "^" in shown
    assert "SyntaxError: '(' was never closed" in shown
    assert "importlib" not in shown
    assert "discover.py" not in shown
    assert "Traceback" not in shown


def test_an_error_raised_at_import_shows_the_users_frames_only(tmp_path: Path) -> None:
    (tmp_path / "helper.py").write_text("raise RuntimeError('no config')\n")
    (tmp_path / "jobs.py").write_text("import helper\n")
    with pytest.raises(DiscoveryError) as raised:
        discover("jobs:handler", tmp_path, dict(os.environ))
    shown = str(raised.value)
    assert 'jobs.py", line 1' in shown
    assert 'helper.py", line 1' in shown
    assert "RuntimeError: no config" in shown
    assert "importlib" not in shown
    assert "discover.py" not in shown
    assert raised.value.reason == "RuntimeError in helper.py line 1"


async def test_the_whole_project_folder_is_watched(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Before: only the target module's folder (media/): a save of shared/util.py, which
    # media/worker.py imports, restarted nothing.
    import watchfiles

    watched: list[tuple[Path, object]] = []

    async def one_change(
        path: Path, *, watch_filter: object, stop_event: asyncio.Event
    ) -> AsyncIterator[set[tuple[watchfiles.Change, str]]]:
        watched.append((path, watch_filter))
        yield {(watchfiles.Change.modified, f"{tmp_path}{os.sep}shared{os.sep}util.py")}

    monkeypatch.setattr(watchfiles, "awatch", one_change)
    said: list[str] = []
    supervisor = _supervisor(tmp_path, dict(os.environ), said, asyncio.Event(), "")
    supervisor.target = Target("media.worker:app", "app", (), tmp_path / "media")
    await supervisor.watch(asyncio.Event())
    assert supervisor.changed.is_set()
    assert said == [f"changed: shared{os.sep}util.py"]
    [(path, python_only)] = watched
    assert path == tmp_path
    assert isinstance(python_only, watchfiles.PythonFilter)
    assert not python_only(watchfiles.Change.modified, str(tmp_path / ".venv" / "x.py"))


def test_the_session_of_this_folder_beats_another_sessions_variable(tmp_path: Path) -> None:
    # Before: SFN_DEV_SESSION, left in the shell by another session's export lines, silently
    # won over the session running in the current folder.
    here, there = tmp_path / "here", tmp_path / "there"
    for project in (here, there):
        write(default_path(project), Session(pid=os.getpid(), endpoint_url="http://x", port=1))
    environ = {"SFN_DEV_SESSION": str(default_path(there))}
    path, _, note = find(here, environ)
    assert path == default_path(here)
    assert note is not None
    assert str(default_path(there)) in note
    assert find(tmp_path, environ)[0] == default_path(there)  # no session here: the variable
    assert find(here, {"SFN_DEV_SESSION": str(default_path(here))})[2] is None


def test_dev_start_reads_its_input_from_a_file_or_stdin(tmp_path: Path) -> None:
    (tmp_path / "input.json").write_text('{"name": "Ada"}')
    assert read_input(f"@{tmp_path / 'input.json'}", io.StringIO()) == {"name": "Ada"}
    assert read_input("-", io.StringIO('{"in": 1}\n')) == {"in": 1}
    assert read_input(None, io.StringIO()) == {}
    with pytest.raises(StartError, match="cannot read the input file"):
        read_input(f"@{tmp_path / 'missing.json'}", io.StringIO())
    with pytest.raises(StartError, match="the input on stdin is not JSON"):
        read_input("-", io.StringIO("nope"))
