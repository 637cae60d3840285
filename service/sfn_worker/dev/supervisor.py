"""Runs the worker as a child process against the session's LocalStack, and restarts it when
the code changes: a graceful stop (SIGTERM: the worker answers what still runs with
Worker.Shutdown, which the dev state machines retry), then a start on the new code."""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import re
import signal
import sys
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any

from .discover import DiscoveryError, Target, child_environment, discover_unless
from .kinds import SINGLE_VARIABLE, dev_kind
from .resources import REGION, Created, Resources
from .session import Session, export_lines, write

# Set in the worker unless the user's environment says otherwise. The grace outlasts the
# dev LocalStack's short activity poll, so a stopping worker leaves no poll behind. An SQS
# receive (20 s) can outlast it and hide a message for a worker that is gone: for the
# visibility timeout, so a short one.
WORKER_DEFAULTS = {
    "SFN_LOG_FORMAT": "console",
    "SFN_SHUTDOWN_GRACE_SECONDS": "10",
    "SFN_SQS_VISIBILITY_SECONDS": "10",
}
# After the grace (and after a second signal), the worker still gets this long to leave.
EXIT_MARGIN_SECONDS = 5.0
# Where the worker's tasks come from is the session's, never the shell's (a real AWS account).
ADDRESS = re.compile(r"SFN_(ACTIVITY_ARN|SQS_QUEUE_URL|HANDLER|APP|.+_ACTIVITY_ARN|.+_QUEUE_URL)")

Say = Callable[[str], None]


def aws_environment(endpoint_url: str) -> dict[str, str]:
    return {
        "AWS_ENDPOINT_URL_SFN": endpoint_url,
        "AWS_ENDPOINT_URL_STS": endpoint_url,
        "AWS_ENDPOINT_URL_SQS": endpoint_url,
        "AWS_ACCESS_KEY_ID": "test",
        "AWS_SECRET_ACCESS_KEY": "test",
        "AWS_REGION": REGION,
        "AWS_DEFAULT_REGION": REGION,
        "AWS_EC2_METADATA_DISABLED": "true",
    }


def worker_environment(
    target: Target, created: list[Created], endpoint_url: str, environ: Mapping[str, str]
) -> dict[str, str]:
    env = {
        name: value
        for name, value in environ.items()
        if not name.startswith("AWS_") and not ADDRESS.fullmatch(name)
    }
    env.update(aws_environment(endpoint_url))
    for name, value in WORKER_DEFAULTS.items():
        env.setdefault(name, value)
    if target.form == "handler":
        env["SFN_HANDLER"] = target.path
        env[SINGLE_VARIABLE] = created[0].address
    else:
        env["SFN_APP"] = target.path
        for item in created:
            env[f"SFN_{item.source.key}_{dev_kind(item.source.kind).suffix}"] = item.address
    return env


def _die_with_parent() -> None:
    # Linux: if the dev command is killed outright, its worker still gets a graceful stop.
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


async def first(*awaitables: Awaitable[Any]) -> set[asyncio.Task[Any]]:
    """Waits for the first to finish; the others are cancelled and awaited."""
    tasks = [asyncio.ensure_future(each) for each in awaitables]
    try:
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    return done


def _signal_group(pid: int, signum: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signum)


