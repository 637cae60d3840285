"""streams.OutputStream where a write that cannot wait does not apply (a file): every line
goes through its writer thread, in order. Pipes: tests/hostile/test_output_channels.py."""

from __future__ import annotations

import os
from pathlib import Path

from sfn_worker import streams


def test_a_file_gets_every_line_in_order(tmp_path: Path) -> None:
    path = tmp_path / "worker.log"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    try:
        stream = streams.OutputStream(fd, "file", limit_bytes=1 << 20)
        assert all(stream.write(f"{n}\n".encode()) for n in range(2_000))
        assert stream.flush(10)
        stream.close(1)
        assert not stream.write(b"after close\n")
    finally:
        os.close(fd)
    assert path.read_text().split() == [str(n) for n in range(2_000)]
    assert stream.dropped == 0
