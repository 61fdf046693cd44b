"""Stored values (lib/outputs/stored.py): out-of-band buffers, mapped on loading."""

import pickle

import numpy as np
import pandas as pd
import pytest

from racedayai_bayes.lib.outputs import stored


def _value():
    rng = np.random.default_rng(0)
    n = 5000
    frame = pd.DataFrame({
        "athlete_hash": pd.array([f"h{i % 97}" if i % 11 else None for i in range(n)], dtype="string"),
        "event_year": pd.array(rng.integers(2015, 2025, n), dtype="Int64"),
        "total_sec": rng.normal(20000, 3000, n),
        "hist_starts": rng.integers(0, 5, n).astype(np.int32),
        "gender": pd.Categorical(rng.choice(["M", "F"], n)),
    })
    return {"frame": frame, "mask": rng.random(n) < 0.1, "matrix": rng.standard_normal((30, 7)),
            "strided": np.arange(20.0)[::3], "text": "a note", "empty": np.zeros(0)}


def _same(a, b):
    pd.testing.assert_frame_equal(a["frame"], b["frame"])
    for key in ("mask", "matrix", "strided", "empty"):
        np.testing.assert_array_equal(a[key], b[key])
    assert a["text"] == b["text"]


def test_a_stored_value_loads_equal_with_its_arrays_mapped_from_the_file(tmp_path):
    path = tmp_path / "value.pkl"
    value = _value()
    with open(path, "wb") as fh:
        stored.dump(value, fh)
    loaded = stored.load(path)
    _same(value, loaded)
    total = loaded["frame"]["total_sec"].to_numpy()
    assert not total.flags.owndata and total.ctypes.data % stored.ALIGN == 0  # a view of the mapping
    # arrays are writable, as a plain pickle's are, and writing never reaches the file
    loaded["matrix"][0, 0] = 1e9
    loaded["frame"].loc[0, "total_sec"] = -1.0
    _same(value, stored.load(path))


def _read(path):
    """What the IO manager does with an object on an object store: one read into one buffer."""
    with open(path, "rb") as fh:
        return stored.read(fh, path.stat().st_size, str(path))


def test_a_file_read_whole_as_from_an_object_store_loads_the_same(tmp_path):
    path = tmp_path / "value.pkl"
    with open(path, "wb") as fh:
        stored.dump(_value(), fh)
    loaded = _read(path)
    _same(_value(), loaded)
    loaded["matrix"][0, 0] = 2.0  # writable, as a plain pickle's arrays are


@pytest.mark.parametrize("from_bytes", [False, True])
def test_a_plain_pickle_written_by_an_earlier_version_still_loads(tmp_path, from_bytes):
    path = tmp_path / "old.pkl"
    path.write_bytes(pickle.dumps(_value(), protocol=pickle.HIGHEST_PROTOCOL))
    _same(_value(), _read(path) if from_bytes else stored.load(path))


def test_a_replaced_file_leaves_a_loaded_value_intact(tmp_path):
    """The IO manager replaces a stored value by renaming a new file over it: a step that
    loaded the old one keeps reading the old one's pages."""
    path = tmp_path / "value.pkl"
    with open(path, "wb") as fh:
        stored.dump({"a": np.arange(100_000.0)}, fh)
    loaded = stored.load(path)
    tmp = tmp_path / "new.pkl"
    with open(tmp, "wb") as fh:
        stored.dump({"a": np.zeros(100_000)}, fh)
    tmp.replace(path)
    np.testing.assert_array_equal(loaded["a"], np.arange(100_000.0))
    np.testing.assert_array_equal(stored.load(path)["a"], 0.0)


@pytest.mark.parametrize("cut", [1, 4000, 20])
def test_a_truncated_file_is_said_to_be_corrupt_not_a_confusing_pickle_error(tmp_path, cut):
    path = tmp_path / "value.pkl"
    with open(path, "wb") as fh:
        stored.dump(_value(), fh)
    data = path.read_bytes()
    path.write_bytes(data[:-cut] if cut != 20 else data[:20])
    with pytest.raises(stored.CorruptStoredValue, match="value.pkl"):
        stored.load(path)
    with pytest.raises(stored.CorruptStoredValue, match="value.pkl"):
        _read(path)


