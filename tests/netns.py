"""A second network host on this machine: a network namespace joined to ours by a veth pair.

Taking the link down makes a real black hole: packets, TCP keepalive probes included, are
dropped without an answer or a reset, as when a NAT or load balancer loses its state.
Needs root and iproute2 (``ip``); ``available()`` says whether this machine can.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass


def available() -> bool:
    return os.geteuid() == 0 and shutil.which("ip") is not None


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=10)


@dataclass(frozen=True)
class Link:
    namespace: str
    host_ip: str  # our side, where servers for the namespace listen
    guest_ip: str
    host_device: str

    def command(self, *argv: str) -> list[str]:
        """``argv`` run inside the namespace."""
        return ["ip", "netns", "exec", self.namespace, *argv]

    def black_hole(self) -> None:
        _ip("link", "set", self.host_device, "down")

    def heal(self) -> None:
        _ip("link", "set", self.host_device, "up")


@contextlib.contextmanager
def guest_host() -> Iterator[Link]:
    """A namespace with its own address, removed (with its link) on exit."""
    tag = os.getpid() % 250 + 1  # parallel test runs get their own names and subnet
    link = Link(
        namespace=f"sfn-guest-{tag}",
        host_ip=f"10.213.{tag}.1",
        guest_ip=f"10.213.{tag}.2",
        host_device=f"sfnh{tag}",
    )
    guest_device = f"sfng{tag}"
    with contextlib.suppress(subprocess.CalledProcessError):
        _ip("netns", "del", link.namespace)  # left over by a killed run
    _ip("netns", "add", link.namespace)
    try:
        _ip("link", "add", link.host_device, "type", "veth", "peer", "name", guest_device)
        _ip("link", "set", guest_device, "netns", link.namespace)
        _ip("addr", "add", f"{link.host_ip}/30", "dev", link.host_device)
        _ip("link", "set", link.host_device, "up")
        _ip("-n", link.namespace, "addr", "add", f"{link.guest_ip}/30", "dev", guest_device)
        _ip("-n", link.namespace, "link", "set", guest_device, "up")
        _ip("-n", link.namespace, "link", "set", "lo", "up")
        yield link
    finally:
        with contextlib.suppress(subprocess.CalledProcessError):
            _ip("link", "del", link.host_device)
        _ip("netns", "del", link.namespace)
