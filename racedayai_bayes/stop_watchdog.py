"""Ctrl-C ends a refit within a bounded time, whatever its step processes are doing.

Dagster stops a run on an interrupt by asking each step process to stop, then waits for them
all. A step process that does not stop (blocked in a system call, say, or in a state nobody
foresaw) would keep its run, and the command, waiting for ever: CI once saw a refit still
running two minutes after its Ctrl-C. So, once an interrupt has reached a process that
orchestrates a run, :class:`StopWatchdog` gives that process's step processes
:data:`STOP_GRACE_S` to end. Then it writes the stack of every thread of each one still
running to the refit's log (:func:`enable_stack_dumps`, on :data:`DUMP_SIGNAL`) and kills it.
Dagster records such a step as failed (its process crashed), the run ends, and the command
exits, with the stacks in the log to say where the step was.

``kill -USR1 <pid>`` writes the stacks of the command's processes (the command, its second
process, the step server and the step processes) to the refit's log the same way, without
stopping them: the way to see where a refit that seems stuck is. (Other helpers, such as
multiprocessing's resource trackers, have no such handler: SIGUSR1 would end them.)

No Dagster import: this only sees signals and processes.
"""

from __future__ import annotations

import faulthandler
import multiprocessing.process
import os
import select
import signal
import threading
import time
from collections.abc import Callable

from racedayai_bayes.lib.processes import alive

STOP_GRACE_S = 30.0
DUMP_SIGNAL = signal.SIGUSR1
# after the stack-dump signal, before the kill: time to write the stacks
DUMP_WAIT_S = 1.0


_dump_file = None  # the file the stacks go to, kept open for the process's life


def enable_stack_dumps() -> None:
    """On :data:`DUMP_SIGNAL`, write every thread's stack to where this process's fd 2 points
    now (the refit's log, for the command's processes and the step server) and go on.

    A copy of fd 2 is taken now: a step process (forked from the step server, so it inherits
    the handler and the copy) has its fd 2 pointed at its compute log while its step runs,
    and its stacks must still reach the refit's log."""
    global _dump_file
    if _dump_file is None:
        _dump_file = os.fdopen(os.dup(2), "w")
    faulthandler.register(DUMP_SIGNAL, file=_dump_file, all_threads=True, chain=False)


def _step_processes() -> list[tuple[int, str]]:
    """(pid, name) of every process this one started with multiprocessing that still runs:
    the multiprocess executor's step processes (forked by the step server, but started, and
    so listed, here). Read without polling them, which the executor's thread does."""
    children = list(multiprocessing.process._children)  # CPython 3.11-3.13
    return [(p.pid, p.name) for p in children if p.pid is not None and alive(p.pid)]


class StopWatchdog:
    """While entered (in the main thread): after the first SIGINT this process receives, wait
    ``grace_s``; then dump the stacks of this process's step processes that still run, and
    kill them. ``on_kill`` gets the killed pids. ``interrupted`` says whether a SIGINT came.

    It notices the signal through Python's wakeup fd, so it does not replace the handler
    Dagster installs while a run executes.
    """

    def __init__(self, grace_s: float = STOP_GRACE_S, on_kill: Callable[[list[int]], None] | None = None,
                 processes: Callable[[], list[tuple[int, str]]] = _step_processes):
        self.grace_s = grace_s
        self.on_kill = on_kill
        self.processes = processes
        self.interrupted = False
        self.killed: list[int] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._fds: tuple[int, int] | None = None
        self._previous = -1

    def __enter__(self) -> StopWatchdog:
        r, w = os.pipe()
        os.set_blocking(w, False)
        self._fds = (r, w)
        self._previous = signal.set_wakeup_fd(w, warn_on_full_buffer=False)
        self._thread = threading.Thread(target=self._watch, name="racedayai-stop-watchdog", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *_exc) -> None:
        signal.set_wakeup_fd(self._previous)
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        if self._fds is not None:
            for fd in self._fds:
                os.close(fd)
            self._fds = None

    def _watch(self) -> None:
        r = self._fds[0]
        while not self._stop.is_set():
            ready, _, _ = select.select([r], [], [], 0.2)
            if ready and signal.SIGINT in os.read(r, 512):
                self.interrupted = True
                break
        if self._stop.wait(self.grace_s):
            return
        self.kill_stragglers()

    def kill_stragglers(self) -> list[int]:
        """Dump the stacks of this process's step processes that still run, then kill them.
        Each is signalled only while it is still one of this process's running children (a
        pid read again just before each signal), and the kills come before anything that
        could fail (the dump of this process's own stacks, the report)."""
        left = [pid for pid, _name in self.processes()]
        for pid in left:
            # a stopped process (SIGSTOP, Ctrl-Z) is continued first: stopped, it can neither
            # write its stacks nor wake the thread that waits for Dagster's stop request, and
            # the executor, which waits for that thread to acknowledge the request
            # (multiprocessing's Event.set), would wait for ever once the process is killed
            _signal_if_running(pid, signal.SIGCONT, self.processes)
            _signal_if_running(pid, DUMP_SIGNAL, self.processes)
        if left:
            time.sleep(DUMP_WAIT_S)
        killed = [pid for pid in left if _signal_if_running(pid, signal.SIGKILL, self.processes)]
        self.killed.extend(killed)
        try:
            # this process's own threads too: where the orchestration waits, for the log
            faulthandler.dump_traceback(all_threads=True)
        except (OSError, ValueError, RuntimeError):
            pass
        if killed and self.on_kill is not None:
            self.on_kill(killed)
        return killed