def test_arrow_text_of_whole_chunks_is_stored_without_pandas_copy(tmp_path, monkeypatch):
    """A pandas Arrow-backed column whose chunks are whole arrays is pickled as those chunks,
    not as the copy pandas' __getstate__ makes (combine_chunks): one chunk into the very bytes
    that copy gives, several as several; a text column that is a slice of larger buffers is
    stored compact too, without pandas' copy."""
    import pyarrow as pa
    from pandas.core.arrays.arrow.array import ArrowExtensionArray

    whole = pd.Series(pd.array([f"course {i % 13}" if i % 7 else None for i in range(4000)], dtype="string"))
    sliced = pd.Series(pd.array([f"athlete {i}" for i in range(4000)], dtype="string")).iloc[1000:1100].reset_index(drop=True)
    parts = pd.Series(pd.arrays.ArrowStringArray(pa.chunked_array([pa.array(["a", "b"], pa.large_string()),
                                                                     pa.array(["c", None], pa.large_string())])))
    frame = pd.DataFrame({"whole": whole, "year": np.arange(4000)})
    assert whole.array._pa_array.num_chunks == 1 and sliced.array._pa_array.chunk(0).offset == 1000
    combined = []
    original = ArrowExtensionArray.__getstate__
    monkeypatch.setattr(ArrowExtensionArray, "__getstate__", lambda self: combined.append(len(self)) or original(self))
    path = tmp_path / "value.pkl"
    for value, copies, chunks in ((frame, [], 1), (sliced, [], 1), (parts, [], 2)):
        combined.clear()
        with open(path, "wb") as fh:
            stored.dump(value, fh)
        assert combined == copies  # pandas' copy only of the slice
        loaded = stored.load(path)
        if isinstance(value, pd.DataFrame):
            pd.testing.assert_frame_equal(loaded, value)
            loaded = loaded["whole"]
        else:
            pd.testing.assert_series_equal(loaded, value)
        assert loaded.array._pa_array.num_chunks == chunks
    # one chunk: the same bytes as pandas' own way (its copy is the same array)
    plain = tmp_path / "plain.pkl"
    with open(plain, "wb") as fh:
        monkeypatch.setattr(stored._Pickler, "reducer_override", lambda self, obj: NotImplemented)
        stored.dump(frame, fh)
    with open(path, "wb") as fh:
        monkeypatch.undo()
        stored.dump(frame, fh)
    assert path.read_bytes() == plain.read_bytes()
    sliced_file = tmp_path / "sliced.pkl"
    with open(sliced_file, "wb") as fh:
        stored.dump(sliced, fh)
    assert sliced_file.stat().st_size < 20_000  # compact: not the 4,000 strings the slice points into


@pytest.mark.parametrize("large", [False, True])
def test_a_sliced_text_column_is_stored_as_its_own_values_at_any_offset(tmp_path, monkeypatch, large):
    """A slice of a text column (a distance's rows of the model frame are one) is stored as
    its own characters, offsets and validity, whatever its offset (the validity bits of a
    slice that does not start on a byte realigned), with no copy by pandas: it loads equal to
    the slice, missing values where they were, and the file holds the slice's characters,
    not the whole column's. A slice of another Arrow type goes pandas' way (a compact copy)."""
    import pyarrow as pa
    from pandas.core.arrays.arrow.array import ArrowExtensionArray

    kind = pa.large_string() if large else pa.string()
    text = pa.array([f"athlete {i:05d}" if i % 5 else None for i in range(20_000)], kind)
    column = pd.Series(pd.arrays.ArrowStringArray(pa.chunked_array([text])))
    combined = []
    original = ArrowExtensionArray.__getstate__
    monkeypatch.setattr(ArrowExtensionArray, "__getstate__", lambda self: combined.append(len(self)) or original(self))
    path = tmp_path / "value.pkl"
    # (1, 5): a slice without a missing value of a column with some (no validity bits stored)
    for lo, hi in ((0, 100), (1, 5), (3, 11), (8, 1000), (13, 20_000), (19_990, 20_000), (7, 7)):
        part = pd.DataFrame({"text": column, "n": np.arange(20_000)}).iloc[lo:hi].reset_index(drop=True)
        assert hi == lo or part["text"].array._pa_array.chunk(0).offset == lo
        with open(path, "wb") as fh:
            stored.dump(part, fh)
        loaded = stored.load(path)
        pd.testing.assert_frame_equal(loaded, part)
        assert loaded["text"].isna().tolist() == [i % 5 == 0 for i in range(lo, hi)]
        assert path.stat().st_size < 4_096 + 40 * (hi - lo)  # 14 characters, an offset, a validity bit and an int64 a row
    # several chunks, each a slice; and a whole array whose offsets start past its buffer's first character
    chunked = pd.Series(pd.arrays.ArrowStringArray(pa.chunked_array([text.slice(3, 40), text.slice(5000, 7)])))
    shifted = pa.Array.from_buffers(kind, 3, [None, pa.py_buffer(np.array([2, 4, 4, 9], dtype=np.int64 if large else np.int32)),
                                               pa.py_buffer(b"xxabcdefgh")])
    for value in (chunked, pd.Series(pd.arrays.ArrowStringArray(pa.chunked_array([shifted])))):
        with open(path, "wb") as fh:
            stored.dump(value, fh)
        pd.testing.assert_series_equal(stored.load(path), value)
    assert stored.load(path).tolist() == ["ab", "", "cdefg"]
    assert combined == []
    numbers = pd.Series(pd.array(range(1000), dtype="int64[pyarrow]")).iloc[10:20].reset_index(drop=True)
    with open(path, "wb") as fh:
        stored.dump(numbers, fh)
    assert combined == [10]
    pd.testing.assert_series_equal(stored.load(path), numbers)


