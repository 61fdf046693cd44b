"""Atomic writes (lib/io.py): a failed write never leaves a partial output or a temp file,
on local disks and on object stores."""

from __future__ import annotations

import os
import stat
import tempfile
import uuid
from pathlib import Path

import pandas as pd
import pyarrow.csv
import pytest
from upath import UPath

from racedayai_bayes.lib.outputs.io import OutputWriteError, as_path, atomic_open, atomic_path, write_csv_atomic

FRAME = pd.DataFrame({"athlete_hash": ["a", "b"], "bayes_pred": [20000.5, 41000.0]})
OLD_BYTES = b"athlete_hash,bayes_pred\nold,1.0\n"


@pytest.fixture
def umask_022():
    old = os.umask(0o022)
    yield
    os.umask(old)


def _listing(folder):
    return sorted(p.name for p in folder.iterdir())


def test_write_csv_atomic_writes_content_and_leaves_no_temp_file(tmp_path, umask_022):
    target = tmp_path / "out" / "bayesian_predictions_70.3.csv"  # parent is created
    returned = write_csv_atomic(FRAME, target)
    assert returned == target
    # unquoted like pandas; floats in shortest round-trip form
    assert target.read_text() == "athlete_hash,bayes_pred\na,20000.5\nb,41000\n"
    assert _listing(target.parent) == ["bayesian_predictions_70.3.csv"]
    pd.testing.assert_frame_equal(pd.read_csv(target), FRAME, check_dtype=False)


def test_replaces_an_existing_file(tmp_path, umask_022):
    target = tmp_path / "p.csv"
    target.write_bytes(OLD_BYTES)
    write_csv_atomic(FRAME, target)
    assert target.read_text().startswith("athlete_hash,bayes_pred\na,20000.5")
    assert _listing(tmp_path) == ["p.csv"]


def test_values_needing_quotes_fall_back_to_pandas(tmp_path):
    frame = pd.DataFrame({"name": ['Smith, "Jo"', None], "x": [1.5, float("nan")]})
    target = write_csv_atomic(frame, tmp_path / "q.csv")
    pd.testing.assert_frame_equal(pd.read_csv(target), frame, check_dtype=False)


