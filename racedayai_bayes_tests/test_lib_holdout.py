"""Held-out rows (lib/holdout.py): which rows each rule sets aside, and the fallbacks."""

import numpy as np
import pandas as pd
import pytest

from racedayai_bayes.lib.errors import FitError
from racedayai_bayes.lib.data.split import split_holdout


def _rows(n_athletes: int = 400, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    athlete = rng.integers(0, n_athletes, 3 * n_athletes)
    hashes = pd.array([f"h{a}" for a in athlete], dtype="string")
    hashes[rng.random(len(athlete)) < 0.1] = pd.NA  # anonymous rows
    return pd.DataFrame({
        "athlete_hash": hashes,
        "event_year": pd.array(rng.integers(2015, 2025, len(athlete)), dtype="Int64"),
        "total_sec": rng.normal(20000, 3000, len(athlete)),
    })


def test_latest_year_holds_out_every_race_of_that_year_and_nothing_else():
    rows = _rows()
    split = split_holdout(rows, "latest_year")
    assert split.rule == "latest_year" and "2024" in split.description
    assert (split.holdout["event_year"] == 2024).all() and len(split.holdout) == int((rows["event_year"] == 2024).sum())
    assert (split.train["event_year"] < 2024).all()
    assert len(split.train) + len(split.holdout) == len(rows)
    assert split.as_dict()["rows_held_out"] == len(split.holdout)


def test_random_athletes_holds_out_all_races_of_a_share_of_athletes():
    rows = _rows(n_athletes=4000)
    split = split_holdout(rows, "random_athletes", share=0.1, seed=3)
    train_ids = set(split.train["athlete_hash"].dropna())
    held_ids = set(split.holdout["athlete_hash"].dropna())
    assert not train_ids & held_ids  # an athlete is on one side only
    share = len(held_ids) / len(train_ids | held_ids)
    assert share == pytest.approx(0.1, abs=0.02)  # binomial sd 0.005 over ~3,800 athletes
    anon_held = split.holdout["athlete_hash"].isna().sum() / rows["athlete_hash"].isna().sum()
    assert anon_held == pytest.approx(0.1, abs=0.05)
    # deterministic for a seed, different for another
    again = split_holdout(rows, "random_athletes", share=0.1, seed=3)
    assert again.holdout.index.equals(split.holdout.index)
    assert not split_holdout(rows, "random_athletes", share=0.1, seed=4).holdout.index.equals(split.holdout.index)


def test_a_split_knows_whether_a_posterior_was_fitted_on_it():
    """The CSV step's guard (defs/predictions.py): the same rows split another way differ, even
    with the same rule and counts (random athletes of another seed); the same split does not."""
    rows = _rows(n_athletes=4000)
    split = split_holdout(rows, "random_athletes", share=0.1, seed=3)
    assert split.mismatch(split.as_dict()) is None
    assert split.mismatch(split_holdout(rows, "random_athletes", share=0.1, seed=3).as_dict()) is None
    other = split_holdout(rows, "random_athletes", share=0.1, seed=4)
    fitted = {**other.as_dict(), "rows_to_fit": split.as_dict()["rows_to_fit"],
              "rows_held_out": split.as_dict()["rows_held_out"]}  # the same counts: only the rows differ
    assert split.mismatch(fitted).startswith("held_out_digest ")
    assert split.mismatch(split_holdout(rows, "none").as_dict()) == "rule 'none' there, 'random_athletes' here"
    old = {k: v for k, v in other.as_dict().items() if k != "held_out_digest"}  # a posterior pickled before the digest
    assert split.mismatch({**old, "rows_to_fit": fitted["rows_to_fit"], "rows_held_out": fitted["rows_held_out"]}) is None


def test_no_holdout_fits_every_row():
    rows = _rows()
    split = split_holdout(rows, "none")
    assert len(split.train) == len(rows) and split.holdout.empty and not split.notes


def test_a_single_event_year_falls_back_to_fitting_every_row_with_a_note():
    rows = _rows().assign(event_year=pd.array([2020] * 1200, dtype="Int64"))
    split = split_holdout(rows, "latest_year")
    assert len(split.train) == len(rows) and split.holdout.empty
    assert split.notes and "only event year 2020" in split.notes[0] and "in-sample" in split.notes[0]


@pytest.mark.parametrize("rule, share", [("latest_season", 0.1), ("random_athletes", 0.0), ("random_athletes", 1.0)])
def test_bad_rule_or_share_is_a_clear_error(rule, share):
    with pytest.raises(FitError, match="holdout"):
        split_holdout(_rows(), rule, share=share)


def test_random_athletes_are_held_out_by_athlete_alone_so_weeks_agree():
    rows = _rows(n_athletes=4000)
    week1 = split_holdout(rows, "random_athletes", seed=3)
    new = pd.DataFrame({"athlete_hash": pd.array(["new1", "h5", "new2"], dtype="string"),
                        "event_year": pd.array([2025] * 3, dtype="Int64"), "total_sec": [20000.0] * 3})
    week2 = split_holdout(pd.concat([new, rows], ignore_index=True), "random_athletes", seed=3)
    held1 = set(week1.holdout["athlete_hash"].dropna())
    held2 = set(week2.holdout["athlete_hash"].dropna()) - {"new1", "new2"}
    assert held1 == held2


@pytest.mark.parametrize("ordered", [True, False])
def test_train_and_holdout_are_the_same_rows_whether_or_not_they_are_one_block(ordered):
    """Rows in season order hold out the latest season as one block at the end: then the
    training rows are a slice sharing the split's memory (no copy of millions of rows);
    otherwise a copy. Either way the same rows, labels and values as selecting by mask."""
    rows = _rows()
    if ordered:
        rows = rows.sort_values("event_year", kind="stable").reset_index(drop=True)
    split = split_holdout(rows, "latest_year")
    pd.testing.assert_frame_equal(split.train, rows.loc[~split.held_out])
    pd.testing.assert_frame_equal(split.holdout, rows.loc[split.held_out])
    pd.testing.assert_frame_equal(split.train_columns("total_sec", "event_year"),
                                  rows[["total_sec", "event_year"]].loc[~split.held_out])
    from racedayai_bayes.lib.data.frame import _copy_on_write

    shared = np.shares_memory(split.train["total_sec"].to_numpy(), split.rows["total_sec"].to_numpy())
    assert shared == (ordered and _copy_on_write())  # never a plain view that writes would reach
    train = split.train
    train.loc[train.index[0], "total_sec"] = -1.0  # copy on write: the split's rows never change
    assert (split.rows["total_sec"] > 0).all()


@pytest.mark.parametrize("season, backtest", [(None, None), (2024, 2024), (2020, 2020), (2016, 2016)])
def test_a_split_with_a_holdout_season_is_a_backtest_of_it(season, backtest, tmp_path):
    """Any holdout_season is a backtest, whose outputs go to backtests/<season>/: also the
    latest season (2024 here), which drops nothing at this distance but may at the other (a
    backtest of both distances is one backtest), and the second season (one season to fit).
    No holdout_season is the weekly refit, which writes to the output folder itself."""
    from racedayai_bayes.lib.outputs.artifacts import refit_output_dir

    split = split_holdout(_rows(), "latest_year", season=season)
    assert split.backtest_season == backtest
    assert split.as_dict()["backtest_season"] == backtest
    assert (split.dropped_later > 0) == (backtest is not None and backtest < 2024)
    expected = tmp_path if backtest is None else tmp_path / "backtests" / str(backtest)
    assert refit_output_dir(str(tmp_path), split) == expected
    assert refit_output_dir(str(tmp_path), split.as_dict()) == expected  # as a judged posterior keeps it
    # a posterior stored before backtests had their own folder has no such key: the output folder
    assert refit_output_dir(str(tmp_path), {"season": 2020, "rows_dropped_later_seasons": 5}) == tmp_path
    assert str(refit_output_dir("s3://bucket/racedayai", split)).startswith("s3://bucket/racedayai")


def test_a_holdout_season_that_cannot_be_held_out_is_an_error_not_a_fit_of_it():
    """The first season present, asked for: falling back to fitting every row would fit the
    season to be backtested. A season not present at all is an error too."""
    rows = _rows()
    with pytest.raises(FitError, match=r"holdout_season 2015: no race before that season .*choose a later season"):
        split_holdout(rows, "latest_year", season=2015)
    with pytest.raises(FitError, match="holdout_season 2030: no race of that season"):
        split_holdout(rows, "latest_year", season=2030)
    assert split_holdout(rows, "latest_year", season=2016).season == 2016


def test_a_splits_row_groups_are_made_once_and_stored_with_it(tmp_path, monkeypatch):
    """Split.groups is row_groups of the rows against the fitted rows, made on first use and
    kept: stored with the split (the holdout_split step makes them first), a loaded split hands
    them to every model's judge and to the comparison without making them again."""
    from racedayai_bayes.lib.data import split as split_module
    from racedayai_bayes.lib.evaluation import judge as judge_module
    from racedayai_bayes.lib.outputs import stored

    from .conftest import hand_judged, hand_rows

    model = hand_judged()[0].model  # a seed posterior of hand-made draws (judged on a split of its own)
    split = split_holdout(hand_rows(seasons=(2022, 2023, 2024)), "latest_year")
    groups = split.groups
    expected = split_module.row_groups(split.rows, split.train_columns("event_name", "event_year"))
    assert list(groups) == list(split_module.GROUPS) == list(expected)
    for name in groups:
        np.testing.assert_array_equal(groups[name], expected[name])
        assert len(groups[name]) == len(split.rows)
    assert groups["known course"].any() and groups["first race"].any() and groups["returning"].any()
    assert split.groups is groups  # made once
    path = tmp_path / "split.pkl"
    stored.dump_file(split, path)
    loaded = stored.load(path)
    assert "groups" in vars(loaded)  # stored with the split, not made again on loading

    def no_second_time(*args, **kwargs):
        raise AssertionError("row_groups made again")

    monkeypatch.setattr(split_module, "row_groups", no_second_time)
    assert not hasattr(judge_module, "row_groups")  # the judge reads the split's groups, it makes none
    for name in groups:
        np.testing.assert_array_equal(loaded.groups[name], groups[name])
    judged = judge_module.judge(model, loaded)  # reads the loaded split's groups
    assert judged.holdout is not None and judged.holdout.scores.rows == int(loaded.held_out.sum())
    monkeypatch.undo()
    # groups of other names, as a split stored by a version with other groups holds: made again
    loaded.__dict__["groups"] = {"first race": groups["first race"]}
    assert tuple(loaded.groups) == split_module.GROUPS
    np.testing.assert_array_equal(loaded.groups["new course"], groups["new course"])
