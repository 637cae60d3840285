"""LocalStack (Step Functions, STS, SQS) without Docker, for the demo and integration tests.

- installs LocalStack once into a cached Python 3.13 virtual environment outside the work
  tree (pinned by config/localstack-requirements.txt and config/localstack-constraints.txt;
  a change to either makes a new environment);
- starts it on a free loopback port with Step Functions, STS (the worker turns activity names
  into ARNs with it) and SQS, waits for /_localstack/health;
- always stops it and every process it started (own session, killed as a group; the
  child also dies with its parent if the parent is killed).

Use it as ``with LocalStack() as ls: ls.endpoint_url`` or run this file to try it.
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from types import TracebackType
from typing import IO

REPO = Path(__file__).resolve().parent.parent
CONFIG = REPO / "config"
REQUIREMENTS = CONFIG / "localstack-requirements.txt"
CONSTRAINTS = CONFIG / "localstack-constraints.txt"
CACHE = Path(os.environ.get("SFNW_CACHE", Path.home() / ".cache" / "sfn-worker"))
PYTHON_VERSION = "3.13"
START_TIMEOUT_SECONDS = 180.0
SERVICES = ("stepfunctions", "sts", "sqs")
INSTALL_TIMEOUT_SECONDS = 900.0


class EmulatorError(RuntimeError):
    """LocalStack could not be installed or started; the message says why and what to do."""


def _environment_key() -> str:
    digest = hashlib.sha256(REQUIREMENTS.read_bytes() + CONSTRAINTS.read_bytes())
    return digest.hexdigest()[:12]


def _find_python() -> str:
    finder = REPO / "scripts" / "find-python"
    result = subprocess.run(
        [str(finder), PYTHON_VERSION], capture_output=True, text=True, check=False
    )
    if result.returncode != 0:
        raise EmulatorError(f"LocalStack needs Python {PYTHON_VERSION}: {result.stderr.strip()}")
    return result.stdout.strip()


def ensure_installed(log: IO[str] = sys.stderr) -> Path:
    """The cached environment's python, installing LocalStack first if needed."""
    venv = CACHE / f"localstack-{_environment_key()}"
    python = venv / "bin" / "python"
    ready = venv / ".installed"
    CACHE.mkdir(parents=True, exist_ok=True)
    with open(CACHE / "localstack.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # parallel runs install once
        if ready.exists():
            return python
        print(f"Installing LocalStack into {venv} (once; about a minute)...", file=log, flush=True)
        shutil.rmtree(venv, ignore_errors=True)
        subprocess.run([_find_python(), "-m", "venv", str(venv)], check=True)
        install = subprocess.run(
            [
                str(python),
                "-m",
                "pip",
                "install",
                "--quiet",
                "--disable-pip-version-check",
                "-r",
                str(REQUIREMENTS),
                "-c",
                str(CONSTRAINTS),
            ],
            capture_output=True,
            text=True,
            timeout=INSTALL_TIMEOUT_SECONDS,
            check=False,
        )
        if install.returncode != 0:
            errors = [line for line in install.stderr.splitlines() if "WARNING" not in line]
            shutil.rmtree(venv, ignore_errors=True)
            raise EmulatorError(
                "could not install LocalStack (is the package registry reachable?):\n"
                + "\n".join(errors[-15:])
            )
        ready.write_text("ok\n")
    return python


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _die_with_parent() -> None:
    # Linux: the emulator gets SIGKILL if the process that started it dies without cleanup.
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


class LocalStack:
    def __init__(self, log_path: Path | None = None) -> None:
        self.port = 0
        self.endpoint_url = ""
        self._process: subprocess.Popen[bytes] | None = None
        self._root: tempfile.TemporaryDirectory[str] | None = None
        self._log_path = log_path
        self._log: IO[bytes] | None = None

    def start(self) -> str:
        python = ensure_installed()
        self._root = tempfile.TemporaryDirectory(prefix="sfn-localstack-")
        root = Path(self._root.name)
        self.port = _free_port()
        self.endpoint_url = f"http://127.0.0.1:{self.port}"
        env = {
            key: value
            for key, value in os.environ.items()
            if not key.startswith(("AWS_", "SFN_", "VIRTUAL_ENV", "PYTHON"))
        }
        env.update(
            GATEWAY_LISTEN=f"127.0.0.1:{self.port}",
            SERVICES=",".join(SERVICES),
            # Queue URLs on the gateway's own address, not a *.localstack.cloud name.
            SQS_ENDPOINT_STRATEGY="path",
            DISABLE_EVENTS="1",
            SKIP_SSL_CERT_DOWNLOAD="1",
            PERSISTENCE="0",
            FILESYSTEM_ROOT=str(root / "fs"),
            TMPDIR=str(root),
            LOCALSTACK_VOLUME_DIR=str(root / "volume"),
            DNS_ADDRESS="0",
        )
        log_path = self._log_path or root / "localstack.log"
        self._log_path = log_path
        self._log = open(log_path, "wb")  # noqa: SIM115 - closed in stop()
        self._process = subprocess.Popen(
            [str(python), "-m", "localstack.runtime.main"],
            env=env,
            cwd=root,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            preexec_fn=_die_with_parent,
        )
        try:
            self._wait_until_healthy()
        except BaseException:
            self.stop()
            raise
        return self.endpoint_url

    def _wait_until_healthy(self) -> None:
        assert self._process is not None
        deadline = time.monotonic() + START_TIMEOUT_SECONDS
        url = f"{self.endpoint_url}/_localstack/health"
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise EmulatorError(
                    f"LocalStack exited with code {self._process.returncode} while starting:\n"
                    + self.log_tail()
                )
            with contextlib.suppress(urllib.error.URLError, OSError, ValueError):
                with urllib.request.urlopen(url, timeout=2) as answer:
                    services = json.load(answer).get("services", {})
                if all(services.get(name) in ("available", "running") for name in SERVICES):
                    return
            time.sleep(0.25)  # waiting on an external process: nothing to await
        raise EmulatorError(
            f"LocalStack was not healthy after {START_TIMEOUT_SECONDS:.0f}s:\n" + self.log_tail()
        )

    def log_tail(self, lines: int = 30) -> str:
        if self._log_path is None or not self._log_path.exists():
            return ""
        text = self._log_path.read_text(errors="replace").splitlines()
        return "\n".join(text[-lines:])

    def stop(self) -> None:
        process, self._process = self._process, None
        if process is not None and process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=5)
        if process is not None:
            # Children that outlived LocalStack's own shutdown go with the group.
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(process.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=5)
        if self._log is not None:
            self._log.close()
            self._log = None
        if self._root is not None:
            self._root.cleanup()
            self._root = None

    def __enter__(self) -> LocalStack:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


if __name__ == "__main__":
    with LocalStack() as emulator:
        print(f"LocalStack is up at {emulator.endpoint_url}; stopping.")
