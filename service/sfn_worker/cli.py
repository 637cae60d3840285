"""``sfn-worker``: run the worker, check its configuration, or probe its health endpoint."""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Coroutine, Sequence
from typing import Any

import structlog

from . import __version__
from .app import LoadError, load_app
from .dev.command import add_dev_command
from .errors import FatalWorkerError, LifespanFailed, WorkerCrashed, truncate
from .logs import configure_logging
from .runtime.check import check
from .runtime.ecs_protection import task_protection
from .runtime.http import healthcheck, serve_http
from .runtime.reaper import reaping_orphans
from .runtime.runtime import Runtime
from .runtime.signals import Signals
from .settings import Settings, SettingsError, env_name, load_settings
from .streams import flush_all, reopen_closed_standard_fds
from .worker import Worker

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_CONFIG = 2

log = structlog.get_logger("sfn_worker.cli")


def _loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop


# Idle pool threads leave within milliseconds of the pool's shutdown, and cancelled tasks
# within a loop iteration or two; handlers that ignore both are not waited for longer.
LINGER_SECONDS = 0.5


def run_async(main: Coroutine[Any, Any, int]) -> int:
    with asyncio.Runner(loop_factory=_loop_factory()) as runner:
        code = runner.run(main)
        # Closing the runner cancels what is left and waits for it: for ever, if an async
        # handler swallows CancelledError. Its token is answered already; do not wait.
        if runner.run(_tasks_that_ignore_cancellation()):
            _exit_now(code, "exiting with handlers that ignore cancellation still running")
    return code


async def _tasks_that_ignore_cancellation() -> int:
    leftovers = asyncio.all_tasks() - {asyncio.current_task()}
    for task in leftovers:
        task.cancel()
    if not leftovers:
        return 0
    _, pending = await asyncio.wait(leftovers, timeout=LINGER_SECONDS)
    return len(pending)


def _exit_now(code: int, event: str, **fields: Any) -> None:
    log.warning(event, **fields)
    flush_all()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


# A configuration error's one line names the variable; a value pasted by mistake (a
# document, a token) is cut and does not make it a long line.
MAX_CONFIG_MESSAGE = 1_000


def _fail_config(message: str) -> int:
    flush_all()  # lines logged before it go first
    print(
        f"sfn-worker: configuration error: {truncate(message, MAX_CONFIG_MESSAGE)}",
        file=sys.stderr,
    )
    return EXIT_CONFIG


def build_runtime(settings: Settings, app_path: str | None) -> Runtime:
    """An app (argument or SFN_APP), or the single-activity form (SFN_ACTIVITY_ARN)."""
    what = "app" if app_path else "SFN_APP"
    app_path = app_path or settings.app
    if app_path is None:
        return Worker(settings)
    for field, per_source in (("activity_arn", "ACTIVITY_ARN"), ("sqs_queue_url", "QUEUE_URL")):
        if getattr(settings, field) is not None:
            variable = env_name(field)
            raise SettingsError(
                f"{variable} is set but the worker runs the app {app_path!r}; "
                f"set it per source with SFN_<KEY>_{per_source} instead"
            )
    return Runtime(load_app(app_path, what), settings)


async def serve(runtime: Runtime, early_signals: Sequence[int] = ()) -> int:
    """Run the worker until a signal stops it (runtime/signals.py: the handlers only ask
    the runtime to stop)."""
    settings = runtime.settings
    try:
        with Signals(runtime).installed(early_signals):
            async with (
                reaping_orphans(runtime.accessories),
                serve_http(settings, runtime),
                task_protection(
                    settings, runtime.in_flight, runtime.tasks_changed, runtime.accessories
                ),
            ):
                await runtime.run()
    except (FatalWorkerError, WorkerCrashed, LifespanFailed) as exc:
        log.error("worker stopped", error=str(exc))
        return EXIT_FAILURE
    log.info("worker stopped")
    return EXIT_OK


def _threads_exit_waits_for() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t is not threading.main_thread() and not t.daemon]


def _exit_now_if_threads_linger(code: int) -> int:
    # Sync handlers in threads cannot be interrupted; the interpreter would wait for them
    # at exit, past the grace period. Their tokens are already answered: leave now.
    deadline = time.monotonic() + LINGER_SECONDS
    for thread in _threads_exit_waits_for():
        thread.join(max(0.0, deadline - time.monotonic()))
    if lingering := _threads_exit_waits_for():
        _exit_now(code, "exiting with handler threads still running", threads=len(lingering))
    return code


def _default_signal_handling(early_signals: Sequence[int]) -> None:
    """Commands other than ``run`` stop on a signal as any program does: the handlers
    entry.py installed are undone, and a signal that came meanwhile acts now."""
    defaults: tuple[int, ...] = (signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT, signal.SIGUSR1)
    for signum in defaults:
        signal.signal(signum, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    for signum in early_signals:
        signal.raise_signal(signum)


def main(argv: list[str] | None = None, early_signals: Sequence[int] = ()) -> int:
    reopen_closed_standard_fds()  # entry.py did so already; python -c callers too (streams.py)
    try:
        return _main(argv, early_signals)
    finally:
        flush_all()  # the last lines, within a bound: a stream nobody reads never holds the exit


def _main(argv: list[str] | None, early_signals: Sequence[int]) -> int:
    parser = argparse.ArgumentParser(
        prog="sfn-worker", description="AWS Step Functions activity worker"
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    app_help = "module:app of an sfn_worker.App (default: SFN_APP, else SFN_ACTIVITY_ARN)"
    run = commands.add_parser("run", help="work tasks until SIGTERM/SIGINT (settings: SFN_*)")
    run.add_argument("app", nargs="?", help=app_help)
    check_command = commands.add_parser(
        "check", help="validate settings and credentials; DescribeActivity for each activity"
    )
    check_command.add_argument("app", nargs="?", help=app_help)
    health = commands.add_parser("healthcheck", help="exit 0 if the worker's /healthz answers OK")
    health.add_argument("--timeout", type=float, default=3.0)
    add_dev_command(commands)
    args = parser.parse_args(argv)

    if args.command != "run":
        _default_signal_handling(early_signals)
    if (command_main := getattr(args, "command_main", None)) is not None:
        return int(command_main(args))
    if args.command == "healthcheck":
        return healthcheck(args.timeout)
    try:
        settings = load_settings()
        configure_logging(settings.log_level, settings.log_format, settings.worker_name)
        runtime = build_runtime(settings, args.app)
        if args.command == "check":
            return run_async(check(settings, runtime.configs))
        code = run_async(serve(runtime, early_signals))
        # The interpreter's last garbage collection walks what a shutdown with thousands of
        # tasks leaves behind (0.2 s for 10,000 on Python 3.13), past the grace: the process
        # is leaving, so exempt it all.
        gc.freeze()
        return _exit_now_if_threads_linger(code)
    except (SettingsError, LoadError) as exc:
        return _fail_config(str(exc))
    except KeyboardInterrupt:
        return 130
