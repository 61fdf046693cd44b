"""Held-out rows: the races every model is judged on and never fitted to.

The split is made once per distance and shared by every model. Rules, chosen per refit:

- ``latest_year`` (the default): every race of one season, by default the latest one
  present. This is the question people ask each week: how well does a fit on the seasons
  before it forecast a season it never saw? ``holdout_season: YYYY`` holds out that season
  instead and **drops every later season** from fitting and scoring (counted), so that last
  year can be backtested exactly as it would have been run then. Such a backtest (any
  ``holdout_season``, even the latest season of a distance: a backtest of several distances
  is one) writes its CSVs, artifacts and ``latest`` pointers under ``backtests/<season>/`` in
  the output folder (lib/outputs/artifacts.refit_output_dir): it never replaces what the
  weekly refit published.
- ``random_athletes``: every race of a random share of athletes (10% by default). Rows
  without an athlete_hash cannot be grouped by athlete, so each is its own athlete.
- ``none`` fits every row and judges the models in-sample only, as the seed does.

The profile columns (pb_total_sec, total_races) are computed upstream over all of an
athlete's races, held-out ones included (see the data contract): that leak is in the inputs,
not in the split, and it is why ``seed_profile`` is never published by default.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from racedayai_bayes.lib.data.frame import course_first_seasons, course_index, select_rows
from racedayai_bayes.lib.data.history import first_race
from racedayai_bayes.lib.errors import FitError

HOLDOUT_RULES = ("latest_year", "random_athletes", "none")
DEFAULT_HOLDOUT_SHARE = 0.1
# The comparison's breakdown of a split's rows (row_groups). "debut after the other distance":
# of the returning rows, a first start at this distance by an athlete with a finish at the other
# one (a first IRONMAN after 70.3s: the commonest race to plan)
GROUPS = ("first race", "returning", "debut after the other distance", "known course", "new course")


@dataclass(frozen=True)
class Split:
    """One distance's rows, which of them are held out, and how they were chosen.

    ``rows`` are the distance's model-frame rows in frame order, later seasons than a
    ``holdout_season`` already dropped; ``held_out`` marks the held-out ones.
    """

    rows: pd.DataFrame
    held_out: np.ndarray
    rule: str
    description: str
    season: int | None = None  # the held-out season (latest_year), else None
    dropped_later: int = 0  # rows of seasons after the held-out one, dropped
    notes: tuple[str, ...] = ()
    # a backtest: the season asked for (holdout_season), whether or not this distance had later
    # seasons to drop. Its outputs go to their own folder (lib/outputs/artifacts.refit_output_dir)
    backtest_season: int | None = None

    @property
    def train(self) -> pd.DataFrame:
        """The fitted rows. When they are one block of ``rows`` (the default split of rows in
        season order: the latest season is the last block), a slice that shares ``rows``'
        memory; otherwise a copy (at full scale, hundreds of MB and seconds)."""
        return select_rows(self.rows, ~self.held_out)

    def train_columns(self, *columns: str) -> pd.DataFrame:
        """Some columns of the fitted rows."""
        return select_rows(self.rows[list(columns)], ~self.held_out)

    @property
    def holdout(self) -> pd.DataFrame:
        return select_rows(self.rows, self.held_out)

    @property
    def groups(self) -> dict[str, np.ndarray]:
        """:func:`row_groups` of every row, against the fitted rows: made on first use and kept
        with the split (the holdout_split step makes them before it stores the split), so that
        each model's judge and the comparison read them instead of making them again (matching
        the courses of a full-scale 70.3 split: 0.2-1.2 s of CPU as a step's first call,
        2026-12-08). Kept groups of other names (a split stored by a version of this code with
        other groups) are made again."""
        made = self.__dict__.get("groups")
        if made is None or tuple(made) != GROUPS:
            made = row_groups(self.rows, self.train_columns("event_name", "event_year"))
            self.__dict__["groups"] = made  # a cache, not a field: beside the frozen dataclass's fields, pickled with them
        return made

    @property
    def holdout_positions(self) -> np.ndarray:
        return np.flatnonzero(self.held_out)

    @property
    def train_positions(self) -> np.ndarray:
        return np.flatnonzero(~self.held_out)

    def as_dict(self) -> dict:
        return {
            "rule": self.rule,
            "description": self.description,
            "season": self.season,
            "rows_to_fit": int((~self.held_out).sum()),  # the rowwise engine fits a subsample of these
            "rows_held_out": int(self.held_out.sum()),
            "rows_dropped_later_seasons": int(self.dropped_later),
            "backtest_season": self.backtest_season,
            "held_out_digest": self.held_out_digest(),
        }

    def held_out_digest(self) -> str:
        """A digest of which rows are held out (xxh3 of the packed mask): two splits of the same
        rows with the same rule, season and counts but other held-out rows differ here."""
        import xxhash

        return xxhash.xxh3_64_hexdigest(np.packbits(np.asarray(self.held_out, dtype=bool)).tobytes())

    def mismatch(self, fitted: dict) -> str | None:
        """How this split differs from ``fitted`` (a posterior's ``as_dict()`` of the split it was
        fitted on), or None if it is that split: the rule, the held-out and backtest seasons,
        the row counts and the held-out rows themselves (a posterior pickled before the digest
        was kept is compared on the rest)."""
        own = self.as_dict()
        for key in ("rule", "season", "backtest_season", "rows_to_fit", "rows_held_out", "rows_dropped_later_seasons",
                    "held_out_digest"):
            if key in fitted and fitted[key] != own[key]:
                return f"{key} {fitted[key]!r} there, {own[key]!r} here"
        return None


def row_groups(rows: pd.DataFrame, train: pd.DataFrame) -> dict[str, np.ndarray]:
    """The comparison's breakdown (:data:`GROUPS`): first race vs returning (and of the
    returning, a debut at this distance after finishes at the other one), known vs new course.

    A course is known to a row when the training rows hold an edition of it in an earlier
    season than the row's; a row's course is matched as the forecast model matches it
    (``frame.course_index``: an exact name, else the one course that differs only in case or
    spacing), so a course the model knows is not reported as new.
    """
    first = first_race(rows)
    first_season = course_first_seasons(train)
    pos = course_index(rows["event_name"], first_season.index)
    seasons = np.r_[first_season.to_numpy(dtype=np.float64), np.inf]  # a course never trained on: inf
    course_first = seasons[np.where(pos >= 0, pos, len(first_season))]
    known = course_first < rows["event_year"].to_numpy(dtype=np.float64, na_value=np.nan)
    debut_other = ~first & (rows["hist_starts_same"].to_numpy() == 0) & (rows["hist_finishes_other"].to_numpy() > 0)
    return {"first race": first, "returning": ~first, "debut after the other distance": debut_other,
            "known course": known, "new course": ~known}


def rule_problem(rule: str, season: int | None = None) -> str | None:
    """What is wrong with a holdout rule and season, before any row is read (None if nothing)."""
    if rule not in HOLDOUT_RULES:
        return f"unknown holdout rule {rule!r}; expected one of {', '.join(HOLDOUT_RULES)}"
    if season is not None and rule != "latest_year":
        return f"holdout_season {season} needs the holdout rule latest_year, not {rule}"
    return None


def split_holdout(
    rows: pd.DataFrame,
    rule: str = "latest_year",
    share: float = DEFAULT_HOLDOUT_SHARE,
    seed: int = 0,
    season: int | None = None,
) -> Split:
    """Split one distance's model-frame rows by ``rule`` (module docstring).

    When the rule leaves nothing to fit (one season only) or nothing to hold out, the split
    falls back to fitting every row and says so in ``notes``; the models are then judged
    in-sample.
    """
    problem = rule_problem(rule, season)
    if problem:
        raise FitError(problem)
    rows = rows.reset_index(drop=True)
    years = pd.to_numeric(rows["event_year"], errors="coerce")
    dropped = 0
    backtest = None if season is None else int(season)  # any holdout_season asked for (Split.backtest_season)
    if season is not None:
        if not (years == season).any():
            present = sorted(int(y) for y in years.dropna().unique())
            raise FitError(
                f"holdout_season {season}: no race of that season in the rows "
                f"(seasons present: {present[0] if present else '-'}..{present[-1] if present else '-'}); "
                "give a season of that range (`--holdout-season`, run config split.holdout_season), or none for "
                "the latest season"
            )
        later = (years > season).to_numpy()
        dropped = int(later.sum())
        rows, years = rows.loc[~later].reset_index(drop=True), years[~later].reset_index(drop=True)
    if rule == "none":
        return Split(rows, np.zeros(len(rows), dtype=bool), "none", "no holdout: every row fitted")
    if rule == "latest_year":
        held_season = season if season is not None else years.max()
        if season is not None and (years < held_season).sum() == 0:
            # asked for: falling back would fit the very season to be backtested, and its
            # artifact would then forecast that season as if it had not seen it
            raise FitError(f"holdout_season {season}: no race before that season in the rows ({season} is the first "
                           "season present), so nothing would be fitted to forecast it; choose a later season")
        if pd.isna(held_season) or (years < held_season).sum() == 0:
            found = "no event year" if pd.isna(held_season) else f"only event year {int(held_season)}"
            return _fallback(rows, rule, f"the rows hold {found}, so holding out that season would leave nothing to fit", dropped,
                             backtest)
        held = (years == held_season).to_numpy()
        later = f"; {dropped:,} rows of later seasons dropped" if dropped else ""
        which = "the season" if season is not None else "the latest season"
        description = f"every race of {which} {int(held_season)}{later}"
        return Split(rows, held, rule, description, season=int(held_season), dropped_later=dropped,
                     backtest_season=backtest)
    if not 0 < share < 1:
        raise FitError(f"holdout share must be between 0 and 1 (exclusive), got {share}")
    held = _random_athletes(rows, share, seed)
    if held.all() or not held.any():
        return _fallback(rows, rule, f"the rule held out {int(held.sum()):,} of {len(rows):,} rows", dropped)
    return Split(rows, held, rule, f"every race of a random {share:.0%} of athletes (seed {seed})")


def _random_athletes(rows: pd.DataFrame, share: float, seed: int) -> np.ndarray:
    """True for the rows of a random ``share`` of athletes; anonymous rows count one each.

    An athlete is held out when a keyed hash of (seed, athlete_hash) falls in the lowest
    ``share`` of its range: the choice depends on the athlete alone, so next week's refit,
    with new athletes and races, holds out the same athletes as this week's.
    """
    hashes = rows["athlete_hash"].astype("string")
    named = (hashes.notna() & (hashes != "")).to_numpy()
    key = f"racedayai{seed:07d}"[-16:].rjust(16, "0")  # hash_pandas_object takes a 16-char key
    digest = pd.util.hash_pandas_object(hashes.fillna(""), index=False, hash_key=key).to_numpy()
    held = named & (digest % 1_000_000 < round(share * 1_000_000))
    anonymous = ~named
    # no identity to keep stable: a seeded draw per anonymous row
    held[anonymous] = np.random.default_rng(seed).random(int(anonymous.sum())) < share
    return held


def _fallback(rows: pd.DataFrame, rule: str, why: str, dropped: int = 0, backtest_season: int | None = None) -> Split:
    note = f"holdout rule {rule}: {why}; every row fitted and the checks judge them in-sample"
    return Split(rows, np.zeros(len(rows), dtype=bool), rule, "no holdout (fallback): every row fitted",
                 dropped_later=dropped, notes=(note,), backtest_season=backtest_season)
