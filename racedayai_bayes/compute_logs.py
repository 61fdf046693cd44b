"""The local instance's compute-log manager: Dagster's local one, mirrored by a thread.

Dagster's :class:`LocalComputeLogManager` captures each step's stdout and stderr in files
(the UI's stdout/stderr views of a step) and mirrors them to the streams the step process
had with ``tail -F``: two ``tail`` processes and two Python watcher processes per step. It
terminates them as soon as the step ends, whether or not ``tail`` has copied the step's
last lines (dagster-io/dagster#23336; its ``DAGSTER_COMPUTE_LOG_TAIL_WAIT_AFTER_FINISH``
would make every step wait a fixed time instead). A step process's stderr is where
``racedayai-bayes refit`` keeps its log (``$DAGSTER_HOME/logs/refit-*.log``, Dagster's event
lines; ``--verbose`` streams it) and its stdout is the command's: a step's ``STEP_FAILURE``
line, its last, was missing from ``--verbose`` in a run of the test suite on an overloaded
machine.

:class:`MirroredComputeLogManager` captures to the same files, and the step process copies
each file to the stream it replaced with a thread of its own: whole lines, in writes of at
most :data:`PIPE_BUF` bytes where the lines allow (so that lines of two steps writing to
one pipe never mix), every :data:`POLL_S` while the step runs, and what is left once the
step has ended, before the capture is marked complete. So every line reaches the stream,
and no process is started per step. What the thread had not copied when the process was
killed (SIGKILL, or a signal nothing handles) stays in the step's capture file only, which
the UI still shows.
"""

from __future__ import annotations

import os
import select
import sys
import threading
from collections.abc import Generator, Sequence
from contextlib import contextmanager

from dagster import Field, Float, StringSource
from dagster._core.instance.ref import compute_logs_directory
from dagster._core.storage.compute_log_manager import CapturedLogContext, ComputeIOType
from dagster._core.storage.local_compute_log_manager import IO_TYPE_EXTENSION, LocalComputeLogManager
from dagster._utils import ensure_file, touch_file

POLL_S = 0.1  # how often a running step's capture files are copied to its streams
CHUNK = 1 << 16  # bytes read at a time
PIPE_BUF = select.PIPE_BUF  # a write to a pipe up to this size is never mixed with another process's (4,096 on Linux)
CLOSE_WAIT_S = 10.0  # how long a step's end waits for the copy of the rest of its output


def line_pieces(data: bytes, limit: int = PIPE_BUF) -> tuple[list[bytes], bytes]:
    """``data`` cut into pieces of whole lines of at most ``limit`` bytes (a longer line is a
    piece of its own), and the unfinished last line."""
    end = data.rfind(b"\n") + 1
    pieces, start = [], 0
    while start < end:
        stop = start + limit
        if stop < end:
            cut = data.rfind(b"\n", start, stop) + 1
            if cut <= start:  # a line longer than the limit
                cut = data.find(b"\n", stop) + 1
        else:
            cut = end
        pieces.append(data[start:cut])
        start = cut
    return pieces, data[end:]


class _Mirror:
    """Copies what is appended to the file ``path`` to the file descriptor ``out_fd``, with a
    thread that owns its descriptors (a copy of ``out_fd``): the caller may close its own at
    any time."""

    def __init__(self, path: str, out_fd: int):
        self._partial = b""
        self._broken = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="racedayai-compute-log-mirror", daemon=True)
        self._in = os.open(path, os.O_RDONLY)
        try:
            self._out = os.dup(out_fd)
            try:
                self._thread.start()
            except BaseException:
                os.close(self._out)
                raise
        except BaseException:
            os.close(self._in)
            raise

    def _send(self, data: bytes) -> None:
        view = memoryview(data)
        while view and not self._broken:
            try:
                view = view[os.write(self._out, view):]
            except InterruptedError:
                continue
            except OSError:  # the stream is gone (a closed pipe): the capture file keeps everything
                self._broken = True

    def _copy(self, up_to: int | None = None) -> None:
        """Copy what the file holds beyond what was copied (up to offset ``up_to``; without it,
        until the step has ended), whole lines only: a line longer than PIPE_BUF without its
        end yet goes as it is, as an unfinished line could otherwise grow without bound."""
        while not self._broken and (up_to is not None or not self._stop.is_set()):
            want = CHUNK if up_to is None else min(CHUNK, up_to - os.lseek(self._in, 0, os.SEEK_CUR))
            chunk = os.read(self._in, want) if want > 0 else b""
            if not chunk:
                return
            pieces, self._partial = line_pieces(self._partial + chunk)
            if len(self._partial) >= PIPE_BUF:
                pieces.append(self._partial)
                self._partial = b""
            for piece in pieces:
                self._send(piece)

    def _run(self) -> None:
        try:
            while not self._stop.wait(POLL_S):
                self._copy()
            # the step has ended: the rest of what it wrote (bounded, should a process it left
            # behind still write), and an unfinished last line
            self._copy(up_to=os.fstat(self._in).st_size)
            if self._partial:
                self._send(self._partial)
        finally:
            os.close(self._in)
            os.close(self._out)

    def close(self) -> None:
        """Stop polling and let the thread copy the rest, for at most :data:`CLOSE_WAIT_S` (a
        stream nobody reads): the step then goes on, and what the thread has not copied by the
        time the process ends stays in the capture file only."""
        self._stop.set()
        self._thread.join(CLOSE_WAIT_S)


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
    try:
        mirror = _Mirror(path, saved)
        try:
            try:
                with open(path, "ab", buffering=0) as target:
                    os.dup2(target.fileno(), fd)
                yield
            finally:
                try:
                    stream.flush()
                finally:
                    os.dup2(saved, fd)  # also if the redirection itself was interrupted: harmless
        finally:
            mirror.close()
    finally:
        os.close(saved)


class MirroredComputeLogManager(LocalComputeLogManager):
    """:class:`LocalComputeLogManager` whose captures are mirrored to the step process's
    streams by a thread instead of ``tail`` processes (the module docstring).

    Without a ``base_dir`` the captures go where Dagster's default local manager keeps them:
    ``storage/`` under the instance's root folder."""

    def __init__(self, base_dir: str | None = None, polling_timeout: float | None = None, inst_data=None):
        super().__init__(base_dir=base_dir, polling_timeout=polling_timeout, inst_data=inst_data)

    @classmethod
    def config_type(cls):
        return {
            "base_dir": Field(StringSource, is_required=False),
            "polling_timeout": Field(Float, is_required=False),
        }

    @classmethod
    def from_config_value(cls, inst_data, config_value) -> MirroredComputeLogManager:
        return cls(inst_data=inst_data, **dict(config_value or {}))

    def register_instance(self, instance) -> None:
        super().register_instance(instance)
        if self._base_dir is None:
            self._base_dir = compute_logs_directory(instance.root_directory)

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
