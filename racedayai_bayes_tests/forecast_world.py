"""A small world drawn from the forecast model itself, with known parameters (for recovery tests)."""

from __future__ import annotations

import numpy as np
import pandas as pd

from racedayai_bayes.lib.data.history import add_history, season_table

TRUTH = {"sigma_first": 0.09, "sigma_returning": 0.06, "tau": 0.12, "sigma_course": 0.06, "sigma_cell": 0.05,
         "tau_other": 0.06, "day": 0.04}
OTHER_SHARE = 0.3  # athletes who raced the other distance before their first race here
OTHER_SLOPE = 0.6  # their level here per unit of their level there (edition-relative log time)
AGES = ("18-24", "25-34", "35-44", "45-54", "55-64", "65+")


def forecast_world(
    seed: int = 0,
    athletes: int = 3000,
    courses: int = 25,
    seasons: int = 8,
    truth: dict | None = None,
    distance: str = "70.3",
) -> tuple[pd.DataFrame, dict]:
    """Model-frame rows of one distance, with as-of history, drawn from the forecast model.

    Each athlete races 1 to 6 times over consecutive-ish seasons on random courses; every
    edition (course, season) has its day effect; a race with no earlier start at either
    distance has noise sd sigma_first, later ones sigma_returning. A share of the athletes
    (``OTHER_SHARE``) first raced the other distance, one to three times in the seasons before
    their first race here: their level here is ``OTHER_SLOPE`` times their level there (its
    edition-relative log time, as the as-of history reads it) plus their own effect of sd
    tau_other; everyone else's level has sd tau. Returns the rows of this distance (the other
    distance's races are in their history only) and the true effects.
    """
    t = dict(TRUTH if truth is None else truth)
    rng = np.random.default_rng(seed)
    gender = rng.choice(["M", "F"], athletes, p=[0.75, 0.25])
    age = rng.choice(AGES, athletes)
    own = rng.normal(0, 1.0, athletes)  # each athlete's own effect, in units of its class's scale
    n_races = rng.choice([1, 1, 1, 2, 2, 3, 4, 6], athletes)
    start = rng.integers(0, seasons, athletes)
    other = (rng.random(athletes) < OTHER_SHARE) & (start > 0)
    ath = np.repeat(np.arange(athletes), n_races)
    season = np.minimum(start[ath] + (rng.random(len(ath)) * (n_races[ath] + 1)).astype(int), seasons - 1)
    course = rng.integers(0, courses, len(ath))
    course_eff = rng.normal(0, t["sigma_course"], courses)
    day = rng.normal(0, t["day"], (courses, seasons))
    cells = sorted({f"{g}|{a}" for g in ("M", "F") for a in AGES})
    cell_eff = dict(zip(cells, rng.normal(0, t["sigma_cell"], len(cells))))
    mu = np.log(21000.0) + np.where(gender[ath] == "F", 0.08, 0.0) + np.array([cell_eff[f"{g}|{a}"] for g, a in zip(gender[ath], age[ath])])
    distances = (distance, "140.6" if distance == "70.3" else "70.3")

    def rows(who, seasons_, names, dist, log_time):
        return pd.DataFrame({
            "athlete_hash": pd.array([f"a{a:05d}" for a in who], dtype="string"),
            "gender": pd.array(gender[who], dtype="string"),
            "age_group": pd.array(age[who], dtype="string"),
            "event_name": pd.array(names, dtype="string"),
            "event_distance": pd.array([dist] * len(who), dtype="string"),
            "event_year": pd.array(2010 + seasons_, dtype="Int64"),
            "total_sec": np.exp(log_time),
            "is_pro": pd.array([False] * len(who), dtype="boolean"),
        })

    # the other distance: 1-3 races of each such athlete in seasons before its first here, on
    # 5 courses; their times there follow their ability there (sd 0.12) and noise
    o_ath = np.repeat(np.flatnonzero(other), rng.integers(1, 4, int(other.sum())))
    o_season = (rng.random(len(o_ath)) * start[o_ath]).astype(int)
    o_course = rng.integers(0, 5, len(o_ath))
    ability = rng.normal(0, 0.12, athletes)
    o_log = np.log(45000.0) + ability[o_ath] + rng.normal(0, 0.03, (5, seasons))[o_course, o_season] + rng.normal(0, 0.06, len(o_ath))
    there = rows(o_ath, o_season, [f"Other {c}" for c in o_course], distances[1], o_log)
    here = rows(ath, season, [f"Course {c:02d}" for c in course], distance, mu)  # times set below
    every = pd.concat([here, there], ignore_index=True)
    frame = add_history(here, season_table(every, np.ones(len(every), dtype=bool), distances), distances)
    # the level there as the history reads it at the athlete's first race here (the same on
    # every race here: no race there comes after it), centred
    at_debut = pd.Series(frame["hist_rel_other_at_debut"].to_numpy(dtype=np.float64)).groupby(ath).first()
    there_level = at_debut.reindex(np.arange(athletes)).to_numpy()
    assert np.isfinite(there_level[other]).all() and not np.isfinite(there_level[~other]).any()
    centre = np.nanmean(there_level)
    level = np.where(other, OTHER_SLOPE * (np.nan_to_num(there_level) - centre) + t["tau_other"] * own, t["tau"] * own)
    first = frame["hist_starts"].to_numpy() == 0  # no earlier start at either distance
    noise = np.where(first, t["sigma_first"], t["sigma_returning"]) * rng.standard_normal(len(ath))
    log_t = mu + course_eff[course] + day[course, season] + level[ath] + noise
    frame["total_sec"] = np.exp(log_t)
    # the history of races here is of their times: made again from the final ones
    every = pd.concat([frame[here.columns], there], ignore_index=True)
    frame = add_history(frame[here.columns], season_table(every, np.ones(len(every), dtype=bool), distances), distances)
    return frame.drop(columns=["is_pro"]), {"truth": t, "course": course_eff, "day": day, "level": level,
                                            "own": np.where(other, t["tau_other"], t["tau"]) * own, "other": other,
                                            "cell": np.array([cell_eff[c] for c in cells])}
