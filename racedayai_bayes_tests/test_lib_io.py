"""Atomic writes (lib/io.py): a failed write never leaves a partial output or a temp file."""

from __future__ import annotations

import os
import stat

import pandas as pd
import pyarrow.csv
import pytest

from racedayai_bayes.lib.io import OutputWriteError, atomic_open, write_csv_atomic

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
