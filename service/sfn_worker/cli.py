"""``sfn-worker``: run the worker, check its configuration, or probe its health endpoint."""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Coroutine
from typing import Any

import structlog

from . import __version__
from .client import open_clients
from .ecs_protection import task_protection
from .errors import API_ERRORS, FatalWorkerError, WorkerCrashed, describe
from .handlers import Handler, HandlerLoadError, load_handler
from .http import healthcheck, serve_http
from .logs import configure_logging
from .settings import HEARTBEAT_RATE_WARNING_PER_SECOND, Settings, SettingsError, load_settings
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
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def _fail_config(message: str) -> int:
    print(f"sfn-worker: configuration error: {message}", file=sys.stderr)
    return EXIT_CONFIG


def _configure() -> tuple[Settings, Handler]:
    settings = load_settings()
    configure_logging(settings.log_level, settings.log_format, settings.worker_name)
    return settings, load_handler(settings.handler)


async def serve(settings: Settings, handler: Handler) -> int:
    """Run the worker until SIGTERM/SIGINT; the signal handlers only set events."""
    loop = asyncio.get_running_loop()
    stop, force_stop = asyncio.Event(), asyncio.Event()

    def on_signal(signum: int) -> None:
        name = signal.Signals(signum).name
        if stop.is_set():
            log.warning("second signal: exiting now", signal=name)
            force_stop.set()
        else:
            log.info("signal received: shutting down", signal=name)
            stop.set()

    # Installed explicitly: as PID 1 in a container the kernel gives us no default handlers.
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, on_signal, signum)
    worker = Worker(settings, handler)
    if settings.heartbeat_rate_per_second > HEARTBEAT_RATE_WARNING_PER_SECOND:
        log.warning(
            "heartbeat rate may exceed the account's SendTaskHeartbeat quota",
            heartbeats_per_second=round(settings.heartbeat_rate_per_second),
            hint="raise SFN_HEARTBEAT_SECONDS or lower SFN_CONCURRENCY",
        )
    try:
        async with (
            serve_http(settings, worker),
            task_protection(settings, worker.in_flight, worker.tasks_changed),
        ):
            await worker.run(stop, force_stop)
    except (FatalWorkerError, WorkerCrashed) as exc:
        log.error("worker stopped", error=str(exc))
        return EXIT_FAILURE
    finally:
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(signum)
    log.info("worker stopped")
    return EXIT_OK


async def check(settings: Settings) -> int:
    """Validate settings and credentials, and make sure the activity exists."""
    async with open_clients(settings) as clients:
        try:
            activity = await clients.calls.describe_activity(activityArn=settings.activity_arn)
        except API_ERRORS as exc:
            print(f"sfn-worker check: FAILED: {describe(exc)}", file=sys.stderr)
            return EXIT_FAILURE
    print(f"sfn-worker check: OK: activity {activity['name']!r} exists ({settings.activity_arn})")
    print(
        f"  handler {settings.handler} ({settings.handler_mode.value} mode), "
        f"pollers={settings.pollers}, concurrency={settings.concurrency}, "
        f"heartbeat every {settings.heartbeat_seconds:g}s, "
        f"grace {settings.shutdown_grace_seconds:g}s"
    )
    if settings.heartbeat_rate_per_second > HEARTBEAT_RATE_WARNING_PER_SECOND:
        print(
            f"  WARNING: up to {settings.heartbeat_rate_per_second:.0f} heartbeats/s when full; "
            "that is the order of the account's SendTaskHeartbeat quota "
            "(raise SFN_HEARTBEAT_SECONDS or lower SFN_CONCURRENCY)",
        )
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="sfn-worker", description="AWS Step Functions activity worker"
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("run", help="work tasks until SIGTERM/SIGINT (settings from SFN_* env)")
    commands.add_parser("check", help="validate settings and credentials, DescribeActivity")
    health = commands.add_parser("healthcheck", help="exit 0 if the worker's /healthz answers OK")
    health.add_argument("--timeout", type=float, default=3.0)
    args = parser.parse_args(argv)

    if args.command == "healthcheck":
        return healthcheck(args.timeout)
    try:
        settings, handler = _configure()
        if args.command == "check":
            return run_async(check(settings))
        return _exit_now_if_threads_linger(run_async(serve(settings, handler)))
    except (SettingsError, HandlerLoadError) as exc:
        return _fail_config(str(exc))
    except KeyboardInterrupt:
        return 130
