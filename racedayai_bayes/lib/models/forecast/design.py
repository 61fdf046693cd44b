"""The forecast model's encoding: levels, covariates and standardisation, fitted on training rows.

Columns of the coefficient vector b, in order (:attr:`ForecastEncoding.blocks`):

- ``gender``: M, F and U (a blank gender): the intercepts, a fixed effect each (y is
  centred on the training mean log time, ``y_center``);
- ``cell``: one effect per (gender, age group) seen in training, pooled with ``sigma_cell``
  around its gender's mean. Age groups are an open vocabulary, as in the seed: each distinct
  string is its own level (a blank age group too);
- ``course``: one effect per ``event_name`` seen in training, pooled with ``sigma_course``;
- ``slope``: the as-of covariates of :data:`COVARIATES`, standardised on the training rows.

A level the training rows never saw (a new course, a new cell) has no column:
its effect is a draw from the population, 0 in the mean and its scale in the spread.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field

import numpy as np
import pandas as pd

from racedayai_bayes.lib.arrays import unique_inverse
from racedayai_bayes.lib.data.frame import course_first_seasons, course_index
from racedayai_bayes.lib.data.history import first_race, no_earlier_start

GENDERS = ("M", "F", "U")  # U: blank or unrecognised gender
# As-of covariates (lib/data/history.py), standardised on the training rows.
COVARIATES = (
    "returning",  # not a first race (some earlier start at either distance)
    "log_starts_same",  # log1p(earlier starts at this distance)
    "log_starts_other",  # log1p(earlier starts at the other distance)
    "has_other",  # some earlier finish at the other distance
    "other_level",  # mean edition-relative log time at the other distance (centred), 0 without one
    "log_dnf",  # log1p(earlier starts without a finish)
    # The athlete's first season of starts held no finish (lib/data/history.py): such athletes
    # finished 4.5-5.9% slower than forecast in the training seasons where no finish told their
    # level (full synthetic world, 2026-12-05), through log_dnf alone, whose slope mostly serves
    # athletes whose finishes already tell it. This one never changes within an athlete once
    # set, so its slope is learned between athletes: what a forecast without finishes needs.
    "unfinished_debut",
    # The other distance's level as known at the athlete's first finish at this distance, kept
    # for their later races here (lib/data/history.py). A debut here learns the athlete's level
    # from the other distance alone, a later race also from their races here (the athlete
    # effect). One slope for both under-weighted it on debuts (the held-out debuts' residual
    # rose by 0.2-0.37 per unit of the level, full synthetic world, 2026-12-05). Slopes set on
    # the debut row only (DEBUT_ROW_COVARIATES) were learned partly within athletes (the debut
    # against their later races, whose athlete effect already holds the level) and still came
    # out too small for a debut's forecast, which has no athlete effect to make up the rest:
    # the fastest tenth of such debuts finished 3.1% (70.3) and 1.7% (140.6) faster than
    # forecast in the fitted seasons. Kept after the first finish here, these never change
    # within an athlete from then on, so their slopes are learned between athletes (a Mundlak term): that tenth is
    # within 0.6%, the residual's slope on the level -0.005/-0.004, and the debut-row
    # covariates add nothing beside them (held-out ELPD the same to 1e-4).
    "has_other_at_debut",
    "other_level_at_debut",  # centred like other_level, 0 without one
)
# Read by encodings fitted from 0c6a395 to 4ea0cf5 (2026-12-05 ~19:12-21:50; an artifact keeps the
# names it was fitted with), no longer fitted: a debut's own intercept and slopes on the other
# distance's level, 0 on every later race. raw_covariates still makes them; none is in COVARIATES.
DEBUT_ROW_COVARIATES = (
    "debut_has_other",  # has_other on a debut at this distance, 0 otherwise
    "debut_other_level",  # other_level on a debut at this distance, 0 otherwise
    "debut_other_level_settled",  # debut_other_level x n / (n + 1), n finishes at the other distance
)
BLOCKS = ("gender", "cell", "course", "slope")


# raw_covariates' and column_sd's rows per chunk: each chunk's arrays (a few MB) are reused
# from one chunk to the next, where a pass over every row made a fresh array per step of the
# arithmetic (at full scale 18 MB each: +378 MB for a 161 MB result, 2026-12-07), and fresh
# memory costs this VM system time (step_server.STEP_MALLOC_ENV)
RAW_CHUNK_ROWS = 65_536


def raw_covariates(rows: pd.DataFrame, other_center: float, names: tuple[str, ...] = COVARIATES) -> np.ndarray:
    """The covariates ``names`` (of :data:`COVARIATES` and :data:`DEBUT_ROW_COVARIATES`) before
    standardisation, shape (rows, len(names)).

    An encoding keeps the names it was fitted with: an artifact written before a covariate was
    added reads its own columns. Made :data:`RAW_CHUNK_ROWS` rows at a time into one array:
    every value depends on its own row only, so the numbers are those of one pass."""
    # the columns every covariate reads first, as the rows' own: a frame without one is a KeyError
    columns = {c: rows[c].array for c in _BASE_COLUMNS}
    unknown = [n for n in names if n not in _COVARIATE_MAKERS]
    if unknown:
        raise ValueError(f"unknown forecast covariates {unknown}; known: {list(_COVARIATE_MAKERS)}")
    n = len(rows)
    if not names:
        return np.zeros((n, 0))
    for name in names:  # in order: the first covariate whose column is missing says so
        column = _COVARIATE_READS.get(name)
        if column is not None and column not in columns:
            columns[column] = rows[_require_history(rows, column) if column in _HISTORY_ADDED_LATER else column].array
    out = np.empty((n, len(names)))
    for lo in range(0, n, RAW_CHUNK_ROWS):
        hi = min(lo + RAW_CHUNK_ROWS, n)
        out[lo:hi] = _raw_block({c: a[lo:hi] for c, a in columns.items()}, other_center, names)
    return out


def column_sd(values: np.ndarray, mean: np.ndarray) -> np.ndarray:
    """Each column's standard deviation (ddof 0) around its ``mean``, as ``values.std(axis=0)``
    up to rounding, summed :data:`RAW_CHUNK_ROWS` rows at a time. ``std(axis=0)`` makes a
    temporary the size of ``values`` (160 MB at full scale at 70.3: 2.2M rows of 9
    covariates): fresh memory, which cost 1.5-1.8 s the first time in a process here, against
    0.16 s when reused and 0.05 s for this (measured 2026-12-07)."""
    n = len(values)
    if n == 0:
        return np.full(values.shape[1], np.nan)
    squares = np.zeros(values.shape[1])
    for lo in range(0, n, RAW_CHUNK_ROWS):
        dev = values[lo:lo + RAW_CHUNK_ROWS] - mean
        squares += np.einsum("ij,ij->j", dev, dev)
    return np.sqrt(squares / n)


def _raw_block(columns: dict, other_center: float, names: tuple[str, ...]) -> np.ndarray:
    """:func:`raw_covariates` of one chunk of rows (``columns``: each column's values there)."""
    def floats(column: str) -> np.ndarray:  # a level column: NaN where missing
        return columns[column].to_numpy(dtype=np.float64, na_value=np.nan)

    def counts(column: str) -> np.ndarray:  # a count column, read as a frame's always was (no na_value)
        return columns[column].to_numpy(dtype=np.float64)

    starts = counts("hist_starts")
    same = counts("hist_starts_same")
    other_fin = counts("hist_finishes_other")
    rel = floats("hist_rel_other")
    has_other = (other_fin > 0) & np.isfinite(rel)
    level = np.nan_to_num(np.where(has_other, rel - other_center, 0.0))
    parts = {"starts": starts, "same": same, "other_fin": other_fin, "has_other": has_other, "level": level,
             "debut": (same == 0).astype(np.float64), "floats": floats, "counts": counts}
    return np.column_stack([_COVARIATE_MAKERS[n](parts, other_center) for n in names])


# the history columns every covariate reads (_raw_block), and the one more that some read
_BASE_COLUMNS = ("hist_starts", "hist_starts_same", "hist_finishes_other", "hist_rel_other")
_COVARIATE_READS = {"log_dnf": "hist_dnf", "unfinished_debut": "hist_unfinished_debut",
                    "has_other_at_debut": "hist_rel_other_at_debut", "other_level_at_debut": "hist_rel_other_at_debut"}
# columns a frame stored by an older version may lack: read through _require_history's clear error
_HISTORY_ADDED_LATER = ("hist_unfinished_debut", "hist_rel_other_at_debut")

# each covariate of one chunk, from _raw_block's parts: the chunk's common arrays, and a column
# of the chunk as float64 (``floats``: NaN where missing; ``counts``)
_COVARIATE_MAKERS = {
    "returning": lambda p, c: (~no_earlier_start(p["starts"])).astype(np.float64),
    "log_starts_same": lambda p, c: np.log1p(p["same"]),
    "log_starts_other": lambda p, c: np.log1p(p["starts"] - p["same"]),
    "has_other": lambda p, c: p["has_other"].astype(np.float64),
    "other_level": lambda p, c: p["level"],
    "log_dnf": lambda p, c: np.log1p(p["counts"]("hist_dnf")),
    "debut_has_other": lambda p, c: p["debut"] * p["has_other"],
    "debut_other_level": lambda p, c: p["debut"] * p["level"],
    "debut_other_level_settled": lambda p, c: np.where(
        p["has_other"], p["debut"] * p["level"] * p["other_fin"] / (p["other_fin"] + 1.0), 0.0),
    "unfinished_debut": lambda p, c: p["floats"]("hist_unfinished_debut"),
    "has_other_at_debut": lambda p, c: np.isfinite(p["floats"]("hist_rel_other_at_debut")).astype(np.float64),
    "other_level_at_debut": lambda p, c: np.nan_to_num(p["floats"]("hist_rel_other_at_debut") - c, nan=0.0),
}


STALE_HINT = ("stored by an older version of the pipeline: materialise model_frame and athlete_seasons again "
              "(the model_frame step makes both)")


def _require_history(rows: pd.DataFrame, column: str) -> str:
    """``column``, an as-of history column the covariates read; a clear error if the rows predate it."""
    if column not in rows.columns:
        raise ValueError(f"the rows have no as-of history column {column!r}, which the forecast covariates read: "
                         f"they were {STALE_HINT}")
    return column


def _at_debut(rows: pd.DataFrame) -> np.ndarray:
    """The level at the athlete's debut at this distance, as float64 (NaN where missing)."""
    return rows[_require_history(rows, "hist_rel_other_at_debut")].to_numpy(dtype=np.float64, na_value=np.nan)


def gender_codes(rows: pd.DataFrame) -> np.ndarray:
    """0 for M, 1 for F, 2 for anything else or blank (one comparison per distinct value)."""
    codes, uniques = pd.factorize(rows["gender"], sort=False)
    per = np.array([{"M": 0, "F": 1}.get(str(u), 2) for u in uniques] + [2], dtype=np.int64)
    return per[codes]  # a missing gender (code -1) reads the last entry


@dataclass(frozen=True)
class ForecastEncoding:
    """Levels and constants that turn model-frame rows into the forecast model's inputs."""

    distance: str
    cells: tuple[str, ...]  # "<gender>|<age group>"
    courses: tuple[str, ...]
    course_first_season: tuple[int, ...]  # first training season of each course
    y_center: float
    other_center: float
    cov_mean: tuple[float, ...]
    cov_sd: tuple[float, ...]
    day_sd: float = 0.0  # sd of the day (edition) effect, from the first pass
    covariates: tuple[str, ...] = COVARIATES
    genders: tuple[str, ...] = GENDERS
    notes: tuple[str, ...] = field(default=())

    @property
    def sizes(self) -> dict[str, int]:
        return {
            "gender": len(self.genders), "cell": len(self.cells), "course": len(self.courses), "slope": len(self.covariates),
        }

    @property
    def slices(self) -> dict[str, slice]:
        out, start = {}, 0
        for block in BLOCKS:
            out[block] = slice(start, start + self.sizes[block])
            start += self.sizes[block]
        return out

    @property
    def num_columns(self) -> int:
        return sum(self.sizes.values())

    def column_names(self) -> list[str]:
        names = [f"gender[{g}]" for g in self.genders]
        names += [f"cell[{c}]" for c in self.cells]
        names += [f"course[{c}]" for c in self.courses]
        names += [f"slope[{c}]" for c in self.covariates]
        return names

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> ForecastEncoding:
        raw = json.loads(text)
        for key in ("cells", "courses", "course_first_season", "cov_mean", "cov_sd",
                    "covariates", "genders", "notes"):
            raw[key] = tuple(raw[key])
        return cls(**raw)


def cells(rows: pd.DataFrame, genders: np.ndarray | None = None) -> tuple[np.ndarray, list[str]]:
    """Each row's cell as an index into the labels ('<gender>|<age group>') of the cells the
    rows hold; a blank age group is its own level ('M|'). No string is made per row.
    ``genders``: the rows' :func:`gender_codes`, when the caller has them already."""
    ages, uniques = pd.factorize(rows["age_group"].astype("string").fillna(""), sort=False)
    genders = gender_codes(rows) if genders is None else genders
    combos, inverse = unique_inverse(genders * len(uniques) + ages)
    labels = [f"{GENDERS[c // len(uniques)]}|{uniques[c % len(uniques)]}" for c in combos]
    return inverse.reshape(-1), labels


def fit_encoding(train: pd.DataFrame, distance: str, day_sd: float = 0.0,
                 covariates: tuple[str, ...] = COVARIATES) -> ForecastEncoding:
    """Levels and standardisation constants from the training rows (all of them)."""
    return _fit(train, distance, day_sd, covariates)[0]


def fit_encoding_and_design(train: pd.DataFrame, distance: str, day_sd: float = 0.0,
                            covariates: tuple[str, ...] = COVARIATES) -> tuple[ForecastEncoding, ForecastDesign]:
    """``fit_encoding(train, ...)`` and ``encode(train, that encoding)``, the same arrays, with
    what both read worked out once: the covariates, the genders, the cells and the courses
    of the training rows (at full scale, about 0.7 s of a 70.3 fit's encoding twice)."""
    enc, parts = _fit(train, distance, day_sd, covariates)
    return enc, _design(train, enc, **parts)


def _fit(train: pd.DataFrame, distance: str, day_sd: float, covariates: tuple[str, ...]) -> tuple[ForecastEncoding, dict]:
    """The encoding, and what :func:`_design` of the same rows can take from its making."""
    y = np.log(train["total_sec"].to_numpy(dtype=np.float64))
    other = train["hist_rel_other"].to_numpy(dtype=np.float64, na_value=np.nan)
    has_other = (train["hist_finishes_other"].to_numpy() > 0) & np.isfinite(other)
    other_center = float(np.mean(other[has_other])) if has_other.any() else 0.0
    cov = raw_covariates(train, other_center, covariates)
    mean = cov.mean(axis=0)
    sd = column_sd(cov, mean)
    sd = np.where(sd > 1e-9, sd, 1.0)  # a constant covariate carries no information: leave it at 0
    first, course = _course_first_seasons(train)
    genders = gender_codes(train)
    cell, labels = cells(train, genders)
    enc = ForecastEncoding(
        distance=str(distance),
        cells=tuple(sorted(labels)),
        courses=tuple(first.index),
        course_first_season=tuple(int(s) for s in first.to_numpy()),
        y_center=float(y.mean()),
        other_center=other_center,
        cov_mean=tuple(float(v) for v in mean),
        cov_sd=tuple(float(v) for v in sd),
        day_sd=float(day_sd),
        covariates=tuple(covariates),
    )
    return enc, {"cov": cov, "course": course, "genders": genders, "cells_": (cell, labels)}


def _course_first_seasons(rows: pd.DataFrame) -> tuple[pd.Series, np.ndarray]:
    """``course_first_seasons(rows)``, and each row's index in it (-1 for a blank name): what
    ``course_index(rows' names, its index)`` gives, since every name of the rows is in it as
    written, from the same factorization."""
    codes, uniques = pd.factorize(rows["event_name"], sort=False)
    first = course_first_seasons(rows, (codes, uniques))
    return first, _positions(codes, [str(u) for u in uniques], tuple(first.index))


@dataclass
class ForecastDesign:
    """Model inputs of a set of rows. Level indices are -1 where the encoding has no level."""

    gender: np.ndarray  # (n,) 0..2
    cell: np.ndarray  # (n,) -1 = unseen
    course: np.ndarray  # (n,) -1 = a course the fit never saw (or a blank event_name)
    new_course: np.ndarray  # (n,) bool: no training edition of the course before the row's season
    z: np.ndarray  # (n, n_cov) standardised covariates
    first: np.ndarray  # (n,) bool: first race (noise class 0)
    season: np.ndarray  # (n,) int64
    # (n,) bool: the other distance's level was known at the athlete's first finish here (or,
    # before one, is known now): the athlete's level varies with tau_other, not tau (marginal.py)
    other_known: np.ndarray

    def __len__(self) -> int:
        return len(self.gender)


def _positions(codes: np.ndarray, uniques, levels: tuple[str, ...]) -> np.ndarray:
    """Each row's position in ``levels`` (-1 if absent, or if its code is negative), from the
    row's code into ``uniques``: every distinct value is looked up once, not every row."""
    return _positions_of(codes, _level_positions(uniques, levels))


def _level_positions(uniques, levels: tuple[str, ...]) -> np.ndarray:
    """Each distinct value's position in ``levels`` (-1 if absent)."""
    return pd.Index(levels).get_indexer(uniques) if len(uniques) else np.zeros(0, dtype=np.int64)


def _positions_of(codes: np.ndarray, pos: np.ndarray) -> np.ndarray:
    """Each row's position, from its code and each code's position (-1 for a negative code)."""
    codes = np.asarray(codes).reshape(-1)
    if not len(pos):
        return np.full(len(codes), -1, dtype=np.int64)
    return np.where(codes >= 0, pos[np.maximum(codes, 0)], -1)


def encode(rows: pd.DataFrame, enc: ForecastEncoding) -> ForecastDesign:
    """Turn model-frame rows (with their as-of history) into a :class:`ForecastDesign`.

    A row is on a new course when its course has no training edition in a season before the
    row's own: a course the fit never saw, a blank event_name, and also a training row in the
    course's first season (a forecast made before that season could not know the course).
    ``course`` keeps the fitted course's index either way: the fit uses it, a forecast of a
    row on a new course does not.
    """
    return _design(rows, enc)


def _design(rows: pd.DataFrame, enc: ForecastEncoding, cov: np.ndarray | None = None, course: np.ndarray | None = None,
            genders: np.ndarray | None = None, cells_: tuple[np.ndarray, list[str]] | None = None) -> ForecastDesign:
    """:func:`encode`, given what the caller already has of these rows (:func:`_fit`): their raw
    covariates (standardised in place), course indices, gender codes and cells."""
    season = rows["event_year"].to_numpy(dtype=np.int64)
    if course is None:
        course = course_index(rows["event_name"].astype("string"), enc.courses)
    first_season = np.asarray(enc.course_first_season, dtype=np.int64)
    known = course >= 0
    new_course = ~known | (first_season[np.where(known, course, 0)] >= season)
    if cov is None:
        cov = raw_covariates(rows, enc.other_center, enc.covariates)
    cov -= np.asarray(enc.cov_mean)
    cov /= np.asarray(enc.cov_sd)
    genders = gender_codes(rows) if genders is None else genders
    return ForecastDesign(
        gender=genders,
        cell=_positions(*(cells_ if cells_ is not None else cells(rows, genders)), enc.cells),
        course=course,
        new_course=new_course,
        z=cov,
        first=first_race(rows),
        season=season,
        other_known=other_level_known(rows),
    )


def other_level_known(rows: pd.DataFrame) -> np.ndarray:
    """Whether the other distance's level was known at the athlete's first finish here (kept
    from then on; before a finish here: whether it is known now), per row. Rows stored before
    that history column existed know none (their encodings read no such covariate either)."""
    if "hist_rel_other_at_debut" not in rows.columns:
        return np.zeros(len(rows), dtype=bool)
    return np.isfinite(_at_debut(rows))