def _signal_if_running(pid: int, signum: int, processes: Callable[[], list[tuple[int, str]]]) -> bool:
    """Send ``signum`` to ``pid`` if it is still one of ``processes()``; whether it was sent."""
    if pid not in {p for p, _ in processes()}:
        return False
    try:
        os.kill(pid, signum)
    except (ProcessLookupError, PermissionError):
        return False
    return True


# How often a step process looks whether the process that started it still runs (s).
ORPHAN_POLL_S = 2.0
# The exit code of a step process that ended itself because that process had gone.
ORPHANED_EXIT = 70


def end_steps_with_their_run() -> None:
    """In the step server: every process forked from it from now on (a step process) ends
    itself within :data:`ORPHAN_POLL_S` once the process that asked for it (the run's
    orchestrating process: the run worker, or the command) has gone.

    A run worker killed with SIGKILL (by hand, or the kernel's out-of-memory killer) leaves its
    step processes behind: a step that had finished blocked for ever at its exit, its event
    queue's feeder thread writing to a pipe that nobody reads any more (each step holds that
    pipe's read end too, so the write never fails), and the server stayed as long as they did
    (each step holds its "alive" pipe). About 1 GB at demo scale, several at full scale, until
    someone killed them by hand (seen 2026-12-06). A step still running when its run died would
    otherwise have gone on writing for a run already marked failed.
    """
    os.register_at_fork(after_in_child=_start_requester_watch)


def _start_requester_watch() -> None:
    threading.Thread(target=_watch_requester, name="racedayai-requester-watch", daemon=True).start()


def _watch_requester() -> None:
    import multiprocessing

    # set once the forked process has read what to run (multiprocessing.spawn._main): the pid
    # of the process that started it, not the server's
    while (parent := multiprocessing.parent_process()) is None:
        time.sleep(0.05)
    pid = parent.pid
    started = _start_time(pid)
    while True:
        time.sleep(ORPHAN_POLL_S)
        if started is None:  # not read yet (a moment without a free file descriptor, say): again
            started = _start_time(pid)
        now = _start_time(pid) if started is not None else None
        # gone, or its pid already taken by another process (both start times read, and they
        # differ): never on a failed read alone, which must not end a step whose run lives
        if not alive(pid) or (started is not None and now is not None and now != started):
            os._exit(ORPHANED_EXIT)  # nothing to flush: its outputs are written atomically or not at all


def _start_time(pid: int) -> int | None:
    """When process ``pid`` started (clock ticks since boot, ``/proc/<pid>/stat``), to tell it
    from a later process given the same pid; None if it cannot be read."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            return int(fh.read().rsplit(b")", 1)[1].split()[19])
    except (OSError, IndexError, ValueError):
        return None