def test_a_csv_written_on_two_threads_is_the_same_bytes(tmp_path, monkeypatch):
    """With a second core granted, pieces of CSV_PIECE_ROWS rows are formatted at once and
    written in order: the same file as one thread, the header once; a value needing quotes in
    a later piece still falls back to pandas, over what the pieces had written. A table of one
    piece, or a second core refused, is written on one thread, and the core is asked for only
    for a table of several pieces."""
    import contextlib

    import numpy as np

    from racedayai_bayes.lib.outputs import io

    monkeypatch.setattr(io, "CSV_PIECE_ROWS", 7)
    asked = []

    def core(granted=True):
        @contextlib.contextmanager
        def second_core():
            asked.append(granted)
            yield granted
        return second_core

    rng = np.random.default_rng(0)
    frame = pd.DataFrame({"athlete_hash": [f"h{i:04d}" for i in range(100)], "bayes_pred": rng.random(100) * 4e4,
                          "event_year": np.arange(100) % 5 + 2020, "held_out": np.arange(100) % 3 == 0})
    frame.loc[5, "bayes_pred"] = np.nan
    one = write_csv_atomic(frame, tmp_path / "one.csv").read_bytes()
    two = write_csv_atomic(frame, tmp_path / "two.csv", second_core=core()).read_bytes()
    assert two == one and one.count(b"athlete_hash") == 1 and asked == [True]
    refused = write_csv_atomic(frame, tmp_path / "refused.csv", second_core=core(False)).read_bytes()
    assert refused == one and asked == [True, False]
    assert write_csv_atomic(frame.iloc[:7], tmp_path / "small.csv", second_core=core()).read_bytes() == \
        write_csv_atomic(frame.iloc[:7], tmp_path / "small1.csv").read_bytes()
    assert asked == [True, False]  # one piece: no second core asked for
    frame["name"] = "plain"
    frame.loc[90, "name"] = 'Smith, "Jo"'  # in the last pieces
    quoted = write_csv_atomic(frame, tmp_path / "q.csv", second_core=core())
    pd.testing.assert_frame_equal(pd.read_csv(quoted), frame, check_dtype=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["one.csv", "q.csv", "refused.csv", "small.csv", "small1.csv",
                                                          "two.csv"]


def test_a_failed_piece_leaves_the_old_file_and_no_temp_file(tmp_path, monkeypatch):
    """A write error while the pieces are written (a full disk) is an OutputWriteError and
    leaves the file that was there, as a one-thread write does."""
    import builtins
    import contextlib

    from racedayai_bayes.lib.outputs import io

    monkeypatch.setattr(io, "CSV_PIECE_ROWS", 2)
    target = tmp_path / "p.csv"
    target.write_bytes(OLD_BYTES)

    class FullDisk:
        def __init__(self, f):
            self.f, self.writes = f, 0

        def write(self, data):
            self.writes += 1
            if self.writes == 3:
                raise OSError(28, "No space left on device")
            return self.f.write(data)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.f.close()

    monkeypatch.setattr(io, "open", lambda *a, **k: FullDisk(builtins.open(*a, **k)), raising=False)
    frame = pd.DataFrame({"athlete_hash": list("abcdefgh"), "bayes_pred": range(8)})
    with pytest.raises(OutputWriteError, match="No space left"):
        write_csv_atomic(frame, target, second_core=lambda: contextlib.nullcontext(True))
    assert target.read_bytes() == OLD_BYTES and _listing(tmp_path) == ["p.csv"]


def test_permissions_follow_the_umask_not_0600(tmp_path, umask_022):
    target = tmp_path / "p.csv"
    write_csv_atomic(FRAME, target)
    mode = stat.S_IMODE(target.stat().st_mode)
    assert mode == 0o644
    assert mode != 0o600


def _partial_then_fail(exc: BaseException):
    """A stand-in for pyarrow.csv.write_csv that writes a truncated row, then raises."""

    def write_csv(table, path, *args, **kwargs):
        with open(path, "w") as fh:
            fh.write("athlete_hash,bayes_pred\na,2000")
        raise exc

    return write_csv


def test_os_error_part_way_keeps_previous_file_and_raises_output_write_error(tmp_path, monkeypatch):
    target = tmp_path / "p.csv"
    target.write_bytes(OLD_BYTES)
    monkeypatch.setattr(pyarrow.csv, "write_csv", _partial_then_fail(OSError(28, "No space left on device")))
    with pytest.raises(OutputWriteError) as info:
        write_csv_atomic(FRAME, target)
    message = str(info.value)
    assert str(target) in message
    assert "No space left on device" in message
    assert "previous file is unchanged" in message
    assert isinstance(info.value.__cause__, OSError)
    assert target.read_bytes() == OLD_BYTES
    assert _listing(tmp_path) == ["p.csv"]


def test_other_error_part_way_propagates_unchanged_and_cleans_up(tmp_path, monkeypatch):
    target = tmp_path / "p.csv"
    target.write_bytes(OLD_BYTES)
    monkeypatch.setattr(pyarrow.csv, "write_csv", _partial_then_fail(ValueError("bad value in row 2")))
    with pytest.raises(ValueError, match="bad value in row 2") as info:
        write_csv_atomic(FRAME, target)
    assert not isinstance(info.value, OutputWriteError)
    assert target.read_bytes() == OLD_BYTES
    assert _listing(tmp_path) == ["p.csv"]


def test_failure_without_a_previous_file_leaves_nothing(tmp_path, monkeypatch):
    monkeypatch.setattr(pyarrow.csv, "write_csv", _partial_then_fail(OSError(5, "I/O error")))
    with pytest.raises(OutputWriteError):
        write_csv_atomic(FRAME, tmp_path / "p.csv")
    assert _listing(tmp_path) == []


def test_atomic_open_writes_on_success_and_keeps_old_file_on_error(tmp_path, umask_022):
    target = tmp_path / "posterior.json"
    target.write_bytes(b"{}")
    with pytest.raises(RuntimeError):
        with atomic_open(target) as fh:
            fh.write('{"half": ')
            raise RuntimeError("killed")
    assert target.read_bytes() == b"{}"
    assert _listing(tmp_path) == ["posterior.json"]

    with atomic_open(target) as fh:
        fh.write('{"ok": true}')
    assert target.read_text() == '{"ok": true}'
    assert stat.S_IMODE(target.stat().st_mode) == 0o644
    assert _listing(tmp_path) == ["posterior.json"]


# Object stores: an fsspec URL (here memory://, an in-process store) is written through a
# local temporary file and uploaded with one put_file, so readers see the old object or the
# whole new one.


@pytest.fixture
def store():
    """A fresh memory:// folder, removed afterwards (the memory file system is process-wide)."""
    root = UPath(f"memory://racedayai-{uuid.uuid4().hex}")
    yield root
    if root.exists():
        root.fs.rm(root.path, recursive=True)


@pytest.fixture
def local_tmp(tmp_path, monkeypatch):
    """The folder Python's tempfile uses in this test: it must be empty after every write."""
    folder = tmp_path / "tmpdir"
    folder.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(folder))
    return folder