@pytest.mark.parametrize("content", [b"", b"\0" * 5000], ids=["empty", "zero-filled"])
def test_a_file_a_crash_left_empty_or_zero_filled_is_said_to_be_corrupt(tmp_path, content):
    """Stored values are not fsynced (defs/resources.AtomicPickleIOManager): a crash of the
    machine can leave one empty or zero-filled. Loading it says so and names the file, not
    pickle's 'Ran out of input'; a plain pickle of an earlier version still loads."""
    path = tmp_path / "value.pkl"
    path.write_bytes(content)
    with pytest.raises(stored.CorruptStoredValue, match="value.pkl.*materialise its asset again"):
        stored.load(path)
    with pytest.raises(stored.CorruptStoredValue, match="value.pkl"):
        _read(path)
    path.write_bytes(pickle.dumps({"a": 1}, protocol=2))
    assert stored.load(path) == {"a": 1} and _read(path) == {"a": 1}


@pytest.mark.parametrize("threads", [1, 2, 3])
def test_a_large_value_written_through_a_mapping_is_the_same_file(tmp_path, monkeypatch, threads):
    """dump_file copies a large value's buffers into a mapping of the file in threads, in
    pieces: the bytes are dump's, whatever the number of threads and pieces."""
    monkeypatch.setattr(stored, "MAPPED_MIN_BYTES", 1024)
    monkeypatch.setattr(stored, "_PIECE", 1000)  # pieces that end inside buffers, and buffers of one piece
    value = _value()
    with open(tmp_path / "plain.pkl", "wb") as fh:
        stored.dump(value, fh)
    (tmp_path / "mapped.pkl").write_bytes(b"x" * 10_000_000)  # a longer file is emptied first
    mapped = []
    real = stored._copy_mapped
    monkeypatch.setattr(stored, "_copy_mapped", lambda *a: mapped.append(a[-1]) or real(*a))
    stored.dump_file(value, tmp_path / "mapped.pkl", threads=threads)
    assert mapped == ([threads] if threads > 1 else [])
    assert (tmp_path / "mapped.pkl").read_bytes() == (tmp_path / "plain.pkl").read_bytes()
    _same(value, stored.load(tmp_path / "mapped.pkl"))


def test_a_small_value_or_a_file_system_without_allocation_is_written_plainly(tmp_path, monkeypatch):
    import errno

    value = _value()
    with open(tmp_path / "plain.pkl", "wb") as fh:
        stored.dump(value, fh)
    mapped = []
    monkeypatch.setattr(stored, "_copy_mapped", lambda *a: mapped.append(1))
    stored.dump_file(value, tmp_path / "small.pkl")  # below MAPPED_MIN_BYTES
    monkeypatch.setattr(stored, "MAPPED_MIN_BYTES", 1024)

    def unsupported(fd, offset, size):
        raise OSError(errno.EOPNOTSUPP, "Operation not supported")

    monkeypatch.setattr(stored.os, "posix_fallocate", unsupported)
    stored.dump_file(value, tmp_path / "unallocated.pkl")
    assert mapped == []
    for name in ("small.pkl", "unallocated.pkl"):
        assert (tmp_path / name).read_bytes() == (tmp_path / "plain.pkl").read_bytes()


