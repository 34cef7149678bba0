"""What a process holds, read from /proc (Linux): the benchmarks' shared reading of a server's threads and sockets."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path


def threads_and_sockets(pid: int) -> tuple[int, int]:
    """The process's threads and its open sockets (every kind: TCP streams, websockets, its workers' pipes)."""
    status = Path(f"/proc/{pid}/status").read_text()
    threads = int(next(line.split()[1] for line in status.splitlines() if line.startswith("Threads:")))
    sockets = 0
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        with contextlib.suppress(OSError):  # an fd closed while we look
            sockets += os.readlink(fd).startswith("socket:")
    return threads, sockets
