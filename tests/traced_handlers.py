"""Handlers that open spans of their own (process mode imports them by path)."""

from __future__ import annotations

from typing import Any

from opentelemetry import trace

from sfn_worker import TaskContext, TaskFailed

tracer = trace.get_tracer("tests.traced_handlers")


def traced(task_input: Any, ctx: TaskContext) -> Any:
    with tracer.start_as_current_span("user work") as span:
        span.set_attribute("work.items", 3)
        if task_input.get("fail"):
            raise TaskFailed("Render.Failed", "the user's failure")
    return {"ok": True}


async def traced_async(task_input: Any, ctx: TaskContext) -> Any:
    return traced(task_input, ctx)


def noisy(task_input: Any, ctx: TaskContext) -> Any:
    """A span, a Python warning and a standard-library log line: output from wherever the
    handler runs (the worker's process or a handler process)."""
    import logging
    import warnings

    with tracer.start_as_current_span("noisy work"):
        warnings.warn("a warning from the handler", UserWarning, stacklevel=1)
        logging.getLogger("user.handler").warning("a log line from the handler")
    return {"pid": __import__("os").getpid()}
