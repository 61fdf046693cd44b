"""CPU slots: at most N heavy steps at once on this machine, whichever run they belong to.

Each run's executor runs at most two steps at once, but two runs (one per distance, from the
refit command or the run queue) would put four heavy steps on two cores and hold four steps'
data in memory. A heavy step therefore holds one of N slots while it runs: an exclusive
``flock`` on one of the files ``slot-0.lock`` .. ``slot-<N-1>.lock`` in a folder of the
instance. The kernel drops a process's locks when it exits, however it exits (a crash or
SIGKILL included), so a slot can never be leaked by a dead step.

The lock is taken before the step loads its inputs, so a waiting step holds no data.
Waiters poll. A low-priority waiter (by default, a process with a positive nice value, as the
refit command's later-distance runs are) takes a slot only when no other waiter is waiting
(those hold a shared lock on ``waiting.lock`` while they wait) and the slot has stayed free
for ``LOW_PRIORITY_GRACE_S``: the step a run starts after its last one ended needs a moment
to come up and ask. Best effort, no stricter order is promised.
"""

from __future__ import annotations

import fcntl
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

POLL_S = 0.1
LOW_PRIORITY_GRACE_S = 3.0


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


def _others_waiting(folder: Path) -> bool:
    """Whether a normal-priority waiter holds its shared lock on ``waiting.lock``."""
    fd = os.open(folder / "waiting.lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)  # closing drops the lock, if it was taken
    return False


def acquire(folder: Path, slots: int, *, on_wait: Callable[[], None] | None = None,
            poll_s: float = POLL_S, low_priority: bool | None = None, grace_s: float = LOW_PRIORITY_GRACE_S) -> Slot:
    """Block until one of ``slots`` slots in ``folder`` is free, and hold it.

    ``on_wait`` is called once, when every slot is taken at the first try. ``low_priority``
    (default: whether this process runs at a positive nice value) yields a free slot to the
    waiters that are not low-priority, and to the steps about to ask for one: it takes a slot
    only after seeing it free for ``grace_s`` with nobody else waiting (unless it found it
    free at its first try).
    """
    if slots < 1:
        raise ValueError(f"slots must be at least 1, not {slots}")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    low = os.getpriority(os.PRIO_PROCESS, 0) > 0 if low_priority is None else low_priority
    t0 = time.monotonic()
    told = False
    waiting = -1  # the shared lock on waiting.lock that a normal-priority waiter holds
    free_since: float | None = None  # a low-priority waiter: since when it saw a slot free
    try:
        while True:
            if low and _others_waiting(folder):
                free_since = None
            else:
                for i in range(slots):
                    fd = _try(folder / f"slot-{i}.lock")
                    if fd is None:
                        continue
                    now = time.monotonic()
                    if not low or not told or (free_since is not None and now - free_since >= grace_s):
                        return Slot(i, fd, now - t0)
                    free_since = now if free_since is None else free_since
                    os.close(fd)  # seen free: leave it to whoever comes up to ask in the grace time
                    break
                else:
                    free_since = None
            if not low and waiting < 0:
                waiting = os.open(folder / "waiting.lock", os.O_RDWR | os.O_CREAT, 0o644)
                fcntl.flock(waiting, fcntl.LOCK_SH)
            if not told and on_wait is not None:
                on_wait()
            told = True
            time.sleep(poll_s)
    finally:
        if waiting >= 0:
            os.close(waiting)