def test_a_full_disk_is_an_error_before_anything_is_copied_and_the_io_manager_keeps_the_old_value(tmp_path, monkeypatch):
    """No space for a large value: posix_fallocate's ENOSPC, raised before the mapping is
    written (a write into a mapping past the disk's end would be a SIGBUS); the IO manager's
    write fails as any failed write does, and the stored value before it stays."""
    import errno

    from upath import UPath

    from racedayai_bayes.defs.resources import AtomicPickleIOManager
    from racedayai_bayes.lib.outputs.io import OutputWriteError

    manager = AtomicPickleIOManager(base_path=UPath(tmp_path))
    path = UPath(tmp_path / "value.pkl")
    manager.dump_to_path(None, {"x": np.arange(3)}, path)
    monkeypatch.setattr(stored, "MAPPED_MIN_BYTES", 1024)

    def full(fd, offset, size):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(stored.os, "posix_fallocate", full)
    monkeypatch.setattr(stored, "_copy_mapped", lambda *a: pytest.fail("copied into a file without space"))
    with pytest.raises(OutputWriteError, match="No space left on device"):
        manager.dump_to_path(None, _value(), path)
    assert stored.load(tmp_path / "value.pkl")["x"].tolist() == [0, 1, 2]
    assert [p.name for p in tmp_path.iterdir()] == ["value.pkl"]  # no temporary file left


def test_an_error_during_the_mapped_copy_is_raised_as_itself(tmp_path, monkeypatch):
    """An error (or an interrupt) while the threads copy is the error raised, not a BufferError
    from closing a mapping that an array still uses; the IO manager's write then fails as any
    failed write does and leaves no temporary file."""
    import concurrent.futures

    from upath import UPath

    from racedayai_bayes.defs.resources import AtomicPickleIOManager

    monkeypatch.setattr(stored, "MAPPED_MIN_BYTES", 1024)

    class Interrupted(concurrent.futures.ThreadPoolExecutor):
        def map(self, fn, *iterables, **kwargs):
            raise KeyboardInterrupt("interrupted while copying")

    monkeypatch.setattr(concurrent.futures, "ThreadPoolExecutor", Interrupted)
    with pytest.raises(KeyboardInterrupt, match="interrupted while copying"):
        stored.dump_file(_value(), tmp_path / "value.pkl")
    with pytest.raises(KeyboardInterrupt, match="interrupted while copying"):
        AtomicPickleIOManager(base_path=UPath(tmp_path / "store")).dump_to_path(None, _value(), UPath(tmp_path / "store" / "v.pkl"))
    assert list((tmp_path / "store").iterdir()) == []


def test_an_error_inside_a_copying_thread_is_raised_as_itself(tmp_path, monkeypatch):
    """An error raised in a copying thread, whose frame (in the error's traceback) still holds
    the array over the mapping, is the error raised: not a BufferError from closing the mapping."""
    monkeypatch.setattr(stored, "MAPPED_MIN_BYTES", 1024)
    monkeypatch.setattr(stored, "_PIECE", 1000)
    real = stored._copy_pieces

    def failing(target, share):
        real(target, share[:1])
        raise OSError("an I/O error while copying")

    monkeypatch.setattr(stored, "_copy_pieces", failing)
    with pytest.raises(OSError, match="an I/O error while copying"):
        stored.dump_file(_value(), tmp_path / "value.pkl")


# ------------------------------------------------------------ shared buffers


def _frame_file(path, n=60_000):
    """A stored frame of text, numbers and nullable integers: the model frame's kinds of column."""
    rng = np.random.default_rng(1)
    frame = pd.DataFrame({
        "athlete_hash": pd.array([f"h{i % 997:05d}" if i % 13 else None for i in range(n)], dtype="string[pyarrow]"),
        "event_name": pd.array([f"IRONMAN {i % 31}" for i in range(n)], dtype="string[pyarrow]"),
        "total_sec": rng.normal(20000, 3000, n),
        "event_year": pd.array(2010 + np.arange(n) % 15, dtype="Int64"),
    })
    with open(path, "wb") as fh:
        stored.dump(frame, fh)
    return frame


