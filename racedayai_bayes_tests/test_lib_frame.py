"""The model frame: merge and filter exactly as the seed's section 1 (lib/frame.py)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from racedayai_bayes.lib.data import ATHLETE_ID, MODEL_DISTANCES
from racedayai_bayes.lib.data.contracts import InputError, read_clusters, read_profiles, read_races
from racedayai_bayes.lib.data.history import HISTORY_COLUMNS, athlete_codes, first_appearance
from racedayai_bayes.lib.data.frame import FRAME_COLUMNS, build_model_frame, distance_rows

from .conftest import PROFILE_HEADER, RACE_HEADER, csv_text, race_rows, write_file

# One race per rule. The last field says what must happen to the row.
RACE_ROWS = [
    # hash, gender, age, is_pro, distance, year, total     expectation
    ("a1", "M", "30-34", "False", "70.3", "2019", "3600"),  # dropped: bound is exclusive
    ("a2", "F", "25-29", "False", "70.3", "2020", "3600.5"),  # kept
    ("a3", "M", "40-44", "", "140.6", "2021", "61199.5"),  # kept: blank is_pro is not a pro
    ("a4", "F", "35-39", "False", "140.6", "2021", "61200"),  # dropped: bound is exclusive
    ("a5", "M", "30-34", "False", "70.3", "2022", ""),  # dropped: no time (DNF)
    ("a6", "M", "PRO", "True", "70.3", "2022", "14000"),  # dropped: pro
    ("", "M", "45-49", "False", "70.3", "2018", "20000"),  # kept: anonymous, joins nothing
    ("a1", "M", "30-34", "False", "sprint", "2019", "4000"),  # dropped: other distance
    ("a2", "F", "25-29", "", "olympic", "2019", "8000"),  # dropped: other distance
    ("a7", "", "", "False", "140.6", "2020", "45000"),  # kept: no profile, no cluster
    ("a8", "F", "50-54", "true", "140.6", "2020", "50000"),  # dropped: pro (lower-case)
    ("a1", "M", "30-34", "False", "140.6", "2018", "43000.25"),  # kept: second race of a1
]
KEPT = [1, 6, 2, 9, 11]  # indices into RACE_ROWS: the 70.3 rows, then the 140.6 rows, each in input order

PROFILES_CSV = (
    "athlete_hash,athlete_name,total_races,pb_total_sec,consistency_cv,improvement_slope\n"
    "a1,Ann,3,3600,0.5,-10\n"
    "a2,Bob,2,3600.5,0.25,5\n"
    "a3,Cat,1,61199.5,,\n"
    "a8,Dan,1,50000,,\n"
)
CLUSTERS_CSV = "athlete_hash,cluster_id\na1,4\na3,0\n"

# what each kept row should hold after the joins (NaN = no profile / cluster)
EXPECTED = pd.DataFrame(
    {
        "athlete_hash": ["a2", None, "a3", "a7", "a1"],
        "gender": ["F", "M", "M", None, "M"],
        "age_group": ["25-29", "45-49", "40-44", None, "30-34"],
        "event_distance": ["70.3", "70.3", "140.6", "140.6", "140.6"],
        "event_year": [2020, 2018, 2021, 2020, 2018],
        "total_sec": [3600.5, 20000.0, 61199.5, 45000.0, 43000.25],
        "total_races": [2.0, np.nan, 1.0, np.nan, 3.0],
        "pb_total_sec": [3600.5, np.nan, 61199.5, np.nan, 3600.0],
        "consistency_cv": [0.25, np.nan, np.nan, np.nan, 0.5],
        "improvement_slope": [5.0, np.nan, np.nan, np.nan, -10.0],
        "cluster_id": [None, None, 0, None, 4],
    }
)


def _inputs(tmp_path):
    write_file(tmp_path, "athlete_race.csv", csv_text(RACE_HEADER, race_rows(",".join(r) for r in RACE_ROWS)))
    write_file(tmp_path, "athlete_profile.csv", PROFILES_CSV)
    write_file(tmp_path, "cluster_assignments.csv", CLUSTERS_CSV)
    races = read_races(tmp_path / "athlete_race.csv").frame
    profiles = read_profiles(tmp_path / "athlete_profile.csv").frame
    clusters = read_clusters(tmp_path / "cluster_assignments.csv").frame
    # A blank key on the right side (readers drop these; a hand-built frame may not):
    # it must never join to the anonymous race.
    profiles = pd.concat(
        [profiles, pd.DataFrame({"athlete_hash": pd.array([None], dtype="string"), "total_races": [99.0],
                                 "pb_total_sec": [1.0], "consistency_cv": [9.0], "improvement_slope": [9.0]})],
        ignore_index=True,
    )
    clusters = pd.concat(
        [clusters, pd.DataFrame({"athlete_hash": pd.array([None], dtype="string"),
                                 "cluster_id": pd.array([8], dtype="Int64")})],
        ignore_index=True,
    )
    return races, profiles, clusters


def test_model_frame_applies_every_rule_of_the_seed(tmp_path):
    races, profiles, clusters = _inputs(tmp_path)
    frame, counts = build_model_frame(races, profiles, clusters)

    assert list(frame.columns) == [*FRAME_COLUMNS, *HISTORY_COLUMNS, ATHLETE_ID]
    assert len(frame) == len(KEPT)
    assert frame["athlete_hash"].fillna("").tolist() == [RACE_ROWS[i][0] for i in KEPT]
    # every column, row by row: the 70.3 rows, then the 140.6 rows, each in input order
    for col in EXPECTED.columns:
        got = [None if pd.isna(v) else v for v in frame[col]]
        want = [None if pd.isna(v) else v for v in EXPECTED[col]]
        assert got == want, col
    # each athlete's number: in hash order over every race of the file (a1 < a2 < a3 < a7; a5,
    # a6 and a8 have only dropped races, a4 too), -1 for the blank hash
    assert frame[ATHLETE_ID].tolist() == [1, -1, 2, 6, 0]
    # the anonymous race did not pick up the blank-keyed profile (99 races) or cluster (8)
    anon = frame.loc[frame["athlete_hash"].isna()].iloc[0]
    assert pd.isna(anon["total_races"]) and pd.isna(anon["cluster_id"])

    assert counts == {
        "rows_in": len(RACE_ROWS),
        "dropped_pro": 2,
        "dropped_other_distance": 2,
        "dropped_no_time": 1,
        "dropped_time_out_of_bounds": 2,
        "dropped_no_year": 0,
        "rows_out": 5,
        "rows_70.3": 2,
        "rows_140.6": 3,
        "rows_blank_event_name": 0,
        "athletes_with_several_genders": 0,
        # kept rows whose athlete_hash is in no profile or cluster row (a blank one never is)
        "rows_without_profile": int((~frame["athlete_hash"].isin(profiles["athlete_hash"].dropna()).fillna(False)).sum()),
        "rows_without_cluster": int((~frame["athlete_hash"].isin(clusters["athlete_hash"].dropna()).fillna(False)).sum()),
    }
    assert counts["rows_without_profile"] >= 1 and counts["rows_without_cluster"] >= 1  # the anonymous race at least
    # a1's 140.6 race of 2018 is its first: its 70.3 and sprint races of 2019 come later
    a1 = frame.loc[frame["athlete_hash"] == "a1"].iloc[0]
    assert a1["hist_starts"] == 0
    assert sum(v for k, v in counts.items() if k.startswith("dropped_")) + counts["rows_out"] == counts["rows_in"]


def test_distance_rows_split_in_frame_order(tmp_path):
    frame, _ = build_model_frame(*_inputs(tmp_path))
    assert distance_rows(frame, "70.3")["total_sec"].tolist() == [3600.5, 20000.0]
    assert distance_rows(frame, "140.6")["total_sec"].tolist() == [61199.5, 45000.0, 43000.25]
    with pytest.raises(ValueError, match="unknown distance"):
        distance_rows(frame, "sprint")


def test_each_distance_is_one_block_of_the_model_frame_and_its_rows_share_its_memory(tmp_path):
    """The model frame holds one distance's rows after the other's, so distance_rows is a
    slice of it (no copy of hundreds of MB at full scale), which writing to cannot change
    the frame; rows of the distances interleaved (a frame made some other way) give the same
    rows as a copy."""
    from racedayai_bayes.lib.data.frame import _copy_on_write

    frame, _ = build_model_frame(*_inputs(tmp_path))
    total = frame["total_sec"].to_numpy()
    for distance in MODEL_DISTANCES:
        rows = distance_rows(frame, distance)
        # (pandas 2 without copy on write takes a copy, so that writing to it cannot change the frame)
        assert np.shares_memory(rows["total_sec"].to_numpy(), total) == _copy_on_write(), distance
        pd.testing.assert_frame_equal(rows, frame.loc[(frame["event_distance"] == distance).to_numpy()].reset_index(drop=True))
    rows = distance_rows(frame, "70.3")
    rows.loc[0, "total_sec"] = -1.0  # copy on write: the frame keeps its value
    assert frame.loc[0, "total_sec"] == 3600.5
    mixed = frame.iloc[[0, 2, 1, 3, 4]].reset_index(drop=True)  # 70.3, 140.6, 70.3, ...
    rows = distance_rows(mixed, "70.3")
    assert not np.shares_memory(rows["total_sec"].to_numpy(), mixed["total_sec"].to_numpy())
    assert rows["total_sec"].tolist() == [3600.5, 20000.0]


def test_float_looking_distance_file_keeps_its_rows(tmp_path):
    # A file holding only 70.3 and 140.6: a default reader makes the column float and a
    # string filter would keep nothing.
    path = tmp_path / "athlete_race.csv"
    path.write_text(
        csv_text(RACE_HEADER, race_rows(["a,M,18-24,False,70.3,2020,20000", "b,F,18-24,False,140.6,2020,45000",
                                         "c,F,18-24,False,140.60,2021,46000"]))
    )
    assert pd.read_csv(path)["event_distance"].dtype == "float64"
    races = read_races(path).frame
    empty_profiles = pd.DataFrame({"athlete_hash": pd.array([], dtype="string"),
                                   "total_races": [], "pb_total_sec": []})
    empty_clusters = pd.DataFrame({"athlete_hash": pd.array([], dtype="string"),
                                   "cluster_id": pd.array([], dtype="Int64")})
    frame, counts = build_model_frame(races, empty_profiles, empty_clusters)
    assert frame["athlete_hash"].tolist() == ["a", "b", "c"]
    assert frame["event_distance"].tolist() == ["70.3", "140.6", "140.6"]
    assert (counts["rows_70.3"], counts["rows_140.6"], counts["dropped_other_distance"]) == (1, 2, 0)
    # optional profile columns missing from the input still appear (as missing values)
    assert frame["consistency_cv"].isna().all() and frame["improvement_slope"].isna().all()


def test_nan_keys_from_a_plain_pandas_frame_never_join():
    # object columns with np.nan keys, as pd.read_csv would give: pandas alone would join them
    races = pd.DataFrame({
        "athlete_hash": [np.nan, "a"], "gender": ["M", "F"], "age_group": ["30-34", "30-34"],
        "is_pro": [np.nan, False], "event_distance": ["70.3", "70.3"], "event_year": [2020, 2020],
        "total_sec": [20000.0, 21000.0], "event_name": ["E", "E"],
    })
    profiles = pd.DataFrame({"athlete_hash": [np.nan, "a"], "total_races": [50.0, 2.0], "pb_total_sec": [1.0, 20500.0]})
    clusters = pd.DataFrame({"athlete_hash": [np.nan, "a"], "cluster_id": [7, 2]})
    frame, counts = build_model_frame(races, profiles, clusters)
    assert counts["rows_out"] == 2
    assert np.isnan(frame.loc[0, "total_races"]) and pd.isna(frame.loc[0, "cluster_id"])
    assert frame.loc[1, "total_races"] == 2.0 and frame.loc[1, "cluster_id"] == 2


def test_duplicated_profile_hash_is_rejected_by_reader_and_by_build(tmp_path):
    path = write_file(tmp_path, "athlete_profile.csv", csv_text(PROFILE_HEADER, ["a,1,20000", "a,2,21000"]))
    with pytest.raises(InputError, match="duplicated"):
        read_profiles(path)

    races = pd.DataFrame({
        "athlete_hash": ["a"], "gender": ["M"], "age_group": ["30-34"], "is_pro": [False], "event_name": ["X"],
        "event_distance": ["70.3"], "event_year": [2020], "total_sec": [20000.0],
    })
    dup_profiles = pd.DataFrame({"athlete_hash": ["a", "a"], "total_races": [1.0, 2.0], "pb_total_sec": [1.0, 2.0]})
    clusters = pd.DataFrame({"athlete_hash": ["b"], "cluster_id": [1]})
    with pytest.raises(ValueError, match="duplicated"):
        build_model_frame(races, dup_profiles, clusters)
    dup_clusters = pd.DataFrame({"athlete_hash": ["a", "a"], "cluster_id": [1, 2]})
    ok_profiles = dup_profiles.iloc[:1]
    with pytest.raises(ValueError, match="duplicated"):
        build_model_frame(races, ok_profiles, dup_clusters)
    # two rows of an athlete with no race cannot multiply any row: the join ignores them
    unraced = pd.DataFrame({"athlete_hash": ["a", "z", "z"], "total_races": [3.0, 1.0, 2.0], "pb_total_sec": [1.0, 2.0, 3.0]})
    frame, _ = build_model_frame(races, unraced, clusters)
    assert len(frame) == 1 and frame.loc[0, "total_races"] == 3.0 and pd.isna(frame.loc[0, "cluster_id"])


def test_one_thread_and_two_make_the_same_frame_and_season_table(small_inputs):
    """model_frame_and_seasons works in a second thread when it may use a second core (the
    edition-relative times, the season table, the genders' count, half the as-of history's
    columns); the frame, the counts (in the same order) and the table are the same either way."""
    from racedayai_bayes.lib.data.contracts import CLUSTER_FILE, PROFILE_FILE, RACE_FILE
    from racedayai_bayes.lib.data.frame import model_frame_and_seasons

    races = read_races(small_inputs / RACE_FILE).frame
    profiles = read_profiles(small_inputs / PROFILE_FILE).frame
    clusters = read_clusters(small_inputs / CLUSTER_FILE).frame
    one = model_frame_and_seasons(races, profiles, clusters, threads=1)
    two = model_frame_and_seasons(races, profiles, clusters, threads=2)
    pd.testing.assert_frame_equal(one[0], two[0])
    assert list(one[1].items()) == list(two[1].items())
    pd.testing.assert_frame_equal(one[2], two[2])


@pytest.mark.parametrize("threads", [1, 2])
def test_the_season_table_is_handed_over_complete_before_the_history_is_added(small_inputs, threads):
    """``seasons_ready`` (the model_frame step stores the table meanwhile) gets the very table
    that is returned, once, before the rows have their as-of history; nothing changes it later."""
    from racedayai_bayes.lib.data import frame as fr
    from racedayai_bayes.lib.data.contracts import CLUSTER_FILE, PROFILE_FILE, RACE_FILE

    races = read_races(small_inputs / RACE_FILE).frame
    profiles = read_profiles(small_inputs / PROFILE_FILE).frame
    clusters = read_clusters(small_inputs / CLUSTER_FILE).frame
    handed, order = [], []
    add_history = fr.add_history

    def recording_add_history(*args, **kwargs):
        order.append("history")
        return add_history(*args, **kwargs)

    def ready(table):
        order.append("seasons")
        handed.append((table, table.copy(deep=True)))

    fr.add_history = recording_add_history
    try:
        frame, _, seasons = fr.model_frame_and_seasons(races, profiles, clusters, threads=threads, seasons_ready=ready)
    finally:
        fr.add_history = add_history
    assert order == ["seasons", "history"]
    (table, as_handed), = handed
    assert table is seasons and "athlete" not in table.columns
    pd.testing.assert_frame_equal(seasons, as_handed)  # unchanged since it was handed over
    pd.testing.assert_frame_equal(seasons, fr.model_frame_and_seasons(races, profiles, clusters, threads=threads)[2])


def test_races_without_any_athlete_hash_are_kept_as_first_races(tmp_path):
    """Anonymous races are legal (the contract): when no race has an athlete_hash, the season
    table is empty and every kept race is a first race with no history, not a crash."""
    from racedayai_bayes.lib.data.frame import model_frame_and_seasons

    races, profiles, clusters = _inputs(tmp_path)
    races = races.assign(athlete_hash=pd.array([None] * len(races), dtype="string"))
    frame, counts, seasons = model_frame_and_seasons(races, profiles, clusters)
    assert len(frame) == counts["rows_out"] == len(KEPT) and len(seasons) == 0
    assert (frame["hist_starts"] == 0).all() and frame["hist_best_sec"].isna().all()
    assert counts["rows_without_profile"] == counts["rows_without_cluster"] == len(KEPT)


@pytest.mark.parametrize("column, cells, rule, problem", [
    ("total_sec", lambda r: (*r[:6], str(float(r[6]) * 1000) if r[6] else ""), "dropped_time_out_of_bounds",
     "2 are professionals, 2 are of another distance than 70.3 or 140.6, 1 have no finish time, "
     "7 have a total_sec not between 3600 and 61200"),
    ("event_distance", lambda r: (*r[:3], "False", "70.3 km", *r[5:]), "dropped_other_distance",
     "12 are of another distance than 70.3 or 140.6"),
])
def test_when_the_rules_leave_no_race_the_error_names_the_file_the_column_and_every_rule(tmp_path, column, cells,
                                                                                         rule, problem):
    """Finish times in milliseconds (say) leave no race to model: one error naming the race
    file, the column of the rule that removed the most, and what every rule removed, instead
    of one "no rows to fit" per model."""
    from racedayai_bayes.lib.data.frame import model_frame_and_seasons

    rows = [cells(r) for r in RACE_ROWS]
    write_file(tmp_path, "athlete_race.csv", csv_text(RACE_HEADER, race_rows(",".join(r) for r in rows)))
    races = read_races(tmp_path / "athlete_race.csv").frame
    (tmp_path / "x").mkdir()
    _, profiles, clusters = _inputs(tmp_path / "x")
    with pytest.raises(InputError, match="no race is left to model: of 12 rows, ") as info:
        model_frame_and_seasons(races, profiles, clusters, source=tmp_path / "athlete_race.csv")
    assert info.value.column == column and str(tmp_path / "athlete_race.csv") in str(info.value)
    assert problem in str(info.value), str(info.value)


def test_athlete_codes_group_rows_as_their_hashes_do(tmp_path):
    """The frame's athlete numbers and a factorization of the hashes group the rows alike
    (equal exactly where the hashes are, -1 for a blank one), on the frame, on a subset of its
    rows, and on rows without the column (a start list) or whose column lost its integer type;
    first_appearance renumbers them as pd.factorize numbers the hashes."""
    races, profiles, clusters = _inputs(tmp_path)
    frame, _ = build_model_frame(races, profiles, clusters)
    assert frame[ATHLETE_ID].dtype == np.int32
    np.testing.assert_array_equal(athlete_codes(frame), frame[ATHLETE_ID].to_numpy())  # the column itself: no hashing
    hashes = pd.factorize(frame["athlete_hash"], sort=False)[0]
    for rows in (frame, frame.iloc[[4, 2, 0, 4]].reset_index(drop=True)):
        by_hash = pd.factorize(rows["athlete_hash"], sort=False)[0]
        codes = athlete_codes(rows)
        np.testing.assert_array_equal(codes < 0, by_hash < 0)
        np.testing.assert_array_equal(codes[:, None] == codes[None, :], by_hash[:, None] == by_hash[None, :])
        np.testing.assert_array_equal(first_appearance(codes), by_hash)
    np.testing.assert_array_equal(athlete_codes(frame.drop(columns=ATHLETE_ID)), hashes)
    np.testing.assert_array_equal(athlete_codes(frame.astype({ATHLETE_ID: "Int64"})), hashes)
