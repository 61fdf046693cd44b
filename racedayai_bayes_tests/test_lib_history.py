"""As-of history (lib/data/history.py): strictly earlier seasons, both distances, DNFs counted."""

import numpy as np
import pandas as pd
import pytest

from racedayai_bayes.lib.data import ATHLETE_ID
from racedayai_bayes.lib.data.frame import MODEL_DISTANCES, build_model_frame
from racedayai_bayes.lib.data.history import HISTORY_COLUMNS, earlier_season_sums, first_race


def _races(seed: int = 0, athletes: int = 60, rows: int = 600) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    ath = rng.integers(0, athletes, rows)
    dist = rng.choice(["70.3", "140.6", "olympic"], rows, p=[0.6, 0.35, 0.05])
    base = np.where(dist == "140.6", 45000.0, 21000.0)
    total = base * np.exp(rng.normal(0, 0.1, rows))
    total[rng.random(rows) < 0.1] = np.nan  # DNFs
    hashes = pd.array([f"h{a}" for a in ath], dtype="string")
    hashes[rng.random(rows) < 0.05] = pd.NA
    return pd.DataFrame({
        "athlete_hash": hashes,
        "gender": pd.array(rng.choice(["M", "F"], rows), dtype="string"),
        "age_group": pd.array(rng.choice(["30-34", "35-39"], rows), dtype="string"),
        "is_pro": pd.array(rng.random(rows) < 0.02, dtype="boolean"),
        "event_name": pd.array([f"E{e}" for e in rng.integers(0, 6, rows)], dtype="string"),
        "event_distance": pd.array(dist, dtype="string"),
        "event_year": pd.array(rng.integers(2015, 2024, rows), dtype="Int64"),
        "total_sec": total,
    })


def _frame(races: pd.DataFrame) -> pd.DataFrame:
    empty_p = pd.DataFrame({"athlete_hash": pd.array([], dtype="string"), "total_races": [], "pb_total_sec": []})
    empty_c = pd.DataFrame({"athlete_hash": pd.array([], dtype="string"), "cluster_id": pd.array([], dtype="Int64")})
    return build_model_frame(races, empty_p, empty_c)[0]


def _ag_finish(r: pd.DataFrame) -> np.ndarray:
    return (r["is_pro"].fillna(False).to_numpy() == False) & r["event_distance"].isin(MODEL_DISTANCES).to_numpy() & (  # noqa: E712
        r["total_sec"].gt(3600) & r["total_sec"].lt(61200)).fillna(False).to_numpy()


def test_history_equals_a_plain_loop_over_earlier_seasons():
    races = _races()
    frame = _frame(races)
    ag = _ag_finish(races)
    logt = np.log(races["total_sec"].to_numpy())
    ed_key = races["event_name"].astype(str) + races["event_distance"].astype(str) + races["event_year"].astype(str)
    med = pd.Series(np.where(ag, logt, np.nan)).groupby(ed_key.to_numpy()).median()
    rel = np.where(ag, logt - med[ed_key].to_numpy(), np.nan)
    for row in frame.itertuples():
        if pd.isna(row.athlete_hash):
            assert row.hist_starts == 0 and np.isnan(row.hist_best_sec)
            continue
        mine = (races["athlete_hash"] == row.athlete_hash).fillna(False).to_numpy() & races["event_distance"].isin(MODEL_DISTANCES).to_numpy()
        earlier = mine & (races["event_year"] < row.event_year).fillna(False).to_numpy()
        same = earlier & (races["event_distance"] == row.event_distance).to_numpy()
        other = earlier & ~same
        assert row.hist_starts == earlier.sum()
        assert row.hist_starts_same == same.sum()
        assert row.hist_dnf == (earlier & races["total_sec"].isna().to_numpy()).sum()
        assert row.hist_finishes_same == (same & ag).sum()
        assert row.hist_finishes_other == (other & ag).sum()
        assert row.hist_results == (earlier & ag).sum()
        # the athlete's first season of starts (before this one) held no age-group finish
        debut_season = races.loc[earlier, "event_year"].min() if earlier.any() else None
        unfinished = debut_season is not None and not (earlier & ag & (races["event_year"] == debut_season).fillna(False).to_numpy()).any()
        assert row.hist_unfinished_debut == int(unfinished)
        # the other distance's level as known at the first finish here (none yet: now)
        if (same & ag).any():
            first_here = races.loc[same & ag, "event_year"].min()
            kept = rel[other & ag & (races["event_year"] < first_here).fillna(False).to_numpy()]
            if len(kept):
                assert row.hist_rel_other_at_debut == pytest.approx(kept.mean(), abs=1e-12)
            else:
                assert np.isnan(row.hist_rel_other_at_debut)
        else:
            assert row.hist_rel_other_at_debut == row.hist_rel_other or np.isnan(row.hist_rel_other_at_debut) and np.isnan(row.hist_rel_other)
        best = races.loc[earlier & ag, "total_sec"]
        assert (np.isnan(row.hist_best_sec) and best.empty) or row.hist_best_sec == best.min()
        want = rel[other & ag]
        if len(want):
            assert row.hist_rel_other == pytest.approx(want.mean(), abs=1e-12)
        else:
            assert np.isnan(row.hist_rel_other)


