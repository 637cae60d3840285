"""``sfn-worker dev``: its command line, and a session from start to the last process
stopped.

A session: the target is loaded once in a fresh process (what does it serve?), LocalStack is
started, each source gets its activity or queue and a state machine, the export lines are
printed, and the worker runs as a child, restarted on each change. SIGINT or SIGTERM stops
the worker (gracefully), then LocalStack; a second one stops both at once.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib.util
import os
import re
import signal
import sys
from pathlib import Path
from typing import Any

from ..exit_codes import EXIT_CONFIG, EXIT_FAILURE, EXIT_OK
from .discover import DiscoveryError, Target, discover
from .localstack import EmulatorError, LocalStack, ensure_installed
from .resources import REGION, Resources
from .session import Session, SessionError, claim, default_path, remove, write
from .start import StartError, start
from .supervisor import Supervisor, first

# module:attribute, as the worker's import_object reads it (dotted on both sides).
TARGET = re.compile(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*:[A-Za-z_]\w*(\.[A-Za-z_]\w*)*")
# LocalStack's GetActivityTask long poll in a dev session (AWS: 60 s), shorter than the
# worker's grace there: a restarted worker leaves no poll that would take the next task.
ACTIVITY_POLL_SECONDS = 2.0
INSTALL_HINT = (
    "--reload needs watchfiles: pip install 'sfn-activity-worker[dev]' "
    "(or pip install watchfiles), or run with --no-reload"
)


def say(message: str) -> None:
    print(f"sfn-worker dev: {message}", flush=True)


def add_dev_command(commands: Any) -> None:
    """Registers ``dev`` on sfn-worker's subcommands (``commands``: argparse's)."""
    dev = commands.add_parser(
        "dev",
        help="run your handler or app on a local LocalStack, restarted when its code changes",
        description=(
            "sfn-worker dev module:handler | module:app  -- LocalStack, the activities, queues "
            "and state machines the target names, and the worker, restarted on each change.  "
            "sfn-worker dev start INPUT [--activity NAME]  -- from another shell: run one "
            "execution and print how it ended."
        ),
        epilog=(
            "example:\n"
            "  sfn-worker dev my_jobs:render_video        # in the folder holding my_jobs.py\n"
            '  sfn-worker dev start \'{"in": "SUCCESS"}\'  # from another shell\n'
            "  sfn-worker dev start @input.json           # or - to read it from stdin\n\n"
            "needs: pip install 'sfn-activity-worker[dev]' (watchfiles, for --reload);\n"
            "LocalStack is installed once into ~/.cache/sfn-worker (SFNW_CACHE).\n"
            "The worker it runs reads SFN_* settings as `run` does.\n"
            "read: docs/dev.md"
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    dev.add_argument("target", metavar="module:handler | module:app | start")
    dev.add_argument(
        "input",
        nargs="?",
        help="with start: the execution's input: JSON, @FILE (a JSON file) or - (stdin)",
    )
    dev.add_argument(
        "--activity", metavar="NAME", help="with start: the activity or queue, by name"
    )
    dev.add_argument(
        "--reload",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="restart the worker when a .py file under this directory changes (default)",
    )
    dev.set_defaults(command=lambda args, _early_signals: main(args), worker_signals=False)


def main(args: argparse.Namespace) -> int:
    project = Path.cwd()
    if args.target == "start":
        try:
            return start(args.input, args.activity, project, dict(os.environ))
        except StartError as exc:
            print(f"sfn-worker dev start: {exc}", file=sys.stderr)
            return EXIT_CONFIG
    if args.input is not None or args.activity is not None:
        print(
            "sfn-worker dev: INPUT and --activity go with `sfn-worker dev start`", file=sys.stderr
        )
        return EXIT_CONFIG
    if not TARGET.fullmatch(args.target):
        print(
            f"sfn-worker dev: {args.target!r}: expected module:handler or module:app "
            "(a module importable from this directory, a colon, a name in it)",
            file=sys.stderr,
        )
        return EXIT_CONFIG
    return run(args.target, args.reload, project)


def run(path: str, reload: bool, project: Path) -> int:
    if reload and importlib.util.find_spec("watchfiles") is None:
        print(f"sfn-worker dev: {INSTALL_HINT}", file=sys.stderr)
        return EXIT_CONFIG
    environ = dict(os.environ)
    session_path = default_path(project)
    try:
        lock = claim(session_path)
    except SessionError as exc:
        print(f"sfn-worker dev: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    with lock:  # released last, after the session file is gone
        try:
            target = discover(path, project, environ)
            if not target.watch_dir.is_relative_to(project.resolve()):
                # Its code would never reload (only this folder is watched), and a module
                # from the standard library or site-packages is not one's own code.
                print(
                    f"sfn-worker dev: {path!r}: its module is in {target.watch_dir}, outside "
                    f"this folder ({project}), which is the project the session runs and "
                    "watches: run it from the folder that holds your code",
                    file=sys.stderr,
                )
                return EXIT_CONFIG
            if target.refused:  # the worker would exit 2 at each start: say it once, now
                print(f"sfn-worker dev: the worker refuses: {target.refused}", file=sys.stderr)
                return EXIT_CONFIG
            ensure_installed()
        except DiscoveryError as exc:
            print(f"sfn-worker dev: {exc}", file=sys.stderr)
            return EXIT_CONFIG
        except EmulatorError as exc:
            print(f"sfn-worker dev: {exc}", file=sys.stderr)
            return EXIT_FAILURE
        except KeyboardInterrupt:
            return 130
        try:
            return asyncio.run(_session(target, reload, project, environ, session_path))
        finally:
            remove(session_path)


async def _session(
    target: Target, reload: bool, project: Path, environ: dict[str, str], session_path: Path
) -> int:
    stop, force = asyncio.Event(), asyncio.Event()

    def on_signal() -> None:
        if stop.is_set():
            force.set()
            return
        stop.set()
        say("stopping (again to stop at once)")

    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        loop.add_signal_handler(signum, on_signal)
    emulator = LocalStack(activity_poll_seconds=ACTIVITY_POLL_SECONDS)
    say("starting LocalStack (Step Functions, STS, SQS)")
    starting = asyncio.ensure_future(asyncio.to_thread(emulator.start))
    try:
        await first(asyncio.shield(starting), stop.wait())
        if stop.is_set():
            return EXIT_OK  # the start is abandoned and undone on the way out
        try:
            starting.result()
        except EmulatorError as exc:
            say(str(exc))
            return EXIT_FAILURE
        say(f"LocalStack at {emulator.endpoint_url} (port {emulator.port}, pid {emulator.pid})")
        if http_port := environ.get("SFN_HTTP_PORT"):
            say(f"worker /healthz and /metrics on port {http_port}")
        session = Session(
            pid=os.getpid(),
            endpoint_url=emulator.endpoint_url,
            port=emulator.port,
            region=REGION,
            target=target.path,
        )
        write(session_path, session)
        resources = await asyncio.to_thread(Resources, emulator.endpoint_url)
        supervisor = Supervisor(
            target, project, environ, resources, session, session_path, say, reload=reload
        )
        emulator_gone = asyncio.Event()
        async with asyncio.TaskGroup() as group:
            if reload:
                group.create_task(supervisor.watch(stop))
            group.create_task(_watch_emulator(emulator, stop, emulator_gone))
            await supervisor.run(stop, force)
            stop.set()  # ends the watchers
        return EXIT_FAILURE if emulator_gone.is_set() or supervisor.gave_up else EXIT_OK
    finally:
        remove(session_path)
        await _stop_emulator(emulator, starting, force)
        say("stopped the worker and LocalStack; nothing of this session runs any more")


async def _watch_emulator(emulator: LocalStack, stop: asyncio.Event, gone: asyncio.Event) -> None:
    """LocalStack ending on its own ends the session (its log's tail says why)."""
    try:
        pidfd = os.pidfd_open(emulator.pid)  # readable when it exits: no polling
    except (AttributeError, OSError):
        return  # not Linux: not watched
    loop = asyncio.get_running_loop()
    loop.add_reader(pidfd, gone.set)
    try:
        await first(gone.wait(), stop.wait())
    finally:
        loop.remove_reader(pidfd)
        os.close(pidfd)
    if gone.is_set() and not stop.is_set():
        say(f"LocalStack exited on its own; stopping. Its last lines:\n{emulator.log_tail()}")
        stop.set()


async def _stop_emulator(
    emulator: LocalStack, starting: asyncio.Future[Any], force: asyncio.Event
) -> None:
    emulator.abort()  # a start still in its thread stops what it started, then ends
    await first(asyncio.shield(starting), force.wait())
    if not starting.done():
        emulator.kill()  # a second signal while it stops: no more waiting
    with contextlib.suppress(EmulatorError):
        await starting
    stopping = asyncio.ensure_future(asyncio.to_thread(emulator.stop))
    if force.is_set():
        emulator.kill()
    await first(asyncio.shield(stopping), force.wait())
    if not stopping.done():
        emulator.kill()  # a second signal during the stop: no more waiting
    await stopping
