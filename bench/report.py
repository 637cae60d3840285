"""docs/benchmarks.md: the header (machine, versions, method), each scenario's section, and
the plots next to it."""

from __future__ import annotations

import os
import platform
import subprocess
from collections.abc import Sequence
from datetime import UTC, datetime
from importlib.metadata import version
from pathlib import Path

import psutil

VERSIONED = ["aioboto3", "aiobotocore", "botocore", "uvloop", "structlog", "orjson", "aiohttp"]


def commit() -> str:
    """The commit measured, and whether the tree had changes on top of it."""
    try:
        head = subprocess.run(
            ["git", "-C", str(Path(__file__).parent), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(Path(__file__).parent), "status", "--porcelain"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown (not a git checkout)"
    return f"`{head}`" + (" with uncommitted changes" if dirty else "")


def versions() -> str:
    return ", ".join(f"{name} {version(name)}" for name in VERSIONED)


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    memory = psutil.virtual_memory().total / 2**30
    return f"{os.cpu_count()} cores ({cpu}), {memory:.0f} GiB, {platform.platform()}"


def verdict(met: bool, detail: str) -> str:
    return f"met ({detail})" if met else f"**missed** ({detail})"


class Report:
    """Markdown lines, written at the end; plots go next to the output file."""

    def __init__(self, output: Path) -> None:
        self.output = output
        self.lines: list[str] = []

    def say(self, *lines: str) -> None:
        self.lines.extend(lines)

    def paragraph(self, text: str) -> None:
        self.lines.extend([text, ""])

    def section(self, title: str) -> None:
        self.lines.extend([f"## {title}", ""])

    def table(self, headers: Sequence[str], rows: Sequence[Sequence[object]]) -> None:
        """The first column is left-aligned, the others right-aligned (numbers)."""
        self.lines.append("| " + " | ".join(headers) + " |")
        self.lines.append("|---|" + "---:|" * (len(headers) - 1))
        for row in rows:
            self.lines.append("| " + " | ".join(str(cell) for cell in row) + " |")
        self.lines.append("")

    def plot_path(self, name: str) -> Path:
        self.output.parent.mkdir(parents=True, exist_ok=True)
        return self.output.parent / f"{self.output.stem}-{name}.png"

    def image(self, path: Path, alt: str) -> None:
        self.paragraph(f"![{alt}]({path.name})")

    def header(
        self, *, quick: bool, repeats: int, padding: int, minutes: str, round_trip: float = 0.0
    ) -> None:
        self.say(
            "# Benchmarks",
            "",
            f"- date: {datetime.now(UTC):%Y-%m-%d %H:%M} UTC; mode: {'quick' if quick else 'full'}",
            f"- commit measured: {commit()}",
            f"- added round trip to the fake: {round_trip * 1000:g} ms (delay proxy) unless a"
            " section says otherwise",
            f"- machine: {machine()}",
            f"- Python {platform.python_version()}; {versions()}",
            f'- task input: `{{"in": "SUCCESS"}}` plus {padding:,} bytes of padding',
            "- method: the fake endpoint (`sfn_worker.testing`, the real AWS JSON protocol) runs",
            "  in the benchmark's process, each contender in its own process; CPU and RSS are the",
            "  contender's own (psutil). Throughput and CPU are medians of "
            f"{repeats} run(s), taken in",
            "  rounds (A B C, A B C, ...) so a noisy minute on a shared machine hits all alike;",
            "  comparisons are ratios within this run.",
            f"- reproduce: `make bench` (about {minutes}; `make bench-quick` for a smoke run)",
            "",
        )

    def write(self) -> None:
        self.output.parent.mkdir(parents=True, exist_ok=True)
        self.output.write_text("\n".join(self.lines).rstrip() + "\n")


def line_plot(
    path: Path,
    curves: dict[str, tuple[Sequence[float], Sequence[float]]],
    *,
    title: str,
    xlabel: str,
    ylabel: str,
    log: bool = False,
) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(7, 4.5), dpi=110)
    for label, (xs, ys) in curves.items():
        axes.plot(xs, ys, marker="o" if len(xs) < 20 else None, label=label)
    if log:
        axes.set_xscale("log", base=2)
        axes.set_yscale("log")
    axes.set_xlabel(xlabel)
    axes.set_ylabel(ylabel)
    axes.set_title(title)
    axes.grid(True, which="both", alpha=0.3)
    axes.legend()
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)
