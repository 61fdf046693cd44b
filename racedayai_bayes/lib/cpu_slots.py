"""CPU slots: at most N heavy steps at once on this machine, whichever run they belong to.

Each run's executor runs at most two heavy steps at once, but two runs (one per distance, from the
refit command or the run queue) would put four heavy steps on two cores and hold four steps'
data in memory. A heavy step therefore holds one of N slots while it runs: an exclusive
``flock`` on one of the files ``slot-0.lock`` .. ``slot-<N-1>.lock`` in a folder of the
instance. The kernel drops a process's locks when it exits, however it exits (a crash or
SIGKILL included), so a slot can never be leaked by a dead step.

The lock is taken before the step loads its inputs, so a waiting step holds no data.

Waiters queue: each holds a locked ticket file in ``queue/`` named by its rank (lower first)
and the time it started waiting, and only the first live ticket may take a freed slot. A
ticket whose lock can be taken belongs to a dead waiter and is removed. Without the queue,
whichever waiter polled first after a slot was freed took it: at full scale the longest
step (a forecast posterior) waited 27 s while two shorter steps that queued after it went
first, and the refit ended that much later.

A stopped waiter (SIGSTOP, Ctrl-Z) keeps its ticket and its place, but does not hold up the
others: while it is stopped the next live ticket is served (it is served in its turn once it
runs again). A waiter killed while it was making its ticket leaves a locked-then-unlocked
temporary file behind; such a file, unlocked and a minute old, is removed.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from racedayai_bayes.lib.processes import stopped

# A caller that may have a second core for a while (a Dagster step: defs/resources.py
# CpuSlots.second_core) passes a callable whose context says whether it has one: the
# input checks (lib/data/contracts.py) and the CSV writer (lib/outputs/io.py) ask for it only
# for the work that uses it.
SecondCore = Callable[[], contextlib.AbstractContextManager[bool]]

POLL_S = 0.1
# a ticket's temporary file is locked by its waiter a moment after it is created, and renamed
# at once: one that can be locked and is this old was left by a waiter that died in between
STALE_TEMP_S = 60.0


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


def try_acquire(folder: Path, slots: int, *, unless_queued: bool = False) -> Slot | None:
    """One of ``slots`` slots in ``folder`` if one is free now, held; else None (no waiting).

    For a step that holds a slot and could use a second core for a while, if one is idle:
    with ``unless_queued``, not while another step waits for a slot.
    """
    if slots < 1:
        raise ValueError(f"slots must be at least 1, not {slots}")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    if unless_queued and _live_tickets(folder / QUEUE):
        return None
    for i in range(slots):
        fd = _try(folder / f"slot-{i}.lock")
        if fd is not None:
            return Slot(i, fd, 0.0)
    return None


QUEUE = "queue"


def _ticket_pid(name: str) -> int | None:
    """The waiter's pid in a ticket's name (``{rank}-{time}-{pid}-{thread}.ticket``)."""
    parts = name.split("-")
    return int(parts[2]) if len(parts) == 4 and parts[2].isdigit() else None


def _remove_if_unlocked(path: Path) -> bool | None:
    """Remove ``path`` if no process holds its lock (its owner has died): True if removed,
    False if its owner holds it, None if it is gone already."""
    try:
        fd = os.open(path, os.O_RDWR)
    except FileNotFoundError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    else:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        return True
    finally:
        os.close(fd)


def _remove_stale_temps(queue: Path, names: list[str]) -> None:
    """Remove temporary ticket files whose waiter died before it renamed them (see STALE_TEMP_S)."""
    now = time.time()
    for name in names:
        with contextlib.suppress(FileNotFoundError):
            if now - (queue / name).stat().st_mtime >= STALE_TEMP_S:
                _remove_if_unlocked(queue / name)


def _live_tickets(queue: Path, own: str | None = None) -> list[str]:
    """The names of the live tickets in ``queue``, in serving order; dead waiters' removed,
    stopped waiters' left in place but not counted (they wait, but must not hold the queue)."""
    try:
        listing = os.listdir(queue)
    except FileNotFoundError:
        return []
    names = sorted(n for n in listing if n.endswith(".ticket"))
    temps = [n for n in listing if n.endswith(".new")]
    if temps:
        _remove_stale_temps(queue, temps)
    live = []
    for name in names:
        if name == own:
            live.append(name)
            continue
        # True: a dead waiter's, removed; None: its waiter took a slot, or gave up, just now;
        # False: its waiter holds the lock, so it is alive, and waiting unless it is stopped
        if _remove_if_unlocked(queue / name) is False:
            pid = _ticket_pid(name)
            if pid is None or not stopped(pid):
                live.append(name)
    return live


class _Ticket:
    """This waiter's place in the queue: a file it holds locked until it leaves."""

    def __init__(self, queue: Path, rank: int):
        queue.mkdir(parents=True, exist_ok=True)
        self.name = f"{max(0, min(int(rank), 9999)):04d}-{time.time_ns():020d}-{os.getpid()}-{threading.get_ident()}.ticket"
        self.path = queue / self.name
        # locked under a temporary name first, so that no one sees it unlocked and removes it
        tmp = queue / f".{self.name}.new"
        self.fd = os.open(tmp, os.O_RDWR | os.O_CREAT, 0o644)
        fcntl.flock(self.fd, fcntl.LOCK_EX)
        os.rename(tmp, self.path)

    def first(self) -> bool:
        live = _live_tickets(self.path.parent, own=self.name)
        return bool(live) and live[0] == self.name

    def leave(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)
        os.close(self.fd)


def acquire(folder: Path, slots: int, *, on_wait: Callable[[], None] | None = None,
            poll_s: float = POLL_S, rank: int = 0) -> Slot:
    """Block until one of ``slots`` slots in ``folder`` is free, and hold it.

    A free slot is taken at once if no one waits. Otherwise this waiter joins the queue:
    waiters are served by ``rank`` (lower first, 0..9999), then in the order they came.
    ``on_wait`` is called once, when the step has to wait.
    """
    if slots < 1:
        raise ValueError(f"slots must be at least 1, not {slots}")
    t0 = time.monotonic()
    folder = Path(folder)
    if not _live_tickets(folder / QUEUE):
        slot = try_acquire(folder, slots)
        if slot is not None:
            return slot
    ticket = _Ticket(folder / QUEUE, rank)
    try:
        told = False
        while True:
            if ticket.first():
                slot = try_acquire(folder, slots)
                if slot is not None:
                    slot.waited_s = time.monotonic() - t0
                    return slot
            if not told and on_wait is not None:
                on_wait()
            told = True
            time.sleep(poll_s)
    finally:
        ticket.leave()