def test_as_path_keeps_local_paths_local_and_urls_as_upaths(tmp_path):
    assert as_path("data/outputs") == Path("data/outputs")
    assert as_path(tmp_path) == tmp_path
    assert as_path(f"file://{tmp_path}") == tmp_path
    assert as_path(UPath(tmp_path)) == tmp_path
    for local in ("data/outputs", f"file://{tmp_path}", UPath(tmp_path)):
        assert type(as_path(local)) is type(Path())  # a plain pathlib path: today's code path
    remote = as_path("memory://bucket/racedayai")
    assert isinstance(remote, UPath) and remote.protocol == "memory"
    assert str(remote / "p.csv") == "memory://bucket/racedayai/p.csv"
    s3 = as_path("s3://bucket/racedayai")
    assert s3.protocol == "s3" and s3.path == "bucket/racedayai"


def test_csv_written_to_an_object_store_is_readable(store, local_tmp):
    target = store / "out" / "bayesian_predictions_70.3.csv"
    returned = write_csv_atomic(FRAME, target)
    assert returned == target
    assert target.read_text() == "athlete_hash,bayes_pred\na,20000.5\nb,41000\n"
    # a URL string works too, and pandas reads it back through fsspec
    write_csv_atomic(FRAME, str(store / "q.csv"))
    pd.testing.assert_frame_equal(pd.read_csv(str(store / "q.csv")), FRAME, check_dtype=False)
    assert sorted(p.name for p in store.iterdir()) == ["out", "q.csv"]
    assert _listing(local_tmp) == []


def test_failing_writer_leaves_the_previous_object_untouched(store, local_tmp, monkeypatch):
    target = store / "p.csv"
    target.write_bytes(OLD_BYTES)
    monkeypatch.setattr(pyarrow.csv, "write_csv", _partial_then_fail(OSError(28, "No space left on device")))
    with pytest.raises(OutputWriteError) as info:
        write_csv_atomic(FRAME, target)
    assert str(target) in str(info.value)  # names the URL
    assert "No space left on device" in str(info.value)
    assert target.read_bytes() == OLD_BYTES
    assert [p.name for p in store.iterdir()] == ["p.csv"]
    assert _listing(local_tmp) == []

    monkeypatch.setattr(pyarrow.csv, "write_csv", _partial_then_fail(ValueError("bad value in row 2")))
    with pytest.raises(ValueError, match="bad value in row 2") as info:
        write_csv_atomic(FRAME, target)
    assert not isinstance(info.value, OutputWriteError)
    assert target.read_bytes() == OLD_BYTES
    assert _listing(local_tmp) == []


def test_failed_upload_raises_output_write_error_and_keeps_the_previous_object(store, local_tmp, monkeypatch):
    target = store / "posterior.json"
    target.write_bytes(b"{}")

    def refuse(lpath, rpath, **kwargs):
        raise RuntimeError("503 Slow Down")  # object-store clients raise their own error types

    monkeypatch.setattr(target.fs, "put_file", refuse)
    with pytest.raises(OutputWriteError, match="503 Slow Down") as info:
        with atomic_open(target) as fh:
            fh.write('{"ok": true}')
    assert str(target) in str(info.value)
    assert target.read_bytes() == b"{}"
    assert _listing(local_tmp) == []


def test_a_writer_error_uploads_nothing(store, local_tmp, monkeypatch):
    target = store / "posterior.json"
    uploads = []
    monkeypatch.setattr(target.fs, "put_file", lambda *args, **kwargs: uploads.append(args))
    with pytest.raises(RuntimeError):
        with atomic_open(target) as fh:
            fh.write('{"half": ')
            raise RuntimeError("killed")
    assert uploads == []
    assert not target.exists()
    assert _listing(local_tmp) == []