def test_an_unfinished_debut_is_known_from_the_next_season_on_and_never_changes():
    """a: a DNF in 2019, then finishes; b: a finish and a DNF in 2019 (one season: the debut
    finished); c: a finish, then a DNF; d: only DNFs so far."""
    rows = [("a", 2019, np.nan), ("a", 2020, 20000.0), ("a", 2021, 20000.0), ("a", 2022, np.nan),
            ("b", 2019, 20000.0), ("b", 2019, np.nan), ("b", 2020, 20000.0),
            ("c", 2019, 20000.0), ("c", 2020, np.nan), ("c", 2021, 20000.0),
            ("d", 2019, np.nan), ("d", 2020, np.nan), ("d", 2021, 21000.0)]
    n = len(rows)
    races = pd.DataFrame({
        "athlete_hash": pd.array([r[0] for r in rows], dtype="string"), "gender": pd.array(["M"] * n, dtype="string"),
        "age_group": pd.array(["30-34"] * n, dtype="string"), "is_pro": pd.array([False] * n, dtype="boolean"),
        "event_name": pd.array(["X"] * n, dtype="string"), "event_distance": pd.array(["70.3"] * n, dtype="string"),
        "event_year": pd.array([r[1] for r in rows], dtype="Int64"), "total_sec": [r[2] for r in rows],
    })
    frame = _frame(races)
    got = dict(zip(zip(frame["athlete_hash"], frame["event_year"]), frame["hist_unfinished_debut"]))
    assert got == {("a", 2020): 1, ("a", 2021): 1, ("b", 2019): 0, ("b", 2020): 0,
                   ("c", 2019): 0, ("c", 2021): 0, ("d", 2021): 1}


def test_races_of_the_same_season_never_inform_each_other():
    races = pd.DataFrame({
        "athlete_hash": pd.array(["a", "a", "a"], dtype="string"), "gender": pd.array(["M"] * 3, dtype="string"),
        "age_group": pd.array(["30-34"] * 3, dtype="string"), "is_pro": pd.array([False] * 3, dtype="boolean"),
        "event_name": pd.array(["X", "Y", "Z"], dtype="string"), "event_distance": pd.array(["70.3"] * 3, dtype="string"),
        "event_year": pd.array([2020, 2020, 2021], dtype="Int64"), "total_sec": [20000.0, 21000.0, 19000.0],
    })
    frame = _frame(races)
    assert frame["hist_starts"].tolist() == [0, 0, 2]
    assert first_race(frame).tolist() == [True, True, False]
    assert frame["hist_best_sec"].iloc[2] == 20000.0


def test_changing_or_removing_later_seasons_leaves_every_earlier_feature_byte_identical():
    races = _races(seed=1)
    s0 = 2020
    later = (races["event_year"] >= s0).to_numpy()
    changed = races.copy()
    changed.loc[later, "total_sec"] *= 1.05
    changed.loc[later & (np.arange(len(races)) % 3 == 0), "total_sec"] = np.nan  # new DNFs
    removed = races.loc[~later | (np.arange(len(races)) % 2 == 0)].reset_index(drop=True)
    base = _frame(races)
    early = base["event_year"] < s0
    for other in (_frame(changed), _frame(removed)):
        mine = base.loc[early, list(HISTORY_COLUMNS)].reset_index(drop=True)
        theirs = other.loc[other["event_year"] < s0, list(HISTORY_COLUMNS)].reset_index(drop=True)
        pd.testing.assert_frame_equal(mine, theirs, check_exact=True)


