"""``sfn-worker``: run the worker, check its configuration, show its settings, or probe its
health endpoint. Each command is one ``add_<name>`` function in ``SUBCOMMANDS``; the help
texts are in cli_help.py."""

from __future__ import annotations

import argparse
import asyncio
import gc
import math
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Coroutine, Sequence
from typing import Any, NoReturn, TypeAlias, cast

import structlog

from . import __version__, cli_help
from .app import App, LoadError, import_object, importable_from_cwd, load_app
from .config import resolve
from .dev.command import add_dev_command
from .errors import truncate
from .exceptions import FatalWorkerError, LifespanFailed, WorkerCrashed
from .exit_codes import EXIT_CONFIG, EXIT_FAILURE, EXIT_OK
from .logs import configure_logging
from .once import add_once
from .runtime.check import check
from .runtime.ecs_protection import task_protection
from .runtime.effective import print_settings
from .runtime.http import healthcheck, serve_http
from .runtime.reaper import reaping_orphans
from .runtime.runtime import Runtime
from .runtime.signals import Signals
from .settings import FLAGS, Settings, SettingsError, load_settings
from .streams import flush_all, reopen_closed_standard_fds
from .worker import single_app

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


def build_app(settings: Settings, app_path: str | None) -> App:
    """An app (argument or SFN_APP), or the single-source form (SFN_ACTIVITY_ARN and/or
    SFN_SQS_QUEUE_URL with SFN_HANDLER)."""
    what = "app" if app_path else "SFN_APP"
    app_path = app_path or settings.app
    if app_path is None:
        return single_app(settings)
    # A handler where the app goes (`sfn-worker run my_jobs:handle`): say so, before the
    # single form's variables are called out as conflicting with an app it is not.
    target = import_object(app_path, what)
    if callable(target) and not isinstance(target, App | type):
        raise LoadError(
            f"{what}={app_path!r} is a function, not an sfn_worker.App: run a handler with "
            f"--handler {app_path} (or SFN_HANDLER) and no app"
        )
    for field, instead in (
        ("activity_arn", "set it per source with SFN_<KEY>_ACTIVITY_ARN instead"),
        ("sqs_queue_url", "set it per source with SFN_<KEY>_QUEUE_URL instead"),
        ("handler", "the app registers each source's handler; unset it"),
    ):
        if getattr(settings, field) is not None:
            raise SettingsError(
                f"{settings.name_of(field)} is set but the worker runs the app {app_path!r}; "
                f"{instead}"
            )
    return load_app(app_path, what)


def build_runtime(settings: Settings, app_path: str | None) -> Runtime:
    return Runtime(build_app(settings, app_path), settings)


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


# A command: its parsed arguments and the signals entry.py caught early -> exit code.
Command = Callable[[argparse.Namespace, Sequence[int]], int]
Subcommands: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"