def _write(value, store, name="split.pkl"):
    """What the IO manager does: dump beside the final path, rename over it, then remove the
    links of the value it replaced."""
    previous = stored.source_names(store / name)
    tmp = store / f".{name}.x.tmp"
    stored.dump_file(value, tmp, final=store / name)
    tmp.replace(store / name)
    stored.remove_replaced_links(store / name, previous)
    return store / name


def _links(store, name="split.pkl"):
    return sorted(p.name for p in store.iterdir() if p.name.startswith(f".{name}.") and ".src" in p.name)


def test_a_slice_of_a_loaded_value_is_stored_as_a_reference_to_its_file(tmp_path):
    """A split is a slice of the loaded model frame: its bytes are the frame file's, so its own
    file holds the pickle stream and a table, and a hard link pins the frame's file."""
    frame = _frame_file(tmp_path / "frame.pkl")
    loaded = stored.load(tmp_path / "frame.pkl")
    part = loaded.iloc[10_000:50_000]
    path = _write({"rows": part, "mask": np.arange(40_000) % 3 == 0}, tmp_path)
    assert path.read_bytes().startswith(stored.MAGIC_SHARED)
    # its own arrays only (the mask, and the nullable years' 1-byte mask: 40 kB each), no rows
    assert path.stat().st_size < 100_000 < (tmp_path / "frame.pkl").stat().st_size / 10
    (link,) = _links(tmp_path)
    assert (tmp_path / link).stat().st_ino == (tmp_path / "frame.pkl").stat().st_ino
    back = stored.load(path)
    pd.testing.assert_frame_equal(back["rows"], frame.iloc[10_000:50_000])
    np.testing.assert_array_equal(back["mask"], np.arange(40_000) % 3 == 0)
    assert not back["rows"]["total_sec"].to_numpy().flags.owndata  # a view of the frame's file
    back["rows"].loc[10_000, "total_sec"] = -1.0  # writable, as a plain pickle's, and writing reaches neither file
    back["mask"][0] = False
    pd.testing.assert_frame_equal(stored.load(path)["rows"], frame.iloc[10_000:50_000])
    pd.testing.assert_frame_equal(stored.load(tmp_path / "frame.pkl"), frame)


def test_a_value_that_shares_its_sources_bytes_outlives_their_replacement_and_removal(tmp_path):
    frame = _frame_file(tmp_path / "frame.pkl")
    path = _write(stored.load(tmp_path / "frame.pkl").iloc[5_000:50_000], tmp_path)
    assert path.read_bytes().startswith(stored.MAGIC_SHARED) and len(_links(tmp_path)) == 1
    _frame_file(tmp_path / "new.pkl", n=50)
    (tmp_path / "new.pkl").replace(tmp_path / "frame.pkl")  # a newer frame
    pd.testing.assert_frame_equal(stored.load(path), frame.iloc[5_000:50_000])
    (tmp_path / "frame.pkl").unlink()
    pd.testing.assert_frame_equal(stored.load(path), frame.iloc[5_000:50_000])


def test_a_copy_of_the_storage_folder_loads_as_the_original(tmp_path):
    """A backup or a test's snapshot copies every file (the links too, as plain files, with new
    inodes and times): the copy's values load the same."""
    import shutil

    store = tmp_path / "store"
    store.mkdir()
    frame = _frame_file(store / "frame.pkl")
    path = _write(stored.load(store / "frame.pkl").iloc[7:50_000], store)
    assert path.read_bytes().startswith(stored.MAGIC_SHARED) and len(_links(store)) == 1
    shutil.copytree(store, tmp_path / "copy")
    shutil.rmtree(store)
    pd.testing.assert_frame_equal(stored.load(tmp_path / "copy" / "split.pkl"), frame.iloc[7:50_000])


