"""Processes of this host: whether one runs or is stopped, and an exit without the interpreter's teardown."""

from __future__ import annotations

import os
from typing import NoReturn


def _state(pid: int) -> bytes | None:
    """The process's state letter in ``/proc/<pid>/stat`` (R, S, T, Z, ...), or None if it
    cannot be read (gone, or no ``/proc``)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            return fh.read().rsplit(b")", 1)[1].split()[0]
    except (OSError, IndexError):
        return None


def alive(pid: int) -> bool:
    """Whether process ``pid`` runs: it exists and is not a zombie (a process that has died
    stays one until its parent reaps it). One owned by another user counts as running."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return _state(pid) != b"Z"  # None (no /proc): existence is all we can tell


def stopped(pid: int) -> bool:
    """Whether process ``pid`` is stopped (SIGSTOP, or Ctrl-Z on its terminal): state ``T``
    in ``/proc``. False if it runs, has gone, or there is no ``/proc`` to tell."""
    return _state(pid) in (b"T", b"t")


def exit_now(code: int) -> NoReturn:
    """Flush stdout and stderr and end this process with ``code``, without the interpreter's
    teardown (freeing every module: most of a second in a process that imported Dagster,
    ArviZ and the code location). The caller runs whatever else must happen first."""
    import sys

    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:  # noqa: BLE001 - a closed stream has nothing to flush
            pass
    os._exit(code)
