"""Versions of the input files and of the code that reads them.

A refit reuses the model frame a previous refit stored when neither its input files nor the
code changed since (``refit`` in cli.py; ``--rebuild-inputs`` reads them again). The input
assets give Dagster these versions (``DataVersion`` and ``code_version``), which records them
with every materialisation: the model frame's carries its inputs' versions and its code's.

- :func:`file_version`: a local file's size, modification and change times (ns), inode and
  device, digested. Any write to the file, or a file put in its place, changes it: the change
  time (ctime) is set by the kernel on every write and cannot be set back by a user's command,
  as ``touch -d`` can the modification time. A file rewritten with the very same bytes is
  taken as changed too (reading is the work being saved, so its content is not hashed).
- :func:`code_version`: a digest of every Python source of this package, and of the versions
  of the libraries that parse the files and store the frame. Any edit of the package changes
  it, even one that does not touch the inputs' code: a conservative rule, never a stale frame.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parents[2]  # racedayai_bayes/
# what parses the CSVs and pickles the stored frame: a new version may read or store differently
LIBRARIES = ("numpy", "pandas", "pyarrow")


def file_version(path: str | os.PathLike) -> str:
    """The version of the local file ``path`` (module docstring); OSError if it is missing."""
    import xxhash

    st = os.stat(path)
    stamp = f"{os.path.realpath(path)}|{st.st_size}|{st.st_mtime_ns}|{st.st_ctime_ns}|{st.st_ino}|{st.st_dev}"
    return xxhash.xxh3_128_hexdigest(stamp.encode())


def read_with_version(path: str | os.PathLike, read):
    """``(read(path), version)``: the file's version before it was read, if it was the same
    after; else a value that no later version equals (the file changed while it was read).
    A file that cannot be stat'ed is left to ``read``, whose error says what is wrong with it."""
    before = _version_or_none(path)
    result = read(path)
    after = _version_or_none(path)
    return result, before if before is not None and before == after else f"changed while read ({after})"


def _version_or_none(path) -> str | None:
    try:
        return file_version(path)
    except OSError:
        return None


@functools.cache
def code_version(package_dir: Path = PACKAGE_DIR) -> str:
    """A digest of every ``*.py`` file under ``package_dir`` (its path and bytes) and of the
    versions of :data:`LIBRARIES` (module docstring). About 5 ms; cached per process."""
    from importlib.metadata import version

    import xxhash

    h = xxhash.xxh3_128()
    for lib in LIBRARIES:
        h.update(f"{lib}={version(lib)};".encode())
    for source in sorted(package_dir.rglob("*.py")):
        h.update(f"|{source.relative_to(package_dir).as_posix()}:".encode())
        h.update(source.read_bytes())
    return h.hexdigest()
