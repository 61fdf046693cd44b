"""As-of history: what was known about an athlete before a race.

For a race of athlete *a* in season *s* (its ``event_year``), the history is every row of
``athlete_race.csv`` of *a* at 70.3 or 140.6 in a season **strictly before** *s*. The file has
no dates, so races of the same season never inform each other, in either direction. The
profile file is never used: its ``pb_total_sec`` and ``total_races`` cover every race of
the athlete, the predicted one included.

Columns added to each model-frame row (``HISTORY_COLUMNS``):

- ``hist_starts``: earlier starts at either distance: finishes, DNFs, DQs, pro starts;
- ``hist_starts_same``: earlier starts at the row's own distance;
- ``hist_dnf``: earlier starts without a finish time (DNF, DQ), either distance;
- ``hist_finishes_same`` / ``hist_finishes_other``: earlier age-group finishes (the
  model frame's filter) at the row's distance / at the other one;
- ``hist_logmean_other``: mean log(total_sec) of those other-distance finishes (NaN if none);
- ``hist_best_sec``: fastest earlier finish at either distance (NaN if none): the as-of
  counterpart of the profile's ``pb_total_sec``;
- ``hist_results``: earlier finishes at either distance: the as-of ``total_races``.

A **first race** (:func:`first_race`) is one with no earlier start at either distance.
That is the one definition used everywhere (features, noise classes, the comparison's
breakdown). A row without an athlete_hash has no known history: it is a first race.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

COUNT_COLUMNS = (
    "hist_starts",
    "hist_starts_same",
    "hist_dnf",
    "hist_finishes_same",
    "hist_finishes_other",
    "hist_results",
)
HISTORY_COLUMNS = (*COUNT_COLUMNS, "hist_logmean_other", "hist_best_sec")


def first_race(frame: pd.DataFrame) -> np.ndarray:
    """True for rows with no earlier start at either distance (the one definition of a first race)."""
    return frame["hist_starts"].to_numpy() == 0


def earlier_season_sums(hashes: pd.Series, years: np.ndarray, values: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """For each row, the sums of ``values`` over the same athlete's rows of strictly earlier seasons.

    Rows without an athlete_hash get 0. Each sum runs over one athlete's seasons only (never
    across athletes), so it depends on nothing but that athlete's earlier rows.
    """
    codes, _ = pd.factorize(hashes, sort=False)
    years = np.asarray(years, dtype=np.int64)
    named = codes >= 0
    out = {name: np.zeros(len(codes)) for name in values}
    if not named.any():
        return out
    y0 = int(years[named].min())
    span = int(years[named].max()) - y0 + 1
    key = codes[named].astype(np.int64) * span + (years[named] - y0)
    groups, inverse = np.unique(key, return_inverse=True)
    athlete = groups // span
    new_athlete = np.r_[True, athlete[1:] != athlete[:-1]]
    for name, v in values.items():
        per = np.bincount(inverse, weights=np.asarray(v, dtype=np.float64)[named], minlength=len(groups))
        running = pd.Series(per).groupby(athlete, sort=False).cumsum().to_numpy()
        prev = np.where(new_athlete, 0.0, np.r_[0.0, running[:-1]])
        out[name][named] = prev[inverse]
    return out


def season_history(
    hashes: pd.Series,
    years: np.ndarray,
    distance_idx: np.ndarray,
    finished: np.ndarray,
    ag_finish: np.ndarray,
    total_sec: np.ndarray,
) -> pd.DataFrame:
    """Per (athlete, season): the athlete's totals over all strictly earlier seasons.

    Inputs are one entry per start at 70.3 (``distance_idx`` 0) or 140.6 (1) with a known
    athlete and season. ``finished``: the start has a finish time; ``ag_finish``: it is an
    age-group finish of the model frame. Returns a frame indexed by (athlete_hash,
    event_year) with, per distance k, ``starts_k``, ``fin_k``, ``sumlog_k``, and ``dnf`` and
    ``best``: all cumulated over the athlete's seasons before that one.
    """
    codes, uniques = pd.factorize(hashes, sort=False)
    years = years.astype(np.int64)
    y0 = int(years.min()) if len(years) else 0
    span = int(years.max()) - y0 + 1 if len(years) else 1
    key = codes.astype(np.int64) * span + (years - y0)
    groups, inverse = np.unique(key, return_inverse=True)  # sorted by (athlete, season)
    n = len(groups)

    def per_group(weights) -> np.ndarray:
        return np.bincount(inverse, weights=weights, minlength=n).astype(np.float64)

    d1 = distance_idx == 1
    logt = np.where(ag_finish, np.log(np.where(ag_finish, total_sec, 1.0)), 0.0)
    own = {
        "starts_0": per_group((~d1).astype(np.float64)),
        "starts_1": per_group(d1.astype(np.float64)),
        "dnf": per_group((~finished).astype(np.float64)),
        "fin_0": per_group((ag_finish & ~d1).astype(np.float64)),
        "fin_1": per_group((ag_finish & d1).astype(np.float64)),
        "sumlog_0": per_group(np.where(~d1, logt, 0.0)),
        "sumlog_1": per_group(np.where(d1, logt, 0.0)),
    }
    best_rows = np.where(ag_finish, total_sec, np.inf)
    best = pd.Series(best_rows).groupby(inverse).min().reindex(range(n), fill_value=np.inf).to_numpy()

    athlete = groups // span
    new_athlete = np.r_[True, athlete[1:] != athlete[:-1]]
    # Running totals within each athlete (never across athletes, so a value depends only on
    # that athlete's own seasons up to it), shifted by one season: strictly earlier seasons.
    frame = pd.DataFrame(own)
    frame["best"] = best
    by = frame.groupby(athlete, sort=False)
    running = by[list(own)].cumsum()
    running["best"] = by["best"].cummin()
    out = {}
    for name in running.columns:
        values = running[name].to_numpy()
        prev = np.r_[np.inf if name == "best" else 0.0, values[:-1]]
        out[name] = np.where(new_athlete, np.inf if name == "best" else 0.0, prev)
    index = pd.MultiIndex.from_arrays(
        [uniques.take(athlete), groups % span + y0], names=["athlete_hash", "event_year"]
    )
    return pd.DataFrame(out, index=index)


def add_history(frame: pd.DataFrame, races: pd.DataFrame, is_ag_finish: np.ndarray, distances: tuple[str, str]) -> pd.DataFrame:
    """The model-frame rows ``frame`` with :data:`HISTORY_COLUMNS` appended.

    ``races`` is every row of athlete_race.csv (typed by the contract reader) and
    ``is_ag_finish`` marks its rows that the model frame keeps; ``distances`` are the two
    modelled distances in order. A row whose athlete is blank, or whose season is unknown,
    has no history (counts 0, means NaN).
    """
    start = (
        races["athlete_hash"].notna().to_numpy()
        & races["event_year"].notna().to_numpy()
        & races["event_distance"].isin(distances).fillna(False).to_numpy(dtype=bool)
    )
    starts = races.loc[start]
    dist_idx = (starts["event_distance"] == distances[1]).to_numpy(dtype=bool).astype(np.int8)
    total = starts["total_sec"].to_numpy(dtype=np.float64, na_value=np.nan)
    table = season_history(
        starts["athlete_hash"],
        starts["event_year"].to_numpy(dtype=np.int64),
        dist_idx,
        ~np.isnan(total),
        np.asarray(is_ag_finish, dtype=bool)[start],
        total,
    )
    out = frame.copy()
    known = out["athlete_hash"].notna().to_numpy() & out["event_year"].notna().to_numpy()
    rows = pd.MultiIndex.from_arrays(
        [out["athlete_hash"].astype(object).where(known, None), out["event_year"].astype("Int64")],
        names=["athlete_hash", "event_year"],
    )
    pos = table.index.get_indexer(rows)
    pos = np.where(known, pos, -1)
    have = pos >= 0

    def take(col: str, fill: float) -> np.ndarray:
        values = table[col].to_numpy()
        return np.where(have, values[np.where(have, pos, 0)], fill)

    own = (out["event_distance"] == distances[1]).to_numpy(dtype=bool)
    starts_0, starts_1 = take("starts_0", 0.0), take("starts_1", 0.0)
    fin_0, fin_1 = take("fin_0", 0.0), take("fin_1", 0.0)
    sumlog_0, sumlog_1 = take("sumlog_0", 0.0), take("sumlog_1", 0.0)
    counts = {
        "hist_starts": starts_0 + starts_1,
        "hist_starts_same": np.where(own, starts_1, starts_0),
        "hist_dnf": take("dnf", 0.0),
        "hist_finishes_same": np.where(own, fin_1, fin_0),
        "hist_finishes_other": np.where(own, fin_0, fin_1),
        "hist_results": fin_0 + fin_1,
    }
    for name in COUNT_COLUMNS:
        out[name] = counts[name].astype(np.int32)
    other_n = counts["hist_finishes_other"]
    other_sum = np.where(own, sumlog_0, sumlog_1)
    with np.errstate(invalid="ignore", divide="ignore"):
        out["hist_logmean_other"] = np.where(other_n > 0, other_sum / np.maximum(other_n, 1), np.nan)
    best = take("best", np.inf)
    out["hist_best_sec"] = np.where(np.isfinite(best), best, np.nan)
    return out
