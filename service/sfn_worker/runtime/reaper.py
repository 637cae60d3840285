"""Orphans reaped when the worker is PID 1.

The image starts the worker as PID 1 (exec-form entrypoint, so it gets SIGTERM itself), which
makes it its PID namespace's init: a process whose parent exits is re-parented to it. A
process-mode handler that starts a program in the background (``sh -c 'x &'``, a daemonising
tool) leaves such orphans, and each becomes a zombie when it exits unless its new parent
reaps it; zombies pile up until the PID limit stops new handler processes. A zombie waits at
most REAP_SECONDS here.

Why the worker reaps them itself rather than requiring an init (tini, ``docker run --init``,
ECS ``initProcessEnabled``): it keeps working wherever the image runs, with the worker still
receiving signals directly. With an init in front it is not PID 1 and this does nothing.
It reaps only processes it did not start: its handler processes (and multiprocessing's
resource tracker) are waited for by multiprocessing, whose exit codes report deaths.
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import os
from collections.abc import AsyncIterator
from multiprocessing import resource_tracker

from ..aio import cancel_and_wait
from ..bulkhead import Accessories, Accessory

PROC = "/proc"
REAP_SECONDS = 1.0


def own_children() -> set[int]:
    """Children multiprocessing started and waits for itself."""
    pids = {p.pid for p in multiprocessing.active_children() if p.pid is not None}
    # The resource tracker is started by multiprocessing outside its Process objects.
    tracker = getattr(resource_tracker._resource_tracker, "_pid", None)
    if isinstance(tracker, int):
        pids.add(tracker)
    return pids


def zombie_children(parent: int) -> list[int]:
    """Pids of ``parent``'s children that have exited and wait to be reaped."""
    found = []
    with os.scandir(PROC) as entries:
        for entry in entries:
            if not entry.name.isdigit():
                continue
            try:
                with open(f"{PROC}/{entry.name}/stat", "rb") as stat:
                    fields = stat.read().rsplit(b")", 1)[1].split()
            except OSError:
                continue  # gone meanwhile
            state, ppid = fields[0], int(fields[1])
            if ppid == parent and state == b"Z":
                found.append(int(entry.name))
    return found


def reap_orphans() -> int:
    """Reap every exited child the worker did not start; returns how many."""
    zombies = zombie_children(os.getpid())
    own = own_children() if zombies else set()
    reaped = 0
    for pid in zombies:
        if pid in own:
            continue
        with contextlib.suppress(ChildProcessError):
            if os.waitpid(pid, os.WNOHANG)[0] == pid:
                reaped += 1
    return reaped


@contextlib.asynccontextmanager
async def reaping_orphans(accessories: Accessories) -> AsyncIterator[None]:
    """While the block runs, and only as PID 1: reap orphans every REAP_SECONDS. (SIGCHLD is
    the event loop's own, for subprocesses it starts; a scan of a container's few
    processes costs well under a millisecond.)"""
    if os.getpid() != 1:
        yield
        return
    reaper = asyncio.create_task(accessories.supervise("reaper", _reap_every_while))
    try:
        yield
    finally:
        await cancel_and_wait(reaper)


async def _reap_every_while(accessory: Accessory) -> None:
    while True:
        await asyncio.sleep(REAP_SECONDS)
        reap_orphans()  # an OSError (no /proc) is the accessory's failure: restarted later
