"""An in-process fake of the Step Functions activity API, speaking real AWS JSON 1.0 over HTTP.

Point a real (aio)boto3 client at ``fake.endpoint_url`` (or set AWS_ENDPOINT_URL_SFN) and it
works like the service for activity workers: long-poll GetActivityTask, heartbeats, terminal
calls with AWS's answers (TaskTimedOut on a closed token), for one or several activities.
It records every token issued and every call, checks the API limits, and lets a test script
faults per call. It also answers STS GetCallerIdentity (account 123456789012), which the
worker uses to turn activity names into ARNs.

Tests wait on it with ``await fake.wait_for(predicate)``: no sleeps.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from .fake_sqs import SQS_STATUS, FakeSqs, sqs_error
from .quotas import ApiQuotas

ACCOUNT = "123456789012"
REGION = "us-east-1"
# The "activity" of callback tasks in the fake's counters: they come from a state, over SQS.
CALLBACK = "callback"
DEFAULT_ACTIVITY_ARN = f"arn:aws:states:{REGION}:{ACCOUNT}:activity:fake-activity"


def activity_arn(name_or_arn: str) -> str:
    """The fake's ARN for an activity name (an ARN is kept as it is)."""
    if name_or_arn.startswith("arn:"):
        return name_or_arn
    return f"arn:aws:states:{REGION}:{ACCOUNT}:activity:{name_or_arn}"


MAX_OUTPUT = 262_144
MAX_ERROR = 256
MAX_CAUSE = 32_768
MAX_WORKER_NAME = 80
MAX_POLLS_PER_ACTIVITY = 1000  # the service's limit on open GetActivityTask per ARN
TERMINAL_CALLS = frozenset({"SendTaskSuccess", "SendTaskFailure"})
TASK_GONE_ANSWERS = frozenset({"TaskTimedOut", "TaskDoesNotExist", "InvalidToken"})


@dataclass(frozen=True)
class Fault:
    """What the fake does instead of (or around) answering one call."""

    kind: str  # error | http_status | reset_before | reset_after | delay
    code: str = ""
    status: int = 400
    seconds: float = 0.0
    # delay: set when the delayed call arrives (a test can act while it is held).
    arrived: asyncio.Event = field(default_factory=asyncio.Event, compare=False, repr=False)

    @classmethod
    def throttle(cls) -> Fault:
        return cls("error", code="ThrottlingException", status=400)

    @classmethod
    def error(cls, code: str, status: int = 400) -> Fault:
        return cls("error", code=code, status=status)

    @classmethod
    def server_error(cls, status: int = 500) -> Fault:
        code = "ServiceUnavailable" if status == 503 else "InternalFailure"
        return cls("error", code=code, status=status)

    @classmethod
    def reset_before(cls) -> Fault:
        """Drop the connection without acting on the call."""
        return cls("reset_before")

    @classmethod
    def reset_after(cls) -> Fault:
        """Act on the call (record it), then drop the connection before answering."""
        return cls("reset_after")

    @classmethod
    def delay(cls, seconds: float) -> Fault:
        return cls("delay", seconds=seconds)


@dataclass(frozen=True)
class Call:
    operation: str
    token: str | None
    params: dict[str, Any] = field(repr=False)
    answer: str  # "ok", an error code, or "reset"


@dataclass(eq=False)
class FakeTask:
    token: str = field(repr=False)
    input: str = field(repr=False)
    number: int = 0
    activity_arn: str = DEFAULT_ACTIVITY_ARN
    issued: bool = False
    worker_name: str | None = None
    heartbeats: int = 0
    # "open" until the first accepted terminal call, expire() or a heartbeat timeout.
    state: str = "open"  # open | succeeded | failed | timed_out
    output: str | None = None
    error: str | None = None
    cause: str | None = None
    terminal_calls: int = 0  # accepted terminal calls: must end at most 1
    # The worker was told the task is closed (its answer was accepted, or TaskTimedOut...).
    told_closed: bool = False
    calls_after_told_closed: int = 0  # must stay 0: a double answer or a call after "gone"
    # Loop time of the hand-out or the last accepted heartbeat (heartbeat_timeout_seconds).
    last_beat: float = 0.0
    closed_at: float = 0.0  # wall-clock time (time.time()) it closed, for latency measurements


