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
aligned to :data:`ALIGN` bytes; a shared buffer, below, keeps the alignment it had in the
file it is shared with), shared by every process that reads the file, and a process
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

**Shared buffers.** A value is often a view of another stored value: a distance's split
holds that distance's rows of the model frame, which its step loaded (mapped) and sliced
without a copy (lib/data/frame.distance_rows). Written by :func:`dump_file` with its
``final`` path, such a value does not copy those bytes: each buffer that lies within the
mapping of a stored file loaded in this process, none of whose pages this process has
written (``/proc/self/pagemap``: its pages are still the file's), is stored as a reference
to that file (buffers of :data:`SHARE_MIN_BYTES` or more only). The file is pinned by a hard
link beside the value (``.<name>.<time>-<hex>.src<k>``), so the value stays loadable when
the file it refers to is replaced by a newer value (the old inode lives on through the link:
on disk, until every value that names it is written again), and the next write of the value
removes its predecessor's links (:func:`remove_replaced_links`). Such a file starts with
:data:`MAGIC_SHARED`, its table gives each buffer's file (0 itself, k its k-th source), and
a JSON list names the sources' links and their sizes: :func:`load` maps them (a missing one,
or one of another size, is a :class:`CorruptStoredValue`). A link's name is made once, for
one file, so a copy of the storage folder (new inodes and times) loads as the original does.
Where a hard link cannot be made (another file system, an object store), where pagemap
cannot be read, or for a page this process changed, the bytes are copied as before; a value
with no shared buffer is written in the plain layout above.
"""

from __future__ import annotations

import contextlib
import copyreg
import errno
import functools
import io
import json
import mmap
import os
import pickle
import secrets
import struct
import threading
import time
import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

MAGIC = b"RDAIPK5\n"
MAGIC_SHARED = b"RDAIPK6\n"  # a value with buffers in other stored files (module docstring)
ALIGN = 64
_COUNTS = struct.Struct("<QQ")
_ENTRY = struct.Struct("<QQ")
_COUNTS_SHARED = struct.Struct("<QQQ")  # buffers, the stream's length, the sources' JSON length
_ENTRY_SHARED = struct.Struct("<QQQ")  # file (0: this one; k: the k-th source), offset, length
# A buffer shares a file's bytes only from this size up: a smaller one (an Index of column
# names, a short slice) is written, and pins no file
SHARE_MIN_BYTES = 64 << 10
# A link that no stored value names, left by a writer that stopped before its rename or lost
# a race to a concurrent writer of the same value, is removed once it is this old (a day:
# far longer than any write). A value's predecessors' links are removed as it replaces them.
STALE_LINK_S = 86400.0
# How often load() opens a value again when it was replaced while being opened (its new
# version names other links)
LOAD_ATTEMPTS = 5


class CorruptStoredValue(ValueError):
    """A stored value's file is shorter than its own table says (truncated or damaged), or a
    file whose bytes it shares is missing or of another size."""


def _aligned(offset: int) -> int:
    return -(-offset // ALIGN) * ALIGN


@dataclass
class _Mapping:
    """A stored file this process mapped (load()), and the identity of the file mapped."""

    mapped: weakref.ref  # the mmap: alive while any array of the value is
    start: int  # its address
    length: int
    path: str  # the name it was opened by (a value's path, or a link to a source)
    inode: int
    size: int
    mtime_ns: int

    def identity(self) -> dict:
        """What a value that shares this file's buffers records of it (module docstring)."""
        return {"size": self.size}


_MAPPINGS: list[_Mapping] = []
_MAPPINGS_LOCK = threading.Lock()


def _address(buffer) -> int:
    import numpy as np

    return int(np.frombuffer(buffer, dtype=np.uint8).ctypes.data)


def _register(mapped: mmap.mmap, path: str, st: os.stat_result) -> None:
    entry = _Mapping(weakref.ref(mapped), _address(mapped), len(mapped), os.path.abspath(path), st.st_ino, st.st_size,
                     st.st_mtime_ns)
    with _MAPPINGS_LOCK:
        _MAPPINGS[:] = [m for m in _MAPPINGS if m.mapped() is not None]
        _MAPPINGS.append(entry)


