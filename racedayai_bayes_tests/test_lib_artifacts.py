"""Posterior artifacts (lib/outputs/artifacts.py) from a hand-made posterior: layout, latest, pruning."""

import numpy as np
import pytest

from racedayai_bayes.lib.outputs.artifacts import (
    LATEST,
    ArtifactError,
    latest_artifact,
    load_artifact,
    prune_artifacts,
    publish_artifact,
    published_model,
    refit_timestamp,
    write_artifact,
)

from .conftest import HAND_ENCODING, hand_judged


def _write(tmp_path, stamp, failed=False, name="seed_profile", root=None):
    judged, split = hand_judged(failed=failed, name=name)
    return write_artifact(judged, split, root or tmp_path, timestamp=stamp), judged, split


def test_artifact_holds_everything_needed_to_predict(tmp_path):
    path, judged, split = _write(tmp_path, "20261125T030000.000Z")
    assert path == tmp_path / "posterior" / "seed_profile" / "70.3" / "20261125T030000.000Z.nc"
    assert not (tmp_path / "posterior" / "70.3" / LATEST).exists()  # only its CSV publishes it
    publish_artifact(path, tmp_path, "70.3")
    assert (tmp_path / "posterior" / "70.3" / LATEST).read_text() == "seed_profile/70.3/20261125T030000.000Z.nc\n"
    art = load_artifact(tmp_path / "posterior" / "70.3")
    assert art.path == path and art.model_name == "seed_profile" and art.distance == "70.3"
    assert art.model.encoding == HAND_ENCODING and art.model.prediction_seed == 43 and art.model.interval_draws == 100
    np.testing.assert_array_equal(art.model.draws.samples["mu_age"], judged.model.draws.samples["mu_age"])
    # the artifact alone predicts exactly what the pipeline did
    again = art.model.predict(split.rows, split.holdout_positions)
    np.testing.assert_array_equal(again.p95, judged.holdout.prediction.p95)

    import arviz as az

    idata = az.from_netcdf(str(path))
    assert list(idata.constant_data["age_group"].values) == ["25-29", "80+", "30-34"]
    assert list(idata.constant_data["athlete_hash"].values) == ["a", "", "c"]
    np.testing.assert_array_equal(idata.observed_data["total_sec"].values, judged.holdout.observed)
    assert published_model(tmp_path, "70.3") == "seed_profile"


def test_the_judged_rows_text_is_stored_as_characters_and_reads_back_with_either_library(tmp_path):
    """The rows' text columns are compressed UTF-8 character arrays (artifacts.TEXT_ENCODING),
    not one HDF5 heap string per value; netCDF-C and h5netcdf read back the same text."""
    import dataclasses

    import h5py
    import pandas as pd
    import xarray as xr

    judged, split = hand_judged()
    rows = split.rows.copy()
    courses = np.array(["IRONMAN 70.3 Zürich – Süd", "東京 70.3 ", "  Cozumel"])
    rows["event_name"] = pd.array(courses[np.arange(len(rows)) % 3], dtype="string")
    rows["gender"] = pd.array([None] * len(rows), dtype="string")  # a column of missing text only
    path = write_artifact(judged, dataclasses.replace(split, rows=rows), tmp_path, timestamp="20261125T030000.000Z")
    with h5py.File(path, "r") as h5:
        stored = h5["constant_data/event_name"]
        assert stored.dtype == np.dtype("S1") and stored.ndim == 2 and stored.compression == "gzip"
        assert h5["constant_data/bayes_p50"].dtype == np.float64
    held = rows.iloc[judged.holdout.positions]
    for engine in ("netcdf4", "h5netcdf"):
        with xr.open_dataset(path, group="constant_data", engine=engine) as ds:
            assert list(ds["athlete_hash"].values) == ["a", "", "c"]
            assert list(ds["age_group"].values) == ["25-29", "80+", "30-34"]
            assert list(ds["event_name"].values) == list(held["event_name"])  # spaces and non-ASCII kept
            assert list(ds["gender"].values) == ["", "", ""]  # missing text is ''
            assert ds["event_name"].dims == ("judged_row",)


@pytest.mark.parametrize("dtype", ["string", "string[python]", "str", object])
def test_utf8_bytes_are_each_values_utf8_with_missing_as_empty(dtype):
    """utf8_bytes (the artifacts' text columns) gives each value's UTF-8 bytes, as encoding each
    value in Python would, from Arrow-backed and plain text columns alike."""
    import pandas as pd

    from racedayai_bayes.lib.outputs.artifacts import utf8_bytes

    values = ["IRONMAN 70.3 Zürich – Süd", None, "", "東京 70.3 ", "  Cozumel", "a"]
    col = pd.Series(values, dtype=dtype)
    out = utf8_bytes(col.iloc[1:])  # a slice: an Arrow array with an offset
    assert out.dtype == np.dtype(f"S{max(len(v.encode()) for v in values[1:] if v)}")
    assert list(out) == [(v or "").encode("utf-8") for v in values[1:]]
    assert utf8_bytes(pd.Series([None, None], dtype=dtype)).tolist() == [b"", b""]
    assert utf8_bytes(pd.Series([], dtype=dtype)).shape == (0,)
    joined = pd.concat([col.iloc[:2], col.iloc[3:]], ignore_index=True)  # Arrow: two chunks
    assert list(utf8_bytes(joined)) == [(v or "").encode("utf-8") for v in values[:2] + values[3:]]


