"""Posterior artifacts (lib/artifacts.py) from a hand-made posterior: layout, latest, pruning."""

import numpy as np
import pytest

from racedayai_bayes.lib.outputs.artifacts import (
    LATEST,
    ArtifactError,
    latest_artifact,
    load_artifact,
    prune_artifacts,
    publish_artifact,
    refit_timestamp,
    write_artifact,
)

from .conftest import HAND_ENCODING, hand_posterior

ENC = HAND_ENCODING
_post = hand_posterior


def test_artifact_holds_everything_needed_to_predict(tmp_path):
    path = write_artifact(_post(), tmp_path, timestamp="20261125T030000.000Z")
    assert path == tmp_path / "posterior" / "70.3" / "20261125T030000.000Z.nc"
    assert not (tmp_path / "posterior" / "70.3" / LATEST).exists()  # only its CSV publishes it
    publish_artifact(path)
    assert (tmp_path / "posterior" / "70.3" / LATEST).read_text() == path.name + "\n"
    art = load_artifact(path)
    assert art.encoding == ENC and art.prediction_seed == 43 and art.interval_draws == 100
    np.testing.assert_array_equal(art.draws.samples["mu_age"], _post().draws.samples["mu_age"])

    import arviz as az

    idata = az.from_netcdf(str(path))
    assert idata.posterior_predictive["total_sec_holdout"].shape == (2, 50, 3)  # 50 < 100 draws per chain
    assert list(idata.constant_data["age_group"].values) == ["25-29", "80+", "30-34"]
    assert list(idata.constant_data["athlete_hash"].values) == ["a", "", "c"]
    assert np.isnan(idata.constant_data["cluster_id"].values[1])


def test_an_unpublished_refit_is_saved_but_latest_stays(tmp_path):
    good = write_artifact(_post(), tmp_path, timestamp="20261118T030000.000Z")
    publish_artifact(good)
    bad = write_artifact(_post(failed=True, holdout=False), tmp_path, timestamp="20261125T030000.000Z")
    assert bad.exists()
    assert latest_artifact(tmp_path, "70.3") == good
    assert load_artifact(tmp_path / "posterior" / "70.3").path == good


def test_prune_keeps_the_newest_and_never_the_latest(tmp_path):
    first = write_artifact(_post(), tmp_path, timestamp="20260101T000000.000Z")
    publish_artifact(first)
    for day in range(2, 6):
        write_artifact(_post(failed=True, holdout=False), tmp_path, timestamp=f"202601{day:02d}T000000.000Z")
    folder = tmp_path / "posterior" / "70.3"
    removed = prune_artifacts(folder, keep=2)
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
        path = write_artifact(_post(), root, timestamp="20261125T030000.000Z")
        publish_artifact(path)
        assert str(path).endswith("/posterior/70.3/20261125T030000.000Z.nc")
        art = load_artifact(f"{root}/posterior/70.3")  # through `latest`
        assert art.encoding == ENC
        np.testing.assert_array_equal(art.draws.samples["sigma"], _post().draws.samples["sigma"])
        assert latest_artifact(root, "70.3") is not None
    finally:
        fsspec.filesystem("memory").rm(root.removeprefix("memory://"), recursive=True)
