"""Whether a process of this host is running (the step server, a run's orchestrator)."""

from __future__ import annotations

import os


def alive(pid: int) -> bool:
    """Whether process ``pid`` runs: it exists and is not a zombie (a process that has died
    stays one until its parent reaps it). One owned by another user counts as running."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            return fh.read().rsplit(b")", 1)[1].split()[0] != b"Z"
    except (OSError, IndexError):
        return True  # no /proc: existence is all we can tell


def stopped(pid: int) -> bool:
    """Whether process ``pid`` is stopped (SIGSTOP, or Ctrl-Z on its terminal): state ``T``
    in ``/proc``. False if it runs, has gone, or there is no ``/proc`` to tell."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            return fh.read().rsplit(b")", 1)[1].split()[0] in (b"T", b"t")
    except (OSError, IndexError):
        return False