def test_bytes_this_process_wrote_over_are_stored_not_shared(tmp_path):
    """A loaded array written to holds this process's own copy of the pages written (the file
    does not): a view of it is stored with what the process sees, the file untouched; a view
    of pages not written is still shared."""
    with open(tmp_path / "arrays.pkl", "wb") as fh:
        stored.dump({"a": np.arange(100_000.0), "b": np.arange(100_000.0)}, fh)
    loaded = stored.load(tmp_path / "arrays.pkl")
    loaded["a"][50_000] = -1.0  # copy-on-write: this process's own page
    path = _write({"a": loaded["a"][40_000:60_000], "b": loaded["b"][40_000:60_000]}, tmp_path)
    assert 20_000 * 8 <= path.stat().st_size < 20_000 * 8 + 4096  # a's bytes only
    back = stored.load(path)
    assert back["a"][10_000] == -1.0 and back["a"][0] == 40_000.0
    np.testing.assert_array_equal(back["b"], np.arange(40_000.0, 60_000.0))
    assert stored.load(tmp_path / "arrays.pkl")["a"][50_000] == 50_000.0


@pytest.mark.parametrize("without", ["final path", "pagemap", "pagemap's flags", "hard links", "large buffers"])
def test_a_value_shares_nothing_without_what_sharing_needs(tmp_path, monkeypatch, without):
    _frame_file(tmp_path / "frame.pkl")
    part = stored.load(tmp_path / "frame.pkl").iloc[:30_000]
    if without == "final path":
        stored.dump_file(part, tmp_path / "split.pkl")
        path = tmp_path / "split.pkl"
    else:
        if without == "pagemap":  # not Linux
            monkeypatch.setattr(stored, "pages_unwritten", lambda address, length: False)
        elif without == "pagemap's flags":  # a sandbox whose pagemap reports nothing
            monkeypatch.setattr(stored, "_pagemap_tells_written_pages", lambda: False)
        elif without == "hard links":  # another file system, or one without them

            def no_link(src, dst):
                raise OSError(18, "Invalid cross-device link")

            monkeypatch.setattr(stored.os, "link", no_link)
        else:
            monkeypatch.setattr(stored, "SHARE_MIN_BYTES", 1 << 30)
        path = _write(part, tmp_path)
    assert path.read_bytes().startswith(stored.MAGIC) and _links(tmp_path) == []
    pd.testing.assert_frame_equal(stored.load(path), part)


def test_the_pagemap_check_is_trusted_here():
    """The CI machine and this one are Linux with a pagemap that tells written pages: sharing is on."""
    assert stored._pagemap_tells_written_pages()


def test_small_buffers_are_written_and_pin_no_file(tmp_path):
    """An Index of column names, or a short slice, is a few bytes of a loaded value: it is
    written, not a reason to keep the whole file on disk."""
    frame = _frame_file(tmp_path / "frame.pkl")
    loaded = stored.load(tmp_path / "frame.pkl")
    path = _write({"names": loaded.columns, "few": loaded.iloc[100:110]}, tmp_path)
    assert path.read_bytes().startswith(stored.MAGIC) and _links(tmp_path) == []
    back = stored.load(path)
    pd.testing.assert_frame_equal(back["few"], frame.iloc[100:110])
    assert list(back["names"]) == list(frame.columns)


def test_a_source_replaced_between_loading_and_storing_is_copied_not_linked(tmp_path):
    """The name the file was loaded by now holds a newer file: the link would pin the wrong
    bytes, so the value's bytes are written."""
    frame = _frame_file(tmp_path / "frame.pkl")
    part = stored.load(tmp_path / "frame.pkl").iloc[:40_000]
    _frame_file(tmp_path / "new.pkl", n=40_000)
    (tmp_path / "new.pkl").replace(tmp_path / "frame.pkl")  # the same size, another inode
    path = _write(part, tmp_path)
    assert path.read_bytes().startswith(stored.MAGIC) and _links(tmp_path) == []
    pd.testing.assert_frame_equal(stored.load(path), frame.iloc[:40_000])


def test_a_failed_write_removes_the_links_it_made(tmp_path, monkeypatch):
    _frame_file(tmp_path / "frame.pkl")
    part = stored.load(tmp_path / "frame.pkl").iloc[:40_000]

    def full_disk(*args):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(stored, "_write", full_disk)
    with pytest.raises(OSError, match="No space left"):
        stored.dump_file(part, tmp_path / ".split.pkl.x.tmp", final=tmp_path / "split.pkl", threads=1)
    assert _links(tmp_path) == []


