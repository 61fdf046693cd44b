"""Versions of the input files and of the code that reads them.

A refit reuses the model frame a previous refit stored when neither its input files nor the
code changed since (``refit`` in cli.py; ``--rebuild-inputs`` reads them again). Each input
asset's value carries the version of the file it was read from, and the model frame step
records the versions of the values it read, and the code's, with its outputs
(defs/inputs.py); Dagster shows them as the assets' data and code versions too.

- :func:`file_version`: a local file's path, size, modification and change times (ns), inode
  and device, digested. Any write to the file, or a file put in its place, changes it: the
  change time (ctime) is set by the kernel on every write and cannot be set back by a user's
  command, as ``touch -d`` can the modification time. A file rewritten with the very same
  bytes is taken as changed too (reading is the work being saved, so its content is not
  hashed). Two exceptions, both guarded: a file written twice within one tick of the clock
  that stamps it (:data:`RECENT_S`), and a network file system's cached attributes (the file
  is opened to be stat'ed).
- :func:`code_version`: a digest of every Python source of this package, and of the versions
  of the libraries that parse the files and store the frame. Any edit of the package changes
  it, even one that does not touch the inputs' code: a conservative rule, never a stale frame.
"""

from __future__ import annotations

import functools
import os
import sys
import time
import uuid
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parents[2]  # racedayai_bayes/
# what parses the CSVs and pickles the stored frame: a new version may read or store differently
LIBRARIES = ("numpy", "pandas", "pyarrow")


# A file changed this recently when it was read may be changed again within the same tick of
# the clock that stamps its times (a few ms here; a second on some network file systems)
# without its version changing: its version is then one that nothing equals, as git treats a
# "racily clean" file, and the next read of it, older by then, records a real one.
RECENT_S = 1.0


def file_version(path: str | os.PathLike) -> str:
    """The version of the local file ``path`` (module docstring); OSError if it is missing.
    The file is opened to be stat'ed: on a network file system that revalidates its
    attributes (close-to-open), instead of a cached stat up to a minute old."""
    return _identity(path)[0]


def _identity(path) -> tuple[str, float]:
    import xxhash

    fd = os.open(path, os.O_RDONLY)
    try:
        st = os.fstat(fd)
    finally:
        os.close(fd)
    stamp = f"{os.path.realpath(path)}|{st.st_size}|{st.st_mtime_ns}|{st.st_ctime_ns}|{st.st_ino}|{st.st_dev}"
    return xxhash.xxh3_128_hexdigest(stamp.encode()), st.st_ctime


def read_with_version(path: str | os.PathLike, read):
    """``(read(path), version)``: the file's version before it was read, if it was the same
    after and the file was not changed in the last :data:`RECENT_S` seconds; else a version that
    nothing equals (the file changed while it was read, or too recently to tell). A file that
    cannot be stat'ed is left to ``read``, whose error says what is wrong with it."""
    before = _identity_or_none(path)
    result = read(path)
    after = _identity_or_none(path)
    if before is None or before != after:
        return result, f"changed while read ({uuid.uuid4().hex})"
    if time.time() - after[1] < RECENT_S:
        return result, f"changed less than {RECENT_S:g} s before it was read ({uuid.uuid4().hex})"
    return result, after[0]


def _identity_or_none(path) -> tuple[str, float] | None:
    try:
        return _identity(path)
    except OSError:
        return None


@functools.cache
def code_version(package_dir: Path = PACKAGE_DIR) -> str:
    """A digest of every ``*.py`` file under ``package_dir`` (its path and bytes), of Python's
    version and of the versions of :data:`LIBRARIES` (module docstring); a version nothing
    equals if there is no source. About 5 ms; cached per process."""
    from importlib.metadata import version

    import xxhash

    sources = sorted(package_dir.rglob("*.py"))
    if not sources:  # installed without its sources: no version can say the code is the same
        return f"no sources under {package_dir} ({uuid.uuid4().hex})"
    h = xxhash.xxh3_128(f"python={sys.version};".encode())
    for lib in LIBRARIES:
        h.update(f"{lib}={version(lib)};".encode())
    for source in sources:
        h.update(f"|{source.relative_to(package_dir).as_posix()}:".encode())
        h.update(source.read_bytes())
    return h.hexdigest()
