"""Handler processes start with ``python -P``: the current directory's modules never
replace what a starting process imports.

multiprocessing starts each spawned process (and its resource tracker) as ``python -c
...``, which puts the current directory first on ``sys.path`` until the parent's path is
restored; a ``types.py``, ``signal.py`` or ``socket.py`` beside the user's handlers was
imported in place of the standard library's, and every process died at its start. With
``-P`` (Python 3.11+) nothing is put there; the parent's ``sys.path``, which has the
current directory last (app.importable_from_cwd), still finds the user's modules.
"""

from __future__ import annotations

from collections.abc import Callable
from multiprocessing import util

SAFE_PATH = "-P"


def start_children_with_safe_path() -> None:
    """Add ``-P`` to the interpreter flags multiprocessing gives every process it starts
    (spawn, forkserver, the resource tracker all read them from ``multiprocessing.util``).
    Idempotent."""
    flags: Callable[[], list[str]] = getattr(util, "_args_from_interpreter_flags")  # noqa: B009
    if getattr(flags, "safe_path", False):
        return

    def with_safe_path() -> list[str]:
        args = flags()
        return args if SAFE_PATH in args else [*args, SAFE_PATH]

    with_safe_path.safe_path = True  # type: ignore[attr-defined]
    setattr(util, "_args_from_interpreter_flags", with_safe_path)  # noqa: B010