@pytest.mark.parametrize("kind", ["local", "memory"])
def test_nested_artifacts_and_a_latest_pointer(kind, tmp_path, store, local_tmp):
    """The layout of posterior artifacts: <output dir>/posterior/<distance>/<stamp>.nc and `latest`."""
    root = as_path(str(tmp_path / "outputs") if kind == "local" else str(store))
    folder = root / "posterior" / "70.3"
    for stamp in ("20261123T030000Z", "20261130T030000Z"):
        with atomic_path(folder / f"{stamp}.nc") as tmp:
            tmp.write_bytes(b"CDF\x01" + stamp.encode())
        with atomic_open(folder / "latest") as fh:
            fh.write(f"{stamp}.nc\n")
    latest = (folder / "latest").read_text().strip()
    assert latest == "20261130T030000Z.nc"
    assert (folder / latest).read_bytes() == b"CDF\x0120261130T030000Z"
    assert sorted(p.name for p in folder.iterdir()) == ["20261123T030000Z.nc", "20261130T030000Z.nc", "latest"]
    assert _listing(local_tmp) == []


def test_outputs_are_fsynced_and_the_pipelines_stored_values_are_not(tmp_path, monkeypatch):
    """atomic_path fsyncs the file and its folder before and after the rename; with
    durable=False (the IO manager's stored values) it renames only, atomically all the same."""
    import numpy as np

    from racedayai_bayes.defs.resources import AtomicPickleIOManager
    from racedayai_bayes.lib.outputs import stored

    synced = []
    real = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: synced.append(fd) or real(fd))
    target = tmp_path / "out.csv"
    with atomic_path(target) as tmp:
        tmp.write_text("a\n1\n")
    assert len(synced) == 2 and target.read_text() == "a\n1\n"  # the file, then its folder
    synced.clear()
    with atomic_path(target, durable=False) as tmp:
        tmp.write_text("a\n2\n")
    assert synced == [] and target.read_text() == "a\n2\n"
    assert [p.name for p in tmp_path.iterdir()] == ["out.csv"]  # no temporary file left
    path = UPath(tmp_path / "value.pkl")
    AtomicPickleIOManager(base_path=UPath(tmp_path)).dump_to_path(None, {"x": np.arange(3)}, path)
    assert synced == [] and stored.load(tmp_path / "value.pkl")["x"].tolist() == [0, 1, 2]


def test_the_prediction_table_keeps_event_names_as_written_and_blank_where_missing(tmp_path):
    """prediction_table takes the rows' event_name column as it is (no Python string per row):
    the CSV holds each name as written, and an empty field where the name is missing, as when
    the column went through NumPy objects."""
    import numpy as np

    from racedayai_bayes.lib.models.base import Prediction
    from racedayai_bayes.lib.outputs.tables import APPENDED_COLUMNS, prediction_table

    rows = pd.DataFrame({
        "athlete_hash": pd.array(["a", "b", None, "d"], dtype="string"),
        "event_distance": pd.array(["70.3"] * 4, dtype="string"),
        "event_year": pd.array([2024, 2025, 2025, None], dtype="Int64"),
        "total_sec": [18000.0, 19000.5, 20000.0, 21000.0],
        "event_name": pd.array(["IRONMAN 70.3 Fort Fjordby", None, "Lake  Town", "x"], dtype="string"),
    }, index=[5, 6, 7, 8])  # not a range index: the table's rows are in the rows' order all the same
    pred = Prediction(*(np.arange(4.0) + k for k in range(5)))
    table = prediction_table(rows, pred, "forecast", np.array([False, True, False, True]))
    assert list(table.columns[-3:]) == list(APPENDED_COLUMNS)
    assert table["event_name"].tolist()[0::2] == ["IRONMAN 70.3 Fort Fjordby", "Lake  Town"]
    assert pd.isna(table["event_name"].iloc[1]) and table["event_name"].iloc[3] == "x"
    as_objects = table.assign(event_name=rows["event_name"].to_numpy())
    write_csv_atomic(table, tmp_path / "table.csv")
    write_csv_atomic(as_objects, tmp_path / "objects.csv")
    assert (tmp_path / "table.csv").read_bytes() == (tmp_path / "objects.csv").read_bytes()
    lines = (tmp_path / "table.csv").read_text().splitlines()
    assert lines[2].split(",")[-2] == "" and lines[1].split(",")[-3:] == ["forecast", "IRONMAN 70.3 Fort Fjordby", "false"]
    # the table shares the rows' columns without copying them first: writing to it leaves the rows as they were
    before = rows.copy()
    table.loc[0, "total_sec"] = -1.0
    table.loc[0, "athlete_hash"] = "changed"
    pd.testing.assert_frame_equal(rows, before)