def test_utf8_bytes_of_other_columns_is_pandas_text():
    """A column that is not text (an Arrow boolean, a category) gives pandas' text of each
    value, as the artifacts stored before utf8_bytes: True, not Arrow's true."""
    import pandas as pd

    from racedayai_bayes.lib.outputs.artifacts import utf8_bytes

    assert utf8_bytes(pd.Series([True, None, False], dtype="bool[pyarrow]")).tolist() == [b"True", b"", b"False"]
    assert utf8_bytes(pd.Series(["b", None, "a"], dtype="category")).tolist() == [b"b", b"", b"a"]


def test_an_unpublished_refit_is_saved_but_latest_stays(tmp_path):
    good, _, _ = _write(tmp_path, "20261118T030000.000Z")
    publish_artifact(good, tmp_path, "70.3")
    bad, _, _ = _write(tmp_path, "20261125T030000.000Z", failed=True)
    assert bad.exists()
    assert latest_artifact(tmp_path, "70.3") == good
    assert load_artifact(tmp_path / "posterior" / "70.3").path == good


def test_latest_may_name_another_models_artifact(tmp_path):
    seed, _, _ = _write(tmp_path, "20261118T030000.000Z")
    other, _, _ = _write(tmp_path, "20261125T030000.000Z", name="seed_asof")
    publish_artifact(other, tmp_path, "70.3")
    assert latest_artifact(tmp_path, "70.3") == other
    assert published_model(tmp_path, "70.3") == "seed_asof"
    assert load_artifact(tmp_path / "posterior" / "70.3").model.name == "seed_asof"
    assert seed.exists()


def test_prune_keeps_the_newest_and_never_a_published_one(tmp_path):
    first, _, _ = _write(tmp_path, "20260101T000000.000Z")
    publish_artifact(first, tmp_path, "70.3")
    for day in range(2, 6):
        _write(tmp_path, f"202601{day:02d}T000000.000Z", failed=True)
    folder = tmp_path / "posterior" / "seed_profile" / "70.3"
    removed = prune_artifacts(folder, tmp_path, keep=2)
    names = sorted(p.name for p in folder.glob("*.nc"))
    assert names == ["20260101T000000.000Z.nc", "20260104T000000.000Z.nc", "20260105T000000.000Z.nc"]
    assert len(removed) == 2 and first.exists()


def test_missing_or_foreign_artifacts_are_clear_errors(tmp_path):
    with pytest.raises(ArtifactError, match="no 'latest' pointer"):
        load_artifact(tmp_path)
    with pytest.raises(ArtifactError, match="not found"):
        load_artifact(tmp_path / "nope.nc")
    junk = tmp_path / "junk.nc"
    junk.write_bytes(b"not netcdf")
    with pytest.raises(ArtifactError, match="junk.nc"):
        load_artifact(junk)
    assert latest_artifact(tmp_path, "70.3") is None


def test_a_models_own_folder_is_an_error_that_names_its_newest_file_and_the_published_folder(tmp_path):
    """posterior/<model>/<distance> holds one model's refits and no pointer: the error says what
    to pass instead, not that nothing was ever published."""
    first, _, _ = _write(tmp_path, "20261125T030000.000Z")
    newest, _, _ = _write(tmp_path, "20261126T030000.000Z")
    with pytest.raises(ArtifactError) as info:
        load_artifact(newest.parent)
    message = str(info.value)
    assert "2 posterior artifacts and no 'latest' pointer" in message and str(newest) in message
    assert "the distance's folder" not in message  # nothing is published: no folder to suggest
    publish_artifact(first, tmp_path, "70.3")
    with pytest.raises(ArtifactError, match=f"or the distance's folder {tmp_path / 'posterior' / '70.3'} for the published one"):
        load_artifact(newest.parent)
    assert load_artifact(newest).path == newest


def test_an_artifact_from_before_the_models_is_still_read_through_latest(tmp_path):
    """A pointer holding a bare file name (one model, artifacts beside the pointer) still works."""
    path, _, _ = _write(tmp_path, "20261125T030000.000Z")
    old = tmp_path / "posterior" / "70.3" / path.name
    old.parent.mkdir(parents=True, exist_ok=True)
    old.write_bytes(path.read_bytes())
    (old.parent / LATEST).write_text(path.name + "\n")
    assert latest_artifact(tmp_path, "70.3") == old
    assert load_artifact(old.parent).model.name == "seed_profile"


def test_timestamps_sort_in_time_order():
    from datetime import datetime, timezone

    a = refit_timestamp(datetime(2026, 11, 25, 3, 0, 0, 5000, tzinfo=timezone.utc))
    b = refit_timestamp(datetime(2026, 11, 25, 3, 0, 1, 0, tzinfo=timezone.utc))
    assert a == "20261125T030000.005Z" and a < b


def test_artifacts_on_an_object_store(tmp_path):
    """The same layout on fsspec's in-memory file system, standing in for s3:// or gs://."""
    import fsspec

    root = f"memory://racedayai-{tmp_path.name}"
    try:
        path, judged, _ = _write(tmp_path, "20261125T030000.000Z", root=root)
        publish_artifact(path, root, "70.3")
        assert str(path).endswith("/posterior/seed_profile/70.3/20261125T030000.000Z.nc")
        art = load_artifact(f"{root}/posterior/70.3")  # through `latest`
        assert art.model.encoding == HAND_ENCODING
        np.testing.assert_array_equal(art.model.draws.samples["sigma"], judged.model.draws.samples["sigma"])
        assert latest_artifact(root, "70.3") is not None
    finally:
        fsspec.filesystem("memory").rm(root.removeprefix("memory://"), recursive=True)
