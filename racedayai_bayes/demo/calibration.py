"""The variance structure of a results file, measured as real_variance_structure.json defines it.

Used to check that the synthetic world keeps the structure the forecast model relies on:
courses, race days, athletes and race-to-race variation (on log total_sec, with the seed's
filter), and the share of a season's rows on courses that never ran before.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

MIN_EDITION_ROWS = 50
MIN_COURSE_EDITIONS = 3


def variance_structure(races: pd.DataFrame, distance: str, new_course_season: int = 2024) -> dict[str, float]:
    """The JSON's statistics for one distance of an athlete_race frame (read as text + numbers).

    - ``sd_course_mean``: sd across courses of the mean of their edition medians;
    - ``sd_edition_within_course``: sd of an edition median around its course mean (courses
      with 3+ editions of 50+ finishers);
    - ``sd_athlete_mean_resid_2plus``: sd across athletes with 2+ races of their mean
      residual after removing the edition median;
    - ``sd_within_athlete``: pooled race-to-race sd of that residual;
    - ``share_new_course``: share of ``new_course_season``'s rows on a course with no earlier
      edition.
    """
    pro = races["is_pro"].astype("string").str.lower().eq("true").fillna(False)
    keep = (~pro & (races["event_distance"].astype("string") == distance).fillna(False)
            & races["total_sec"].gt(3600) & races["total_sec"].lt(61200)).to_numpy(dtype=bool)
    x = races.loc[keep, ["athlete_hash", "event_name", "event_year", "total_sec"]].copy()
    x["y"] = np.log(x["total_sec"].astype(float))
    edition = x["event_name"].astype(str) + "|" + x["event_year"].astype(str)
    median = x.groupby(edition)["y"].median()
    size = x.groupby(edition).size()
    course_of = x.groupby(edition)["event_name"].first()
    big = median[size >= MIN_EDITION_ROWS]
    course_mean = big.groupby(course_of[big.index].to_numpy()).mean()
    editions_per_course = big.groupby(course_of[big.index].to_numpy()).size()
    deviation = big.to_numpy() - course_mean[course_of[big.index]].to_numpy()
    many = editions_per_course[course_of[big.index]].to_numpy() >= MIN_COURSE_EDITIONS
    resid = x["y"].to_numpy() - median[edition].to_numpy()
    named = x["athlete_hash"].notna().to_numpy()
    hashes = x["athlete_hash"].to_numpy()[named]
    r = pd.Series(resid[named])
    count = r.groupby(hashes).transform("size").to_numpy()
    mean = r.groupby(hashes).transform("mean").to_numpy()
    per_athlete = pd.Series(resid[named]).groupby(hashes).agg(["mean", "size"])
    two = per_athlete["size"] >= 2
    dof = float((per_athlete.loc[two, "size"] - 1).sum())
    within = (r.to_numpy() - mean)[count >= 2]
    first_season = x.groupby("event_name")["event_year"].min()
    season = x.loc[x["event_year"] == new_course_season, "event_name"]
    return {
        "rows": int(len(x)),
        "editions": int(len(median)),
        "courses": int(x["event_name"].nunique()),
        "sd_log_time": float(x["y"].std()),
        "sd_course_mean": float(course_mean.std()),
        "sd_edition_within_course": float(deviation[many].std()),
        "sd_athlete_mean_resid_2plus": float(per_athlete.loc[two, "mean"].std()),
        "sd_within_athlete": float(np.sqrt(within @ within / dof)) if dof else float("nan"),
        "share_new_course": float((first_season[season].to_numpy() == new_course_season).mean()) if len(season) else float("nan"),
    }


def compare(measured: dict[str, float], real: dict[str, float]) -> dict[str, float]:
    """measured / real for each variance component the JSON has (1.0 = the same)."""
    keys = ("sd_course_mean", "sd_edition_within_course", "sd_athlete_mean_resid_2plus", "sd_within_athlete")
    return {k: measured[k] / real[k] for k in keys}
