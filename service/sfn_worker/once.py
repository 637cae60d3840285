"""``sfn-worker once``: work the one task a container was started for, then exit.

For ``arn:aws:states:::ecs:runTask.waitForTaskToken`` states: the state passes the task
token (SFN_TASK_TOKEN) and the input (SFN_TASK_INPUT, JSON; absent: {}) to the container
as environment overrides. The task is worked by the same runtime as ``run`` (lifespan,
heartbeats, output checks, KMS fallback, tracing, EMF, logs, signals), with one source:
tasks/sources/once/worker.py. Exit 0 once the token is answered (success or failure), 1
when it could not be, 2 for a configuration error.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import os
from collections.abc import Mapping, Sequence
from typing import Any

from .app import App, is_async_handler, is_non_blocking_handler, load_handler
from .config import SourceConfig, resolve
from .exit_codes import EXIT_FAILURE, EXIT_OK
from .runtime.runtime import Runtime
from .settings import HandlerMode, Settings, SettingsError
from .tasks.ended import Answered
from .tasks.sources.once.worker import OnceConfig, OnceWorker

TOKEN_VARIABLE = "SFN_TASK_TOKEN"
INPUT_VARIABLE = "SFN_TASK_INPUT"
SOURCE_NAME = "once"

SUMMARY = "work one task given by SFN_TASK_TOKEN/SFN_TASK_INPUT, then exit (ECS runTask)"
DESCRIPTION = """\
Works the one task of an ECS task started by an arn:aws:states:::ecs:runTask.waitForTaskToken
state: the token from SFN_TASK_TOKEN, the input from SFN_TASK_INPUT (JSON; absent: {}).
The handler: SFN_HANDLER, or an app (SFN_APP or the argument) and --source NAME, whose
handler, middleware, lifespan and per-source settings are used. Heartbeats, output checks,
tracing, EMF and logs work as for `run`; SIGTERM answers Worker.Shutdown within the grace."""
EPILOG = """\
example (the state's containerOverrides set the two variables):
  SFN_TASK_TOKEN=... SFN_TASK_INPUT='{"n": 1}' SFN_HANDLER=my_jobs:render sfn-worker once

exit codes: 0 the token was answered (success or failure), 1 it could not be,
2 configuration error.
read: docs/once.md"""


def add_once(commands: Any) -> None:
    from .cli import _settings_flags, _subparser

    parser = _subparser(
        commands,
        "once",
        (SUMMARY, DESCRIPTION, EPILOG),
        _once,
        [_settings_flags()],
        worker_signals=True,
    )
    parser.add_argument(
        "--source", metavar="NAME", help="the app's activity or queue whose handler to run"
    )


def _once(args: argparse.Namespace, early_signals: Sequence[int]) -> int:
    from .app import importable_from_cwd
    from .cli import _exit_now_if_threads_linger, run_async
    from .logs import configure_logging
    from .settings import FLAGS, load_settings

    importable_from_cwd()
    environ = dict(os.environ)
    token = environ.pop(TOKEN_VARIABLE, "")
    input_text = environ.pop(INPUT_VARIABLE, None)
    settings = load_settings({field: getattr(args, field, None) for field in FLAGS})
    configure_logging(settings.log_level, settings.log_format, settings.worker_name)
    if not token.strip():
        raise SettingsError(
            f"{TOKEN_VARIABLE} is not set: the state passes the task token to the container "
            'with containerOverrides Environment [{"Name": "SFN_TASK_TOKEN", '
            '"Value.$": "$$.Task.Token"}]'
        )
    app, base = _source(settings, args.app, args.source, environ)
    config = OnceConfig(
        **{f.name: getattr(base, f.name) for f in dataclasses.fields(SourceConfig)}
        | {"name": base.name, "concurrency": 1, "pollers": 1, "queue_size": 1},
        token=token,
        input_text=input_text if input_text not in (None, "") else None,
    )
    runtime = Runtime(app, settings, environ=environ, configs=[config])
    code = run_async(serve_once(runtime, early_signals))
    return _exit_now_if_threads_linger(code)


def _source(
    settings: Settings, app_path: str | None, name: str | None, environ: Mapping[str, str]
) -> tuple[App, SourceConfig]:
    """The app whose lifespan and middleware run, and the source whose settings apply."""
    from .cli import build_app

    if name is None:
        if settings.handler is None:
            raise SettingsError(
                "sfn-worker once needs SFN_HANDLER (module:function), or an app "
                "(SFN_APP or the argument) and --source NAME"
            )
        if app_path or settings.app:
            raise SettingsError("--source NAME says which of the app's handlers to run")
        handler = load_handler(settings.handler, settings.name_of("handler"))
        mode = settings.handler_mode
        if is_async_handler(handler) or is_non_blocking_handler(handler):
            mode = HandlerMode.ASYNC
        return App(), SourceConfig(
            name=SOURCE_NAME,
            key=SOURCE_NAME.upper(),
            handler=handler,
            concurrency=1,
            pollers=1,
            queue_size=1,
            heartbeat_seconds=settings.heartbeat_seconds,
            heartbeat_mode=settings.heartbeat_mode,
            handler_mode=mode,
            max_tasks_per_child=settings.max_tasks_per_child,
            processes=settings.processes,
            sources={},
        )
    app = build_app(settings, app_path)
    configs = resolve(app, settings, environ)
    for config in configs:
        if config.name == name:
            return app, config
    have = ", ".join(repr(c.name) for c in configs) or "none"
    raise SettingsError(f"--source {name!r}: the app has no source of that name (have: {have})")


async def serve_once(runtime: Runtime, early_signals: Sequence[int] = ()) -> int:
    """Serve until the one task ended, then stop; 0 when its token was answered."""
    from .cli import serve

    watcher = asyncio.create_task(_stop_when_done(runtime))
    try:
        code = await serve(runtime, early_signals)
    finally:
        watcher.cancel()
    worker = _once_worker(runtime)
    if worker is not None and isinstance(worker.once.ended, Answered):
        return EXIT_OK  # the token is answered, whatever else went wrong
    return EXIT_FAILURE if code == EXIT_OK else code


async def _stop_when_done(runtime: Runtime) -> None:
    await runtime.started.wait()
    worker = _once_worker(runtime)
    assert worker is not None
    await worker.once.finished.wait()
    runtime.request_stop()


def _once_worker(runtime: Runtime) -> OnceWorker | None:
    for source in runtime.sources():
        if isinstance(source, OnceWorker):
            return source
    return None