def test_earlier_season_sums_stay_within_each_athlete():
    hashes = pd.Series(["a", "b", "a", "a", None, "b"], dtype="string")
    years = np.array([2020, 2020, 2021, 2021, 2021, 2022])
    codes, _ = pd.factorize(hashes, sort=False)
    assert codes[4] < 0  # the row without an athlete
    out = earlier_season_sums(codes, years, {"v": np.array([1.0, 10.0, 100.0, 1000.0, 5.0, 7.0])})
    assert out["v"].tolist() == [0.0, 0.0, 1.0, 1.0, 0.0, 10.0]


def test_sums_before_a_season_are_what_a_row_of_that_season_gets():
    """season_sums(...).before(k, s): each athlete's totals over its seasons before s, the
    numbers earlier_season_sums gives a row of season s, bit for bit (the artifact's athlete
    table reads these instead of the pipeline's rows)."""
    from racedayai_bayes.lib.data.history import season_sums

    rng = np.random.default_rng(3)
    n, k = 4000, 300
    codes = rng.integers(-1, k, n)
    years = rng.integers(2010, 2020, n)
    values = {"v": rng.standard_normal(n) * 1e3, "w": rng.random(n)}
    sums = season_sums(codes, years, values)
    for season in (2008, 2010, 2014, 2019, 2020, 2025):
        probe = np.r_[codes, np.arange(k)]  # one zero-valued row per athlete in that season
        got = sums.before(k, season)
        want = earlier_season_sums(probe, np.r_[years, np.full(k, season)],
                                   {name: np.r_[v, np.zeros(k)] for name, v in values.items()})
        for name in values:
            np.testing.assert_array_equal(got[name], want[name][n:])
    assert season_sums(np.full(3, -1), np.arange(3), {"v": np.ones(3)}) is None


@pytest.mark.parametrize("anonymous", [False, True])
def test_a_thread_pool_gives_the_same_running_totals_and_history(anonymous):
    """cumulated_totals and add_history with a thread pool (two columns at once, the rows matched beside
    the running totals) give the numbers they give without one, bit for bit: with athletes
    matched by hash (no codes) and with a table that has no athlete at all."""
    from concurrent.futures import ThreadPoolExecutor

    from racedayai_bayes.lib.data.frame import FRAME_COLUMNS
    from racedayai_bayes.lib.data.history import add_history, cumulated_totals, season_table

    races = _races(seed=5)
    if anonymous:
        races["athlete_hash"] = pd.array([pd.NA] * len(races), dtype="string")
    ag = _ag_finish(races)
    table = season_table(races, ag, MODEL_DISTANCES).drop(columns="athlete")
    frame = _frame(races)[list(FRAME_COLUMNS)]
    with ThreadPoolExecutor(2) as pool:
        np.testing.assert_array_equal(cumulated_totals(table, pool), cumulated_totals(table))
        with_pool = add_history(frame, table, MODEL_DISTANCES, pool=pool)
    pd.testing.assert_frame_equal(with_pool, add_history(frame, table, MODEL_DISTANCES), check_exact=True)
    # as the model frame has it (which also numbers the athletes)
    pd.testing.assert_frame_equal(with_pool, _frame(races).drop(columns=ATHLETE_ID), check_exact=True)
    assert (with_pool["hist_starts"] == 0).all() == anonymous


def _earlier_totals_alone(table: pd.DataFrame, name: str) -> np.ndarray:
    """Each season row's total of column ``name`` over the athlete's strictly earlier seasons
    (``best``: the minimum), grouping that column alone: the reference for cumulated_totals."""
    from racedayai_bayes.lib.data.history import athlete_runs

    new_athlete = athlete_runs(table["athlete_hash"])
    alone = table[name].groupby(np.cumsum(new_athlete), sort=False)
    running = (alone.cummin() if name == "best" else alone.cumsum()).to_numpy()
    empty = np.inf if name == "best" else 0.0
    return np.where(new_athlete, empty, np.r_[empty, running[:-1]])


