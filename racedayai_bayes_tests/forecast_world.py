"""A small world drawn from the forecast model itself, with known parameters (for recovery tests)."""

from __future__ import annotations

import numpy as np
import pandas as pd

from racedayai_bayes.lib.data.history import add_history, season_table

TRUTH = {"sigma_first": 0.09, "sigma_returning": 0.06, "tau": 0.12, "sigma_course": 0.06, "sigma_cell": 0.05, "day": 0.04}
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
    edition (course, season) has its day effect; a race in the athlete's first season has
    noise sd sigma_first, later ones sigma_returning. Returns the rows and the true effects.
    """
    t = dict(TRUTH if truth is None else truth)
    rng = np.random.default_rng(seed)
    gender = rng.choice(["M", "F"], athletes, p=[0.75, 0.25])
    age = rng.choice(AGES, athletes)
    level = rng.normal(0, t["tau"], athletes)
    n_races = rng.choice([1, 1, 1, 2, 2, 3, 4, 6], athletes)
    start = rng.integers(0, seasons, athletes)
    ath = np.repeat(np.arange(athletes), n_races)
    season = np.minimum(start[ath] + (rng.random(len(ath)) * (n_races[ath] + 1)).astype(int), seasons - 1)
    course = rng.integers(0, courses, len(ath))
    course_eff = rng.normal(0, t["sigma_course"], courses)
    day = rng.normal(0, t["day"], (courses, seasons))
    cells = sorted({f"{g}|{a}" for g in ("M", "F") for a in AGES})
    cell_eff = dict(zip(cells, rng.normal(0, t["sigma_cell"], len(cells))))
    first_season = pd.Series(season).groupby(ath).transform("min").to_numpy()
    first = season == first_season
    noise = np.where(first, t["sigma_first"], t["sigma_returning"]) * rng.standard_normal(len(ath))
    mu = np.log(21000.0) + np.where(gender[ath] == "F", 0.08, 0.0) + np.array([cell_eff[f"{g}|{a}"] for g, a in zip(gender[ath], age[ath])])
    log_t = mu + course_eff[course] + day[course, season] + level[ath] + noise
    frame = pd.DataFrame({
        "athlete_hash": pd.array([f"a{a:05d}" for a in ath], dtype="string"),
        "gender": pd.array(gender[ath], dtype="string"),
        "age_group": pd.array(age[ath], dtype="string"),
        "event_name": pd.array([f"Course {c:02d}" for c in course], dtype="string"),
        "event_distance": pd.array([distance] * len(ath), dtype="string"),
        "event_year": pd.array(2010 + season, dtype="Int64"),
        "total_sec": np.exp(log_t),
        "is_pro": pd.array([False] * len(ath), dtype="boolean"),
    })
    distances = (distance, "140.6" if distance == "70.3" else "70.3")
    frame = add_history(frame, season_table(frame, np.ones(len(frame), dtype=bool), distances), distances)
    return frame.drop(columns=["is_pro"]), {"truth": t, "course": course_eff, "day": day, "level": level,
                                            "cell": np.array([cell_eff[c] for c in cells])}
