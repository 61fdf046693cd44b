"""Atomic file writes: a failed or killed run never leaves a partial output behind.

Local targets: output is written to a temporary file beside the target, named
``.<name>.<random>.tmp`` (a dot file that no reader globbing ``*.csv`` sees), and renamed
over the target when complete. A process killed with SIGKILL cannot remove its temporary
file; the next successful write of the same target removes it (:func:`remove_stale_temps`).

Object-store targets (an fsspec URL such as ``s3://bucket/racedayai/x.csv``, ``gs://...`` or
``memory://...``, as a :class:`upath.UPath`): output is written to a local temporary file
and uploaded with a single ``put_file`` when complete. An object PUT is all or nothing
(multipart uploads too: the object appears only when the upload completes), so readers see
the previous object or the whole new one, never a partial one.
"""

from __future__ import annotations

import contextlib
import fcntl
import glob
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO

import pandas as pd
from upath import UPath

from racedayai_bayes.lib.cpu_slots import SecondCore

# fsspec protocols of the local file system: paths with these are written with os.replace
LOCAL_PROTOCOLS = ("", "file", "local")


class OutputWriteError(OSError):
    """Writing an output failed; the previous file (or object) at that path is untouched."""


def as_path(location: str | os.PathLike | UPath) -> Path | UPath:
    """A local :class:`~pathlib.Path` for a plain path or a ``file://`` URL; a UPath otherwise.

    ``as_path("data/outputs")`` and ``as_path("file:///srv/out")`` are local paths;
    ``as_path("s3://bucket/racedayai")`` is an :class:`upath.UPath` on that bucket (its file
    system package, here s3fs, must be installed to read or write it).
    """
    if isinstance(location, UPath):
        upath = location
    else:
        text = os.fspath(location)
        if "://" not in text:
            return Path(text)
        upath = UPath(text)
    if upath.protocol in LOCAL_PROTOCOLS:
        return Path(upath.path)
    return upath


def left_as_it_was(target, kind: str = "file") -> str:
    """What a failed atomic write left at ``target``: the file (or object) it had, or still none."""
    try:
        had = target.exists()
    except Exception:  # noqa: BLE001 - a path that cannot even be looked at (an object store without credentials, say): no file to keep
        had = False
    return f"the previous {kind} is unchanged" if had else "nothing was written there"


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike | UPath, *, durable: bool = True) -> Iterator[Path]:
    """Yield a local temporary path; on success it replaces ``path`` atomically.

    ``path`` may be a local path or an object-store URL / UPath (see :func:`as_path`).

    Local: the temporary file sits beside ``path``; on success it is fsynced and renamed
    over ``path`` (with ``durable=False``, renamed without the fsyncs: a process that dies,
    even by SIGKILL, still leaves the old file or the complete new one, as the page cache
    outlives it, but after a crash of the machine itself the new file may be found empty,
    short or partly zeroed; for values that are made again from the inputs, such as the pipeline's
    intermediate values, where waiting for the disk is most of the cost of a write: see
    defs/resources.AtomicPickleIOManager). The rename is atomic on POSIX within one file system, so readers see
    either the old file or the complete new one. On any error the temporary file is
    removed. While the temporary file exists this process holds an exclusive ``flock`` on
    it, which the kernel releases if the process dies: that is how
    :func:`remove_stale_temps`, run after each successful write, tells a dead writer's
    leftover from a live concurrent writer's file.

    Object store: see :func:`_atomic_upload`.
    """
    target = as_path(path)
    if not isinstance(target, Path):
        with _atomic_upload(target) as tmp:
            yield tmp
        return
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    except OSError as exc:  # a file where the folder should be, no permission, disk full
        raise OutputWriteError(
            f"could not write {target}: {exc.strerror or exc} ({exc.filename or target.parent}); {left_as_it_was(target)}"
        ) from exc
    tmp = Path(tmp_name)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        # mkstemp creates 0600; give the output the permissions a plain open() would
        umask = os.umask(0)
        os.umask(umask)
        os.fchmod(fd, 0o666 & ~umask)
        yield tmp
        if durable:
            with open(tmp, "rb") as fh:
                os.fsync(fh.fileno())
        os.replace(tmp, target)
        if durable:
            _fsync_dir(target.parent)
    except BaseException as exc:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        if isinstance(exc, OSError) and not isinstance(exc, OutputWriteError):
            raise OutputWriteError(
                f"could not write {target}: {exc.strerror or exc}; {left_as_it_was(target)}"
            ) from exc
        raise
    finally:
        os.close(fd)  # releases the lock
    remove_stale_temps(target)