def test_a_view_of_a_value_that_shares_bytes_shares_them_too(tmp_path):
    """A chain: a value made from a loaded split (itself pointing into the frame) points into
    the frame's file through its own link, and outlives the split's."""
    frame = _frame_file(tmp_path / "frame.pkl")
    split = _write(stored.load(tmp_path / "frame.pkl").iloc[:50_000], tmp_path)
    later = _write(stored.load(split).iloc[10_000:45_000], tmp_path, name="later.pkl")
    (link,) = _links(tmp_path, "later.pkl")
    assert (tmp_path / link).stat().st_ino == (tmp_path / "frame.pkl").stat().st_ino
    split.unlink()
    for name in _links(tmp_path):
        (tmp_path / name).unlink()
    pd.testing.assert_frame_equal(stored.load(later), frame.iloc[10_000:45_000])


def test_rewriting_a_value_removes_its_predecessors_links(tmp_path):
    _frame_file(tmp_path / "frame.pkl")
    loaded = stored.load(tmp_path / "frame.pkl")
    _write(loaded.iloc[:20_000], tmp_path)
    first = _links(tmp_path)
    path = _write(loaded.iloc[20_000:40_000], tmp_path)
    assert len(_links(tmp_path)) == 1 and _links(tmp_path) != first
    pd.testing.assert_frame_equal(stored.load(path), loaded.iloc[20_000:40_000])
    _write({"plain": np.arange(5)}, tmp_path)  # a value with no shared buffer: its predecessor's links go
    assert _links(tmp_path) == []


def test_a_slow_writer_keeps_its_links_when_another_writer_replaced_the_value_meanwhile(tmp_path, monkeypatch):
    """Two runs store the same value at once: each removes only the links of the value its own
    rename replaced, so the one renamed last still finds its links. A link no value names
    (the loser's, or a writer's that died before its rename) goes once a day old."""
    _frame_file(tmp_path / "frame.pkl")
    loaded = stored.load(tmp_path / "frame.pkl")
    _write(loaded.iloc[:20_000], tmp_path)
    final = tmp_path / "split.pkl"
    previous = stored.source_names(final)
    stored.dump_file(loaded.iloc[20_000:40_000], tmp_path / ".split.pkl.slow.tmp", final=final)  # the slow one
    _write(loaded.iloc[40_000:60_000], tmp_path)  # the fast one, start to end, meanwhile
    (tmp_path / ".split.pkl.slow.tmp").replace(final)
    stored.remove_replaced_links(final, previous)
    pd.testing.assert_frame_equal(stored.load(final), loaded.iloc[20_000:40_000])
    assert len(_links(tmp_path)) == 2  # the fast writer's, named by no value now
    monkeypatch.setattr(stored, "STALE_LINK_S", 0.0)
    stored.remove_replaced_links(final, [])
    assert _links(tmp_path) == stored.source_names(final)
    pd.testing.assert_frame_equal(stored.load(final), loaded.iloc[20_000:40_000])


def test_a_missing_or_short_source_is_a_corrupt_stored_value(tmp_path):
    _frame_file(tmp_path / "frame.pkl")
    path = _write(stored.load(tmp_path / "frame.pkl").iloc[:40_000], tmp_path)
    (link,) = _links(tmp_path)
    (tmp_path / link).write_bytes(b"a shorter file")
    with pytest.raises(stored.CorruptStoredValue, match=f"split.pkl: its source file .*{link} has 14 bytes, not the"):
        stored.load(path)
    (tmp_path / link).unlink()
    with pytest.raises(stored.CorruptStoredValue, match=f"split.pkl: its source file .*{link} cannot be read.*materialise"):
        stored.load(path)


def test_a_damaged_list_of_sources_is_a_corrupt_stored_value_and_its_links_are_left(tmp_path):
    """A value whose list of sources cannot be read fails to load with the file's name; the
    next write of it cannot tell which links were its, so it removes none (best effort)."""
    _frame_file(tmp_path / "frame.pkl")
    loaded = stored.load(tmp_path / "frame.pkl")
    path = _write(loaded.iloc[:40_000], tmp_path)
    (link,) = _links(tmp_path)
    data = bytearray(path.read_bytes())
    at = data.index(link.encode())
    data[at - 10:at] = b"#" * 10  # the JSON before the link's name
    path.write_bytes(bytes(data))
    with pytest.raises(stored.CorruptStoredValue, match="split.pkl: its list of source files cannot be read"):
        stored.load(path)
    assert stored.source_names(path) is None
    assert stored.remove_replaced_links(path, [link]) == [] and _links(tmp_path) == [link]


