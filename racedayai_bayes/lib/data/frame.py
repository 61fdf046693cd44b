"""The model frame: races merged with profiles and clusters, filtered as in the seed (section 1),
with each race's as-of history (lib/data/history.py)."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd

from racedayai_bayes.lib.data import ATHLETE_ID, MODEL_DISTANCES
from racedayai_bayes.lib.data.contracts import MAX_TOTAL_SEC, MIN_TOTAL_SEC, RACE_FILE, InputError
from racedayai_bayes.lib.data.history import add_history, athlete_codes, edition_relative, index_in, season_table


PROFILE_COLUMNS = ("total_races", "pb_total_sec", "consistency_cv", "improvement_slope")
FRAME_COLUMNS = (
    "athlete_hash",
    "gender",
    "age_group",
    "event_name",
    "event_distance",
    "event_year",
    "total_sec",
    *PROFILE_COLUMNS,
    "cluster_id",
)


def _lookup(keys: pd.Index, right: pd.DataFrame, columns: list[str], codes: np.ndarray) -> tuple[dict[str, pd.Series], int]:
    """A left join on athlete_hash by position: for each row (its athlete's code into
    ``keys``), the columns of ``right``'s row with that athlete_hash, missing where none;
    and the number of rows that found none (a blank athlete_hash never does).

    A blank key never matches: blank hashes have code -1, and each key takes at most one row
    of ``right``, so rows never multiply. ``right``'s keys are unique (the readers check);
    two rows of ``right`` for one athlete of ``keys`` are an error here too. The lookup runs
    from ``right`` into ``keys``, so that a count of the codes it finds is that check (a
    separate ``duplicated()`` pass over ``right`` cost 0.25 s a join at full scale).
    """
    code = index_in(right["athlete_hash"], keys)  # each row's athlete in ``keys``; -1: blank or not there
    rows = np.flatnonzero(code >= 0)
    if len(rows) and np.bincount(code[rows], minlength=len(keys)).max() > 1:
        raise ValueError("duplicated athlete_hash on the right side of a join")
    where = np.full(len(keys), -1, dtype=np.int64)
    where[code[rows]] = rows  # the row of ``right`` of each athlete of ``keys``
    pos = where[np.maximum(codes, 0)] if len(where) else np.full(len(codes), -1)
    pos = np.where(codes >= 0, pos, -1)
    out = {}
    for col in columns:
        taken = pd.api.extensions.take(right[col].array, pos, allow_fill=True)
        out[col] = pd.Series(taken)
    return out, int((pos < 0).sum())


def build_model_frame(
    races: pd.DataFrame, profiles: pd.DataFrame, clusters: pd.DataFrame
) -> tuple[pd.DataFrame, dict[str, int]]:
    """:func:`model_frame_and_seasons` without the season table."""
    frame, counts, _ = model_frame_and_seasons(races, profiles, clusters)
    return frame, counts


# each filter rule of the model frame: the column it reads, the rows it removes, what it keeps
RULES = {
    "dropped_pro": ("is_pro", "are professionals", "age-group races (is_pro not True)"),
    "dropped_other_distance": ("event_distance", "are of another distance than 70.3 or 140.6", "races of 70.3 or 140.6"),
    "dropped_no_time": ("total_sec", "have no finish time", "finish times"),
    "dropped_time_out_of_bounds": ("total_sec", f"have a total_sec not between {MIN_TOTAL_SEC:.0f} and {MAX_TOTAL_SEC:.0f}",
                                   f"total_sec in seconds, between {MIN_TOTAL_SEC:.0f} and {MAX_TOTAL_SEC:.0f}"),
    "dropped_no_year": ("event_year", "have no event_year", "an event_year"),
}


def _nothing_left(counts: dict[str, int], source) -> InputError:
    """The error when the seed's rules leave no race: it names the rule that removed the most
    rows (and its column), and what every rule removed."""
    worst = max(RULES, key=lambda name: counts.get(name, 0))
    column, _, keeps = RULES[worst]
    removed = ", ".join(f"{counts[n]:,} {RULES[n][1]}" for n in RULES if counts.get(n))
    return InputError(
        source, f"no race is left to model: of {counts['rows_in']:,} rows, {removed}", column=column, rows=counts[worst],
        hint=f"the models need {keeps}: check the column's units and spellings (docs/failure-modes.md)",
    )


def model_frame_and_seasons(
    races: pd.DataFrame, profiles: pd.DataFrame, clusters: pd.DataFrame, *, threads: int = 2,
    source: str | Path = RACE_FILE, seasons_ready: Callable[[pd.DataFrame], None] | None = None,
) -> tuple[pd.DataFrame, dict[str, int], pd.DataFrame]:
    """Merge and filter to age-group finishers of 70.3 and 140.6: the 70.3 rows, then the
    140.6 rows, each distance's in input order.

    Kept: ``is_pro`` not True (blank counts as not a pro), distance 70.3 or 140.6, and
    3600 < total_sec < 61200, as in the seed; and, unlike the seed, a known event_year: a
    race without a season can be neither held out by season nor given an as-of history.
    Each kept row gets its as-of history (:data:`HISTORY_COLUMNS`) from every row of
    ``races``, and last its athlete's number (:data:`~racedayai_bayes.lib.data.ATHLETE_ID`).
    Returns the frame, the count of rows each rule removed (and of the kept rows that found no
    profile or no cluster), and the per-(athlete, season) table of every start that the
    history comes from (lib/data/history.py).

    Athletes are numbered once (``pd.factorize``, in hash order), and the joins and the history work on
    those numbers: string keys are hashed once, not in every join and group-by. With
    ``threads=2`` a pool of threads works beside this one (below; the result is the same with
    1). When the rules leave no race, an :class:`InputError` names ``source`` (the race file),
    the column of the rule that removed the most, and what each removed.

    ``seasons_ready`` is called with the season table as returned, as soon as it is complete
    and before the as-of history is added: a caller can store it meanwhile (the model_frame
    step does, defs/inputs.py). Nothing here changes the table after that call.
    """
    counts = {"rows_in": len(races)}
    keep = np.ones(len(races), dtype=bool)
    for name, rule in frame_rules(races).items():
        counts[name] = int((keep & ~rule).sum())
        keep &= rule
        if name == "dropped_time_out_of_bounds":
            ag_finish = keep.copy()  # the finishes an athlete's history counts
    rows = np.flatnonzero(keep)
    if len(rows) == 0:
        raise _nothing_left(counts, source)
    rows = frame_order(races, rows)
    # With threads=2, a pool of two threads works beside this one wherever the work allows: the
    # edition-relative times (they need no athlete numbers) while the athletes are numbered,
    # then the season table while this thread joins and takes the kept rows, then the genders'
    # count, the rows' matching and half of the running totals and columns of the as-of history
    # (history.add_history: there up to three busy threads on two cores, this one and the
    # pool's two, and the model_frame step's thread storing the season table meanwhile;
    # the step holds both CPU slots then, when it can). Each piece only reads
    # what it is given, and numpy, pandas and Arrow release the GIL in their loops; the results
    # are the same with one thread. At full scale, in a new process as a step is: 5.4-6.3 s, against 8.1-8.9 s
    # with only the season table beside the joins (3 alternated pairs, 2026-12-06).
    pool = ThreadPoolExecutor(2, thread_name_prefix="model-frame") if threads >= 2 else None
    try:
        relative = pool.submit(edition_relative, races, ag_finish) if pool is not None else None
        # athletes numbered once (in hash order), the joins and the history work on those numbers
        codes, athletes = pd.factorize(races["athlete_hash"], sort=True)
        athletes = pd.Index(athletes)
        kept_codes = codes[rows]
        if pool is not None:
            seasons_made = pool.submit(lambda: season_table(races, ag_finish, MODEL_DISTANCES, codes=codes,
                                                            athletes=athletes, relative=relative.result()))
            frame, unmatched = _kept_rows(races, rows, kept_codes, athletes, profiles, clusters)
            genders = pool.submit(several_genders, frame, kept_codes)
            seasons = seasons_made.result()
        else:
            seasons = season_table(races, ag_finish, MODEL_DISTANCES, codes=codes, athletes=athletes)
            frame, unmatched = _kept_rows(races, rows, kept_codes, athletes, profiles, clusters)
            genders = None
        # the returned table: without the athlete codes, which are of this factorization only
        # (a new frame; its columns are the same arrays, which add_history only reads)
        returned = seasons.drop(columns="athlete")
        if seasons_ready is not None:
            seasons_ready(returned)
        frame = add_history(frame, seasons, MODEL_DISTANCES, codes=kept_codes, pool=pool)
        # each row's athlete number (the factorization above, -1 for a blank hash): the models
        # group rows by athlete with it instead of hashing 12-character text again, 0.2 s a
        # full-scale split warm and up to 0.9 s as a step process's first call
        # (history.athlete_codes)
        frame[ATHLETE_ID] = kept_codes.astype(np.int32 if len(athletes) < np.iinfo(np.int32).max else np.int64)
        several = genders.result() if genders is not None else several_genders(frame, kept_codes)
    finally:
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)
    seasons = returned
    counts["rows_out"] = len(frame)
    for d in MODEL_DISTANCES:
        counts[f"rows_{d}"] = int((frame["event_distance"] == d).sum())
    counts["rows_blank_event_name"] = int(frame["event_name"].isna().sum())
    counts["athletes_with_several_genders"] = several
    counts.update(unmatched)
    return frame, counts, seasons


def frame_order(races: pd.DataFrame, rows: np.ndarray) -> np.ndarray:
    """The kept rows ``rows`` (increasing positions in ``races``) in the model frame's order:
    the 70.3 rows, then the 140.6 rows (:data:`MODEL_DISTANCES`' order), each distance's in
    input order. A distance's rows are then one block of the frame, which
    :func:`distance_rows` takes as a slice sharing the frame's memory: at full scale the 70.3
    rows are 470 MB, and the holdout_split step's copy of them cost 1.6-4.2 CPU s in a new
    process against 0.5-0.6 s without it (3 alternated pairs, 2026-12-07)."""
    rows = np.asarray(rows)
    second = (races["event_distance"] == MODEL_DISTANCES[1]).fillna(False).to_numpy(dtype=bool)[rows]
    return np.concatenate([rows[~second], rows[second]])


def frame_rules(races: pd.DataFrame) -> dict[str, np.ndarray]:
    """The seed's rules, in the order they are counted: for each, which rows of ``races`` it
    keeps (the model frame holds the rows every rule keeps, in :func:`frame_order`). Each name
    is the count of ``model_frame_and_seasons`` that says how many rows it removed."""
    pro = races["is_pro"].eq(True).fillna(False).to_numpy(dtype=bool)
    distance = races["event_distance"].isin(MODEL_DISTANCES).fillna(False).to_numpy(dtype=bool)
    total = races["total_sec"].to_numpy(dtype=np.float64, na_value=np.nan)
    return {
        "dropped_pro": ~pro,
        "dropped_other_distance": distance,
        "dropped_no_time": ~np.isnan(total),
        "dropped_time_out_of_bounds": (total > MIN_TOTAL_SEC) & (total < MAX_TOTAL_SEC),
        "dropped_no_year": races["event_year"].notna().to_numpy(dtype=bool),
    }


def _kept_rows(races: pd.DataFrame, rows: np.ndarray, kept_codes: np.ndarray, athletes: pd.Index,
               profiles: pd.DataFrame, clusters: pd.DataFrame) -> tuple[pd.DataFrame, dict[str, int]]:
    """The kept rows of ``races`` (positions ``rows``, their athletes' codes ``kept_codes``)
    with their profile and cluster joined on, in :data:`FRAME_COLUMNS` order, and the counts
    of rows that found no profile and no cluster."""
    profile_cols = [c for c in PROFILE_COLUMNS if c in profiles.columns]
    by_profile, without_profile = _lookup(athletes, profiles, profile_cols, kept_codes)
    by_cluster, without_cluster = _lookup(athletes, clusters, ["cluster_id"], kept_codes)
    joined = {**by_profile, **by_cluster}
    # the columns first, then the rows: the other columns' rows are never taken
    frame = races[["athlete_hash", "gender", "age_group", "event_name", "event_distance", "event_year",
                   "total_sec"]].iloc[rows].reset_index(drop=True)
    for col in PROFILE_COLUMNS:
        frame[col] = joined[col].astype("float64") if col in joined else np.nan
    frame["cluster_id"] = joined["cluster_id"].astype("Int64")
    frame = frame[list(FRAME_COLUMNS)]
    frame["event_distance"] = frame["event_distance"].astype("string")
    # kept rows that found no profile or no cluster (a blank athlete_hash never does): kept, as
    # in the seed (fitness at the mean, experience log1p(0), cluster -1); the counts make an
    # empty or stale file visible
    return frame, {"rows_without_profile": without_profile, "rows_without_cluster": without_cluster}


def several_genders(frame: pd.DataFrame, codes: np.ndarray | None = None) -> int:
    """Athletes whose modelled races carry more than one (non-blank) gender.

    Each race keeps the gender it was published with: the models read gender per race, so
    such an athlete's races fall in different gender cells. The count makes a source that
    mislabels gender visible.
    """
    if codes is None:
        codes = athlete_codes(frame)
    gender = pd.factorize(frame["gender"], sort=False)[0]
    use = (codes >= 0) & (gender >= 0)
    if not use.any():
        return 0
    pairs = np.sort(codes[use].astype(np.int64) * 64 + gender[use])
    pairs = pairs[np.r_[True, pairs[1:] != pairs[:-1]]]  # distinct: sorting is ~10x faster than np.unique's hash table here
    return int((np.bincount(pairs // 64) > 1).sum())


def course_first_seasons(rows: pd.DataFrame, factorized: tuple | None = None) -> pd.Series:
    """The first season of each event_name among ``rows``, sorted by name. ``factorized``:
    ``pd.factorize(rows["event_name"], sort=False)``, when the caller has it already."""
    codes, uniques = factorized if factorized is not None else pd.factorize(rows["event_name"], sort=False)
    has = codes >= 0
    years = rows["event_year"].to_numpy(dtype=np.float64, na_value=np.nan)[has].astype(np.int64)
    first = pd.Series(years).groupby(codes[has]).min()
    return pd.Series(first.to_numpy(), index=[str(uniques[c]) for c in first.index]).sort_index()


def course_key(name) -> str:
    """A course name as matched: case and runs of white space do not matter."""
    return " ".join(str(name).split()).casefold()


def course_index(values, courses) -> np.ndarray:
    """Index of each of ``values`` (event names) in ``courses`` (-1: a new course, or a blank
    name). A name not in ``courses`` as written is that course when exactly one course matches
    it but for case or spacing (:func:`course_key`). The one matching of a row to a course: the
    forecast model's encoding, ``forecast``, ``predict`` and the comparison's known/new-course
    groups all read a course through it."""
    courses = [str(c) for c in courses]
    pos = index_in(values, pd.Index(courses, dtype=object))  # exact names: Arrow's hash lookup
    missing = pos < 0
    if missing.any() and courses:
        # the names not found as written only (new courses are few): no Python string per row
        series = values if isinstance(values, pd.Series) else pd.Series(np.asarray(values, dtype=object))
        codes, uniques = pd.factorize(series[missing], sort=False)  # blank names get code -1
        if len(uniques):
            keys = pd.Series([course_key(c) for c in courses])
            single = keys[~keys.duplicated(keep=False)]
            by_key = dict(zip(single, single.index))
            found = np.array([by_key.get(course_key(u), -1) for u in uniques], dtype=np.int64)
            pos[missing] = np.where(codes >= 0, found[np.maximum(codes, 0)], -1)
    return pos


def distance_rows(frame: pd.DataFrame, distance: str) -> pd.DataFrame:
    """The model-frame rows of one distance, in frame order: a slice sharing the frame's
    memory when they are one block of it, as in a model frame (:func:`select_rows`)."""
    if distance not in MODEL_DISTANCES:
        raise ValueError(f"unknown distance {distance!r}; expected one of {MODEL_DISTANCES}")
    return select_rows(frame, (frame["event_distance"] == distance).to_numpy(dtype=bool, na_value=False)).reset_index(drop=True)


def _copy_on_write() -> bool:
    """True when pandas copies a slice before writing to it: always from pandas 3, by option in 2.x."""
    if int(pd.__version__.split(".")[0]) >= 3:
        return True
    try:
        return pd.get_option("mode.copy_on_write") is True
    except (KeyError, ValueError):  # pragma: no cover - an option pandas no longer has
        return False


def select_rows(rows: pd.DataFrame, keep: np.ndarray) -> pd.DataFrame:
    """``rows.loc[keep]``, as a slice (no copy) when the kept rows are contiguous and pandas
    copies on write, so that writing to the slice can never change ``rows``."""
    where = np.flatnonzero(keep)
    if _copy_on_write() and (len(where) == 0 or where[-1] - where[0] + 1 == len(where)):
        return rows.iloc[where[0]:where[-1] + 1] if len(where) else rows.iloc[:0]
    return rows.loc[keep]
