"""Handlers that open spans of their own (process mode imports them by path)."""

from __future__ import annotations

from typing import Any

from opentelemetry import trace

from sfn_worker import TaskContext, TaskFailed

tracer_name = "tests.traced_handlers"
tracer = trace.get_tracer(tracer_name)


def traced(task_input: Any, ctx: TaskContext) -> Any:
    with tracer.start_as_current_span("user work") as span:
        span.set_attribute("work.items", 3)
        if task_input.get("fail"):
            raise TaskFailed("Render.Failed", "the user's failure")
    return {"ok": True}


async def traced_async(task_input: Any, ctx: TaskContext) -> Any:
    return traced(task_input, ctx)


def noisy(task_input: Any, ctx: TaskContext) -> Any:
    """A span, a Python warning, a standard-library log line and a thread that dies of an
    exception: output from wherever the handler runs (the worker or a handler process)."""
    import logging
    import os
    import threading
    import warnings

    def fail() -> None:
        raise RuntimeError("a thread of the handler failed")

    with tracer.start_as_current_span("noisy work"):
        warnings.warn("a warning from the handler", UserWarning, stacklevel=1)
        logging.getLogger("user.handler").warning("a log line from the handler")
        thread = threading.Thread(target=fail, name="handler-thread")
        thread.start()
        thread.join()
    return {"pid": os.getpid()}


def waits_for_shutdown(task_input: Any, ctx: TaskContext) -> Any:
    """Runs (heartbeated) until the worker stops, in any mode."""
    ctx.shutdown_requested.wait(60)
    return {"ok": True}
