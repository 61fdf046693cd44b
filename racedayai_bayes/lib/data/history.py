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
- ``hist_rel_other``: the mean, over those other-distance finishes, of the finish's log time
  relative to its edition: log(total_sec) minus the median log time of that edition's
  age-group finishers (NaN if none). Relative to the edition, the course and the day drop
  out, and what is left is how the athlete ranks in a field; every edition it uses ran in an
  earlier season;
- ``hist_best_sec``: fastest earlier finish at either distance (NaN if none): the as-of
  counterpart of the profile's ``pb_total_sec``;
- ``hist_results``: earlier finishes at either distance: the as-of ``total_races``;
- ``hist_unfinished_debut``: 1 if the athlete's first season of starts (at either distance,
  before the race's season) held no age-group finish: a debut that ended in a DNF, a DQ, a
  time out of bounds (or held only pro starts), whatever came after it; 0 otherwise (a finish in that season counts as
  finishing the debut, as races of one season can't be ordered). From the athlete's second
  season on it never changes, so a model learns what it says between athletes;
- ``hist_rel_other_at_debut``: ``hist_rel_other`` as it was known at the athlete's first
  age-group finish at the row's distance (in the season of that finish, from the seasons
  before it): up to and including that finish (no finish here yet), ``hist_rel_other``
  itself; on later races, that finish's value, kept (NaN if the athlete had no other-distance
  finish by then). Like ``hist_unfinished_debut`` it never changes once the athlete has
  finished here, so a model learns what it says between athletes, which a forecast without a
  finish here needs: it has no race here to learn the athlete's own level from.

