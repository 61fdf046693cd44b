"""Processes of this host: whether one runs or is stopped, an exit without the interpreter's
teardown, the garbage collector's settings for a process's long-lived imports, and Linux's
``prctl``."""

from __future__ import annotations

import contextlib
import functools
import gc
import os
from collections.abc import Iterator
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


def freeze_imports() -> None:
    """Move every object alive now (the modules a process imported, what they made) to the
    collector's permanent generation, then turn the collector on.

    A full collection walks every object the collector tracks. After the imports of a step
    process (Dagster, pandas, ArviZ, SciPy, Matplotlib, the code location) that is about 330,000
    objects, 0.18-0.19 s of CPU each time; and the imports themselves ran six full
    collections, 0.57-0.63 s in all of the step server's 2.7 s of preload (measured 2026-12-06). The
    objects of modules are never garbage, so none is walked again: what Python's
    documentation of :func:`gc.freeze` recommends for a server that forks its workers (its
    children inherit the permanent generation, and their own collections then leave the
    parent's pages unwritten, shared). Cycles made later are collected as usual.
    """
    gc.freeze()
    gc.enable()


@contextlib.contextmanager
def imports_frozen() -> Iterator[None]:
    """The collector off while the block imports, then what it imported frozen (:func:`freeze_imports`).

    On an error the collector is turned back on as it was, nothing frozen.
    """
    was_on = gc.isenabled()
    gc.disable()
    try:
        yield
    except BaseException:
        if was_on:
            gc.enable()
        raise
    freeze_imports()


@functools.cache
def _prctl_function():
    """The C library's prctl with the argument types the kernel reads (unsigned longs after the
    option), looked up once per process; None where there is none."""
    try:
        import ctypes

        fn = ctypes.CDLL(None, use_errno=True).prctl
        fn.argtypes = (ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong)
        fn.restype = ctypes.c_int
        return fn
    except Exception:  # noqa: BLE001 - ImportError, OSError, AttributeError, TypeError: no prctl here
        return None


def prctl(option: int, arg2: int = 0) -> int | None:
    """Linux's ``prctl(option, arg2, 0, 0, 0)``: its result (0 or more), or None where the call
    is unavailable (not Linux, no C library) or fails (its errno is then ``ctypes.get_errno()``)."""
    fn = _prctl_function()
    if fn is None:
        return None
    result = fn(option, arg2, 0, 0, 0)
    return None if result < 0 else result