@contextlib.contextmanager
def _atomic_upload(target: UPath) -> Iterator[Path]:
    """Yield a local temporary file; on success upload it to ``target`` with one PUT.

    Nothing is uploaded if the writer fails, and the local temporary folder is removed in
    every case. No folders are created on the store: object stores have none, and fsspec
    creates the pseudo-folders of the file systems that keep them (memory://).
    """
    with tempfile.TemporaryDirectory(prefix="racedayai-upload-") as folder:
        tmp = Path(folder) / target.name
        tmp.touch()
        try:
            yield tmp
        except OSError as exc:
            if isinstance(exc, OutputWriteError):
                raise
            raise OutputWriteError(
                f"could not write {target}: {exc.strerror or exc}; {left_as_it_was(target, 'object')}"
            ) from exc
        try:
            target.fs.put_file(str(tmp), target.path)
        except Exception as exc:  # s3fs, gcsfs, adlfs ... raise their own error types
            raise OutputWriteError(
                f"could not upload {target}: {exc}; {left_as_it_was(target, 'object')}"
            ) from exc


def remove_stale_temps(path: str | os.PathLike | UPath) -> list[Path]:
    """Remove the temporary files of ``path`` left by writers that died, and return them.

    A temporary file whose ``flock`` this process can take has no live writer (a SIGKILLed
    writer's lock is released by the kernel), so removing it cannot break a concurrent
    write. Errors are ignored: cleaning up must never fail a write that succeeded. Object
    stores have no such files (writes go through a local temporary folder): nothing to do.
    """
    target = as_path(path)
    removed: list[Path] = []
    if not isinstance(target, Path):
        return removed
    for tmp in target.parent.glob(glob.escape(f".{target.name}.") + "*.tmp"):
        try:
            fd = os.open(tmp, os.O_RDONLY)
        except OSError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            tmp.unlink()
            removed.append(tmp)
        except OSError:
            pass  # a live writer holds the lock, or the file went away
        finally:
            os.close(fd)
    return removed


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike | UPath, mode: str = "w", **kwargs) -> Iterator[IO]:
    """Open a temporary file for writing that replaces ``path`` atomically on close."""
    with atomic_path(path) as tmp, open(tmp, mode, **kwargs) as fh:
        yield fh


# rows per piece of a CSV written on two threads (write_csv_atomic): each thread formats whole
# pieces, which are written in order
CSV_PIECE_ROWS = 1 << 17


def csv_write_options(header: bool = True):
    """Arrow's CSV options of every CSV written here: values unquoted (a value that needs quotes
    is refused). The bench's I/O floor writes with the same options (bench/run.py io_floor)."""
    import pyarrow.csv as pacsv

    return pacsv.WriteOptions(quoting_style="none", quoting_header="none", include_header=header)


def write_csv_atomic(frame: pd.DataFrame, path: str | os.PathLike | UPath, *,
                     second_core: SecondCore | None = None) -> Path | UPath:
    """Write ``frame`` as CSV to ``path`` (a local path or URL) atomically and return the path.

    Arrow's writer is about 10x faster than pandas' on millions of rows. It writes values
    unquoted (like pandas) and refuses a value that would need quotes, in which case pandas
    writes the file instead. Floats are written in shortest round-trip form (18822, not
    18822.0); missing values are empty fields.

    ``second_core`` (lib/cpu_slots.SecondCore) is asked for a second core for a frame of more
    than :data:`CSV_PIECE_ROWS` rows, and only while it is formatted: if it grants one,
    pieces of that many rows are formatted by two threads at once (Arrow lets go of the GIL
    while it formats) and written in order, the same bytes. The full-scale 140.6 prediction
    CSV (1.35M rows, 212 MB) took 0.97-1.21 s against 1.81-1.94 s on one thread, with the
    same CPU (2026-12-07).
    """
    import pyarrow as pa
    import pyarrow.csv as pacsv

    with atomic_path(path) as tmp:
        try:
            table = pa.Table.from_pandas(frame, preserve_index=False)
            ask = second_core is not None and table.num_rows > CSV_PIECE_ROWS
            with second_core() if ask else contextlib.nullcontext(False) as two:
                if two:
                    _write_csv_pieces(table, tmp, threads=2)
            if not two:
                pacsv.write_csv(table, tmp, csv_write_options())
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError):
            frame.to_csv(tmp, index=False)  # a new file over whatever Arrow had written
    return as_path(path)


def _write_csv_pieces(table, tmp, threads: int) -> None:
    """``table`` as CSV in ``tmp``, its pieces formatted by ``threads`` threads and written in
    order; at most ``threads + 1`` pieces are formatted ahead of the one being written, so the
    buffers never hold much of the file."""
    from collections import deque
    from concurrent.futures import ThreadPoolExecutor

    import pyarrow as pa
    import pyarrow.csv as pacsv

    def piece(start: int):
        sink = pa.BufferOutputStream()
        pacsv.write_csv(table.slice(start, CSV_PIECE_ROWS), sink, csv_write_options(header=start == 0))
        return sink.getvalue()

    starts = iter(range(0, table.num_rows, CSV_PIECE_ROWS))
    with ThreadPoolExecutor(threads, thread_name_prefix="csv") as pool, open(tmp, "wb") as out:
        pending = deque(pool.submit(piece, start) for _, start in zip(range(threads + 1), starts))
        try:
            while pending:
                buffer = pending.popleft().result()
                following = next(starts, None)
                if following is not None:
                    pending.append(pool.submit(piece, following))
                out.write(buffer)
        except BaseException:
            for waiting in pending:
                waiting.cancel()
            raise


def _fsync_dir(directory: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
