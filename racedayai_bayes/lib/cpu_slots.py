"""CPU slots: at most N heavy steps at once on this machine, whichever run they belong to.

Each run's executor runs at most two steps at once, but two runs (one per distance, from the
refit command or the run queue) would put four heavy steps on two cores and hold four steps'
data in memory. A heavy step therefore holds one of N slots while it runs: an exclusive
``flock`` on one of the files ``slot-0.lock`` .. ``slot-<N-1>.lock`` in a folder of the
instance. The kernel drops a process's locks when it exits, however it exits (a crash or
SIGKILL included), so a slot can never be leaked by a dead step.

The lock is taken before the step loads its inputs, so a waiting step holds no data.
Waiters poll; no order among them is promised.
"""

from __future__ import annotations

import fcntl
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

POLL_S = 0.1


@dataclass
class Slot:
    """A held slot: release it, or let the process's exit release it."""

    index: int
    fd: int
    waited_s: float

    def release(self) -> None:
        if self.fd >= 0:
            try:
                fcntl.flock(self.fd, fcntl.LOCK_UN)
            finally:
                os.close(self.fd)
                self.fd = -1


def _try(path: Path) -> int | None:
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    return fd


def try_acquire(folder: Path, slots: int) -> Slot | None:
    """One of ``slots`` slots in ``folder`` if one is free now, held; else None (no waiting).

    For a step that holds a slot and could use a second core for a while, if one is idle.
    """
    if slots < 1:
        raise ValueError(f"slots must be at least 1, not {slots}")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(slots):
        fd = _try(folder / f"slot-{i}.lock")
        if fd is not None:
            return Slot(i, fd, 0.0)
    return None


def acquire(folder: Path, slots: int, *, on_wait: Callable[[], None] | None = None,
            poll_s: float = POLL_S) -> Slot:
    """Block until one of ``slots`` slots in ``folder`` is free, and hold it.

    ``on_wait`` is called once, when every slot is taken at the first try.
    """
    t0 = time.monotonic()
    told = False
    while True:
        slot = try_acquire(folder, slots)
        if slot is not None:
            slot.waited_s = time.monotonic() - t0
            return slot
        if not told and on_wait is not None:
            on_wait()
        told = True
        time.sleep(poll_s)
