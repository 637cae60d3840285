"""How many CPUs this process may use: the cgroup's CPU quota (what ECS task ``cpu`` and
``docker run --cpus`` set), else the CPUs it may be scheduled on.

``os.cpu_count()`` is the host's count: a container limited to 2 CPUs on a 64-core host
would start 64 handler processes, each throttled, and a gigabyte of them.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

CGROUP_ROOT = Path("/sys/fs/cgroup")


def available_cpus(root: Path = CGROUP_ROOT) -> int:
    """The cgroup quota rounded up (1.5 CPUs: 2), capped by the CPUs this process may run
    on; at least 1."""
    schedulable = _schedulable_cpus()
    quota = cgroup_cpu_quota(root)
    if quota is None:
        return schedulable
    return max(1, min(schedulable, math.ceil(quota)))


def cgroup_cpu_quota(root: Path = CGROUP_ROOT) -> float | None:
    """CPUs the cgroup's quota allows (cgroup v2 ``cpu.max``, else v1
    ``cpu.cfs_quota_us / cpu.cfs_period_us``); None without a quota or a readable one."""
    v2 = _read(root / "cpu.max")
    if v2 is not None:
        quota, _, period = v2.partition(" ")
        return _ratio(quota, period or "100000")
    for v1 in (root / "cpu", root / "cpu,cpuacct", root / "cpuacct,cpu"):
        quota_us = _read(v1 / "cpu.cfs_quota_us")
        if quota_us is not None:
            return _ratio(quota_us, _read(v1 / "cpu.cfs_period_us") or "100000")
    return None


def _ratio(quota: str, period: str) -> float | None:
    if quota in ("max", "-1"):
        return None
    try:
        value = int(quota) / int(period)
    except (ValueError, ZeroDivisionError):
        return None
    return value if value > 0 else None


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except (OSError, UnicodeDecodeError):
        return None


def _schedulable_cpus() -> int:
    count = getattr(os, "process_cpu_count", None)  # Python 3.13: the affinity mask
    if count is not None:
        return int(count() or 1)
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0)) or 1
    return os.cpu_count() or 1