class Supervisor:
    def __init__(
        self,
        target: Target,
        project: Path,
        environ: Mapping[str, str],
        resources: Resources,
        session: Session,
        session_path: Path,
        say: Say,
        *,
        reload: bool = True,
    ) -> None:
        self.target = target
        self.reload = reload
        self.gave_up = False  # the worker exited and nothing would restart it
        self.project = project
        self.environ = dict(environ)
        self.resources = resources
        self.session = session
        self.session_path = session_path
        self.say = say
        self.changed = asyncio.Event()
        self.generation = 0
        self.announced: set[str] = set()  # state machines whose source was printed

    def _grace(self) -> float:
        default = WORKER_DEFAULTS["SFN_SHUTDOWN_GRACE_SECONDS"]
        value = self.environ.get("SFN_SHUTDOWN_GRACE_SECONDS") or default
        try:
            return float(value)
        except ValueError:
            return 25.0  # the worker refuses it at start anyway

    async def watch(self, stop: asyncio.Event) -> None:
        """Sets ``changed`` when a .py file under the project folder changes, as uvicorn and
        the watchfiles CLI watch the folder they run in: the target's module imports others
        beside it (shared/util.py). PythonFilter skips .venv, .git, __pycache__ and the like."""
        from watchfiles import PythonFilter, awatch

        async for changes in awatch(self.project, watch_filter=PythonFilter(), stop_event=stop):
            prefix = f"{self.project}{os.sep}"
            names = sorted({path.removeprefix(prefix) for _, path in changes})
            self.say(f"changed: {', '.join(names[:5])}{' ...' if len(names) > 5 else ''}")
            self.changed.set()

    async def run(self, stop: asyncio.Event, force: asyncio.Event) -> None:
        """Worker generations until ``stop``; each one ends on a change or on ``stop``."""
        while not stop.is_set():
            self.changed.clear()
            created = await asyncio.to_thread(self.resources.ensure, self.target.sources)
            self.session.record(created)
            write(self.session_path, self.session)
            self.generation += 1
            if self.generation == 1:
                self._print_exports()
            for item in created:
                if item.machine_arn not in self.announced:
                    self.announced.add(item.machine_arn)
                    self.say(f"{item.source.kind} {item.source.name}: {item.address}")
                    self.say(f"  state machine {item.machine_arn}")
            if self.generation == 1:
                pick = f" --activity {created[0].source.name}" if len(created) > 1 else ""
                self.say(f"run an execution from another shell: sfn-worker dev start '{{}}'{pick}")
            worker = await self._start(created)
            self._state("running")
            try:
                await first(worker.wait(), self.changed.wait(), stop.wait())
                if worker.returncode is not None and not self.reload:
                    # No watcher: no change will ever come; waiting would leave LocalStack
                    # running and every execution hanging.
                    self.say(
                        f"worker exited with code {worker.returncode}; without --reload "
                        "nothing restarts it: stopping the session"
                    )
                    self.gave_up = True
                    return
                if worker.returncode is not None:
                    self._state("waiting", f"the worker exited with code {worker.returncode}")
                    self.say(
                        f"worker exited with code {worker.returncode}; "
                        "waiting for a change to start it again"
                    )
                    await first(self.changed.wait(), stop.wait())
            finally:
                if worker.returncode is None:
                    if not stop.is_set():
                        self._state("restarting", "a change was saved")
                    await self._stop(worker, force)
            await self._rediscover(stop)

    async def _rediscover(self, stop: asyncio.Event) -> None:
        """The target again, as the code now says (a reload may add sources); a target
        that does not load waits for the next change."""
        while not stop.is_set():
            self.changed.clear()  # before loading: a save meanwhile is another attempt
            try:
                target = await discover_unless(stop, self.target.path, self.project, self.environ)
                if target is not None:  # None: stopped during a slow import
                    self.target = target
                    self._state("restarting", "a change was saved")
                return
            except DiscoveryError as exc:
                self._state("waiting", exc.reason)
                self.say(f"{exc}\nsfn-worker dev: waiting for a change")
                await first(self.changed.wait(), stop.wait())

    def _state(self, worker: str, reason: str = "") -> None:
        """The worker's state in the session file, for `dev start` in another shell."""
        self.session.worker, self.session.reason = worker, reason
        write(self.session_path, self.session)

    def _print_exports(self) -> None:
        print("\n# In another shell, to reach this session:", flush=True)
        for line in export_lines(self.session, self.session_path):
            print(line, flush=True)
        print(flush=True)

    async def _start(self, created: list[Created]) -> asyncio.subprocess.Process:
        env = worker_environment(self.target, created, self.session.endpoint_url, self.environ)
        env.setdefault("SFN_WORKER_NAME", f"dev-{self.generation}")
        command = [sys.executable, "-m", "sfn_worker", "run"]
        if self.target.form == "app":
            command.append(self.target.path)
        worker = await asyncio.create_subprocess_exec(
            *command,
            cwd=self.project,
            env=child_environment(self.project, env),
            stdin=asyncio.subprocess.DEVNULL,
            # Its own group: a Ctrl-C in the terminal reaches the dev command, which stops
            # the worker once (a second signal would skip its drain).
            start_new_session=True,
            preexec_fn=_die_with_parent,
        )
        self.say(f"worker started: pid {worker.pid}, generation {self.generation}")
        return worker

    async def _stop(self, worker: asyncio.subprocess.Process, force: asyncio.Event) -> None:
        """SIGTERM: the worker drains within its grace; ``force`` (a second Ctrl-C) sends
        its second signal (answer what runs, exit at once); past every bound, SIGKILL."""
        self.say(f"stopping the worker (pid {worker.pid}, generation {self.generation})")
        worker.send_signal(signal.SIGTERM)
        bound = self._grace() + EXIT_MARGIN_SECONDS
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(bound):
                await first(worker.wait(), force.wait())
                if worker.returncode is None:
                    worker.send_signal(signal.SIGTERM)
                    async with asyncio.timeout(EXIT_MARGIN_SECONDS):
                        await worker.wait()
        if worker.returncode is None:
            self.say(f"the worker did not stop in time: killed (pid {worker.pid})")
            _signal_group(worker.pid, signal.SIGKILL)
            await worker.wait()
        # Anything it left in its group (handler processes) goes with it.
        _signal_group(worker.pid, signal.SIGKILL)
        self.say(f"worker stopped: exit code {worker.returncode}")
