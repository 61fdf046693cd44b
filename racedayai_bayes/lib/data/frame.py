"""The model frame: races merged with profiles and clusters, filtered as in the seed (section 1),
with each race's as-of history (lib/data/history.py)."""

from __future__ import annotations

import numpy as np
import pandas as pd

from racedayai_bayes.lib.data.history import add_history, season_table

MODEL_DISTANCES = ("70.3", "140.6")
# Finish-time bounds of the seed, both exclusive: 1 h < total_sec < 17 h.
MIN_TOTAL_SEC = 3600.0
MAX_TOTAL_SEC = 61200.0

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


def _join(left: pd.DataFrame, right: pd.DataFrame, columns: list[str]) -> pd.DataFrame:
    """Left join on athlete_hash where a blank key never matches anything.

    pandas joins missing keys to missing keys, so blank hashes are kept out of the right
    side; the right side has unique keys (checked by the readers), so rows never multiply.
    """
    right = right.loc[right["athlete_hash"].notna(), ["athlete_hash", *columns]]
    if right["athlete_hash"].duplicated().any():
        raise ValueError("duplicated athlete_hash on the right side of a join")
    return left.merge(right, on="athlete_hash", how="left", validate="many_to_one")


def build_model_frame(
    races: pd.DataFrame, profiles: pd.DataFrame, clusters: pd.DataFrame
) -> tuple[pd.DataFrame, dict[str, int]]:
    """:func:`model_frame_and_seasons` without the season table."""
    frame, counts, _ = model_frame_and_seasons(races, profiles, clusters)
    return frame, counts


def model_frame_and_seasons(
    races: pd.DataFrame, profiles: pd.DataFrame, clusters: pd.DataFrame
) -> tuple[pd.DataFrame, dict[str, int], pd.DataFrame]:
    """Merge and filter to age-group finishers of 70.3 and 140.6, keeping the input order.

    Kept: ``is_pro`` not True (blank counts as not a pro), distance 70.3 or 140.6, and
    3600 < total_sec < 61200, as in the seed; and, unlike the seed, a known event_year: a
    race without a season can be neither held out by season nor given an as-of history.
    Each kept row gets its as-of history (:data:`HISTORY_COLUMNS`) from every row of
    ``races``. Returns the frame, the count of rows each rule removed, and the per-(athlete,
    season) table of every start that the history comes from (lib/data/history.py).
    """
    profile_cols = [c for c in PROFILE_COLUMNS if c in profiles.columns]
    frame = _join(races, profiles, profile_cols)
    frame = _join(frame, clusters, ["cluster_id"])
    for col in PROFILE_COLUMNS:
        if col not in frame.columns:
            frame[col] = float("nan")

    counts = {"rows_in": len(frame)}
    rules = {
        "dropped_pro": ~frame["is_pro"].eq(True).fillna(False).astype(bool),
        "dropped_other_distance": frame["event_distance"].isin(MODEL_DISTANCES).fillna(False).astype(bool),
        "dropped_no_time": frame["total_sec"].notna(),
        "dropped_time_out_of_bounds": frame["total_sec"].gt(MIN_TOTAL_SEC) & frame["total_sec"].lt(MAX_TOTAL_SEC),
        "dropped_no_year": frame["event_year"].notna(),
    }
    keep = pd.Series(True, index=frame.index)
    for name, rule in rules.items():
        rule = rule.fillna(False).astype(bool) if rule.dtype != bool else rule
        counts[name] = int((keep & ~rule).sum())
        keep &= rule
        if name == "dropped_time_out_of_bounds":
            ag_finish = keep.to_numpy(copy=True)  # the finishes an athlete's history counts
    frame = frame.loc[keep.to_numpy(), list(FRAME_COLUMNS)].reset_index(drop=True)
    frame["event_distance"] = frame["event_distance"].astype("string")
    seasons = season_table(races, ag_finish, MODEL_DISTANCES)
    frame = add_history(frame, seasons, MODEL_DISTANCES)
    counts["rows_out"] = len(frame)
    for d in MODEL_DISTANCES:
        counts[f"rows_{d}"] = int((frame["event_distance"] == d).sum())
    counts["rows_blank_event_name"] = int(frame["event_name"].isna().sum())
    counts["athletes_with_several_genders"] = several_genders(frame)
    return frame, counts, seasons


def several_genders(frame: pd.DataFrame) -> int:
    """Athletes whose modelled races carry more than one (non-blank) gender.

    Each race keeps the gender it was published with: the models read gender per race, so
    such an athlete's races fall in different gender cells. The count makes a source that
    mislabels gender visible.
    """
    named = frame.loc[frame["athlete_hash"].notna() & frame["gender"].notna(), ["athlete_hash", "gender"]]
    if named.empty:
        return 0
    return int((named.groupby("athlete_hash", sort=False)["gender"].nunique() > 1).sum())


def join_counts(frame: pd.DataFrame, profiles: pd.DataFrame, clusters: pd.DataFrame) -> dict[str, int]:
    """Model-frame rows that found no profile and no cluster (a blank athlete_hash never does).

    These rows are kept, as in the seed: no profile means fitness at the mean and experience
    log1p(0); no cluster means cluster -1. The counts make an empty or stale file visible.
    """
    import pyarrow as pa
    import pyarrow.compute as pc

    # Arrow's hash set: ~20x faster than Series.isin on millions of strings; null never matches
    keys = pa.array(frame["athlete_hash"], type=pa.string())

    def unmatched(right: pd.DataFrame) -> int:
        values = pa.array(right["athlete_hash"].dropna(), type=pa.string())
        return len(keys) - pc.sum(pc.is_in(keys, value_set=values, skip_nulls=True)).as_py() if len(keys) else 0

    return {"rows_without_profile": unmatched(profiles), "rows_without_cluster": unmatched(clusters)}


def distance_rows(frame: pd.DataFrame, distance: str) -> pd.DataFrame:
    """The model-frame rows of one distance, in frame order."""
    if distance not in MODEL_DISTANCES:
        raise ValueError(f"unknown distance {distance!r}; expected one of {MODEL_DISTANCES}")
    return frame.loc[(frame["event_distance"] == distance).to_numpy()].reset_index(drop=True)
