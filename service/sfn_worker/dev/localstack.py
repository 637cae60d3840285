"""LocalStack (Step Functions, STS, SQS) without Docker: for `sfn-worker dev`, the demo and
the integration tests.

- installs LocalStack once into a cached Python 3.13 virtual environment outside any work
  tree (pinned by the package's localstack-requirements.txt and localstack-constraints.txt;
  a change to either makes a new environment), never into the caller's own environment;
- starts it on a free loopback port with Step Functions, STS (the worker turns activity names
  into ARNs with it) and SQS, waits for /_localstack/health;
- always stops it and every process it started (own session, killed as a group; the
  child also dies with its parent if the parent is killed).

Use it as ``with LocalStack() as ls: ls.endpoint_url``. Only the standard library: the
worker's heavy imports are not needed to run an emulator.
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import glob
import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from importlib import resources
from pathlib import Path
from types import TracebackType
from typing import IO

PINS = resources.files(__package__ or "sfn_worker.dev")
REQUIREMENTS = "localstack-requirements.txt"
CONSTRAINTS = "localstack-constraints.txt"
BOOT = "localstack_boot.py"
PYTHON_VERSION = "3.13"
START_TIMEOUT_SECONDS = 180.0
SERVICES = ("stepfunctions", "sts", "sqs")
INSTALL_TIMEOUT_SECONDS = 900.0
STOP_WAIT_SECONDS = 5.0


class EmulatorError(RuntimeError):
    """LocalStack could not be installed or started; the message says why and what to do."""


def cache_dir() -> Path:
    """Shared by every clone and project on this machine (SFNW_CACHE overrides)."""
    default = Path.home() / ".cache" / "sfn-worker"
    return Path(os.environ.get("SFNW_CACHE") or default)


def _environment_key() -> str:
    pins = PINS.joinpath(REQUIREMENTS).read_bytes() + PINS.joinpath(CONSTRAINTS).read_bytes()
    return hashlib.sha256(pins).hexdigest()[:12]


def _runs(python: str) -> bool:
    # Ask the interpreter itself: a pyenv shim on PATH may exist yet refuse to run.
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        done = subprocess.run([python, "-c", "pass"], capture_output=True, timeout=30, check=False)
        return done.returncode == 0
    return False


def find_python(version: str = PYTHON_VERSION) -> str:
    """A CPython of that minor version: this one, then on PATH, then in pyenv."""
    if f"{sys.version_info.major}.{sys.version_info.minor}" == version:
        return sys.executable
    on_path = shutil.which(f"python{version}")
    if on_path and _runs(on_path):
        return on_path
    roots = [os.environ.get("PYENV_ROOT") or str(Path.home() / ".pyenv")]
    roots += ["/root/.pyenv", "/usr/local/pyenv"]
    for root in roots:
        for candidate in sorted(glob.glob(f"{root}/versions/{version}.*/bin/python{version}")):
            if _runs(candidate):
                return candidate
    raise EmulatorError(
        f"LocalStack needs Python {version}: none found on PATH or in pyenv "
        f"(install it, e.g. pyenv install {version})"
    )


def ensure_installed(log: IO[str] = sys.stderr) -> Path:
    """The cached environment's python, installing LocalStack first if needed."""
    cache = cache_dir()
    venv = cache / f"localstack-{_environment_key()}"
    python = venv / "bin" / "python"
    ready = venv / ".installed"
    cache.mkdir(parents=True, exist_ok=True)
    with open(cache / "localstack.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # parallel runs install once
        if ready.exists():
            return python
        print(f"Installing LocalStack into {venv} (once; about a minute)...", file=log, flush=True)
        shutil.rmtree(venv, ignore_errors=True)
        subprocess.run([find_python(), "-m", "venv", str(venv)], check=True)
        with (
            resources.as_file(PINS.joinpath(REQUIREMENTS)) as requirements,
            resources.as_file(PINS.joinpath(CONSTRAINTS)) as constraints,
        ):
            install = subprocess.run(
                [
                    str(python),
                    "-m",
                    "pip",
                    "install",
                    "--quiet",
                    "--disable-pip-version-check",
                    "-r",
                    str(requirements),
                    "-c",
                    str(constraints),
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
    """One emulator process group. ``activity_poll_seconds`` shortens LocalStack's
    GetActivityTask long poll (60 s, as on AWS) for a dev loop that restarts workers: its
    server side keeps polling after the client has gone, and would take the next task for a
    worker that no longer exists (see localstack_boot.py)."""

    def __init__(
        self, log_path: Path | None = None, *, activity_poll_seconds: float | None = None
    ) -> None:
        self.port = 0
        self.endpoint_url = ""
        self.pid = 0
        self._process: subprocess.Popen[bytes] | None = None
        self._root: tempfile.TemporaryDirectory[str] | None = None
        self._log_path = log_path
        self._log: IO[bytes] | None = None
        self._activity_poll_seconds = activity_poll_seconds
        self._aborted = threading.Event()

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
            # Queue URLs on the gateway's own address (path strategy: http://HOST/queue/...),
            # and that host is LOCALSTACK_HOST, else localhost.localstack.cloud:4566, a name
            # that needs DNS (absent offline, in containers) and a port that is not ours.
            SQS_ENDPOINT_STRATEGY="path",
            LOCALSTACK_HOST=f"127.0.0.1:{self.port}",
            DISABLE_EVENTS="1",
            SKIP_SSL_CERT_DOWNLOAD="1",
            PERSISTENCE="0",
            FILESYSTEM_ROOT=str(root / "fs"),
            TMPDIR=str(root),
            LOCALSTACK_VOLUME_DIR=str(root / "volume"),
            DNS_ADDRESS="0",
        )
        command = [str(python), "-m", "localstack.runtime.main"]
        if self._activity_poll_seconds is not None:
            boot = root / BOOT
            boot.write_bytes(PINS.joinpath(BOOT).read_bytes())
            env["SFN_DEV_ACTIVITY_POLL_SECONDS"] = str(self._activity_poll_seconds)
            command = [str(python), str(boot)]
        log_path = self._log_path or root / "localstack.log"
        self._log_path = log_path
        self._log = open(log_path, "wb")  # noqa: SIM115 - closed in stop()
        self._process = subprocess.Popen(
            command,
            env=env,
            cwd=root,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            preexec_fn=_die_with_parent,
        )
        self.pid = self._process.pid
        try:
            self._wait_until_healthy()
        except BaseException:
            self.stop()
            raise
        return self.endpoint_url

    def abort(self) -> None:
        """Ends a ``start`` still waiting for health (from another thread): it raises
        EmulatorError and stops what it started."""
        self._aborted.set()

    def _wait_until_healthy(self) -> None:
        assert self._process is not None
        deadline = time.monotonic() + START_TIMEOUT_SECONDS
        url = f"{self.endpoint_url}/_localstack/health"
        while time.monotonic() < deadline:
            if self._aborted.is_set():
                raise EmulatorError("LocalStack start abandoned: asked to stop")
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
            # Waiting on an external process: nothing to await; abort() ends the wait.
            self._aborted.wait(0.25)
        raise EmulatorError(
            f"LocalStack was not healthy after {START_TIMEOUT_SECONDS:.0f}s:\n" + self.log_tail()
        )

    def log_tail(self, lines: int = 30) -> str:
        if self._log_path is None or not self._log_path.exists():
            return ""
        text = self._log_path.read_text(errors="replace").splitlines()
        return "\n".join(text[-lines:])

    def kill(self) -> None:
        """SIGKILL to the whole group at once (a second Ctrl-C); ``stop`` still cleans up."""
        if self.pid:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.pid, signal.SIGKILL)

    def stop(self) -> None:
        process, self._process = self._process, None
        if process is not None and process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=STOP_WAIT_SECONDS)
        if process is not None:
            # Children that outlived LocalStack's own shutdown go with the group.
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(process.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=STOP_WAIT_SECONDS)
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