def test_a_value_replaced_while_it_is_loaded_is_opened_again(tmp_path, monkeypatch):
    """A reader that opened a value just before a newer one was renamed over it, whose old links
    were then removed, opens the value again: it gets the newer one."""
    _frame_file(tmp_path / "frame.pkl")
    loaded = stored.load(tmp_path / "frame.pkl")
    path = _write(loaded.iloc[:20_000], tmp_path)
    real = stored._parse_shared
    calls = []

    def replaced_meanwhile(view, name, folder):
        if not calls:
            _write(loaded.iloc[20_000:45_000], tmp_path)  # removes the links of the value being loaded
        calls.append(name)
        return real(view, name, folder)

    monkeypatch.setattr(stored, "_parse_shared", replaced_meanwhile)
    pd.testing.assert_frame_equal(stored.load(path), loaded.iloc[20_000:45_000])
    assert len(calls) == 2


def test_a_shared_value_read_as_from_an_object_store_is_refused_clearly(tmp_path):
    _frame_file(tmp_path / "frame.pkl")
    path = _write(stored.load(tmp_path / "frame.pkl").iloc[:40_000], tmp_path)
    with pytest.raises(stored.CorruptStoredValue, match="shares buffers with local stored files"):
        _read(path)


def test_the_io_manager_stores_a_view_of_a_value_it_loaded_as_a_reference(tmp_path):
    """The holdout_split step loads the model frame through the IO manager and stores its slice."""
    from types import SimpleNamespace

    import dagster as dg
    from upath import UPath

    from racedayai_bayes.defs.resources import AtomicPickleIOManager

    manager = AtomicPickleIOManager(base_path=UPath(tmp_path))
    context = SimpleNamespace(has_asset_key=True, asset_key=dg.AssetKey("holdout_split"))
    frame = _frame_file(tmp_path / "model_frame.pkl")
    loaded = manager.load_from_path(context, UPath(tmp_path / "model_frame.pkl"))
    (tmp_path / "holdout_split").mkdir()
    target = UPath(tmp_path / "holdout_split" / "70.3.pkl")
    manager.dump_to_path(context, loaded.iloc[:40_000], target)
    assert (tmp_path / "holdout_split" / "70.3.pkl").stat().st_size < 60_000  # the years' mask, no rows
    pd.testing.assert_frame_equal(manager.load_from_path(context, target), frame.iloc[:40_000])


def test_a_distances_split_of_a_real_model_frame_shares_every_row(tmp_path, small_inputs, monkeypatch):
    """The model frame's real layout (each column its own array, the text Arrow): a split stores
    none of its rows' bytes, only its own arrays (the held-out mask)."""
    from racedayai_bayes.lib.data import contracts
    from racedayai_bayes.lib.data.frame import distance_rows, model_frame_and_seasons
    from racedayai_bayes.lib.data.split import split_holdout

    monkeypatch.setattr(stored, "SHARE_MIN_BYTES", 1)  # a small world's columns are small
    read = {name: reader(small_inputs / file).frame for name, reader, file in (
        ("races", contracts.read_races, contracts.RACE_FILE), ("profiles", contracts.read_profiles, contracts.PROFILE_FILE),
        ("clusters", contracts.read_clusters, contracts.CLUSTER_FILE))}
    frame, _, _ = model_frame_and_seasons(read["races"], read["profiles"], read["clusters"])
    stored.dump_file(frame, tmp_path / "frame.pkl")
    split = split_holdout(distance_rows(stored.load(tmp_path / "frame.pkl"), "70.3"))
    path = _write(split, tmp_path)
    rows_bytes = int(split.rows.memory_usage(deep=True, index=False).sum())
    assert path.stat().st_size < 64 * 1024 + 16 * len(split.rows) < rows_bytes / 4  # its own small arrays only
    back = stored.load(path)
    pd.testing.assert_frame_equal(back.rows, split.rows)
    np.testing.assert_array_equal(back.held_out, split.held_out)
