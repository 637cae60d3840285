"""Running handlers and apps in a test: ``run_handler`` (and ``run_handler_sync``) give what
the worker would answer for one call; ``run_app`` runs a whole app against a fake."""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
from collections.abc import AsyncIterator, Sequence
from typing import Any

import aioboto3

from ..app import App, Handler, LoadError, import_object, import_path, is_async_handler
from ..config import SourceConfig, activity_name, queue_name
from ..context import NO_STATE, TaskContext
from ..runtime.client import SfnClients, open_clients
from ..runtime.runtime import ClientFactory, Runtime
from ..settings import HandlerMode, Settings
from ..tasks.handlers.invoker import HandlerInvoker
from ..tasks.outcome import Outcome, decode_input
from ..tasks.runner import handler_outcome
from .fake_sfn import DEFAULT_ACTIVITY_ARN, REGION, FakeStepFunctions


async def run_handler(
    handler: Handler,
    task_input: Any,
    *,
    mode: HandlerMode | str = HandlerMode.THREAD,
    ctx: TaskContext | None = None,
    app: App | None = None,
    state: Any = NO_STATE,
) -> Outcome:
    """Run a handler the way the worker does and return what it would send; with ``app``,
    through the app's middleware (its lifespan is not entered: ``state`` is what the handler
    sees as ``ctx.state``).

    >>> outcome = await run_handler(seed_handler, {"in": "SUCCESS"})
    >>> outcome.output
    '{"result":{"in":"SUCCESS"}}'
    """
    if ctx is not None and state is not NO_STATE:
        raise ValueError("pass either ctx or state, not both")
    task_input = as_delivered(task_input)
    chosen = _handler_mode(mode)
    if chosen is HandlerMode.PROCESS and not is_async_handler(handler):
        _check_importable(handler)
    # Thread mode shortens the interpreter's switch interval for the worker's process; a
    # test's must not keep it for the rest of the session.
    switch_interval = sys.getswitchinterval()
    invoker = HandlerInvoker(
        handler,
        chosen,
        concurrency=1,
        middlewares=app.middlewares if app is not None else (),
        process_init=app.process_initializer if app is not None else None,
    )
    context = ctx or TaskContext(
        task_token="test-token",
        worker_name="test",
        activity_arn=DEFAULT_ACTIVITY_ARN,
        _state=state,
    )
    try:
        call = invoker.start(task_input, context)
        try:
            # Waited for, not awaited: what the handler raised (SystemExit from a thread
            # too) is read from the call as the worker's runner reads it, never re-raised.
            await asyncio.wait([call.result])
        except asyncio.CancelledError:
            # As the worker cancels: a sync handler learns it from its context.
            context.cancel_requested.set()
            call.result.cancel()
            raise
    finally:
        await invoker.aclose()
        sys.setswitchinterval(switch_interval)
    return handler_outcome(call.result)


def _check_importable(handler: Handler) -> None:
    """A process handler is found again by ``module:function`` in the handler process; a
    lambda or a nested function is not, and would fail only after a process started."""
    path = import_path(handler)
    try:
        found = import_object(path, "handler")
    except LoadError:
        found = None
    if found is not handler:
        raise ValueError(
            f"mode='process' needs a handler importable as module:function, not {path!r}: "
            "define it at the top level of a module"
        )


def as_delivered(task_input: Any) -> Any:
    """The input as the handler gets it from Step Functions: through JSON, so a tuple is a
    list and a key is a string, as in production; what JSON cannot carry is refused."""
    try:
        text = json.dumps(task_input, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise TypeError(
            f"task_input is not JSON ({exc}); Step Functions delivers only JSON: pass what "
            "the state would send"
        ) from None
    return decode_input(text)


def _handler_mode(mode: HandlerMode | str) -> HandlerMode:
    """A mode by name too, as ``App`` takes it; a name the enum does not hold would run the
    handler on the event loop unnoticed."""
    try:
        return HandlerMode(str(mode).lower())
    except ValueError:
        choices = ", ".join(m.value for m in HandlerMode)
        raise ValueError(f"mode={mode!r} is not a handler mode: one of {choices}") from None


def run_handler_sync(
    handler: Handler,
    task_input: Any,
    *,
    mode: HandlerMode | str = HandlerMode.THREAD,
    ctx: TaskContext | None = None,
    app: App | None = None,
    state: Any = NO_STATE,
) -> Outcome:
    """``run_handler`` for a plain ``def test_...``: runs it in an event loop of its own.

    >>> run_handler_sync(seed_handler, {"in": "SUCCESS"}).output
    '{"result":{"in":"SUCCESS"}}'
    """
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(
            run_handler(handler, task_input, mode=mode, ctx=ctx, app=app, state=state)
        )
    raise RuntimeError(
        "run_handler_sync() was called inside a running event loop (an async test): "
        "use `await run_handler(...)` there"
    )


def fake_clients(fake: FakeStepFunctions) -> ClientFactory:
    """Clients for the runtime that talk to ``fake``, whatever the AWS environment says."""

    @contextlib.asynccontextmanager
    async def open_fake(sources: Sequence[SourceConfig]) -> AsyncIterator[SfnClients]:
        session = aioboto3.Session(
            region_name=REGION, aws_access_key_id="testing", aws_secret_access_key="testing"
        )
        # Direct: a developer's HTTP(S)_PROXY must not carry calls to the local fake.
        async with open_clients(
            sources, session=session, endpoint_url=fake.endpoint_url, direct=True
        ) as clients:
            yield clients

    return open_fake


@contextlib.asynccontextmanager
async def run_app(app: App, fake: FakeStepFunctions, **settings: Any) -> AsyncIterator[Runtime]:
    """Run ``app`` in this process against ``fake`` (which learns its activities) from the
    moment it polls until the block ends, then shut it down in order. ``settings`` are
    Settings fields."""
    for registration in app.activities:
        ref = registration.ref
        fake.add_activity(ref if ref.startswith("arn:") else activity_name(ref))
    for registration in app.queues:
        fake.sqs.add_queue(queue_name(registration.ref), url=registration.ref)
    values: dict[str, Any] = {"worker_name": "test-worker", "shutdown_grace_seconds": 5}
    values.update(settings)
    runtime = Runtime(app, Settings(**values), client_factory=fake_clients(fake), environ={})
    stop = asyncio.Event()
    running = asyncio.create_task(runtime.run(stop))
    # The block starts once the app polls; a failure to start (the lifespan) raises here.
    started = asyncio.create_task(runtime.started.wait())
    await asyncio.wait({running, started}, return_when=asyncio.FIRST_COMPLETED)
    started.cancel()
    if running.done():
        running.result()
    try:
        yield runtime
    finally:
        stop.set()
        fake.release_polls()
        await running
