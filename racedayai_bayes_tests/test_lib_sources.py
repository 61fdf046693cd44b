"""Versions of the input files and of the package's code (lib/data/sources.py): what decides
whether a refit may reuse the model frame a previous one stored."""

import os
import time

import pytest

from racedayai_bayes.lib.data import sources


def _later_tick():
    # the kernel stamps a change with a coarse clock (a few ms): let it move
    time.sleep(0.03)


def test_a_files_version_is_stable_until_it_is_written_or_replaced(tmp_path):
    path = tmp_path / "athlete_race.csv"
    path.write_text("a,b\n1,2\n")
    version = sources.file_version(path)
    assert sources.file_version(path) == version
    path.read_text()  # reading changes nothing
    assert sources.file_version(path) == version
    st = path.stat()

    _later_tick()
    path.write_text("a,b\n1,2\n")  # the same bytes, written again
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))  # and its modification time set back
    rewritten = sources.file_version(path)
    assert rewritten != version  # the change time cannot be set back

    _later_tick()
    other = tmp_path / "copy.csv"
    other.write_text("a,b\n1,2\n")
    os.utime(other, ns=(st.st_atime_ns, st.st_mtime_ns))
    os.replace(other, path)  # another file of the same size and times in its place
    assert sources.file_version(path) not in (version, rewritten)

    with pytest.raises(OSError):
        sources.file_version(tmp_path / "missing.csv")


def test_a_file_read_gets_its_version_unless_it_changed_while_read_or_just_before(tmp_path, monkeypatch):
    path = tmp_path / "f.csv"
    path.write_text("x\n1\n")
    # written just now: possibly within the clock tick of a next write, so no version matches it
    value, version = sources.read_with_version(path, lambda p: p.read_text())
    assert value == "x\n1\n" and version.startswith("changed less than 1 s before it was read")
    assert version != sources.file_version(path) and version != sources.read_with_version(path, lambda p: None)[1]
    monkeypatch.setattr(sources, "RECENT_S", 0.0)  # as if it were written long ago
    value, version = sources.read_with_version(path, lambda p: p.read_text())
    assert value == "x\n1\n" and version == sources.file_version(path)

    def read_and_append(p):
        text = p.read_text()
        _later_tick()
        with open(p, "a") as fh:  # another process writes while the file is read
            fh.write("2\n")
        return text

    value, version = sources.read_with_version(path, read_and_append)
    assert value == "x\n1\n"
    assert version.startswith("changed while read") and version != sources.file_version(path)


def test_the_code_version_changes_with_any_source_of_the_package_and_only_then(tmp_path):
    package = tmp_path / "pkg"
    (package / "lib").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "lib" / "frame.py").write_text("ROWS = 1\n")
    (package / "lib" / "notes.txt").write_text("not code")
    version = sources.code_version.__wrapped__(package)  # uncached: the files change below
    assert sources.code_version.__wrapped__(package) == version
    (package / "lib" / "notes.txt").write_text("still not code")
    assert sources.code_version.__wrapped__(package) == version

    (package / "lib" / "frame.py").write_text("ROWS = 2\n")
    edited = sources.code_version.__wrapped__(package)
    assert edited != version
    (package / "lib" / "new.py").write_text("")
    assert sources.code_version.__wrapped__(package) not in (version, edited)
    # a file moved to another module path is another program
    (package / "lib" / "new.py").unlink()
    (package / "lib" / "frame.py").rename(package / "frame.py")
    assert sources.code_version.__wrapped__(package) not in (version, edited)
    # the package's own version is cached per process
    assert sources.code_version() == sources.code_version() == sources.code_version.__wrapped__(sources.PACKAGE_DIR)


def test_a_package_without_sources_has_a_code_version_nothing_equals(tmp_path):
    (tmp_path / "only.pyc").write_bytes(b"")
    first = sources.code_version.__wrapped__(tmp_path)
    assert first.startswith("no sources") and first != sources.code_version.__wrapped__(tmp_path)


def test_a_file_that_cannot_be_read_is_left_to_its_reader(tmp_path):
    """A missing file's error is the reader's (the input contract names the file), not a stat's."""
    class Missing(Exception):
        pass

    def reader(path):
        raise Missing(f"{path.name} is missing")

    with pytest.raises(Missing, match="athlete_race.csv is missing"):
        sources.read_with_version(tmp_path / "athlete_race.csv", reader)
    # a file that appears while it is read has no version a later one equals
    created = tmp_path / "late.csv"
    _, version = sources.read_with_version(created, lambda p: p.write_text("x"))
    assert version.startswith("changed while read") and version != sources.file_version(created)

