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
