"""The local instance's compute-log manager: Dagster's local one, mirrored by a thread.

Dagster's :class:`LocalComputeLogManager` captures each step's stdout and stderr in files
(the UI's stdout/stderr views of a step) and mirrors them to the step process's own
streams with ``tail -F``: two ``tail`` processes and two Python watcher processes per
step. When the step ends it terminates them at once, and ``tail`` polls about once a
second, so the last lines a step wrote are often never mirrored (dagster-io/dagster#23336).
Here the step process's own stdout and stderr are where ``racedayai-bayes refit`` keeps
its log (``$DAGSTER_HOME/logs/refit-*.log``; ``--verbose`` streams it): a step's
``STEP_FAILURE`` line, its last, was missing from that log and from ``--verbose`` in a run
of the test suite on an overloaded machine.

:class:`MirroredComputeLogManager` captures to the same files, and the step process copies
each file to the stream it replaced with a thread of its own: it polls the file every
:data:`POLL_S` while the step runs, and copies whatever is left once the step has ended,
before the capture is marked complete. So every line reaches the log, and no process is
started per step (about 1 s of CPU in a demo refit of 18 steps, measured 2026-12-05).
What a step writes in its last :data:`POLL_S` before the process is killed (SIGKILL) stays
in its capture file only, which the UI still shows.
"""

from __future__ import annotations

import os
import sys
import threading
from collections.abc import Generator, Sequence
from contextlib import contextmanager

from dagster import Field, Float, StringSource
from dagster._core.storage.compute_log_manager import CapturedLogContext, ComputeIOType
from dagster._core.storage.local_compute_log_manager import IO_TYPE_EXTENSION, LocalComputeLogManager
from dagster._utils import ensure_file, touch_file

POLL_S = 0.1  # how often a running step's capture files are copied to its streams
CHUNK = 1 << 16


class _Mirror:
    """Copies what is appended to ``path`` to the file descriptor ``out_fd`` (a thread)."""

    def __init__(self, path: str, out_fd: int):
        self._in = os.open(path, os.O_RDONLY)
        self._out = out_fd
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="racedayai-compute-log-mirror", daemon=True)
        self._thread.start()

    def _copy_available(self) -> None:
        while True:
            chunk = os.read(self._in, CHUNK)
            if not chunk:
                return
            view = memoryview(chunk)
            while view:
                try:
                    view = view[os.write(self._out, view):]
                except OSError:  # the stream is gone (a closed pipe): the capture file keeps everything
                    return

    def _run(self) -> None:
        while not self._stop.wait(POLL_S):
            self._copy_available()

    def close(self) -> None:
        """Stop polling, then copy whatever the file has beyond what was copied."""
        self._stop.set()
        self._thread.join()
        try:
            self._copy_available()
        finally:
            os.close(self._in)


@contextmanager
def _captured(stream, path: str) -> Generator[None, None, None]:
    """Point ``stream``'s file descriptor at ``path`` (appending) and mirror the file to
    where the descriptor pointed before; on exit, restore it and copy the rest."""
    ensure_file(path)
    try:
        fd = stream.fileno()
    except (AttributeError, OSError, ValueError):  # a stream with no descriptor (a test's capture): as Dagster does, nothing to redirect
        yield
        return
    stream.flush()
    saved = os.dup(fd)
    mirror = None
    try:
        with open(path, "ab", buffering=0) as target:
            mirror = _Mirror(path, saved)
            os.dup2(target.fileno(), fd)
            try:
                yield
            finally:
                stream.flush()
                os.dup2(saved, fd)
    finally:
        if mirror is not None:
            mirror.close()
        os.close(saved)


class MirroredComputeLogManager(LocalComputeLogManager):
    """:class:`LocalComputeLogManager` whose captures are mirrored to the step process's
    streams by a thread instead of ``tail`` processes (the module docstring).

    ``base_dir`` defaults to ``$DAGSTER_HOME/storage``, where Dagster's default local
    manager keeps them."""

    @classmethod
    def config_type(cls):
        return {
            "base_dir": Field(StringSource, is_required=False),
            "polling_timeout": Field(Float, is_required=False),
        }

    @classmethod
    def from_config_value(cls, inst_data, config_value) -> MirroredComputeLogManager:
        config = dict(config_value or {})
        if not config.get("base_dir"):
            home = os.environ.get("DAGSTER_HOME")
            if not home:
                raise ValueError("MirroredComputeLogManager needs a base_dir, or DAGSTER_HOME set")
            config["base_dir"] = os.path.join(home, "storage")
        return cls(inst_data=inst_data, **config)

    @contextmanager
    def capture_logs(self, log_key: Sequence[str]) -> Generator[CapturedLogContext, None, None]:
        if os.name != "posix":
            with super().capture_logs(log_key) as context:
                yield context
            return
        outpath = self.get_captured_local_path(log_key, IO_TYPE_EXTENSION[ComputeIOType.STDOUT])
        errpath = self.get_captured_local_path(log_key, IO_TYPE_EXTENSION[ComputeIOType.STDERR])
        with _captured(sys.stdout, outpath), _captured(sys.stderr, errpath):
            yield CapturedLogContext(log_key)
        # leave the marker Dagster's manager leaves: the capture is complete
        touch_file(self.complete_artifact_path(log_key))