@dataclass
class ActivityStats:
    """What one activity's workers did, measured at the service."""

    open_polls: int = 0
    max_open_polls: int = 0
    polls_refused: int = 0  # answered ActivityWorkerLimitExceeded: too many open polls
    issued_open: int = 0  # tokens handed out and not yet closed
    max_slots_in_use: int = 0  # open polls + issued tokens not yet closed


class FakeStepFunctions:
    def __init__(
        self,
        *,
        activity_arn: str = DEFAULT_ACTIVITY_ARN,
        activities: tuple[str, ...] = (),
        poll_seconds: float = 60.0,
        latency_seconds: float = 0.0,
        token_chars: int = 900,
    ) -> None:
        self.activity_arn = activity_arn  # the default activity of add_task and feed
        self.stats: dict[str, ActivityStats] = {}
        self._pending: dict[str, asyncio.Queue[FakeTask]] = {}
        for arn in (activity_arn, *activities):
            self.add_activity(arn)
        self.poll_seconds = poll_seconds
        self.latency_seconds = latency_seconds
        self.token_chars = token_chars
        self.tasks: dict[str, FakeTask] = {}
        self.calls: list[Call] = []
        self.record_calls = True
        self.counts: dict[str, int] = {}
        self.rejections: list[Call] = []  # requests that broke an API limit
        self.open_polls = 0
        self.max_open_polls = 0
        self.max_slots_in_use = 0  # open polls + issued tokens not yet closed
        self._issued_open = 0
        self.issued_count = 0
        self.closed_count = 0  # issued tasks closed by a terminal call or expire()
        self._faults: dict[str, deque[Fault]] = {}
        self._changed = asyncio.Condition()
        self._release_polls = asyncio.Event()
        self._runner: web.AppRunner | None = None
        self.endpoint_url = ""
        self._numbers = 0
        self.sqs = FakeSqs(self)
        self._feed_remaining = 0
        self._feed_input = "null"
        # Drop closed tasks (keep only the counters): for long runs that measure memory.
        self.forget_closed = False
        # Heartbeat arrival times per task number (loop clock), for interval statistics.
        self.heartbeat_times: dict[int, list[float]] | None = None
        # The service's token buckets (testing/quotas.py); None: no throttling.
        self.quotas: ApiQuotas | None = None
        # The state's HeartbeatSeconds: an issued task without a heartbeat for this long
        # times out (checked when it is next called on, and by expire_overdue()).
        self.heartbeat_timeout_seconds: float | None = None
        self.heartbeat_timeouts = 0
        # Open polls one activity ARN allows, from every worker: past it a poll is refused
        # at once with ActivityWorkerLimitExceeded, as the service does; None: no limit.
        self.max_polls_per_activity: int | None = MAX_POLLS_PER_ACTIVITY

    # -- lifecycle -------------------------------------------------------------------------
    async def start(self, host: str = "127.0.0.1", port: int = 0) -> str:
        app = web.Application(client_max_size=4 * 1024 * 1024)
        app.router.add_post("/", self._handle)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, host, port)
        await site.start()
        bound_port = self._runner.addresses[0][1]
        self.endpoint_url = f"http://{host}:{bound_port}"
        return self.endpoint_url

    async def close(self) -> None:
        self.release_polls()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> FakeStepFunctions:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # -- scripting -------------------------------------------------------------------------
    def add_activity(self, name_or_arn: str) -> str:
        """Serve one more activity (a name gets this fake's region and account); its ARN."""
        arn = activity_arn(name_or_arn)
        if arn not in self._pending:
            self._pending[arn] = asyncio.Queue()
            self.stats[arn] = ActivityStats()
        return arn

    def add_task(
        self, task_input: Any = None, *, raw_input: str | None = None, activity: str | None = None
    ) -> FakeTask:
        """Schedule a task for ``activity`` (name or ARN; default: the first activity);
        ``raw_input`` sends the string as is (e.g. invalid JSON)."""
        arn = activity_arn(activity) if activity is not None else self.activity_arn
        if arn not in self._pending:
            raise KeyError(f"the fake serves no activity {arn!r}: add_activity() it first")
        self._numbers += 1
        text = raw_input if raw_input is not None else json.dumps(task_input)
        token = (
            f"{self._numbers:08d}-" + secrets.token_urlsafe(self.token_chars)[: self.token_chars]
        )
        task = FakeTask(token=token, input=text, number=self._numbers, activity_arn=arn)
        self.tasks[token] = task
        self._pending[arn].put_nowait(task)
        return task

    def clear_pending(self) -> None:
        """Forget tasks scheduled and not handed out yet."""
        for arn in self._pending:
            self._pending[arn] = asyncio.Queue()

    def feed(self, count: int, task_input: Any) -> None:
        """Hand out ``count`` more tasks of the first activity with this input, created only
        when polled."""
        self._feed_input = json.dumps(task_input)
        # Polls already waiting take theirs now; later ones create them as they arrive.
        waiting = min(count, self.stats[self.activity_arn].open_polls)
        for _ in range(waiting):
            self.add_task(raw_input=self._feed_input)
        self._feed_remaining += count - waiting

    def inject(self, operation: str, *faults: Fault) -> None:
        """Apply these faults, in order, to the next calls of ``operation``."""
        self._faults.setdefault(operation, deque()).extend(faults)

    def expire(self, task: FakeTask) -> None:
        """The task times out at the service (HeartbeatSeconds/TimeoutSeconds passed)."""
        if task.issued and task.state == "open":
            self._close(task, "timed_out")

    def release_polls(self) -> None:
        """Answer every open long poll, and every later one, with no task at once (as if
        its 60 s ran out). ``resume_polls`` makes polls wait for tasks again."""
        self._release_polls.set()

    def resume_polls(self) -> None:
        self._release_polls = asyncio.Event()

    async def wait_for(self, predicate: Callable[[], bool], timeout: float = 10.0) -> None:
        try:
            async with asyncio.timeout(timeout), self._changed:
                await self._changed.wait_for(predicate)
        except TimeoutError:
            # A bare TimeoutError told a failing test nothing about where its tasks were.
            raise TimeoutError(
                f"wait_for: the condition was still false after {timeout:g} s; "
                f"tasks at the fake: {self.task_summary()}"
            ) from None

    def task_summary(self) -> str:
        """Tasks by state (open ones by whether a worker has them), for a failure message."""
        counts = Counter(
            "open, handed out" if t.state == "open" and t.issued else t.state
            for t in self.tasks.values()
        )
        return ", ".join(f"{n} {state}" for state, n in sorted(counts.items())) or "none"

    # -- views for assertions --------------------------------------------------------------
    def calls_of(self, operation: str) -> list[Call]:
        return [c for c in self.calls if c.operation == operation]

    @property
    def issued(self) -> list[FakeTask]:
        return [t for t in self.tasks.values() if t.issued]

    def closed(self, *states: str) -> list[FakeTask]:
        wanted = states or ("succeeded", "failed", "timed_out")
        return [t for t in self.tasks.values() if t.issued and t.state in wanted]

    # -- the protocol ----------------------------------------------------------------------
    async def _handle(self, request: web.Request) -> web.StreamResponse:
        if request.content_type == "application/x-www-form-urlencoded":
            return await self._sts(request)
        target = request.headers.get("X-Amz-Target", "")
        params: dict[str, Any] = (
            await request.json(loads=json.loads) if request.can_read_body else {}
        )
        if target.startswith("AmazonSQS."):
            return await self._handle_sqs(request, target.removeprefix("AmazonSQS."), params)
        operation = target.removeprefix("AWSStepFunctions.")
        token = params.get("taskToken")
        self.counts[operation] = self.counts.get(operation, 0) + 1
        if self.quotas is not None and not self.quotas.take(operation):
            if self.record_calls:
                await self._record(Call(operation, token, params, "ThrottlingException"))
            return _error("ThrottlingException", 400, "Rate exceeded")
        known = self.tasks.get(token or "")
        if known is not None and known.told_closed:
            known.calls_after_told_closed += 1
        if self.latency_seconds:
            await asyncio.sleep(self.latency_seconds)
        fault = self._next_fault(operation)
        if fault is not None and fault.kind == "delay":
            fault.arrived.set()
            await asyncio.sleep(fault.seconds)
            fault = None
        if fault is not None and fault.kind == "error":
            await self._record(Call(operation, token, params, fault.code))
            return _error(fault.code, fault.status)
        if fault is not None and fault.kind == "reset_before":
            await self._record(Call(operation, token, params, "reset"))
            return _reset(request)
        handler = getattr(self, f"_op_{operation}", None)
        if handler is None:
            return _error("UnknownOperationException", 400)
        status, body = await handler(params)
        answer = "ok" if status == 200 else str(body.get("__type", "")).rpartition("#")[2]
        await self._record(Call(operation, token, params, answer if fault is None else "reset"))
        if fault is not None:  # reset_after: the call took effect, the answer is lost
            return _reset(request)
        if known is not None and (
            answer in TASK_GONE_ANSWERS or (answer == "ok" and operation in TERMINAL_CALLS)
        ):
            known.told_closed = True  # the worker now knows: it must not call again
        return web.json_response(body, status=status, content_type="application/x-amz-json-1.0")

    async def _handle_sqs(
        self, request: web.Request, operation: str, params: dict[str, Any]
    ) -> web.StreamResponse:
        self.counts[operation] = self.counts.get(operation, 0) + 1
        fault = self._next_fault(operation)
        if fault is not None and fault.kind == "delay":
            await asyncio.sleep(fault.seconds)
            fault = None
        if fault is not None and fault.kind == "error":
            await self._record(Call(operation, None, params, fault.code))
            # SQS's own codes with SQS's own status; others (5xx, throttling) as given.
            status = None if fault.code in SQS_STATUS else fault.status
            return sqs_error(fault.code, fault.code, status)
        if fault is not None and fault.kind == "reset_before":
            await self._record(Call(operation, None, params, "reset"))
            return _reset(request)
        response = await self.sqs.handle(operation, params)
        await self._record(Call(operation, None, params, "ok" if response.status == 200 else
                                str(response.status)))  # fmt: skip
        if fault is not None:  # reset_after
            return _reset(request)
        return response

    # -- what the fake SQS asks of the service ----------------------------------------------
    def open_callback_task(self, task_input: Any) -> FakeTask:
        """A task a .waitForTaskToken state opened: issued at once, its token in a message."""
        self._numbers += 1
        token = (
            f"{self._numbers:08d}-" + secrets.token_urlsafe(self.token_chars)[: self.token_chars]
        )
        task = FakeTask(token, json.dumps(task_input), self._numbers, CALLBACK, issued=True)
        task.last_beat = asyncio.get_running_loop().time()
        self.stats.setdefault(CALLBACK, ActivityStats())
        self.tasks[token] = task
        self._issued_open += 1
        self.stats[CALLBACK].issued_open += 1
        self.issued_count += 1
        return task

    def close_callback_task(self, task: FakeTask) -> None:
        """As if a worker answered it (and was told so): succeeded, one terminal call."""
        task.output = "{}"
        task.told_closed = True
        self._close(task, "succeeded")

    def polls_released(self) -> bool:
        return self._release_polls.is_set()

    async def wait_release(self) -> None:
        await self._release_polls.wait()

    async def notify(self) -> None:
        await self._notify()

    def _next_fault(self, operation: str) -> Fault | None:
        queue = self._faults.get(operation)
        return queue.popleft() if queue else None

    async def _record(self, call: Call) -> None:
        if self.record_calls:
            self.calls.append(call)
        async with self._changed:
            self._changed.notify_all()

    async def _notify(self) -> None:
        async with self._changed:
            self._changed.notify_all()

    async def _op_GetActivityTask(self, params: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        arn = params.get("activityArn", "")
        stats = self.stats.get(arn)
        if stats is None:
            return 400, _body("ActivityDoesNotExist", f"Activity Does Not Exist: '{arn}'")
        name = params.get("workerName", "")
        if name and not 1 <= len(name) <= MAX_WORKER_NAME:
            return self._reject(params, "ValidationException", "workerName must be 1-80 characters")
        if self.max_polls_per_activity is not None and (
            stats.open_polls >= self.max_polls_per_activity
        ):
            stats.polls_refused += 1
            return 400, _body(
                "ActivityWorkerLimitExceeded",
                "The maximum number of workers concurrently polling for activity tasks has"
                " been reached.",
            )
        self.open_polls += 1
        stats.open_polls += 1
        self.max_open_polls = max(self.max_open_polls, self.open_polls)
        stats.max_open_polls = max(stats.max_open_polls, stats.open_polls)
        self._count_slots(stats)
        await self._notify()
        try:
            task = await self._next_task(arn)
        finally:
            self.open_polls -= 1
            stats.open_polls -= 1
        if task is None:
            return 200, {}
        task.issued = True
        task.last_beat = asyncio.get_running_loop().time()
        task.worker_name = name
        self._issued_open += 1
        stats.issued_open += 1
        self.issued_count += 1
        self._count_slots(stats)
        return 200, {"taskToken": task.token, "input": task.input}

    def _count_slots(self, stats: ActivityStats) -> None:
        self.max_slots_in_use = max(self.max_slots_in_use, self.open_polls + self._issued_open)
        stats.max_slots_in_use = max(stats.max_slots_in_use, stats.open_polls + stats.issued_open)

    async def _next_task(self, arn: str) -> FakeTask | None:
        # One fed task per arriving poll: a poll never waits while fed tasks remain.
        if self._feed_remaining > 0 and arn == self.activity_arn:
            self._feed_remaining -= 1
            self.add_task(raw_input=self._feed_input)
        release = asyncio.ensure_future(self._release_polls.wait())
        take = asyncio.ensure_future(self._pending[arn].get())
        try:
            await asyncio.wait(
                {release, take}, timeout=self.poll_seconds, return_when=asyncio.FIRST_COMPLETED
            )
        finally:
            release.cancel()
            if not take.done():
                take.cancel()
        return take.result() if take.done() and not take.cancelled() else None

    async def _op_SendTaskHeartbeat(self, params: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        task, problem = self._open_task(params)
        if task is None:
            return problem
        task.heartbeats += 1
        now = asyncio.get_running_loop().time()
        task.last_beat = now
        if self.heartbeat_times is not None:
            self.heartbeat_times.setdefault(task.number, []).append(now)
        return 200, {}

    async def _op_SendTaskSuccess(self, params: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        output = params.get("output", "")
        if len(output.encode()) > MAX_OUTPUT:
            return self._reject(params, "ValidationException", "output exceeds 262144 bytes")
        try:
            json.loads(output)
        except ValueError:
            return self._reject(params, "InvalidOutput", "output is not valid JSON")
        task, problem = self._open_task(params)
        if task is None:
            return problem
        task.output = output
        self._close(task, "succeeded")
        return 200, {}

    async def _op_SendTaskFailure(self, params: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        error, cause = params.get("error", ""), params.get("cause", "")
        if len(error) > MAX_ERROR or len(cause) > MAX_CAUSE:
            return self._reject(params, "ValidationException", "error or cause too long")
        task, problem = self._open_task(params)
        if task is None:
            return problem
        task.error, task.cause = error, cause
        self._close(task, "failed")
        return 200, {}

    async def _op_DescribeActivity(self, params: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        arn = params.get("activityArn", "")
        if arn not in self.stats:
            return 400, _body("ActivityDoesNotExist", "Activity Does Not Exist")
        return 200, {"activityArn": arn, "name": arn.rsplit(":", 1)[-1], "creationDate": 0}

    async def _sts(self, request: web.Request) -> web.Response:
        """STS (query protocol): GetCallerIdentity only."""
        form = await request.post()
        self.counts["GetCallerIdentity"] = self.counts.get("GetCallerIdentity", 0) + 1
        if form.get("Action") != "GetCallerIdentity":
            return web.Response(status=400, text="only GetCallerIdentity is faked")
        body = (
            '<GetCallerIdentityResponse xmlns="https://sts.amazonaws.com/doc/2011-06-15/">'
            "<GetCallerIdentityResult>"
            f"<Arn>arn:aws:iam::{ACCOUNT}:user/fake</Arn><UserId>FAKE</UserId>"
            f"<Account>{ACCOUNT}</Account></GetCallerIdentityResult>"
            "<ResponseMetadata><RequestId>fake</RequestId></ResponseMetadata>"
            "</GetCallerIdentityResponse>"
        )
        return web.Response(text=body, content_type="text/xml")

    def _open_task(
        self, params: dict[str, Any]
    ) -> tuple[FakeTask | None, tuple[int, dict[str, Any]]]:
        task = self.tasks.get(params.get("taskToken", ""))
        if task is None or not task.issued:
            return None, (400, _body("InvalidToken", "Invalid token"))
        if task.state == "open" and self._overdue(task, asyncio.get_running_loop().time()):
            self._time_out(task)
        if task.state != "open":
            return None, (400, _body("TaskTimedOut", "Task Timed Out"))
        return task, (200, {})

    def _overdue(self, task: FakeTask, now: float) -> bool:
        timeout = self.heartbeat_timeout_seconds
        return timeout is not None and now - task.last_beat > timeout

    def _time_out(self, task: FakeTask) -> None:
        self.heartbeat_timeouts += 1
        self._close(task, "timed_out")

    def expire_overdue(self) -> int:
        """Time out every issued task whose heartbeat is overdue now; how many were."""
        now = asyncio.get_running_loop().time()
        overdue = [t for t in self.tasks.values() if t.issued and t.state == "open"
                   and self._overdue(t, now)]  # fmt: skip
        for task in overdue:
            self._time_out(task)
        return len(overdue)

    def _close(self, task: FakeTask, state: str) -> None:
        if state in ("succeeded", "failed"):
            task.terminal_calls += 1
        task.state = state
        task.closed_at = time.time()
        self._issued_open -= 1
        self.stats[task.activity_arn].issued_open -= 1
        self.closed_count += 1
        if self.quotas is not None:
            self.quotas.task_closed()
        if self.forget_closed:
            del self.tasks[task.token]

    def _reject(
        self, params: dict[str, Any], code: str, message: str
    ) -> tuple[int, dict[str, Any]]:
        self.rejections.append(Call("rejected", params.get("taskToken"), params, code))
        return 400, _body(code, message)


def _body(code: str, message: str = "") -> dict[str, Any]:
    return {"__type": f"com.amazonaws.swf.service.v2.model#{code}", "message": message or code}


def _error(code: str, status: int, message: str = "") -> web.Response:
    return web.json_response(
        _body(code, message), status=status, content_type="application/x-amz-json-1.0"
    )


def _reset(request: web.Request) -> web.Response:
    if request.transport is not None:
        request.transport.abort()
    return web.Response(status=500)