class Parser(argparse.ArgumentParser):
    """Every command's parser: a flag is spelt out (``--conc 3`` is no ``--concurrency``),
    and a usage error is one line naming the argument, exit 2, as a configuration error."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_CONFIG, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _settings_flags() -> argparse.ArgumentParser:
    """The positional app and the flags that set settings: run, check and settings share
    them. No argparse ``choices``/``type``: the values go through the settings' own
    validation, so a flag's error reads as its variable's would, naming the flag."""
    flags = Parser(add_help=False)
    flags.add_argument("app", nargs="?", help="module:app of an sfn_worker.App (default: SFN_APP)")
    group = flags.add_argument_group("settings (a flag wins over its variable)")
    group.add_argument(
        "--handler", metavar="MODULE:FUNCTION", help="the handler of the single form (SFN_HANDLER)"
    )
    group.add_argument("--concurrency", metavar="N", help="tasks worked at once (SFN_CONCURRENCY)")
    group.add_argument(
        "--log-level", metavar="LEVEL", help="DEBUG, INFO, WARNING, ERROR or CRITICAL (LOG_LEVEL)"
    )
    group.add_argument("--log-format", metavar="FORMAT", help="json or console (SFN_LOG_FORMAT)")
    return flags


def _subparser(
    commands: Subcommands,
    name: str,
    help_texts: tuple[str, str, str],
    command: Command,
    parents: Sequence[argparse.ArgumentParser] = (),
    *,
    worker_signals: bool = False,
) -> argparse.ArgumentParser:
    """A command's parser. ``worker_signals``: the command hands the signals entry.py
    caught to a runtime; the others stop on a signal as any program does. ``help_texts``:
    the line in ``sfn-worker --help``, the description and the epilog of its own help."""
    summary, description, epilog = help_texts
    parser = commands.add_parser(
        name,
        help=summary,
        description=description,
        epilog=epilog,
        parents=list(parents),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.set_defaults(command=command, worker_signals=worker_signals)
    return parser


def add_run(commands: Subcommands) -> None:
    _subparser(
        commands,
        "run",
        (cli_help.RUN_SUMMARY, cli_help.RUN, cli_help.RUN_EPILOG),
        _run,
        [_settings_flags()],
        worker_signals=True,
    )


def add_check(commands: Subcommands) -> None:
    _subparser(
        commands,
        "check",
        (cli_help.CHECK_SUMMARY, cli_help.CHECK, cli_help.CHECK_EPILOG),
        _check,
        [_settings_flags()],
    )


def add_settings(commands: Subcommands) -> None:
    _subparser(
        commands,
        "settings",
        (cli_help.SETTINGS_SUMMARY, cli_help.SETTINGS, cli_help.SETTINGS_EPILOG),
        _settings,
        [_settings_flags()],
    )


def add_healthcheck(commands: Subcommands) -> None:
    health = _subparser(
        commands,
        "healthcheck",
        (cli_help.HEALTHCHECK_SUMMARY, cli_help.HEALTHCHECK, cli_help.HEALTHCHECK_EPILOG),
        lambda args, _: healthcheck(args.timeout),
    )
    health.add_argument(
        "--timeout", type=_seconds, default=3.0, metavar="SECONDS", help="wait this long (3)"
    )


# The socket timeout takes neither 0 (non-blocking) nor inf, nan or a negative number.
MAX_HEALTHCHECK_SECONDS = 3_600.0


def _seconds(value: str) -> float:
    try:
        seconds = float(value)
    except ValueError:
        seconds = math.nan
    if not 0 < seconds <= MAX_HEALTHCHECK_SECONDS:
        raise argparse.ArgumentTypeError(
            f"expected seconds above 0, at most {MAX_HEALTHCHECK_SECONDS:g}, not {value!r}"
        )
    return seconds


# One function per command; adding a command is one line here.
SUBCOMMANDS: list[Callable[[Subcommands], None]] = [
    add_run,
    add_check,
    add_settings,
    add_healthcheck,
    add_dev_command,
    add_once,
]


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="sfn-worker",
        description=cli_help.MAIN,
        epilog=cli_help.MAIN_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    # Its parsers are Parser instances; the commands (dev/ too) add them as ArgumentParser.
    commands = cast(
        Subcommands, parser.add_subparsers(title="commands", dest="name", required=True)
    )
    for add in SUBCOMMANDS:
        add(commands)
    # What a missing command is called ("required: name" said nothing): the choices.
    commands.metavar = "{" + ",".join(commands.choices) + "}"
    return parser


def _main(argv: list[str] | None, early_signals: Sequence[int]) -> int:
    args = build_parser().parse_args(argv)
    if not getattr(args, "worker_signals", False):
        _default_signal_handling(early_signals)
    command: Command = args.command
    try:
        return command(args, early_signals)
    except (SettingsError, LoadError) as exc:
        return _fail_config(str(exc))
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # `sfn-worker settings | head`: the reader left; nothing more to say, and nothing
        # to say it on (Python's own advice: stdout onto /dev/null for the exit's flush).
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_FAILURE


def _load(args: argparse.Namespace) -> tuple[Settings, App]:
    """Settings (environment, then flags over it) and the app to run; configuration errors
    raise. The current directory goes on the import path first (user code lives there)."""
    importable_from_cwd()
    settings = load_settings({field: getattr(args, field, None) for field in FLAGS})
    configure_logging(settings.log_level, settings.log_format, settings.worker_name)
    return settings, build_app(settings, args.app)


def _run(args: argparse.Namespace, early_signals: Sequence[int]) -> int:
    settings, app = _load(args)
    code = run_async(serve(Runtime(app, settings), early_signals))
    # The interpreter's last garbage collection walks what a shutdown with thousands of
    # tasks leaves behind (0.2 s for 10,000 on Python 3.13), past the grace: the process
    # is leaving, so exempt it all.
    gc.freeze()
    return _exit_now_if_threads_linger(code)


def _check(args: argparse.Namespace, early_signals: Sequence[int]) -> int:
    settings, app = _load(args)
    return run_async(check(settings, Runtime(app, settings).configs))


def _settings(args: argparse.Namespace, early_signals: Sequence[int]) -> int:
    settings, app = _load(args)
    given = (args.app, "argument") if args.app else None
    if given is None and settings.app is not None:
        given = (settings.app, settings.origin("app"))
    return print_settings(settings, given, resolve(app, settings, os.environ))