def _mapping_of(raw: memoryview) -> tuple[_Mapping, int] | None:
    """The live mapping that holds all of ``raw``, and ``raw``'s offset in its file."""
    if raw.nbytes == 0:
        return None
    start = _address(raw)
    with _MAPPINGS_LOCK:
        for m in _MAPPINGS:
            if m.start <= start and start + raw.nbytes <= m.start + m.length and m.mapped() is not None:
                return m, start - m.start
    return None


@functools.cache
def _pagemap_tells_written_pages() -> bool:
    """Whether this system's ``/proc/self/pagemap`` reports a page this process wrote in a
    private mapping as its own (present, not a file's): checked once, on a page written here.
    A system without it, or whose pagemap reports nothing (some sandboxes), shares no bytes."""
    import numpy as np

    try:
        probe = mmap.mmap(-1, mmap.PAGESIZE, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    except (AttributeError, OSError, ValueError):
        return False
    try:
        probe[0] = 1
        address = _address(probe)
        with open("/proc/self/pagemap", "rb", buffering=0) as fh:
            fh.seek(address // mmap.PAGESIZE * 8)
            data = fh.read(8)
        if len(data) != 8:
            return False
        entry = int(np.frombuffer(data, dtype="<u8")[0])
        return bool(entry >> 63 & 1) and not entry >> 61 & 1
    except OSError:
        return False
    finally:
        probe.close()


def pages_unwritten(address: int, length: int) -> bool:
    """Whether no page of ``length`` bytes at ``address``, in a private mapping of a file, has
    been written by this process: each page is either not in memory or the file's own page
    cache page (``/proc/self/pagemap``: a written page is this process's anonymous copy, which
    the file does not hold). False where pagemap cannot be read or tells nothing (not Linux)."""
    import numpy as np

    if not _pagemap_tells_written_pages():
        return False
    page = mmap.PAGESIZE
    first, last = address // page, (address + length - 1) // page
    count = last - first + 1
    try:
        with open("/proc/self/pagemap", "rb", buffering=0) as fh:
            fh.seek(first * 8)
            data = fh.read(count * 8)
    except OSError:
        return False
    if len(data) != count * 8:
        return False
    flags = np.frombuffer(data, dtype="<u8") >> np.uint64(61)  # bit 63 present, 62 swapped, 61 a file's page
    in_use = (flags & np.uint64(0b110)) != 0
    return not bool(np.any(in_use & ((flags & np.uint64(1)) == 0)))


class _Sources:
    """The stored files a value being written refers to, each pinned by a hard link beside the
    value's ``final`` path (module docstring)."""

    def __init__(self, final: Path):
        self.final = Path(final)
        self.token = f"{time.time_ns()}-{secrets.token_hex(4)}"  # when the links were made, and whose
        self.linked: list[tuple[str, dict]] = []  # (link name, identity) per source, in order
        self._index: dict[int, int | None] = {}  # id(mapping) -> source number (1-based), None: not usable

    def claim(self, raw: memoryview) -> tuple[int, int] | None:
        """(source number, offset in that file) for a buffer that can be stored as a reference;
        None for one whose bytes must be written (among them any under :data:`SHARE_MIN_BYTES`)."""
        if raw.nbytes < SHARE_MIN_BYTES:
            return None
        found = _mapping_of(raw)
        if found is None:
            return None
        mapping, offset = found
        if not pages_unwritten(mapping.start + offset, raw.nbytes):
            return None
        source = self._index.get(id(mapping), 0)
        if source == 0:
            source = self._index[id(mapping)] = self._link(mapping)
        return None if source is None else (source, offset)

    def covers(self, arrow_array) -> bool:
        """Whether an Arrow array can be pickled as it is, a slice with its whole buffers: when
        its own values are :data:`SHARE_MIN_BYTES` or more and each of its large buffers can be
        stored as a reference (a small one is written whole: a slice of it costs about as
        much). A short slice is pickled as its own values instead (:func:`_own_buffers`)."""
        if arrow_array.nbytes < SHARE_MIN_BYTES:
            return False
        return all(b is None or b.size < SHARE_MIN_BYTES or self.claim(memoryview(b)) is not None
                   for b in arrow_array.buffers())

    def _link(self, mapping: _Mapping) -> int | None:
        name = f".{self.final.name}.{self.token}.src{len(self.linked)}"
        link = self.final.parent / name
        try:
            os.link(mapping.path, link)
        except OSError:  # another file system, no hard links, the file gone
            return None
        st = os.stat(link)
        if (st.st_ino, st.st_size, st.st_mtime_ns) != (mapping.inode, mapping.size, mapping.mtime_ns):
            link.unlink()  # the name now holds a newer file than the one mapped
            return None
        self.linked.append((name, mapping.identity()))
        return len(self.linked)

    def discard(self) -> None:
        """Remove this write's links (the write failed)."""
        for name, _ in self.linked:
            with contextlib.suppress(OSError):
                (self.final.parent / name).unlink()


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

    def __init__(self, *args, sources: _Sources | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.sources = sources

    def reducer_override(self, obj):
        chunked = getattr(obj, "_pa_array", None)
        if chunked is None or not _is_arrow_backed(obj) or chunked.num_chunks == 0:
            return NotImplemented
        # a chunk whose buffers are all shared with a stored file is pickled as it is, a slice
        # included (Arrow pickles its whole buffers and its offset): nothing of it is written
        chunks = [c if self.sources is not None and self.sources.covers(c) else _own_buffers(c)
                  for c in chunked.chunks]
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


def _layout(obj: Any, sources: _Sources | None = None) -> tuple[bytes, list[memoryview], list[tuple[int, int]], int]:
    """``obj`` pickled in the layout above: the bytes up to the buffers (magic, counts, table,
    stream), the buffers this file holds, each one's (offset, length), and the file's size.
    With ``sources``, the buffers it can claim are references instead (module docstring)."""
    buffers: list[pickle.PickleBuffer] = []
    out = io.BytesIO()
    _Pickler(out, protocol=5, buffer_callback=buffers.append, sources=sources).dump(obj)
    stream = out.getvalue()
    raws = [b.raw() for b in buffers]  # protocol 5 hands out contiguous buffers only
    claims = [sources.claim(raw) for raw in raws] if sources is not None else [None] * len(raws)
    if not any(claims):
        offset = len(MAGIC) + _COUNTS.size + _ENTRY.size * len(raws) + len(stream)
        table = []
        for raw in raws:
            offset = _aligned(offset)
            table.append((offset, raw.nbytes))
            offset += raw.nbytes
        head = b"".join([MAGIC, _COUNTS.pack(len(raws), len(stream)), *(_ENTRY.pack(*e) for e in table), stream])
        return head, raws, table, offset
    meta = json.dumps([{"name": name, **identity} for name, identity in sources.linked]).encode()
    offset = len(MAGIC_SHARED) + _COUNTS_SHARED.size + _ENTRY_SHARED.size * len(raws) + len(meta) + len(stream)
    entries, own, table = [], [], []
    for raw, claim in zip(raws, claims):
        if claim is not None:
            entries.append((claim[0], claim[1], raw.nbytes))
            continue
        offset = _aligned(offset)
        entries.append((0, offset, raw.nbytes))
        own.append(raw)
        table.append((offset, raw.nbytes))
        offset += raw.nbytes
    head = b"".join([MAGIC_SHARED, _COUNTS_SHARED.pack(len(raws), len(stream), len(meta)),
                     *(_ENTRY_SHARED.pack(*e) for e in entries), meta, stream])
    return head, own, table, offset


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


def dump_file(obj: Any, path: str | os.PathLike, *, threads: int = 2, final: str | os.PathLike | None = None) -> None:
    """Write ``obj`` to the local file ``path`` (created, or emptied) in the layout above: the
    same bytes as :func:`dump`. With ``final`` (the path the caller's atomic write renames
    ``path`` to), its buffers that are views of stored files this process loaded are stored
    as references to them instead (module docstring). The caller reads
    :func:`source_names` of ``final`` before its rename and hands them to
    :func:`remove_replaced_links` after it. A large value (:data:`MAPPED_MIN_BYTES`) is
    copied into a shared mapping of the file by ``threads`` threads, after the file's
    blocks are allocated (``posix_fallocate``), so that a full disk is an
    :class:`OSError` before any byte is copied, not a SIGBUS during the copy (on file
    systems that write in place, such as ext4, xfs and tmpfs; a copy-on-write one may
    still need new blocks then); a system or file system that cannot allocate ahead is
    written by one thread, as :func:`dump` does.

    The second thread is not a CPU slot of the step's (defs/resources.CpuSlots): the copy is
    short (a few tenths of a second per GB here) and mostly the kernel supplying pages."""
    sources = _Sources(Path(final)) if final is not None else None
    try:
        head, raws, table, size = _layout(obj, sources)
        with open(path, "w+b") as fh:
            if threads > 1 and sum(raw.nbytes for raw in raws) >= MAPPED_MIN_BYTES and _allocated(fh.fileno(), size):
                _copy_mapped(fh.fileno(), size, head, raws, table, threads)
            else:
                _write(fh, head, raws, table)
    except BaseException:
        if sources is not None:
            sources.discard()
        raise


def source_names(path: str | os.PathLike) -> list[str] | None:
    """The links the stored value's file ``path`` names: [] for one of the plain layout or no
    file; None when the file cannot be read or its head does not hold together."""
    try:
        with open(path, "rb") as fh:
            if fh.read(len(MAGIC_SHARED)) != MAGIC_SHARED:
                return []
            with mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as mapped, memoryview(mapped) as view:
                return [str(source["name"]) for source in _shared_head(view, os.fspath(path))[1]]
    except FileNotFoundError:
        return []
    except (OSError, ValueError):  # CorruptStoredValue is a ValueError
        return None


def remove_replaced_links(final: str | os.PathLike, previous: list[str] | None) -> list[Path]:
    """After a new value was renamed to ``final``: remove the links of ``previous`` (the
    :func:`source_names` of the value it replaced, read before the rename) that the new one
    does not name, then any link beside it that no value names and that is older than
    :data:`STALE_LINK_S`. A reader that opened the replaced value just before opens the value
    again (:func:`load`); a concurrent writer's links are in neither list. Best effort: an
    error leaves the links (returns those removed)."""
    final = Path(final)
    current = source_names(final)
    if current is None:
        return []
    keep = set(current)
    prefix = f".{final.name}."
    removed = []
    for name in previous or []:
        if name not in keep and _link_time_ns(name, prefix) is not None:
            with contextlib.suppress(OSError):
                (final.parent / name).unlink()
                removed.append(final.parent / name)
    try:
        names = os.listdir(final.parent)
    except OSError:
        return removed
    now = time.time_ns()
    for name in names:
        made = _link_time_ns(name, prefix)
        if made is None or name in keep or now - made < STALE_LINK_S * 1e9:
            continue
        with contextlib.suppress(OSError):
            (final.parent / name).unlink()
            removed.append(final.parent / name)
    return removed


def _link_time_ns(name: str, prefix: str) -> int | None:
    """When a link of ours (``<prefix><time_ns>-<hex>.src<k>``) was made; None for any other name."""
    if not name.startswith(prefix):
        return None
    made, dash, rest = name[len(prefix):].partition("-")
    return int(made) if dash and made.isdigit() and ".src" in rest else None


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


def _map(fh) -> tuple[mmap.mmap, os.stat_result]:
    return mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_COPY), os.fstat(fh.fileno())


class _SourceChanged(Exception):
    """A source a value names is missing or is not the file it was (the value may have just been replaced)."""


def load(path: str | os.PathLike) -> Any:
    """Load a value written by :func:`dump` or :func:`dump_file` (or a plain pickle) from a
    local file, mapping its buffers instead of reading them, and those it shares with other
    stored files from theirs (module docstring)."""
    name = os.fspath(path)
    for _ in range(LOAD_ATTEMPTS):
        with open(path, "rb") as fh:
            head = fh.read(len(MAGIC))
            if head not in (MAGIC, MAGIC_SHARED):
                _check_pickle(head, name)
                fh.seek(0)
                return pickle.load(fh)
            mapped, st = _map(fh)
        # the arrays keep the mapping alive (each is a view of it); closing the file does not unmap
        _register(mapped, name, st)
        if head == MAGIC:
            return _parse(memoryview(mapped), name)
        try:
            return _parse_shared(memoryview(mapped), name, Path(path).parent)
        except _SourceChanged as exc:
            try:
                replaced = os.stat(path).st_ino != st.st_ino
            except OSError:
                replaced = True
            if not replaced:  # the value is the same: its source is gone for good
                raise CorruptStoredValue(f"{name}: {exc}; materialise its asset again") from None
    raise CorruptStoredValue(f"{name}: replaced {LOAD_ATTEMPTS} times while it was being loaded")


def _shared_head(view: memoryview, name: str) -> tuple[list[tuple[int, int, int]], list[dict], int, int]:
    """The head of a value of the shared layout: its table, its sources (each a dict with the
    link's ``name`` beside the value and its ``size``), and where its stream starts and how
    long it is; a :class:`CorruptStoredValue` for a head that does not hold together."""
    size = len(view)
    head = len(MAGIC_SHARED) + _COUNTS_SHARED.size
    if size < head:
        raise CorruptStoredValue(f"{name}: {size} bytes, shorter than a stored value's header")
    count, stream_len, meta_len = _COUNTS_SHARED.unpack_from(view, len(MAGIC_SHARED))
    meta_at = head + count * _ENTRY_SHARED.size
    start = meta_at + meta_len
    if start + stream_len > size:
        raise CorruptStoredValue(f"{name}: {size} bytes, but its table says {start + stream_len} or more")
    table = [_ENTRY_SHARED.unpack_from(view, head + i * _ENTRY_SHARED.size) for i in range(count)]
    try:
        sources = json.loads(bytes(view[meta_at:start]))
    except ValueError as exc:
        raise CorruptStoredValue(f"{name}: its list of source files cannot be read ({exc})") from None
    if not isinstance(sources, list):
        raise CorruptStoredValue(f"{name}: its list of source files is not a list")
    for source in sources:
        if not isinstance(source, dict) or os.sep in str(source.get("name", os.sep)) or "size" not in source:
            raise CorruptStoredValue(f"{name}: its list of source files names no file beside it ({source!r})")
    return table, sources, start, stream_len


def _parse_shared(view: memoryview, name: str, folder: Path) -> Any:
    """A value of the shared layout: its own buffers from ``view``, the others from the sources
    its table names, each mapped and checked against the size it was stored with."""
    table, sources, start, stream_len = _shared_head(view, name)
    files = [view]
    for source in sources:
        link = folder / source["name"]
        try:
            with open(link, "rb") as fh:
                mapped, st = _map(fh)
        except (OSError, ValueError) as exc:
            raise _SourceChanged(f"its source file {link} cannot be read ({exc})") from None
        # a link's name is made once, for one file: only its size is checked (a copy of the
        # storage folder, with new inodes and times, loads as the original does)
        if st.st_size != source["size"]:
            raise _SourceChanged(f"its source file {link} has {st.st_size} bytes, not the {source['size']} it was "
                                 "stored with")
        _register(mapped, os.fspath(link), st)
        files.append(memoryview(mapped))
    buffers = []
    for file, offset, length in table:
        if file >= len(files) or offset + length > len(files[file]):
            what = f"source {file}" if file else "file"
            raise CorruptStoredValue(f"{name}: its table points past the end of its {what} (truncated?)")
        buffers.append(files[file][offset:offset + length])
    return pickle.loads(view[start:start + stream_len], buffers=buffers)


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
    if bytes(view[:len(MAGIC)]) == MAGIC_SHARED:  # dump_file writes these only beside local files
        raise CorruptStoredValue(f"{name}: shares buffers with local stored files, which an object store does not hold")
    if bytes(view[:len(MAGIC)]) != MAGIC:
        _check_pickle(bytes(view[:len(MAGIC)]), name)
        return pickle.loads(view)  # a plain pickle of an earlier version
    return _parse(view, name)