def test_one_grouping_for_every_column_gives_each_column_its_own_sums():
    """The running totals group every column by athlete with one pandas grouping (built once):
    each column's totals are, bit for bit, those of grouping that column alone, and the
    season table's debut columns those of summing each column on its own."""
    from racedayai_bayes.lib.data.history import TOTAL_COLUMNS, athlete_runs, cumulated_totals, season_table

    races = _races(seed=11)
    table = season_table(races, _ag_finish(races), MODEL_DISTANCES).drop(columns="athlete")
    new_athlete = athlete_runs(table["athlete_hash"])
    by = np.cumsum(new_athlete)
    got = cumulated_totals(table)
    for i, name in enumerate(TOTAL_COLUMNS):
        np.testing.assert_array_equal(got[:, i], _earlier_totals_alone(table, name), err_msg=name)
    # the debut columns: each column's sum over the athlete's earlier seasons, grouped alone
    for k in (0, 1):
        def earlier(values):
            return pd.Series(values).groupby(by, sort=False).cumsum().to_numpy() - values
        fin_k = table[f"fin_{k}"].to_numpy() > 0
        first_k = fin_k & (earlier(fin_k.astype(np.float64)) == 0)
        assert first_k.any() and (fin_k & ~first_k).any()  # first finishes and later ones both present
        for stat in ("nrel", "sumrel"):
            want = np.where(first_k, earlier(table[f"{stat}_{1 - k}"].to_numpy()), 0.0)
            np.testing.assert_array_equal(table[f"debut_{stat}_{k}"].to_numpy(), want, err_msg=f"debut_{stat}_{k}")


