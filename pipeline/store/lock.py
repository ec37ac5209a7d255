"""One run at a time: an ``flock`` on a file in the state folder (released by the OS if the process dies),
and whether the process that started something is still alive."""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator
from pathlib import Path

from pipeline.errors import LockHeldError


@contextlib.contextmanager
def exclusive_lock(path: Path) -> Iterator[None]:
    """Hold an exclusive, non-blocking lock on ``path`` for the ``with`` block.

    Raises:
        LockHeldError: another process holds it.
    """
    with path.open("a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise LockHeldError(f"{path}: another run holds the lock; try again later") from None
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def process_start(pid: int) -> str | None:
    """Start time of a live process (clock ticks since boot, from /proc), None when it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        try:
            os.kill(pid, 0)  # no /proc (not Linux): is the pid alive at all?
        except ProcessLookupError:
            return None
        except PermissionError:
            return "unknown"
        return "unknown"
    return stat.rpartition(")")[2].split()[19]  # field 22 of /proc/PID/stat