A **first race** (:func:`first_race`) is one with no earlier start at either distance.
That is the one definition used everywhere (features, noise classes, the comparison's
breakdown). A row without an athlete_hash has no known history: it is a first race.
"""

from __future__ import annotations

from concurrent.futures import Executor
from dataclasses import dataclass

import numpy as np
import pandas as pd

from racedayai_bayes.lib.data import ATHLETE_ID

COUNT_COLUMNS = (
    "hist_starts",
    "hist_starts_same",
    "hist_dnf",
    "hist_finishes_same",
    "hist_finishes_other",
    "hist_results",
    "hist_unfinished_debut",
)
# levels and times: NaN when there is none (the counts are whole numbers, 0 when none)
LEVEL_COLUMNS = ("hist_rel_other", "hist_best_sec", "hist_rel_other_at_debut")
HISTORY_COLUMNS = (*COUNT_COLUMNS, *LEVEL_COLUMNS)


def first_race(frame: pd.DataFrame) -> np.ndarray:
    """True for rows with no earlier start at either distance (the one definition of a first race)."""
    return no_earlier_start(frame["hist_starts"].to_numpy())


def no_earlier_start(hist_starts: np.ndarray) -> np.ndarray:
    """:func:`first_race` of the rows' ``hist_starts`` values (a chunk of rows' column, say)."""
    return np.asarray(hist_starts) == 0


@dataclass
class SeasonSums:
    """Sums of per-row values by (athlete, season), and each athlete's running totals over
    its seasons (:func:`season_sums`). Groups are sorted by athlete, then season."""

    named: np.ndarray  # (rows,) bool: the row has an athlete
    inverse: np.ndarray  # (named rows,) each named row's group
    key: np.ndarray  # (groups,) athlete * span + (season - y0), increasing
    y0: int
    span: int
    running: dict[str, np.ndarray]  # (groups,) the athlete's total through this group's season

    @property
    def athlete(self) -> np.ndarray:
        return self.key // self.span

    def before(self, athletes: int, season: int) -> dict[str, np.ndarray]:
        """For athlete codes 0..``athletes``-1, the totals over their seasons strictly before
        ``season`` (0 for an athlete without one): the numbers a row of that season gets from
        :func:`earlier_season_sums`, bit for bit."""
        cut = min(max(int(season) - self.y0, 0), self.span)
        codes = np.arange(athletes, dtype=np.int64)
        last = np.searchsorted(self.key, codes * self.span + cut, side="left") - 1
        has = last >= 0
        has[has] = self.key[last[has]] // self.span == codes[has]
        return {name: np.where(has, r[np.maximum(last, 0)] if len(r) else 0.0, 0.0) for name, r in self.running.items()}


def season_sums(codes: np.ndarray, years: np.ndarray, values: dict[str, np.ndarray]) -> SeasonSums | None:
    """Per (athlete, season): the sum of each of ``values`` over its rows (in row order), and
    the athlete's running total through that season (in season order). ``codes``: an integer
    per row's athlete, negative for none (such rows are in no group). None if no row has one.
    """
    codes = np.asarray(codes)
    years = np.asarray(years, dtype=np.int64)
    named = codes >= 0
    if not named.any():
        return None
    y0 = int(years[named].min())
    span = int(years[named].max()) - y0 + 1
    # pd.factorize(sort=True) is np.unique(return_inverse=True) with a hash table: the same
    # sorted keys and inverse, at full scale (2.35M rows, 1.31M groups) in 0.20-0.24 s
    # against 0.29-0.56 s for np.unique's sort of every row (2026-12-06)
    inverse, key = pd.factorize(codes[named].astype(np.int64) * span + (years[named] - y0), sort=True)
    athlete = key // span
    per = pd.DataFrame({name: np.bincount(inverse, weights=np.asarray(v, dtype=np.float64)[named], minlength=len(key))
                        for name, v in values.items()}, index=pd.RangeIndex(len(key)), copy=False)
    # one grouping for every column (pandas builds it once: a grouping per column cost about
    # 20 ms each at full scale); each column's sums are the same numbers as alone
    sums = per.groupby(athlete, sort=False).cumsum()
    running = {name: sums[name].to_numpy() for name in values}
    return SeasonSums(named=named, inverse=inverse, key=key, y0=y0, span=span, running=running)


def earlier_season_sums(codes: np.ndarray, years: np.ndarray, values: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """For each row, the sums of ``values`` over the same athlete's rows of strictly earlier seasons.

    ``codes``: an integer per row's athlete (``pd.factorize`` of the athlete hashes, say),
    negative for none; such rows get 0. Each sum runs over one athlete's seasons only (never
    across athletes), so it depends on nothing but that athlete's earlier rows. The sums are
    the same numbers whichever numbering the athletes get, as each season's values are added
    in row order and the seasons in season order.
    """
    out = {name: np.zeros(len(codes)) for name in values}
    sums = season_sums(codes, years, values)
    if sums is None:
        return out
    athlete = sums.athlete
    new_athlete = np.r_[True, athlete[1:] != athlete[:-1]]
    for name, running in sums.running.items():
        prev = np.where(new_athlete, 0.0, np.r_[0.0, running[:-1]])
        out[name][sums.named] = prev[sums.inverse]
    return out


HISTORY_CHUNK_ROWS = 16_384  # add_history's rows per chunk: their totals (15 float64 a row, 2 MB) and its work stay in the caches
SEASON_COLUMNS = ("starts_0", "starts_1", "dnf", "fin_0", "fin_1", "nrel_0", "nrel_1", "sumrel_0", "sumrel_1",
                  "unfinished_debut", "debut_nrel_0", "debut_sumrel_0", "debut_nrel_1", "debut_sumrel_1")
# the running totals of the season columns, and ``best``, the running minimum finish (cumulated_totals)
TOTAL_COLUMNS = (*SEASON_COLUMNS, "best")


def season_table(races: pd.DataFrame, ag_finish: np.ndarray, distances: tuple[str, str], *,
                 codes: np.ndarray | None = None, athletes: pd.Index | None = None,
                 relative: np.ndarray | None = None) -> pd.DataFrame:
    """One row per (athlete, season) with a start at either modelled distance: that season's own
    totals, sorted by athlete, then season.

    Per distance k (0 = ``distances[0]``): ``starts_k`` (every start: finishes, DNFs, DQs, pro
    starts), ``fin_k`` (age-group finishes of the model frame), ``nrel_k`` and ``sumrel_k``
    (count and sum of edition-relative log times, :func:`edition_relative`); and ``dnf``
    (starts without a finish time), ``best`` (fastest age-group finish; inf if none),
    ``unfinished_debut`` (1 on the athlete's first season when it holds no age-group finish),
    and ``debut_nrel_k``/``debut_sumrel_k``: on the athlete's first season with an age-group
    finish at distance k, the other distance's ``nrel``/``sumrel`` over the athlete's earlier
    seasons (0 on every other row), which :func:`cumulated_totals` then carries to the later seasons.
    ``ag_finish`` marks the rows of ``races`` that the model frame keeps. ``codes`` and
    ``athletes`` (``pd.factorize(..., sort=True)`` of races' athlete_hash) save hashing the
    keys again; the table also holds each row's athlete code (``athlete``, into
    ``athletes``), which :func:`add_history` matches on. ``relative``: :func:`edition_relative`
    of ``races`` and ``ag_finish``, if already made (it needs no athlete codes, so it can be made
    while they are).
    """
    ag = np.asarray(ag_finish, dtype=bool)
    if relative is None:
        relative = edition_relative(races, ag)
    start = (
        races["athlete_hash"].notna().to_numpy()
        & races["event_year"].notna().to_numpy()
        & races["event_distance"].isin(distances).fillna(False).to_numpy(dtype=bool)
    )
    if codes is None:
        # athletes numbered in hash order, so the table reads sorted by athlete_hash
        codes, athletes = pd.factorize(races["athlete_hash"], sort=True)
    uniques = pd.Index(athletes)
    # three columns of the starts (taking every column of millions of rows costs seconds)
    d1 = (races["event_distance"] == distances[1]).fillna(False).to_numpy(dtype=bool)[start]
    total = races["total_sec"].to_numpy(dtype=np.float64, na_value=np.nan)[start]
    ag, relative = ag[start], relative[start]
    codes = np.asarray(codes)[start]
    years = races["event_year"].to_numpy(dtype=np.float64, na_value=np.nan)[start].astype(np.int64)
    y0 = int(years.min()) if len(years) else 0
    span = int(years.max()) - y0 + 1 if len(years) else 1
    groups, inverse = np.unique(codes.astype(np.int64) * span + (years - y0), return_inverse=True)
    n = len(groups)

    def per_group(weights) -> np.ndarray:
        return np.bincount(inverse, weights=weights, minlength=n).astype(np.float64)

    has_rel = ag & np.isfinite(relative)
    rel = np.where(has_rel, relative, 0.0)
    # copy=False: each column keeps its own array (each a fresh one made here), as the columns
    # added below do. A copying constructor consolidates the floats into one 2-D block first:
    # 0.4-0.6 s at full scale for a copy of 2.9M rows x 11 columns that nothing needs (2026-12-07)
    table = pd.DataFrame(copy=False, data={
        "athlete_hash": pd.array(uniques.take(groups // span), dtype="string"),
        "event_year": groups % span + y0,
        "athlete": groups // span,
        "starts_0": per_group((~d1).astype(np.float64)),
        "starts_1": per_group(d1.astype(np.float64)),
        "dnf": per_group(np.isnan(total).astype(np.float64)),
        "fin_0": per_group((ag & ~d1).astype(np.float64)),
        "fin_1": per_group((ag & d1).astype(np.float64)),
        "nrel_0": per_group((has_rel & ~d1).astype(np.float64)),
        "nrel_1": per_group((has_rel & d1).astype(np.float64)),
        "sumrel_0": per_group(np.where(~d1, rel, 0.0)),
        "sumrel_1": per_group(np.where(d1, rel, 0.0)),
    })
    # each group's fastest age-group finish (inf if none): an unbuffered minimum into each
    # group's slot, the same numbers as pandas' grouped min (a minimum is exact; fmin, like
    # pandas, skips a NaN, which an age-group finish never is), 0.04 s against 0.4-0.6 s for the
    # group-by at full scale (2026-12-07)
    best = np.full(n, np.inf)
    np.fmin.at(best, inverse, np.where(ag, total, np.inf))
    table["best"] = best
    athlete = groups // span
    debut = np.r_[True, athlete[1:] != athlete[:-1]] if n else np.zeros(0, dtype=bool)
    table["unfinished_debut"] = (debut & (table["fin_0"].to_numpy() + table["fin_1"].to_numpy() == 0)).astype(np.float64)
    by = np.cumsum(debut)
    grouped = table.groupby(by, sort=False)  # one grouping for every column summed below

    def earlier(name: str) -> np.ndarray:  # each row's sum of a column over the athlete's earlier seasons
        return grouped[name].cumsum().to_numpy() - table[name].to_numpy(dtype=np.float64)

    for k in (0, 1):
        fin_k = table[f"fin_{k}"].to_numpy() > 0
        # the athlete's first season with a finish at k: the finishes' counts (whole numbers,
        # summed exactly) of the earlier seasons add up to 0
        first_k = fin_k & (earlier(f"fin_{k}") == 0)
        for stat in ("nrel", "sumrel"):
            table[f"debut_{stat}_{k}"] = np.where(first_k, earlier(f"{stat}_{1 - k}"), 0.0)
    return table


def arrow_strings(values):
    """An Arrow string array of ``values`` (a pandas column, Index or array of text): the
    column's own buffer when it is Arrow-backed, a conversion otherwise."""
    import pyarrow as pa

    arr = getattr(values, "array", values)
    if hasattr(arr, "_pa_array"):
        return arr._pa_array
    return pa.array(np.asarray(values, dtype=object), type=pa.string(), from_pandas=True)


def index_in(values, levels) -> np.ndarray:
    """Position of each of ``values`` (text) in ``levels`` (distinct text), -1 where absent or
    missing: Arrow's hash lookup, several times faster than a pandas Index of Python strings."""
    import pyarrow.compute as pc

    if len(values) == 0 or len(levels) == 0:
        return np.full(len(values), -1, dtype=np.int64)
    found = pc.index_in(arrow_strings(values), value_set=arrow_strings(levels))
    return pc.fill_null(found, -1).to_numpy(zero_copy_only=False).astype(np.int64)


def athlete_codes(rows: pd.DataFrame) -> np.ndarray:
    """An integer per row's athlete, equal exactly where the rows' athlete_hash is, and -1 for
    a row without one.

    A model frame's rows (lib/data/frame.py) carry their athletes' numbers in
    :data:`~racedayai_bayes.lib.data.ATHLETE_ID`, made once when the frame is built: those are
    returned as they are. Other rows (a start list, a table made by hand, a frame whose
    column lost its integer type) have their hashes factorized: the same grouping, at the
    cost of hashing the text (0.2 s for the 2.35M rows of a full-scale 70.3 split, warm, and
    up to 0.9 s in a fresh step process, against nothing).

    The numbers are those of one race file's factorization: rows whose athlete_hash was
    changed, or rows put together from frames built from different race files, must drop the
    column first (nothing in the pipeline does either).
    """
    ids = rows[ATHLETE_ID] if ATHLETE_ID in rows.columns else None
    if ids is not None and isinstance(ids.dtype, np.dtype) and ids.dtype.kind == "i":
        return ids.to_numpy()
    return pd.factorize(rows["athlete_hash"], sort=False)[0]


def first_appearance(codes: np.ndarray) -> np.ndarray:
    """``codes`` (integers, negative for none) renumbered 0, 1, ... in the order each first
    appears, -1 for none: what ``pd.factorize(hashes, sort=False)`` gives the same rows."""
    codes = np.asarray(codes)
    out = np.full(len(codes), -1, dtype=np.int64)
    named = codes >= 0
    out[named] = pd.factorize(codes[named], sort=False)[0]
    return out


def athlete_runs(hashes: pd.Series) -> np.ndarray:
    """True where a sorted column of athlete hashes starts a new athlete (Arrow compares
    neighbours without making Python strings)."""
    import pyarrow.compute as pc

    n = len(hashes)
    if n == 0:
        return np.zeros(0, dtype=bool)
    arr = arrow_strings(hashes)
    changed = pc.fill_null(pc.not_equal(arr.slice(1), arr.slice(0, n - 1)), True)
    return np.r_[True, changed.to_numpy(zero_copy_only=False).astype(bool)]


def cumulated_totals(table: pd.DataFrame, pool: Executor | None = None) -> np.ndarray:
    """Each row's totals over the athlete's **strictly earlier** seasons (``table`` sorted by
    athlete, then season, as :func:`season_table` returns it), one column per name of
    :data:`TOTAL_COLUMNS`, in that order: a row's totals lie side by side, so that a race
    reads them in one place (:func:`add_history`).

    Running totals run within each athlete, never across athletes, so a value depends only
    on that athlete's own earlier seasons, and the same seasons always add up in the same
    order: a total is the same number whichever later seasons exist. With a ``pool``, two
    columns are summed at once (the same numbers: each column is summed as without one).
    """
    new_athlete = athlete_runs(table["athlete_hash"])
    totals = np.empty((len(table), len(TOTAL_COLUMNS)))
    for name, values in _running_columns(table, new_athlete, pool):
        empty = np.inf if name == "best" else 0.0
        totals[:, TOTAL_COLUMNS.index(name)] = np.where(new_athlete, empty, np.r_[empty, values[:-1]])
    return totals


def _running_columns(table: pd.DataFrame, new_athlete: np.ndarray, pool: Executor | None = None):
    """Each athlete's running totals (``best``: running minimum) through each of its rows,
    summed within the athlete in season order: (name, values) of one column at a time, so
    that only one column of running totals is held at once (two with a ``pool``: the next
    one is made in it meanwhile; pandas' grouped sums release the GIL)."""
    by = np.cumsum(new_athlete)
    names = TOTAL_COLUMNS
    # one grouping for every column: pandas builds it once (a grouping per column cost about
    # 20 ms each at full scale), its codes here, before any thread reads them (what pandas
    # still works out on first use, whether any key is missing, is the same whichever thread
    # does it)
    grouped_all = table.groupby(by, sort=False)
    grouped_all.ngroups  # noqa: B018 (computes the grouping's codes now)

    def running(name: str) -> np.ndarray:
        grouped = grouped_all[name]
        return (grouped.cummin() if name == "best" else grouped.cumsum()).to_numpy()

    if pool is None:
        for name in names:
            yield name, running(name)
        return
    for i in range(0, len(names), 2):  # this thread sums one column while the pool sums the next
        ahead = pool.submit(running, names[i + 1]) if i + 1 < len(names) else None
        yield names[i], running(names[i])
        if ahead is not None:
            yield names[i + 1], ahead.result()


def as_of_athletes(table: pd.DataFrame, *seasons: int, athlete_of: np.ndarray, athletes: int,
                   new_athlete: np.ndarray | None = None) -> list[dict[str, np.ndarray]]:
    """For each of ``seasons``: each athlete's totals over its seasons strictly before it (what
    a race in that season knows, the same numbers a race of that season gets in the model
    frame, bit for bit: the running totals of :func:`cumulated_totals`, through the athlete's
    last season before it), one array of ``athletes`` values per name of :data:`TOTAL_COLUMNS`;
    an athlete without a season before it has none (0, and inf for ``best``).

    ``table`` is sorted by athlete, then season (:func:`season_table`); ``athlete_of`` gives
    each of its rows' athlete (0 to ``athletes`` - 1; a row whose athlete is not counted has a
    season after every cut). A table whose athlete has a season out of order is a ValueError
    (a later season among the ones before a cut would be summed into it). The running totals
    are made once for every cut, one column at a time (a prefix of an athlete's seasons sums to
    the same numbers whatever follows it), and each column's values go straight into the
    athletes' arrays. ``new_athlete``: :func:`athlete_runs` of the table, if the caller has it.
    """
    if new_athlete is None:
        new_athlete = athlete_runs(table["athlete_hash"])
    years = table["event_year"].to_numpy()
    if len(years) > 1 and (np.diff(years)[~new_athlete[1:]] <= 0).any():
        raise ValueError("the athlete season table is not sorted by athlete, then season (one season per row); "
                         "it is made by the model_frame asset: materialise it again")
    lasts = []
    for season in seasons:
        before = years < season
        # an athlete's seasons before the cut are a prefix of its rows: the last is followed
        # by another athlete, by a later season, or by the end of the table
        after = np.r_[new_athlete[1:], True] | ~np.r_[before[1:], False]
        last = np.flatnonzero(before & after)
        whose = np.asarray(athlete_of)[last]
        # one last season per athlete, athletes in table order: increasing numbers in range (a
        # row numbered for an athlete it is not would overwrite that athlete's totals)
        if len(whose) and (whose[0] < 0 or whose[-1] >= athletes or (np.diff(whose) <= 0).any()):
            raise ValueError(f"as_of_athletes: the season rows before {season} do not number {athletes} athletes "
                             "one each, in table order")
        lasts.append((last, whose))
    out = [{} for _ in seasons]
    for name, running in _running_columns(table, new_athlete):
        for values, (last, whose) in zip(out, lasts):
            column = np.full(athletes, np.inf if name == "best" else 0.0)
            column[whose] = running[last]
            values[name] = column
    return out


def history_columns(cum: pd.DataFrame | dict[str, np.ndarray], own_is_1: np.ndarray) -> dict[str, np.ndarray]:
    """:data:`HISTORY_COLUMNS` from cumulated totals (a frame or a dict of arrays), for rows
    of distance 1 where ``own_is_1``."""
    own = np.asarray(own_is_1, dtype=bool)

    def col(name):
        return np.asarray(cum[name], dtype=np.float64)

    starts_0, starts_1 = col("starts_0"), col("starts_1")
    fin_0, fin_1 = col("fin_0"), col("fin_1")
    out = {
        "hist_starts": starts_0 + starts_1,
        "hist_starts_same": np.where(own, starts_1, starts_0),
        "hist_dnf": col("dnf"),
        "hist_finishes_same": np.where(own, fin_1, fin_0),
        "hist_finishes_other": np.where(own, fin_0, fin_1),
        "hist_results": fin_0 + fin_1,
        "hist_unfinished_debut": col("unfinished_debut"),
    }
    other_n = np.where(own, col("nrel_0"), col("nrel_1"))
    other_sum = np.where(own, col("sumrel_0"), col("sumrel_1"))
    out["hist_rel_other"] = _mean_or_nan(other_n, other_sum)
    # finished here before: the level known at the first such finish, kept; none yet: the level now
    kept = _mean_or_nan(np.where(own, col("debut_nrel_1"), col("debut_nrel_0")),
                        np.where(own, col("debut_sumrel_1"), col("debut_sumrel_0")))
    out["hist_rel_other_at_debut"] = np.where(out["hist_finishes_same"] > 0, kept, out["hist_rel_other"])
    best = col("best")
    out["hist_best_sec"] = np.where(np.isfinite(best), best, np.nan)
    return out


def history_columns_in_chunks(cum: dict[str, np.ndarray], own_is_1: bool | np.ndarray,
                              chunk: int = HISTORY_CHUNK_ROWS) -> dict[str, np.ndarray]:
    """:func:`history_columns` of long arrays, made a chunk of rows at a time into arrays made
    once: the same numbers (each value is computed from its own row alone), without a
    temporary array of every row for each step of the arithmetic (at full scale about 10 MB
    each, and fresh memory costs this VM system time: step_server.STEP_MALLOC_ENV)."""
    n = len(next(iter(cum.values()))) if cum else 0
    own = np.broadcast_to(np.asarray(own_is_1, dtype=bool), (n,))
    if n == 0:
        return history_columns(cum, own)
    out: dict[str, np.ndarray] = {}
    for start in range(0, n, chunk):
        part = slice(start, min(start + chunk, n))
        for name, values in history_columns({c: v[part] for c, v in cum.items()}, own[part]).items():
            if name not in out:
                out[name] = np.empty(n, dtype=values.dtype)
            out[name][part] = values
    return out


def _mean_or_nan(count: np.ndarray, total: np.ndarray) -> np.ndarray:
    return np.where(count > 0, total / np.maximum(count, 1), np.nan)


def edition_relative(races: pd.DataFrame, ag_finish: np.ndarray) -> np.ndarray:
    """log(total_sec) minus the median log time of its edition's age-group finishers, for
    each age-group finish with an event_name (NaN elsewhere). An edition is one event_name
    at one distance in one season."""
    out = np.full(len(races), np.nan)
    use = np.asarray(ag_finish, dtype=bool) & races["event_name"].notna().to_numpy() & races["event_year"].notna().to_numpy()
    if not use.any():
        return out
    rows = np.flatnonzero(use)
    # the columns numbered whole and then taken at ``rows``, not the rows' columns taken first:
    # a take copies the text columns (about 300 MB of fresh memory at full scale, and 1.7 s
    # against 0.3 s in a new process, 2026-12-06); the editions are the same groups, whatever
    # their numbers, so each median is the same
    logt = np.log(races["total_sec"].to_numpy(dtype=np.float64, na_value=np.nan)[rows])
    name = pd.factorize(races["event_name"])[0][rows].astype(np.int64)
    dist = pd.factorize(races["event_distance"])[0][rows].astype(np.int64) + 1  # a blank distance: 0
    year = races["event_year"].to_numpy(dtype=np.float64, na_value=np.nan)[rows].astype(np.int64)
    year = year - year.min()
    codes, _ = pd.factorize((name * (dist.max() + 1) + dist) * (year.max() + 1) + year)
    median = pd.Series(logt).groupby(codes).median().to_numpy()
    out[rows] = logt - median[codes]
    return out


def add_history(frame: pd.DataFrame, table: pd.DataFrame, distances: tuple[str, str], *,
                codes: np.ndarray | None = None, pool: Executor | None = None) -> pd.DataFrame:
    """The model-frame rows ``frame`` with :data:`HISTORY_COLUMNS` appended, from the season
    table of every start (:func:`season_table`). A row whose athlete is blank, or whose season
    is unknown, has no history (counts 0, means NaN). Rows are matched to the table on
    (athlete, season) integer keys. With a ``pool`` (a thread pool), part of the work is done
    in it, beside this thread: the same numbers."""
    if codes is None or "athlete" not in table.columns:
        athletes = pd.Index(pd.unique(table["athlete_hash"].astype(object)))
        t_code = athletes.get_indexer(table["athlete_hash"].astype(object))
        row_code = athletes.get_indexer(frame["athlete_hash"].astype(object).where(frame["athlete_hash"].notna(), None))
    else:  # the numbering the table was built with (season_table's ``codes``)
        t_code = table["athlete"].to_numpy(dtype=np.int64)
        row_code = np.asarray(codes, dtype=np.int64)
    years = frame["event_year"].to_numpy(dtype=np.float64, na_value=np.nan)
    table_years = table["event_year"].to_numpy(dtype=np.int64)

    def match() -> tuple[np.ndarray, np.ndarray]:
        """Each row's season row in the table (``take``) where it has one (``have``)."""
        span = 10_000
        t_key = t_code.astype(np.int64) * span + table_years
        known = (row_code >= 0) & np.isfinite(years)
        r_key = np.where(known, row_code.astype(np.int64) * span + np.nan_to_num(years).astype(np.int64), -1)
        if len(t_key) and np.all(t_key[1:] > t_key[:-1]):  # sorted (season_table's order): binary search
            # the rows' keys searched in sorted order (then put back): neighbouring searches walk
            # the same part of the table (0.3-1.0 s against 0.7-1.3 s in row order at full scale)
            order = np.argsort(r_key, kind="stable")
            at = np.empty(len(r_key), dtype=np.int64)
            at[order] = np.minimum(np.searchsorted(t_key, r_key[order]), len(t_key) - 1)
            pos = np.where(t_key[at] == r_key, at, -1)
        else:
            pos = pd.Index(t_key).get_indexer(r_key)
        pos = np.where(known, pos, -1)
        have = pos >= 0
        return have, np.where(have, pos, 0)

    # the rows are matched in the pool while this thread makes the running totals
    matched = pool.submit(match) if pool is not None else None
    totals = cumulated_totals(table, pool)
    have, take = matched.result() if matched is not None else match()
    # a row without a season row in the table (no athlete, or no season) has no history
    empties = np.array([np.inf if name == "best" else 0.0 for name in TOTAL_COLUMNS])
    own_is_1 = (frame["event_distance"] == distances[1]).to_numpy(dtype=bool)
    n = len(frame)
    cols = {name: np.empty(n, dtype=np.int32) for name in COUNT_COLUMNS}
    cols.update({name: np.empty(n) for name in LEVEL_COLUMNS})

    def fill(lo: int, hi: int) -> None:
        # rows in chunks: every total of a chunk's season rows read at once (one column at a
        # time read each row's totals from 15 places: 1.5 s against 0.4 s at full scale,
        # 2026-12-06), turned into columns and then into the history columns, all within the
        # caches; the same numbers as column by column
        for start in range(lo, hi, HISTORY_CHUNK_ROWS):
            part = slice(start, min(start + HISTORY_CHUNK_ROWS, hi))
            rows = totals[take[part]] if len(totals) else np.empty((part.stop - part.start, len(TOTAL_COLUMNS)))
            rows[~have[part]] = empties
            by_name = dict(zip(TOTAL_COLUMNS, np.ascontiguousarray(rows.T)))
            for name, values in history_columns(by_name, own_is_1[part]).items():
                cols[name][part] = values  # counts: whole numbers, as int32

    middle = n // 2
    later = pool.submit(fill, middle, n) if pool is not None else None
    fill(0, middle if later is not None else n)
    if later is not None:
        later.result()
    del totals
    # the new columns go on a shallow copy: the frame's own columns are shared, not copied
    # (hundreds of MB at full scale); adding columns never changes ``frame``
    out = frame.copy(deep=False)
    for name in HISTORY_COLUMNS:
        out[name] = cols[name]
    return out
