"""Per-distance encodings and standardisation, as in the seed's section 3 (lib/encoding.py)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from racedayai_bayes.lib.models.seed.encoding import UNSEEN, Encoding, encode, fit_encoding


def _frame(**overrides) -> pd.DataFrame:
    base = {
        "gender": pd.array(["M", "F", None, "F", "M", "F"], dtype="string"),
        "age_group": pd.array(["30-34", "18-24", None, "70+", "18-24", "30-34"], dtype="string"),
        "cluster_id": pd.array([3, None, 1, 3, 1, None], dtype="Int64"),
        "total_sec": [20000.0, 21000.0, 22000.0, 25000.0, 18000.0, 30000.0],
        "pb_total_sec": [19000.0, np.nan, 21000.0, np.nan, 17000.0, 28000.0],
        "total_races": [1.0, np.nan, 5.0, 2.0, 0.0, 10.0],
    }
    base.update(overrides)
    return pd.DataFrame(base)


def test_gender_m_f_blank():
    frame = _frame()
    enc = fit_encoding(frame, "70.3")
    assert encode(frame, enc, fitting=True).gender_idx.tolist() == [0, 1, 0, 1, 0, 1]
    assert enc.n_gender == 2


def test_age_levels_sorted_and_missing_age_maps_to_zero_when_fitting():
    frame = _frame()
    enc = fit_encoding(frame, "70.3")
    assert enc.age_levels == ("18-24", "30-34", "70+")
    design = encode(frame, enc, fitting=True)
    # row 2 has no age group: the seed's fillna(0)
    assert design.age_idx.tolist() == [1, 0, 0, 2, 0, 1]
    assert design.n_age == 3


def test_cluster_nan_is_minus_one_and_levels_sorted():
    frame = _frame()
    enc = fit_encoding(frame, "70.3")
    assert enc.cluster_levels == (-1, 1, 3)
    assert encode(frame, enc, fitting=True).cluster_idx.tolist() == [2, 0, 1, 2, 1, 0]


@pytest.mark.parametrize(
    "clusters",
    [
        [3, 3, 1, 1, 7, 7],  # three-way tie -> smallest (1)
        [5, None, 5, None, 2, 2],  # tie between -1, 2 and 5 -> -1
        [9, 9, 9, 0, 0, None],  # clear mode 9
    ],
)
def test_default_cluster_idx_is_pandas_mode_with_ties_to_smallest(clusters):
    frame = _frame(cluster_id=pd.array(clusters, dtype="Int64"))
    enc = fit_encoding(frame, "70.3")
    # the seed: sample['cluster_idx'].mode().values[0]
    cid = frame["cluster_id"].fillna(-1).astype(int)
    cmap = {c: i for i, c in enumerate(sorted(cid.unique()))}
    assert enc.default_cluster_idx == cid.map(cmap).mode().values[0]


def test_target_standardisation_matches_pandas_mean_and_sample_sd():
    frame = _frame()
    enc = fit_encoding(frame, "70.3")
    assert enc.y_mean == frame["total_sec"].mean()
    assert enc.y_std == frame["total_sec"].std()  # ddof=1
    design = encode(frame, enc, fitting=True)
    np.testing.assert_allclose(design.y, (frame["total_sec"] - enc.y_mean) / enc.y_std, rtol=0, atol=1e-15)
    np.testing.assert_allclose(design.y.std(ddof=1), 1.0, rtol=1e-12)


def test_fitness_fills_missing_pb_with_the_target_mean():
    frame = _frame()
    enc = fit_encoding(frame, "70.3")
    design = encode(frame, enc, fitting=True)
    expected = (frame["pb_total_sec"].fillna(enc.y_mean) - enc.y_mean) / enc.y_std
    np.testing.assert_array_equal(design.fitness, expected.to_numpy())
    assert design.fitness[1] == 0.0 and design.fitness[3] == 0.0


def test_experience_is_standardised_log1p_of_races_with_epsilon():
    frame = _frame()
    enc = fit_encoding(frame, "70.3")
    raw = np.log1p(frame["total_races"].fillna(0))
    assert enc.exp_mean == pytest.approx(raw.mean(), rel=1e-15)
    assert enc.exp_std == pytest.approx(raw.std() + 1e-8, rel=1e-15)
    design = encode(frame, enc, fitting=True)
    np.testing.assert_allclose(design.experience, (raw - raw.mean()) / (raw.std() + 1e-8), rtol=1e-12)


def test_constant_experience_does_not_divide_by_zero():
    frame = _frame(total_races=[2.0] * 6)
    enc = fit_encoding(frame, "70.3")
    assert enc.exp_std == 1e-8
    assert np.all(encode(frame, enc, fitting=True).experience == 0.0)


def test_unseen_or_missing_groups_at_prediction_are_unseen():
    enc = fit_encoding(_frame(), "70.3")
    new = _frame(
        age_group=pd.array(["80+", None, "18-24", "30-34", "70+", "PRO"], dtype="string"),
        cluster_id=pd.array([42, None, 1, 3, 0, None], dtype="Int64"),
    )
    design = encode(new, enc)
    assert design.age_idx.tolist() == [UNSEEN, UNSEEN, 0, 1, 2, UNSEEN]
    # cluster -1 (unclustered) was seen in fitting; 42 and 0 were not
    assert design.cluster_idx.tolist() == [UNSEEN, 0, 1, 2, UNSEEN, 0]
    assert design.has_unseen
    assert UNSEEN == -1


def test_unclustered_rows_are_unseen_when_fitting_rows_were_all_clustered():
    enc = fit_encoding(_frame(cluster_id=pd.array([1, 1, 2, 2, 3, 3], dtype="Int64")), "70.3")
    design = encode(_frame(cluster_id=pd.array([None, 2, 1, 3, 4, None], dtype="Int64")), enc)
    assert design.cluster_idx.tolist() == [UNSEEN, 1, 0, 2, UNSEEN, UNSEEN]


def test_fitting_rejects_age_groups_outside_the_encoding():
    enc = fit_encoding(_frame(), "70.3")
    other = _frame(age_group=pd.array(["99-99"] * 6, dtype="string"))
    with pytest.raises(ValueError, match="age groups outside"):
        encode(other, enc, fitting=True)


def test_missing_total_sec_gives_no_target():
    enc = fit_encoding(_frame(), "70.3")
    design = encode(_frame(total_sec=[20000.0, np.nan, 1.0, 1.0, 1.0, 1.0]), enc)
    assert design.y is None


def test_model_kwargs_carry_indices_and_sizes():
    frame = _frame()
    enc = fit_encoding(frame, "140.6")
    kwargs = encode(frame, enc, fitting=True).model_kwargs()
    assert (kwargs["n_gender"], kwargs["n_age"], kwargs["n_cluster"]) == (2, 3, 3)
    assert set(kwargs) == {"gender_idx", "age_idx", "cluster_idx", "fitness", "experience",
                           "n_gender", "n_age", "n_cluster", "y"}
    assert "y" not in encode(frame, enc).model_kwargs(with_y=False)


def test_json_round_trip():
    enc = fit_encoding(_frame(), "140.6")
    back = Encoding.from_json(enc.to_json())
    assert back == enc
    assert isinstance(back.age_levels, tuple) and isinstance(back.cluster_levels, tuple)
    assert all(isinstance(c, int) for c in back.cluster_levels)
    assert back.distance == "140.6"


@pytest.mark.parametrize("rows", [0, 1])
def test_too_few_rows_is_an_error(rows):
    frame = _frame().iloc[:rows]
    with pytest.raises(ValueError, match="at least 2"):
        fit_encoding(frame, "70.3")


def test_zero_spread_is_an_error():
    with pytest.raises(ValueError, match="no spread"):
        fit_encoding(_frame(total_sec=[20000.0] * 6), "70.3")


@pytest.mark.parametrize("dtype", ["string", object])
def test_gender_encodes_the_same_through_arrow_and_through_pandas(dtype):
    """A text column of pandas' string dtype is looked up by Arrow (encoding._lookup), a
    column of Python objects by Series.map: both give the seed's indices, blanks and unknown
    genders included. (The age group is always cast to the string dtype first.)"""
    enc = fit_encoding(_frame(), "70.3")
    new = _frame(age_group=pd.array(["80+", None, "18-24", "30-34", "70+", ""], dtype="string"))
    new["gender"] = pd.Series(["M", "X", None, "F", "", "F"], dtype="string").astype(dtype)
    assert (new["gender"].dtype == object) == (dtype is object)  # pandas 3 would infer str from a list
    design = encode(new, enc)
    assert design.gender_idx.tolist() == [0, 0, 0, 1, 0, 1]
    assert design.age_idx.tolist() == [UNSEEN, UNSEEN, 0, 1, 2, UNSEEN]
    for idx in (design.gender_idx, design.age_idx):
        assert idx.dtype == np.int64 and idx.flags.writeable


def test_lookup_of_a_column_of_objects_maps_like_series_map():
    from racedayai_bayes.lib.models.seed.encoding import _lookup

    values = pd.Series(["a", None, "c", np.nan, "b"], dtype=object)
    got = _lookup(values, {"a": 0, "b": 1}, missing=-7)
    assert got.tolist() == [0, -7, -7, -7, 1] and got.dtype == np.int64 and got.flags.writeable
    as_text = _lookup(values.astype("string"), {"a": 0, "b": 1}, missing=-7)
    assert as_text.tolist() == got.tolist()


def test_asof_features_have_no_cluster_and_the_history_as_fitness_and_experience():
    from racedayai_bayes.lib.models.seed.fit import features

    rows = _frame(hist_best_sec=[18000.0, np.nan, 20000.0, 21000.0, np.nan, 25000.0],
                  hist_results=np.array([2, 0, 1, 4, 0, 3], dtype=np.int32))
    asof = features(rows, "asof")
    assert asof["cluster_id"].dtype == "Int64" and asof["cluster_id"].isna().all() and len(asof) == len(rows)
    np.testing.assert_array_equal(asof["pb_total_sec"].to_numpy(), rows["hist_best_sec"].to_numpy())
    assert asof["total_races"].tolist() == [2.0, 0.0, 1.0, 4.0, 0.0, 3.0]
    assert features(rows, "profile") is rows
