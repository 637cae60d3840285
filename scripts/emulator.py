"""LocalStack for the demo and the integration tests: the installed package's emulator
(service/sfn_worker/dev/localstack.py, which `sfn-worker dev` uses too), re-exported here
for `make demo` and tests/integration.

Use it as ``with LocalStack() as ls: ls.endpoint_url`` or run this file to try it.
"""

from __future__ import annotations

from pathlib import Path

from sfn_worker.dev.localstack import EmulatorError, LocalStack, ensure_installed

REPO = Path(__file__).resolve().parent.parent
CONFIG = REPO / "config"

__all__ = ["CONFIG", "REPO", "EmulatorError", "LocalStack", "ensure_installed"]

if __name__ == "__main__":
    with LocalStack() as emulator:
        print(f"LocalStack is up at {emulator.endpoint_url}; stopping.")
