"""Stored values that load without copying their arrays.

The pipeline hands values from step to step through files (Dagster's IO manager). A plain
pickle is read by copying every byte into the reading process: a step that needs one
distance's split (hundreds of MB at full scale) reads it into fresh memory, and so does
every other step that needs it, each its own copy.

Here a value is pickled with protocol 5 and its large buffers (NumPy arrays, Arrow
buffers: every column of a DataFrame) are written **out of band**, each at an offset of
the file that is a multiple of :data:`ALIGN` bytes, after the small pickle stream. A local
file is loaded by mapping it (copy-on-write, ``mmap.ACCESS_COPY``) and unpickling the stream
with the mapped buffers: the arrays are views of the file's pages in the page cache (so
aligned to :data:`ALIGN` bytes), shared by every process that reads the file, and a process
that writes to an array changes only its own copy of those pages, never the file. A loaded
value keeps the whole mapping (and, before Python 3.13, a duplicate of the file's
descriptor) while any of its arrays lives. A file on an object store is read into one
writable buffer of the file's size, then loaded the same way (its arrays are views of that
buffer).

Layout: :data:`MAGIC`, the number of buffers and the stream's length (little-endian
uint64), then each buffer's (offset, length), the stream, and the buffers. A file without
:data:`MAGIC` is a plain pickle (values stored by earlier versions) and loads as one. A
table that points outside the file (a truncated or damaged file) is a
:class:`CorruptStoredValue`, not a confusing error from deep inside pickle.
"""

from __future__ import annotations

import contextlib
import copyreg
import errno
import io
import mmap
import os
import pickle
import struct
from typing import IO, Any

MAGIC = b"RDAIPK5\n"
ALIGN = 64
_COUNTS = struct.Struct("<QQ")
_ENTRY = struct.Struct("<QQ")


class CorruptStoredValue(ValueError):
    """A stored value's file is shorter than its own table says (truncated or damaged)."""


