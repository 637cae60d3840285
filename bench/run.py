"""Benchmark suite: `make bench` (or `.venv/bin/python bench/run.py [--quick]`).

Starts a fake Step Functions endpoint in this process (the real AWS JSON protocol, latency
per call and the service's API quotas when asked) and runs every contender against it as
a separate process, so each contender's CPU and memory are its own. Each scenario is a
module in bench/scenarios/; bench/report.py writes docs/benchmarks.md and its plots.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
import time
from pathlib import Path
from types import ModuleType

import uvloop

from report import Report
from rig import REPO, ROUND_TRIP, Options, progress
from scenarios import (
    burst,
    cpu_bound,
    curve,
    fleet,
    latency,
    memory,
    overhead,
    pickup,
    process_fit,
    processes,
    shutdown,
    shutdown_scale,
)

# In the report's order (its sections are numbered so).
SCENARIOS: dict[str, ModuleType] = {
    "overhead": overhead,
    "latency": latency,
    "fleet": fleet,
    "memory": memory,
    "cpu-bound": cpu_bound,
    "shutdown": shutdown,
    "curve": curve,
    "pickup": pickup,
    "processes": processes,
    "shutdown-at-scale": shutdown_scale,
    "burst": burst,
    "process-fit": process_fit,
}


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="short windows: under 3 minutes")
    parser.add_argument("--repeats", type=int, default=3, help="runs per contender (median)")
    parser.add_argument("--output", type=Path, default=REPO / "docs" / "benchmarks.md")
    parser.add_argument(
        "--input-bytes", type=int, default=0, help="pad each task input (and output) by N bytes"
    )
    parser.add_argument(
        "--round-trip-ms",
        type=float,
        default=0.0,
        help="add this to every round trip between a contender and the fake (a delay proxy;"
        " scenarios that measure their own round trips choose theirs)",
    )
    parser.add_argument(
        "--only", default="", help=f"comma-separated scenarios, of: {', '.join(SCENARIOS)}"
    )
    return parser.parse_args(argv)


async def main(argv: list[str]) -> int:
    args = parse(argv)
    # Contenders are killed mid-request at the end of each window; the fake's server would
    # log each dropped request with a traceback.
    logging.getLogger("aiohttp.server").setLevel(logging.CRITICAL)
    chosen = [name for name in args.only.split(",") if name] or list(SCENARIOS)
    unknown = set(chosen) - set(SCENARIOS)
    if unknown:
        print(f"bench: no scenario {', '.join(sorted(unknown))}", file=sys.stderr)
        return 2
    options = Options(
        quick=args.quick,
        repeats=1 if args.quick else args.repeats,
        input_padding=args.input_bytes,
        round_trip=args.round_trip_ms / 1000,
    )
    ROUND_TRIP["seconds"] = options.round_trip
    report = Report(args.output)
    report.header(
        quick=options.quick,
        repeats=options.repeats,
        padding=options.input_padding,
        round_trip=options.round_trip,
        minutes="25 minutes" if not options.quick else "3 minutes",
    )
    started = time.monotonic()
    for name in chosen:
        await SCENARIOS[name].run(options, report)
        report.write()  # what is done so far survives a later failure
    progress(f"wrote {args.output} in {time.monotonic() - started:.0f} s")
    return 0


if __name__ == "__main__":
    # uvloop for the fake endpoint too, so the rig limits the contenders as little as it can.
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        sys.exit(runner.run(main(sys.argv[1:])))