def test_season_sums_of_several_columns_are_each_columns_own():
    """season_sums groups every value by athlete at once: each value's running totals are
    those of that value alone, bit for bit (no column takes another's), and no value at all
    gives no totals."""
    from racedayai_bayes.lib.data.history import season_sums

    rng = np.random.default_rng(4)
    n = 500
    codes = rng.integers(-1, 40, n)  # -1: a row without an athlete
    years = rng.integers(2010, 2020, n)
    values = {"a": rng.normal(size=n), "b": rng.exponential(size=n) * 1e6, "c": np.where(rng.random(n) < 0.3, 0.0, 1.0)}
    got = season_sums(codes, years, values)
    named = codes >= 0
    key, inverse = np.unique(codes[named] * 10 + (years[named] - 2010), return_inverse=True)
    for name, v in values.items():
        per = np.bincount(inverse, weights=v[named], minlength=len(key))
        want = pd.Series(per).groupby(key // 10, sort=False).cumsum().to_numpy()
        np.testing.assert_array_equal(got.running[name], want, err_msg=name)
    assert season_sums(codes, years, {}).running == {}


@pytest.mark.parametrize("chunk", [7, 16_384])
def test_history_read_a_chunk_of_rows_at_a_time_is_that_of_each_column_alone(monkeypatch, chunk):
    """add_history reads every total of a row's season row at once, a chunk of rows at a time
    (half of them in the pool): its columns are, bit for bit, history_columns of each
    cumulated column taken on its own for every row (no season row: the empty totals)."""
    from concurrent.futures import ThreadPoolExecutor

    from racedayai_bayes.lib.data import history
    from racedayai_bayes.lib.data.frame import FRAME_COLUMNS

    monkeypatch.setattr(history, "HISTORY_CHUNK_ROWS", chunk)
    races = _races(seed=8)
    races.loc[races.index[::17], "athlete_hash"] = pd.NA  # rows with no athlete: no season row
    table = history.season_table(races, _ag_finish(races), MODEL_DISTANCES).drop(columns="athlete")
    frame = _frame(races)[list(FRAME_COLUMNS)]
    key = dict(zip(zip(table["athlete_hash"], table["event_year"]), range(len(table))))
    pos = np.array([key.get((a, y), -1) if pd.notna(a) else -1 for a, y in zip(frame["athlete_hash"], frame["event_year"])])
    assert (pos < 0).any() and (pos >= 0).any()
    picked = {}
    for name in history.TOTAL_COLUMNS:  # each column's running totals grouped alone, not through cumulated_totals
        picked[name] = np.where(pos >= 0, _earlier_totals_alone(table, name)[np.maximum(pos, 0)],
                                np.inf if name == "best" else 0.0)
    expected = history.history_columns(picked, (frame["event_distance"] == MODEL_DISTANCES[1]).to_numpy())
    with ThreadPoolExecutor(2) as pool:
        for got in (history.add_history(frame, table, MODEL_DISTANCES),
                    history.add_history(frame, table, MODEL_DISTANCES, pool=pool)):
            for name in history.HISTORY_COLUMNS:
                want = expected[name].astype(np.int32) if name in history.COUNT_COLUMNS else expected[name]
                assert got[name].dtype == want.dtype, name
                np.testing.assert_array_equal(got[name].to_numpy(), want, err_msg=name)


def test_history_of_rows_without_a_season_row_or_of_no_rows():
    """add_history's chunked reading with an empty season table (no athlete anywhere: every
    race a first one, counts 0 and levels NaN) and with no rows at all."""
    from racedayai_bayes.lib.data import history
    from racedayai_bayes.lib.data.frame import FRAME_COLUMNS

    races = _races(seed=2)
    races["athlete_hash"] = pd.array([pd.NA] * len(races), dtype="string")
    table = history.season_table(races, _ag_finish(races), MODEL_DISTANCES).drop(columns="athlete")
    frame = _frame(races)[list(FRAME_COLUMNS)]
    assert len(table) == 0 and len(frame)
    got = history.add_history(frame, table, MODEL_DISTANCES)
    for name in history.COUNT_COLUMNS:
        assert got[name].dtype == np.int32 and (got[name] == 0).all(), name
    for name in history.LEVEL_COLUMNS:
        assert got[name].dtype == np.float64 and got[name].isna().all(), name
    none = history.add_history(frame.iloc[:0], table, MODEL_DISTANCES)
    assert len(none) == 0 and list(none.columns) == [*FRAME_COLUMNS, *history.HISTORY_COLUMNS]


def test_edition_relative_is_log_time_minus_its_editions_median_among_counted_finishes():
    """Each counted finish with a course and a season: log(total_sec) minus the median log time
    of its edition's counted finishes (one course, one distance, one season); NaN elsewhere.
    Checked against a plain group-by on a frame with blanks in every key column."""
    from racedayai_bayes.lib.data.history import edition_relative

    rng = np.random.default_rng(3)
    n = 400
    races = pd.DataFrame({
        "event_name": pd.array(rng.choice(["A", "B", "C", None], n, p=[0.4, 0.3, 0.2, 0.1]), dtype="string"),
        "event_distance": pd.array(rng.choice(["70.3", "140.6", None], n, p=[0.5, 0.4, 0.1]), dtype="string"),
        "event_year": pd.array(rng.choice([2022, 2023, None], n, p=[0.45, 0.45, 0.1]), dtype="Int64"),
        "total_sec": rng.uniform(15_000, 50_000, n),
    })
    counted = rng.random(n) < 0.8  # the age-group finishes the history counts
    out = edition_relative(races, counted)

    use = counted & races["event_name"].notna().to_numpy() & races["event_year"].notna().to_numpy()
    part = races[use].assign(logt=np.log(races["total_sec"][use]), distance=races["event_distance"][use].fillna("blank"))
    median = part.groupby(["event_name", "distance", "event_year"])["logt"].transform("median")
    expected = np.full(n, np.nan)
    expected[use] = (part["logt"] - median).to_numpy()
    np.testing.assert_array_equal(out, expected)
    assert np.isnan(out[~use]).all() and np.isfinite(out[use]).all()
    assert np.isnan(edition_relative(races, np.zeros(n, dtype=bool))).all()


@pytest.mark.parametrize("chunk", [1, 3, 1000])
def test_history_columns_in_chunks_are_history_columns_bit_for_bit(chunk):
    """The athlete table's history columns, made a chunk of athletes at a time, are the same
    numbers as made at once, whatever the chunk (a ragged last chunk included), for either
    distance's rows, or both mixed."""
    from racedayai_bayes.lib.data import history

    rng = np.random.default_rng(3)
    n = 7
    cum = {name: rng.integers(0, 3, n).astype(np.float64) for name in history.SEASON_COLUMNS}
    for name in ("sumrel_0", "sumrel_1", "debut_sumrel_0", "debut_sumrel_1"):
        cum[name] = rng.normal(0, 0.1, n)
    cum["best"] = np.where(rng.random(n) < 0.3, np.inf, rng.uniform(15000, 40000, n))
    mixed = rng.random(n) < 0.5  # rows of either distance side by side
    for own in (False, True, mixed):
        whole = history.history_columns(cum, np.broadcast_to(own, (n,)))
        chunked = history.history_columns_in_chunks(cum, own, chunk=chunk)
        assert list(chunked) == list(whole)
        for name in whole:
            assert chunked[name].tobytes() == whole[name].tobytes(), name
    empty = history.history_columns_in_chunks({name: np.zeros(0) for name in cum}, True, chunk=chunk)
    assert set(empty) == set(history.HISTORY_COLUMNS) and all(len(v) == 0 for v in empty.values())