def _aligned(offset: int) -> int:
    return -(-offset // ALIGN) * ALIGN


class _Pickler(pickle.Pickler):
    """Protocol 5 with one change: a pandas Arrow-backed array (the text columns of the frames
    stored here) whose chunks are whole arrays is pickled as those chunks.

    pandas pickles such an array as ``combine_chunks()`` of its chunks, which copies it, even
    a single chunk: a full-scale model frame's text columns are 300 MB (0.36 s for its
    event_name alone, in fresh memory), and the race file's, as read, are 936 chunks each
    (2026-12-06). One chunk is pickled as that chunk: the very array the copy would be, so the
    same file (with pandas 3). Several are pickled as they are, and load as several (the values the same;
    what reads them reads chunked arrays, as before they were stored). A text chunk that is a
    slice of larger buffers is pickled as its own values (:func:`_own_buffers`); another
    such slice goes pandas' way, which makes the array one compact chunk. pandas' own
    __setstate__ reads either.
    """

    def reducer_override(self, obj):
        chunked = getattr(obj, "_pa_array", None)
        if chunked is None or not _is_arrow_backed(obj) or chunked.num_chunks == 0:
            return NotImplemented
        chunks = [_own_buffers(c) for c in chunked.chunks]
        if any(c is None for c in chunks):
            return NotImplemented
        # what pandas' __getstate__ makes (checked by _is_arrow_backed: not overridden), with
        # the chunks in place of their copy
        state = obj.__dict__.copy()
        # (a list of chunks, which pa.chunked_array has always read; a ChunkedArray it reads
        # only from pyarrow 16)
        state["_pa_array"] = chunks[0] if len(chunks) == 1 else chunks
        state["_cache"] = {}
        return copyreg.__newobj__, (type(obj),), state


def _own_buffers(chunk):
    """``chunk`` as an array whose buffers hold its values only, which Arrow pickles as they
    are; None where pandas' way (a compact copy of the whole array) is needed.

    A whole array is itself. A slice of larger buffers refers to fewer bytes than they hold
    (Arrow's nbytes counts a string array's offsets one short of its buffer: a few bytes of
    slack), and Arrow would pickle the whole buffers. A sliced text column (such as a
    distance's rows of the model frame, a slice of it: lib/data/frame.distance_rows) is made
    anew around the same characters: its offsets rebased (one integer per row) and its
    validity bits realigned (one bit per row), the characters a zero-copy slice of their
    buffer (at full scale about 200 MB of the 70.3 rows' text, not copied into fresh memory).
    """
    import numpy as np
    import pyarrow as pa

    if chunk.offset == 0 and chunk.get_total_buffer_size() <= chunk.nbytes + 64:
        return chunk
    if not (pa.types.is_string(chunk.type) or pa.types.is_large_string(chunk.type)):
        return None
    validity, offsets, data = chunk.buffers()
    data = data if data is not None else pa.py_buffer(b"")  # no characters at all
    n, start = len(chunk), chunk.offset
    kind = np.int64 if pa.types.is_large_string(chunk.type) else np.int32
    ends = np.frombuffer(offsets, dtype=kind, count=n + 1, offset=start * np.dtype(kind).itemsize)
    first = ends[0]
    bits = None
    if chunk.null_count:
        packed = np.frombuffer(validity, dtype=np.uint8)[start // 8:-(-(start + n) // 8)]
        bits = pa.py_buffer(np.packbits(np.unpackbits(packed, bitorder="little")[start % 8:start % 8 + n],
                                        bitorder="little"))
    return pa.Array.from_buffers(chunk.type, n, [bits, pa.py_buffer(ends - first), data.slice(int(first), int(ends[-1] - first))],
                                 null_count=chunk.null_count)


def _is_arrow_backed(obj) -> bool:
    """A pandas Arrow-backed array whose pickled state is pandas' ``__getstate__`` of
    ArrowExtensionArray: its ``__dict__`` with ``_pa_array`` combined and ``_cache`` empty."""
    from pandas.core.arrays.arrow.array import ArrowExtensionArray

    return isinstance(obj, ArrowExtensionArray) and type(obj).__getstate__ is ArrowExtensionArray.__getstate__


def _layout(obj: Any) -> tuple[bytes, list[memoryview], list[tuple[int, int]], int]:
    """``obj`` pickled in the layout above: the bytes up to the buffers (magic, counts, table,
    stream), the buffers, each buffer's (offset, length), and the file's size."""
    buffers: list[pickle.PickleBuffer] = []
    out = io.BytesIO()
    _Pickler(out, protocol=5, buffer_callback=buffers.append).dump(obj)
    stream = out.getvalue()
    raws = [b.raw() for b in buffers]  # protocol 5 hands out contiguous buffers only
    offset = len(MAGIC) + _COUNTS.size + _ENTRY.size * len(raws) + len(stream)
    table = []
    for raw in raws:
        offset = _aligned(offset)
        table.append((offset, raw.nbytes))
        offset += raw.nbytes
    head = b"".join([MAGIC, _COUNTS.pack(len(raws), len(stream)), *(_ENTRY.pack(*e) for e in table), stream])
    return head, raws, table, offset


def dump(obj: Any, fh: IO[bytes]) -> None:
    """Write ``obj`` to the binary file ``fh`` (at its start) in the layout above."""
    head, raws, table, _ = _layout(obj)
    _write(fh, head, raws, table)


def _write(fh: IO[bytes], head: bytes, raws: list[memoryview], table: list[tuple[int, int]]) -> None:
    fh.write(head)
    position = len(head)
    for (start, _), raw in zip(table, raws):
        fh.write(b"\0" * (start - position))
        fh.write(raw)
        position = start + raw.nbytes


# A value whose buffers add up to this much is written by dump_file through a shared mapping
# of the file, its buffers copied by two threads. A write() into a file's pages is one
# thread's work (the file system holds the file's lock while it copies), and on this VM most
# of a large write's time is the kernel finding the page cache fresh pages, which two threads
# do at once: 720 MB took 0.37-0.44 s so, against 1.1-1.8 s by write() and 0.85-1.6 s through
# the mapping by one thread (memory left unused for 3 s before each, 2026-12-06).
MAPPED_MIN_BYTES = 64 << 20
_PIECE = 8 << 20  # bytes per copy: the threads take alternate pieces of every buffer


def dump_file(obj: Any, path: str | os.PathLike, *, threads: int = 2) -> None:
    """Write ``obj`` to the local file ``path`` (created, or emptied) in the layout above: the
    same bytes as :func:`dump`. A large value (:data:`MAPPED_MIN_BYTES`) is copied into a
    shared mapping of the file by ``threads`` threads, after the file's blocks are allocated
    (``posix_fallocate``), so that a full disk is an :class:`OSError` before any byte is
    copied, not a SIGBUS during the copy (on file systems that write in place, such as ext4,
    xfs and tmpfs; a copy-on-write one may still need new blocks then); a system or file
    system that cannot allocate ahead is written by one thread, as :func:`dump` does.

    The second thread is not a CPU slot of the step's (defs/resources.CpuSlots): the copy is
    short (a few tenths of a second per GB here) and mostly the kernel supplying pages."""
    head, raws, table, size = _layout(obj)
    with open(path, "w+b") as fh:
        if threads > 1 and sum(raw.nbytes for raw in raws) >= MAPPED_MIN_BYTES and _allocated(fh.fileno(), size):
            _copy_mapped(fh.fileno(), size, head, raws, table, threads)
        else:
            _write(fh, head, raws, table)


def _allocated(fd: int, size: int) -> bool:
    """Allocate the file's ``size`` bytes; False where the file system cannot (written the
    plain way then). Any other error (no space, quota) is raised."""
    allocate = getattr(os, "posix_fallocate", None)  # not on macOS
    if allocate is None:
        return False
    try:
        allocate(fd, 0, size)
    except OSError as exc:
        if exc.errno in (errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
            return False
        raise
    return True


def _copy_mapped(fd: int, size: int, head: bytes, raws: list[memoryview], table: list[tuple[int, int]],
                 threads: int) -> None:
    import numpy as np  # its copies run without the GIL, so the threads copy at once

    pieces = [(start + lo, raw, lo, min(lo + _PIECE, raw.nbytes))
              for (start, _), raw in zip(table, raws) for lo in range(0, raw.nbytes, _PIECE)]
    mapped = mmap.mmap(fd, size)
    try:
        _copy_into(np.frombuffer(mapped, dtype=np.uint8), head, pieces, threads)
    finally:
        # after an error, a frame of its traceback (a copying thread's) may still hold an array
        # over the mapping, which then cannot close (BufferError, which would hide the error):
        # it is unmapped when that array goes. After a success none is left.
        with contextlib.suppress(BufferError):
            mapped.close()


def _copy_into(target, head: bytes, pieces: list, threads: int) -> None:
    """The head, then the pieces (by ``threads`` threads), into ``target`` (the file's bytes);
    the gaps between buffers stay zero, as written by :func:`dump`."""
    from concurrent.futures import ThreadPoolExecutor

    import numpy as np

    target[:len(head)] = np.frombuffer(head, dtype=np.uint8)
    with ThreadPoolExecutor(threads, thread_name_prefix="stored-copy") as pool:
        list(pool.map(_copy_pieces, [target] * threads, [pieces[i::threads] for i in range(threads)]))


def _copy_pieces(target, share: list) -> None:
    import numpy as np

    for at, raw, lo, hi in share:
        target[at:at + hi - lo] = np.frombuffer(raw, dtype=np.uint8, count=hi - lo, offset=lo)


def _parse(view: memoryview, name: str) -> Any:
    size = len(view)
    head = len(MAGIC) + _COUNTS.size
    if size < head:
        raise CorruptStoredValue(f"{name}: {size} bytes, shorter than a stored value's header")
    count, stream_len = _COUNTS.unpack_from(view, len(MAGIC))
    start = head + count * _ENTRY.size
    if start + stream_len > size:
        raise CorruptStoredValue(f"{name}: {size} bytes, but its table says {start + stream_len} or more")
    table = [_ENTRY.unpack_from(view, head + i * _ENTRY.size) for i in range(count)]
    end = max((offset + length for offset, length in table), default=0)
    if end > size:
        raise CorruptStoredValue(f"{name}: {size} bytes, but its arrays end at byte {end} (truncated?)")
    buffers = [view[offset:offset + length] for offset, length in table]
    return pickle.loads(view[start:start + stream_len], buffers=buffers)


def file_identity(path: str | os.PathLike, written: str | os.PathLike | None = None) -> str:
    """The identity of the stored value's file ``path``: its path, inode, size and modification
    time (``written``: the file about to be renamed to ``path``, whose rename keeps all three).
    A later write of the value replaces the file, so it changes the identity; OSError if there
    is no such file."""
    st = os.stat(written or path)
    return f"{os.fspath(path)} inode {st.st_ino} {st.st_size} bytes mtime_ns {st.st_mtime_ns}"


def _check_pickle(head: bytes, name: str) -> None:
    """A file without :data:`MAGIC` must be a plain pickle (protocol 2 or later: its first
    byte is PROTO); anything else, an empty or zero-filled file such as a crash of the machine
    can leave of a value stored without an fsync, is a :class:`CorruptStoredValue`."""
    if not head.startswith(pickle.PROTO):
        what = "empty" if not head else "neither a stored value nor a pickle"
        raise CorruptStoredValue(f"{name}: {what} (a write the machine stopped in the middle of?); "
                                 "materialise its asset again")


def load(path: str | os.PathLike) -> Any:
    """Load a value written by :func:`dump` (or a plain pickle) from a local file, mapping
    its buffers instead of reading them."""
    with open(path, "rb") as fh:
        head = fh.read(len(MAGIC))
        if head != MAGIC:
            _check_pickle(head, os.fspath(path))
            fh.seek(0)
            return pickle.load(fh)
        mapped = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_COPY)
    # the arrays keep the mapping alive (each is a view of it); closing the file does not unmap
    return _parse(memoryview(mapped), os.fspath(path))


def read(fh: IO[bytes], size: int, name: str = "stored value") -> Any:
    """Load a value from an open binary file of ``size`` bytes (an object on an object store):
    read once into one writable buffer, whose views the arrays become."""
    buffer = bytearray(size)
    view = memoryview(buffer)
    filled = 0
    while filled < size:
        got = fh.readinto(view[filled:])
        if not got:
            raise CorruptStoredValue(f"{name}: ended after {filled} of its {size} bytes")
        filled += got
    if bytes(view[:len(MAGIC)]) != MAGIC:
        _check_pickle(bytes(view[:len(MAGIC)]), name)
        return pickle.loads(view)  # a plain pickle of an earlier version
    return _parse(view, name)
