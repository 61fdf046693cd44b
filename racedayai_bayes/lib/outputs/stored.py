"""Stored values that load without copying their arrays.

The pipeline hands values from step to step through files (Dagster's IO manager). A plain
pickle is read by copying every byte into the reading process: a step that needs one
distance's split (hundreds of MB at full scale) reads it into fresh memory, and so does
every other step that needs it, each its own copy.

Here a value is pickled with protocol 5 and its large buffers (NumPy arrays, Arrow
buffers: every column of a DataFrame) are written **out of band**, each aligned to
:data:`ALIGN` bytes after the small pickle stream. A local file is loaded by mapping it
(copy-on-write, ``mmap.ACCESS_COPY``) and unpickling the stream with the mapped buffers:
the arrays are views of the file's pages in the page cache, shared by every process that
reads the file, and a process that writes to an array changes only its own copy of those
pages, never the file. A file on an object store is read into memory first, then loaded
the same way.

Layout: :data:`MAGIC`, the number of buffers and the stream's length (little-endian
uint64), then each buffer's (offset, length), the stream, and the buffers. A file without
:data:`MAGIC` is a plain pickle (values stored by earlier versions) and loads as one.
"""

from __future__ import annotations

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


def _aligned(offset: int) -> int:
    return -(-offset // ALIGN) * ALIGN


def dump(obj: Any, fh: IO[bytes]) -> None:
    """Write ``obj`` to the binary file ``fh`` (at its start) in the layout above."""
    buffers: list[pickle.PickleBuffer] = []
    stream = pickle.dumps(obj, protocol=5, buffer_callback=buffers.append)
    raws = [b.raw() for b in buffers]  # protocol 5 hands out contiguous buffers only
    offset = len(MAGIC) + _COUNTS.size + _ENTRY.size * len(raws) + len(stream)
    table = []
    for raw in raws:
        offset = _aligned(offset)
        table.append((offset, raw.nbytes))
        offset += raw.nbytes
    fh.write(MAGIC)
    fh.write(_COUNTS.pack(len(raws), len(stream)))
    for entry in table:
        fh.write(_ENTRY.pack(*entry))
    fh.write(stream)
    position = len(MAGIC) + _COUNTS.size + _ENTRY.size * len(raws) + len(stream)
    for (start, _), raw in zip(table, raws):
        fh.write(b"\0" * (start - position))
        fh.write(raw)
        position = start + raw.nbytes


def _parse(view: memoryview) -> Any:
    count, stream_len = _COUNTS.unpack_from(view, len(MAGIC))
    head = len(MAGIC) + _COUNTS.size
    table = [_ENTRY.unpack_from(view, head + i * _ENTRY.size) for i in range(count)]
    start = head + count * _ENTRY.size
    buffers = [view[offset:offset + length] for offset, length in table]
    return pickle.loads(view[start:start + stream_len], buffers=buffers)


def load(path: str | os.PathLike) -> Any:
    """Load a value written by :func:`dump` (or a plain pickle) from a local file, mapping
    its buffers instead of reading them."""
    with open(path, "rb") as fh:
        if fh.read(len(MAGIC)) != MAGIC:
            fh.seek(0)
            return pickle.load(fh)
        mapped = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_COPY)
    # the arrays keep the mapping alive (each is a view of it); closing the file does not unmap
    return _parse(memoryview(mapped))


def loads(data: bytes | bytearray | memoryview) -> Any:
    """Load a value from bytes already in memory (a file read from an object store)."""
    view = memoryview(data)
    if bytes(view[:len(MAGIC)]) != MAGIC:
        return pickle.load(io.BytesIO(view))
    if view.readonly:  # arrays loaded from it must be writable, as a plain pickle's are
        view = memoryview(bytearray(view))
    return _parse(view)

