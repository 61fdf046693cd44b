"""A synthetic world of triathlon results that makes the demo data (the three input CSVs).

The world, not the model. Athletes have a gender, an age that grows year by year and a
latent ability (log scale). Each races a number of 70.3 and/or 140.6 editions (a quarter of
them both distances) within a window of years; short-course athletes race sprint/olympic
only. An edition is one event in one year, with a persistent course difficulty and a day
effect. A time is the gender/age median (interpolated over age) times
exp(ability + fitness trend + course + day + race-to-race noise + the odd bad day); splits
follow the athlete's discipline strengths, and slow athletes lose most on the run.
Slow athletes drop out more often, times near the cutoff are squeezed under it and starts
far over it are DNFs. Pros are faster. Editions come from four sources that format age
groups, statuses and is_pro differently; one publishes 70.3 results without names (empty
athlete_hash). The upstream ETL corrupts a few total times (minutes for seconds, a day
added), so the seed's 3600 < total_sec < 61200 filter matters.

Profiles are derived from the rows with the data contract's definitions; clusters come
from KMeans over standardised profiles of athletes with 3+ results. ``CALIBRATION`` holds
real summary statistics (real_results_summary.json); the world's own constants below are
tuned so that the seed's model frame, as read back from the CSV, matches them per distance.
``simulate_world(..., truth=True)`` also returns what was drawn for each race row (the
terms of its time, its athlete, course and day: TRUTH_COLUMNS) without changing the world;
bench/oracle.py compares the forecasts with oracles built on it.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.cluster import KMeans

from racedayai_bayes.lib.outputs.io import write_csv_atomic

SIZES = {"demo": 100_000, "full": 3_700_000}  # age-group 70.3 + 140.6 finisher rows

RACE_COLUMNS = [
    "athlete_hash", "athlete_name", "gender", "age_group", "age_band", "country", "country_iso2",
    "is_pro", "event_name", "event_year", "event_location", "event_distance", "source",
    "swim_sec", "t1_sec", "bike_sec", "t2_sec", "run_sec", "total_sec", "overall_rank",
    "gender_rank", "age_group_rank", "division_rank", "finish_status", "swim_pct", "bike_pct",
    "run_pct", "transition_pct", "bike_run_ratio", "fade_ratio", "implied_bike_if",
    "cohort_percentile",
]
PROFILE_COLUMNS = [
    "athlete_hash", "athlete_name", "gender", "country", "total_races", "years_active",
    "distances_raced", "pb_swim_sec", "pb_bike_sec", "pb_run_sec", "pb_total_sec",
    "first_race_year", "latest_race_year", "improvement_slope", "consistency_cv",
    "swim_strength_z", "bike_strength_z", "run_strength_z", "dominant_discipline", "dnf_count",
    "dnf_rate", "mean_fade",
]
CLUSTER_COLUMNS = ["athlete_hash", "cluster_id"]

DISTANCES = ("70.3", "140.6", "sprint", "olympic")
AGE_GROUPS = ("18-24", "25-29", "30-34", "35-39", "40-44", "45-49", "50-54", "55-59",
              "60-64", "65-69", "70+")
YEARS = np.arange(2002, 2027)

# real_results_summary.json. Per-age tuples follow AGE_GROUPS; finishes_share is for 1..9
# and 10+ finishes; year_counts start at first_year; splits are swim, bike, run.
CALIBRATION = {
    "70.3": dict(
        ag_finishers=1741083, dnf_share=0.0584, mean=21584.4, sd=3339.1, p50=21248.0,
        female_share=0.2387,
        age_share=(.0474, .115, .1592, .174, .1748, .1404, .0977, .0542, .025, .0089, .0034),
        median_m=(20365, 20399, 20381, 20499, 20720, 20981, 21363, 21875, 22616, 23514, 25386),
        median_f=(22134, 22042, 22132, 22318, 22566, 22896, 23332, 23803, 24642, 25685, 27145),
        split_median=(2334.0, 10707.0, 7520.0), split_missing=(.0362, .0053, .0009),
        sd_edition=.0763, sd_within=.0638, sd_between=.1232,
        # real_variance_structure.json: courses, race days, athletes, race to race; new courses
        sd_course=.0668, sd_day=.0488, sd_athlete=.1238, sd_within_athlete=.0752, new_course_share=.094,
        finishes_share=(.5964, .1859, .0852, .0456, .0273, .0175, .0116, .0077, .0057, .0172),
        first_year=2004, per_edition=1280.2,
        year_counts=(1844, 4022, 7725, 8589, 12086, 20954, 36444, 45082, 61928, 68672, 85011,
                     110421, 118146, 127391, 130387, 150034, 10567, 87386, 126317, 125845,
                     146860, 156077, 99295)),
    "140.6": dict(
        ag_finishers=1008541, dnf_share=0.0972, mean=45434.7, sd=6731.1, p50=45000.0,
        female_share=0.1856,
        age_share=(.0289, .0882, .1491, .1763, .1959, .1608, .1128, .0552, .0232, .0071, .0025),
        median_m=(43891, 42853, 42628, 42989, 43886, 44816, 46120, 47710, 49499, 51250, 54670),
        median_f=(46649, 46000, 46244, 46929, 47811, 48717, 49900, 50970, 52867, 55304, 56867),
        split_median=(4563.0, 22336.0, 16954.0), split_missing=(.0216, .0047, .0027),
        sd_edition=.0824, sd_within=.069, sd_between=.1166,
        sd_course=.0739, sd_day=.0511, sd_athlete=.1164, sd_within_athlete=.0801, new_course_share=0.0,
        finishes_share=(.6209, .1791, .0787, .0414, .0246, .0154, .0105, .007, .0049, .0174),
        first_year=2002, per_edition=1503.0,
        year_counts=(5060, 9869, 9133, 16961, 21047, 27399, 30001, 31055, 36729, 40725, 50073,
                     53643, 64361, 63842, 63758, 63128, 64686, 63592, 3815, 42874, 60096,
                     50064, 51415, 57682, 27533)),
    "athletes": 1132764,
    "athletes_both_distances": 282183,
}

# The world's own constants. Arrays are indexed by distance (70.3, 140.6, sprint, olympic).
ANON_SHARE = 0.20  # 70.3 finishes published without names
SHORT_SHARE = 0.04  # sprint + olympic rows per modelled row
PRO_SHARE = 0.006
DQ_RATE = 0.003
CORRUPT_RATE = 0.0005
LOST_SHARE = 0.015  # finishes that leave the model frame: pros, over the cutoff, corrupted
SHORT_SCALE = np.array([1.0, 1.0, 0.24, 0.47])  # medians relative to 70.3
CUTOFF = np.array([8.5, 17, 3, 5]) * 3600.0
CUTOFF_DNF = np.array([0.003, 0.010, 0.0, 0.0])  # measured share of starts over the cutoff
# The JSON's sd_log_between_athletes is the sd of athletes' mean residuals, which still holds
# within-athlete and edition noise averaged over few races, so the latent sd is smaller:
# tuned so the model frame's sd of total_sec matches.
BETWEEN_SD = np.array([0.110, 0.096, 0.110, 0.110])
TREND_SD = 0.006  # per-athlete fitness trend, log scale per year
# An athlete's ability at a distance is BETWEEN_SD times a standard normal mix of a shared
# part and a distance-specific part (0.95^2 + 0.31^2 = 0.998: the two distances' abilities
# correlate 0.95^2 / 0.998 = 0.904); a pro's is PRO_ABILITY + PRO_ABILITY_SD times the same
# mix, at the median of age PRO_AGE.
ABILITY_SHARED, ABILITY_SPECIFIC = 0.95, 0.31
PRO_ABILITY, PRO_ABILITY_SD, PRO_AGE = -0.30, 0.04, 32
# The odd bad day: with probability BAD_DAY_P a finish is slower by an exponential term (log
# scale) of mean BAD_DAY_MEAN.
BAD_DAY_P, BAD_DAY_MEAN = 0.04, 0.10
# Near the cutoff: a finish over SQUEEZE_FROM x cutoff is squeezed linearly into
# [SQUEEZE_FROM x cutoff, cutoff - SQUEEZE_MARGIN_SEC]; a start over DNF_OVER x cutoff is a DNF.
SQUEEZE_FROM, DNF_OVER, SQUEEZE_MARGIN_SEC = 0.93, 1.08, 60
DNF_SLOWNESS = 0.8  # DNF odds grow by exp(0.8) per sd of (slow) ability
# Latent scales (log scale) of the course, the race day and a finish's race-to-race noise
# (before the odd bad day), tuned so that the model frame's statistics as
# real_variance_structure.json defines them match it (demo/calibration.py measures them;
# a statistic is a little smaller than its latent scale: a day is measured around its
# course's mean, which holds that day too).
COURSE_SD = np.array([0.063, 0.074, 0.063, 0.063])
DAY_SD = np.array([0.052, 0.056, 0.052, 0.052])
WITHIN_SD = np.array([0.0715, 0.078, 0.0715, 0.0715])
AGE_LOWS = np.array([18, 25, 30, 35, 40, 45, 50, 55, 60, 65, 70])
AGE_WIDTHS = np.array([7, 5, 5, 5, 5, 5, 5, 5, 5, 5, 12])
AGE_MIDS = AGE_LOWS + AGE_WIDTHS / 2 - 0.5

SOURCES = ("ironman.com", "athlinks", "legacy-archive", "results-feed")
STATUS = np.array([["finisher", "dnf", "dq"], ["FIN", "DNF", "DQ"], ["FIN", "DNF", "DQ"],
                   ["finisher", "DNF", "dq"]], object)  # per source: finisher, DNF, DQ
# Age-group labels: standard (ironman.com), gender-prefixed (athlinks), 5-year brackets
# beyond 70 (legacy-archive, results-feed) and '16-19' (legacy-archive), '18-99' age
# unknown (results-feed), pros.
LABELS = np.array([*AGE_GROUPS, *(f"M{g}" for g in AGE_GROUPS), *(f"F{g}" for g in AGE_GROUPS),
                   "16-19", "20-24", "70-74", "75-79", "80+", "18-99", "PRO", "MPRO", "FPRO"],
                  object)
LEGACY_LOWS = np.array([18, 20, 25, 30, 35, 40, 45, 50, 55, 60, 65, 70, 75, 80])
LEGACY_CODES = np.r_[33, 34, 1:10, 35, 36, 37]
UNKNOWN_AGE, PRO_LABEL = 38, 39

COUNTRIES = np.array([
    ("United States", "US", 32), ("United Kingdom", "GB", 7), ("Germany", "DE", 6),
    ("Australia", "AU", 6), ("Canada", "CA", 5), ("Brazil", "BR", 5), ("Mexico", "MX", 4),
    ("France", "FR", 4), ("Spain", "ES", 4), ("Italy", "IT", 3), ("China", "CN", 3),
    ("South Africa", "ZA", 3), ("Japan", "JP", 2), ("Netherlands", "NL", 2), ("Chile", "CL", 1),
    ("Switzerland", "CH", 2), ("Austria", "AT", 2), ("Denmark", "DK", 2), ("Poland", "PL", 1),
    ("New Zealand", "NZ", 2), ("Argentina", "AR", 2), ("Sweden", "SE", 2), ("Ireland", "IE", 1),
    ("Belgium", "BE", 2)], object)
COUNTRY_P = COUNTRIES[:, 2].astype(float) / COUNTRIES[:, 2].sum()
FIRST = [s.split() for s in (
    "James John Robert Michael David William Richard Thomas Daniel Matthew Lukas Jan Pierre "
    "Marco Javier Carlos Hiroshi Wei Liam Noah Ben Sam Tom Felix Max Jonas Pablo Diego Andrew",
    "Mary Patricia Jennifer Linda Sarah Emma Olivia Sophie Anna Laura Julia Marie Chiara Lucia "
    "Carmen Yuki Mei Chloe Grace Ella Hannah Lea Sofia Isabel Kate Lisa Nina Eva Claire")]
LAST = ("Smith Johnson Williams Brown Jones Miller Davis Garcia Rodriguez Wilson Martinez "
        "Anderson Taylor Thomas Moore Martin Lee Walker Hall Young King Wright Lopez Hill Scott "
        "Green Adams Baker Nelson Carter Mueller Schmidt Schneider Fischer Weber Meyer Wagner "
        "Becker Rossi Russo Ferrari Bianchi Dubois Durand Moreau Laurent Tanaka Suzuki Sato "
        "Wang Li Zhang Silva Santos Costa Pereira Jansen Visser Novak Nielsen").split()
NAMES = np.array([f"{f} {s}" for first in FIRST for f in first for s in LAST], object)
PLACES = np.array([f"{p} {b}" for p in
                   "Lake Port Mount Cape Bay Glen North South East West New Fort".split()
                   for b in ("Aria Bellmont Cedar Dunmore Elmwood Fjordby Granite Harbor "
                             "Irisvale Juniper Kestrel Larkspur Marlow Northam Oakridge "
                             "Pinecrest Quarry Riverton Sandpoint Tidewater Umber Valemont "
                             "Willowby Yarrow Zephyr Ashford Brookhaven Coralton").split()], object)
EVENT_TITLE = ("IRONMAN 70.3 {}", "IRONMAN {}", "{} Sprint Triathlon", "5150 {}")


def simulate_world(size: str = "demo", seed: int = 0, truth: bool = False) -> dict[str, pd.DataFrame]:
    """Simulate the world; return frames ``athlete_race``, ``athlete_profile`` and
    ``cluster_assignments`` with the data contract's columns in its order.

    With ``truth`` the dict also holds ``truth``: what the simulator drew for each row of
    ``athlete_race``, in the same order (:data:`TRUTH_COLUMNS`). Only recorded: the draws and
    the three frames are the same either way.
    """
    return _simulate(SIZES[size], seed, truth)


def write_demo_data(out_dir: str | os.PathLike, size: str = "demo",
                    seed: int = 0) -> dict[str, Path]:
    """Simulate the world and write the three input CSVs atomically into ``out_dir``."""
    return {name: write_csv_atomic(frame, Path(out_dir) / f"{name}.csv")
            for name, frame in simulate_world(size, seed).items()}


def _simulate(n_target: int, seed: int, truth: bool = False) -> dict[str, pd.DataFrame]:
    rng = np.random.default_rng(seed)
    ath = _athletes(rng, n_target)
    rows = _starts(rng, ath)
    eds = _editions(rng, rows, n_target)
    _assign_editions(rng, rows, eds)
    _finish_times(rng, rows, ath, eds, truth)
    races = _race_frame(rng, rows, ath, eds)
    profiles = _profiles(rows, ath)
    world = {"athlete_race": races, "athlete_profile": profiles,
             "cluster_assignments": _clusters(profiles)}
    if truth:
        world["truth"] = _truth_frame(rows, ath, eds)
    return world


# The columns of simulate_world's ``truth`` frame, one row per athlete_race row (log scale
# unless said). A start's time is exp(latent + day_effect + noise + bad_day) seconds, then
# squeezed or made a DNF near the cutoff and rounded; the ETL may corrupt it after that.
TRUTH_COLUMNS = {
    "latent": "what is known before the race: log_med + ability + trend_term + course_effect",
    "log_med": "the median of the athlete's gender at the exact age (a pro's at PRO_AGE)",
    "ability": "the athlete's ability at this distance (a pro's includes PRO_ABILITY)",
    "trend_term": "trend x (event_year - center_year)",
    "course_effect": "the course's effect (persistent over its editions)",
    "day_effect": "the edition's race-day effect",
    "noise": "race-to-race noise, sd WITHIN_SD",
    "bad_day": "the bad-day term (0 on most days)",
    "squeezed": "a finish over SQUEEZE_FROM x cutoff, squeezed under the cutoff",
    "over_cutoff": "a finish over DNF_OVER x cutoff, made a DNF",
    "corrupted": "a finish whose total_sec the ETL corrupted (minutes, or a day added)",
    "status": "0 finish, 1 DNF, 2 DQ (whatever the source's spelling)",
    "athlete": "the athlete's internal id (anonymous rows too)",
    "edition": "the edition's internal id",
    "course_debut_season": "the course's first season; missing for courses from the start",
    "center_year": "the season at the centre of the athlete's career",
    "trend": "the athlete's fitness trend, per year",
    "z_shared": "the shared standard normal of ability (ABILITY_SHARED)",
    "z_distance": "the standard normal of ability at this distance (ABILITY_SPECIFIC)",
    "female": "the athlete's gender (the published one may be blank)",
    "age": "the athlete's age in whole years",
    "pro": "the athlete is a pro (the published is_pro may be blank)",
}


def _truth_frame(rows, ath, eds) -> pd.DataFrame:
    """The ``truth`` frame from ``rows`` in athlete_race order (:data:`TRUTH_COLUMNS`)."""
    a, ed = rows["ath"], rows["ed"]
    course, debut = eds["course"][ed], eds["debut_season"][eds["event"][ed]]
    columns = {
        "latent": rows["log_med"] + rows["ability"] + rows["trend_term"] + course,
        "log_med": rows["log_med"], "ability": rows["ability"], "trend_term": rows["trend_term"],
        "course_effect": course, "day_effect": eds["day"][ed], "noise": rows["noise"],
        "bad_day": rows["bad_day"], "squeezed": rows["squeezed"],
        "over_cutoff": rows["over_cutoff"], "corrupted": rows["corrupted"],
        "status": rows["status"], "athlete": a, "edition": ed,
        "course_debut_season": pd.arrays.IntegerArray(YEARS[np.maximum(debut, 0)], debut < 0),
        "center_year": YEARS[ath["center"][a]], "trend": ath["trend"][a],
        "z_shared": rows["z_shared"], "z_distance": rows["z_distance"],
        "female": ath["female"][a], "age": rows["age"], "pro": rows["pro"],
    }
    return pd.DataFrame(columns, copy=False)


def _cal(d: int) -> dict:
    """Calibration of a distance; sprint and olympic borrow the 70.3 numbers."""
    return CALIBRATION[DISTANCES[min(d, 1)]]


def _finish_counts(rng, share, n: int) -> np.ndarray:
    k = rng.choice(np.arange(1, 11), size=n, p=np.asarray(share) / np.sum(share))
    tail = k == 10  # the JSON's "10" means 10 or more
    k[tail] += rng.geometric(0.25, tail.sum()) - 1
    return k


def _athletes(rng, n_target: int) -> dict[str, np.ndarray]:
    """Athletes of five kinds: 70.3 only, 140.6 only, both, short course, anonymous 70.3."""
    c70, c140 = CALIBRATION["70.3"], CALIBRATION["140.6"]
    n_target /= 1 - LOST_SHARE
    mean_k = [np.dot(np.r_[1:10, 13], c["finishes_share"]) for c in (c70, c140)]
    rows70 = n_target * c70["ag_finishers"] / (c70["ag_finishers"] + c140["ag_finishers"])
    a70, a140 = rows70 * (1 - ANON_SHARE) / mean_k[0], (n_target - rows70) / mean_k[1]
    f_both = CALIBRATION["athletes_both_distances"] / CALIBRATION["athletes"]
    both = f_both * (a70 + a140) / (1 + f_both)
    sizes = np.round([a70 - both, a140 - both, both, SHORT_SHARE * n_target / mean_k[0],
                      rows70 * ANON_SHARE]).astype(int)
    kind = np.repeat(np.arange(5), sizes)
    n = len(kind)
    # Athletes racing 140.6 follow its gender and age shares; as "both" athletes race 70.3
    # too, 70.3-only athletes lean the other way so that 70.3 rows match 70.3 shares.
    lean = both * mean_k[0] / rows70 / (1 - ANON_SHARE - both * mean_k[0] / rows70)
    racer140 = (kind == 1) | (kind == 2)
    mix = np.where(racer140, 2, (kind != 0).astype(int))
    female_p = np.array([c70["female_share"], c70["female_share"], c140["female_share"]])
    age_p = np.array([c70["age_share"], c70["age_share"], c140["age_share"]])
    female_p[0] += lean * (female_p[1] - female_p[2])
    age_p[0] = np.clip(age_p[0] + lean * (age_p[1] - age_p[2]), 0, None)
    age_cdf = np.cumsum(age_p / age_p.sum(1, keepdims=True), 1)
    u, grp = rng.random(n), np.empty(n, int)
    for i in range(3):
        grp[mix == i] = np.minimum(np.searchsorted(age_cdf[i], u[mix == i], "right"), 10)
    k70 = np.where((kind == 0) | (kind == 2), _finish_counts(rng, c70["finishes_share"], n), 0)
    k70[kind == 4] = 1
    k140 = np.where((kind == 1) | (kind == 2), _finish_counts(rng, c140["finishes_share"], n), 0)
    kshort = np.where(kind == 3, _finish_counts(rng, c70["finishes_share"], n), 0)
    ksprint = rng.binomial(kshort, 0.5)
    span = np.minimum(rng.poisson(0.7 * (k70 + k140 + kshort - 1)), 14)
    year_cdf = np.cumsum(_year_weights()[:2], 1)
    year_cdf /= year_cdf[:, -1:]
    u, center = rng.random(n), np.empty(n, np.int64)
    for i, m in enumerate((~racer140, racer140)):  # careers centre on their distance's years
        center[m] = np.searchsorted(year_cdf[i], u[m], "right")
    lo = np.clip(center - span // 2, 0, None)
    named = n - sizes[4]
    return dict(
        kind=kind, female=rng.random(n) < female_p[mix],
        ref_age=AGE_LOWS[grp] + rng.random(n) * AGE_WIDTHS[grp], center=center, lo=lo,
        hi=np.minimum(lo + span, len(YEARS) - 1),
        k=np.stack([k70, k140, ksprint, kshort - ksprint]),
        z=rng.standard_normal(n), z_dist=rng.standard_normal((n, 4)),
        trend=rng.normal(0, TREND_SD, n), tilt=rng.standard_normal((n, 3)),
        pro=(kind <= 2) & (rng.random(n) < PRO_SHARE),
        country=rng.choice(len(COUNTRIES), size=n, p=COUNTRY_P),
        name=rng.integers(0, len(FIRST[0]) * len(LAST), n),
        hash=np.r_[_hex(np.sort(rng.choice(2**48, size=named, replace=False))),
                   np.full(n - named, None, object)],
    )


def _hex(values: np.ndarray) -> np.ndarray:
    """12-digit lowercase hex strings of integers below 2**48, vectorised."""
    digits = np.frombuffer(b"0123456789abcdef", np.uint8)
    chars = np.empty((len(values), 12), np.uint8)
    for i in range(12):
        chars[:, i] = digits[(values >> (44 - 4 * i)) & 15]
    return chars.view("S12").ravel().astype("U12").astype(object)


def _year_weights() -> np.ndarray:
    w = np.zeros((len(DISTANCES), len(YEARS)))
    for d in range(len(DISTANCES)):
        w[d, _cal(d)["first_year"] - YEARS[0]:] = _cal(d)["year_counts"]
    return w


def _starts(rng, ath) -> dict[str, np.ndarray]:
    """One row per start: the athlete's finishes plus extra DNF and DQ starts, in years of
    the athlete's window drawn with the real year counts (few races in 2020)."""
    idx = np.arange(len(ath["kind"]), dtype=np.int32)
    slow = np.exp(DNF_SLOWNESS * ath["z"] - DNF_SLOWNESS**2 / 2)
    parts = []
    for d, k in enumerate(ath["k"]):
        dnf = (_cal(d)["dnf_share"] - CUTOFF_DNF[d]) / (1 - _cal(d)["dnf_share"])
        for status, n in enumerate((k, rng.poisson(k * dnf * slow), rng.poisson(k * DQ_RATE))):
            parts.append((np.repeat(idx, n), d, status))
    a = np.concatenate([p[0] for p in parts])
    dist = np.concatenate([np.full(len(p[0]), p[1], np.int8) for p in parts])
    status = np.concatenate([np.full(len(p[0]), p[2], np.int8) for p in parts])
    cdf = np.cumsum(_year_weights(), 1)
    cdf /= cdf[:, -1:]
    lo = np.maximum(ath["lo"][a], (cdf > 0).argmax(1)[dist])
    hi = np.maximum(ath["hi"][a], lo)
    below = np.where(lo > 0, cdf[dist, np.maximum(lo - 1, 0)], 0.0)
    u = below + rng.random(len(a)) * (cdf[dist, hi] - below)
    year = np.empty(len(a), np.int64)
    for d in range(len(DISTANCES)):
        year[dist == d] = np.searchsorted(cdf[d], u[dist == d], "right")
    year = np.clip(year, lo, hi)
    age = np.floor(ath["ref_age"][a] + year - ath["center"][a]).astype(np.int64)
    return dict(ath=a, dist=dist, status=status, year=year, age=np.maximum(age, 18),
                anon=ath["kind"][a] == 4, pro=ath["pro"][a])


def _group(rows) -> np.ndarray:
    return (rows["dist"].astype(np.int64) * len(YEARS) + rows["year"]) * 2 + rows["anon"]


def _editions(rng, rows, n_target: int) -> dict[str, np.ndarray]:
    """Editions per (distance, year, named or anonymous source), drawn from a pool of events
    and sized like real ones (smaller in small worlds, so that each year has several)."""
    c70, c140 = CALIBRATION["70.3"], CALIBRATION["140.6"]
    scale = n_target / (c70["ag_finishers"] + c140["ag_finishers"])
    per_ed = np.array([c70["per_edition"], c140["per_edition"], 300.0, 300.0])
    # editions as many as in real data at any world size: bigger worlds have bigger fields
    per_ed = np.maximum(per_ed * scale, [150.0, 150.0, 75.0, 75.0])
    ny, n_groups = len(YEARS), len(DISTANCES) * len(YEARS) * 2
    counts = np.bincount(_group(rows), minlength=n_groups).reshape(-1, ny, 2)
    n_ed = np.where(counts > 0, np.maximum(1, np.round(counts / per_ed[:, None, None])), 0)
    name, location, course, debut_seasons, parts = [], [], [], [], []
    for d in range(len(DISTANCES)):
        per_year = n_ed[d].sum(1).astype(np.int64)
        # New courses: a share of each later season's editions are debuts of courses never run
        # before, and debuts keep the pool ahead of the season's editions as the sport grows.
        # Without a share (140.6) every course exists from the first season, as in real data.
        share = _cal(d).get("new_course_share", 0.0) if d < 2 else 0.0
        active = np.flatnonzero(per_year > 0)
        debuts = np.zeros(ny, dtype=int)
        if share > 0 and len(active) > 1:
            k0 = int(per_year[active[0]] * 1.5) + 3
            available = k0
            for y in active[1:]:
                debuts[y] = max(rng.binomial(per_year[y], share), int(np.ceil(per_year[y] * 1.15)) - available)
                available += debuts[y]
        else:
            k0 = int(per_year.max() * 1.7) + 3  # real: 79 courses at 140.6, 38 editions in 2025
        debuts = np.minimum(debuts, np.maximum(len(PLACES) - k0 - np.r_[0, np.cumsum(debuts)[:-1]], 0))
        pool = rng.permutation(len(PLACES))[:min(len(PLACES), k0 + int(debuts.sum()))]
        debut_year = np.r_[np.full(len(pool) - debuts.sum(), -1), np.repeat(np.arange(ny), debuts)]
        country = rng.choice(len(COUNTRIES), size=len(pool), p=COUNTRY_P)
        popularity = rng.gamma(4.0, size=len(pool))
        first_event = len(name)
        name += [EVENT_TITLE[d].format(PLACES[i]) for i in pool]
        location += [f"{PLACES[i]}, {COUNTRIES[c, 0]}" for i, c in zip(pool, country)]
        course.append(_exact_sd(rng.standard_normal(len(pool)), COURSE_SD[d]))
        debut_seasons.append(debut_year)
        for y in range(ny):
            wanted = int(n_ed[d, y, 0] + n_ed[d, y, 1])
            new = np.flatnonzero(debut_year == y)[:wanted]  # a debut runs in its first season
            old = np.flatnonzero(debut_year < y)
            k = min(wanted - len(new), len(old))
            weights = popularity[old] / popularity[old].sum()
            chosen = np.r_[new, rng.choice(old, k, replace=False, p=weights)] if k > 0 else new
            chosen = rng.permutation(chosen)
            n_named = min(int(n_ed[d, y, 0]), len(chosen))
            u = rng.random(len(chosen))
            if d >= 2:
                src = np.where(u < 0.3, 1, 0)
            else:  # the legacy archive holds a third of the editions before 2012
                src = np.where(u < (0.35 if YEARS[y] < 2012 else 0), 2, np.where(u > 0.92, 1, 0))
                src[n_named:] = 3
            parts.append(((d * ny + y) * 2 + (np.arange(len(chosen)) >= n_named),
                          chosen + first_event, src))
    group, event, source = (np.concatenate([p[i] for p in parts]) for i in range(3))
    day = np.empty(len(group))
    for d in range(len(DISTANCES)):
        m = group // (2 * ny) == d
        day[m] = _exact_sd(rng.standard_normal(m.sum()), DAY_SD[d])
    course = np.concatenate(course)[event]
    return dict(event=event, source=source, effect=course + day, course=course, day=day,
                debut_season=np.concatenate(debut_seasons),  # per event; -1: from the start
                weight=rng.gamma(2.0, size=len(group)), n=len(group),
                start=np.searchsorted(group, np.arange(n_groups)),
                size=np.bincount(group, minlength=n_groups),
                name=np.array(name, object), location=np.array(location, object))


def _exact_sd(x: np.ndarray, sd: float) -> np.ndarray:
    """Centre and scale a small sample of effects, so that a few events cannot shift the world."""
    return (x - x.mean()) / max(x.std(), 1e-12) * sd if len(x) > 1 else 0 * x


def _assign_editions(rng, rows, eds) -> None:
    """Each start picks an edition of its (distance, year, source kind), bigger ones more often.
    An athlete in one edition twice is moved to the next edition; if that fails, dropped."""
    g = _group(rows)
    cw = np.cumsum(eds["weight"])
    start, size = eds["start"][g], eds["size"][g]
    below = np.where(start > 0, cw[np.maximum(start - 1, 0)], 0.0)
    t = below + rng.random(len(g)) * (cw[start + size - 1] - below)
    ed = np.clip(np.searchsorted(cw, t, "right"), start, start + size - 1)
    for attempt in range(4):
        key = np.where(rows["anon"], -1 - np.arange(len(g)), rows["ath"] * np.int64(eds["n"]) + ed)
        order = np.argsort(key, kind="stable")
        dup = np.zeros(len(g), bool)
        dup[order[1:]] = key[order[1:]] == key[order[:-1]]
        if attempt == 3 or not dup.any():
            break
        ed[dup] = start[dup] + (ed[dup] - start[dup] + 1) % size[dup]
    rows["ed"] = ed
    for name, values in rows.items():
        rows[name] = values[~dup]


def _finish_times(rng, rows, ath, eds, truth: bool = False) -> None:
    """Time of each start in seconds; finishes near the cutoff are squeezed under it and
    finishes far over it become DNFs. With ``truth`` the terms of each time are kept in
    ``rows`` too (see :func:`_truth_frame`); the draws are the same."""
    a, d, n = rows["ath"], rows["dist"], len(rows["ath"])
    female = ath["female"][a]
    age = np.where(rows["pro"], PRO_AGE, rows["age"])
    log_med = np.empty(n)
    for dd in range(len(DISTANCES)):
        for g, med in enumerate((_cal(dd)["median_m"], _cal(dd)["median_f"])):
            m = (d == dd) & (female == g)
            log_med[m] = np.interp(age[m], AGE_MIDS, np.log(np.array(med) * SHORT_SCALE[dd]))
    # ability, a little distance-specific
    z = ABILITY_SHARED * ath["z"][a] + ABILITY_SPECIFIC * ath["z_dist"][a, d]
    ability = np.where(rows["pro"], PRO_ABILITY + PRO_ABILITY_SD * z, BETWEEN_SD[d] * z)
    sd_within = WITHIN_SD[d]
    bad_day = (rng.random(n) < BAD_DAY_P) * rng.exponential(BAD_DAY_MEAN, n)
    # the terms are added in the order they always were (the world depends on the rounding)
    trend_term = ath["trend"][a] * (rows["year"] - ath["center"][a])
    noise = sd_within * rng.standard_normal(n)
    t = np.exp(log_med + ability + trend_term + eds["effect"][rows["ed"]] + noise + bad_day)
    cut = CUTOFF[d]
    soft, hard = SQUEEZE_FROM * cut, DNF_OVER * cut
    fin = rows["status"] == 0
    over = fin & (t > hard)
    rows["status"][over] = 1
    squeeze = fin & (t > soft) & (t <= hard)
    t[squeeze] = (soft + (t - soft) * (cut - SQUEEZE_MARGIN_SEC - soft) / (hard - soft))[squeeze]
    rows["time"] = np.round(t)
    if truth:  # recorded per row; _race_frame reorders them with the rest
        rows.update(log_med=log_med, ability=ability, trend_term=trend_term, noise=noise,
                    bad_day=bad_day, squeezed=squeeze, over_cutoff=over,
                    z_shared=ath["z"][a], z_distance=ath["z_dist"][a, d])


def _split_base() -> np.ndarray:
    """Median swim, t1, bike, t2, run per distance; transitions take what the medians leave."""
    base = np.empty((len(DISTANCES), 5))
    for d in range(2):
        swim, bike, run = _cal(d)["split_median"]
        gap = _cal(d)["p50"] - swim - bike - run
        base[d] = swim, 0.58 * gap, bike, 0.42 * gap, run
    base[2] = np.array([0.14, 0.04, 0.46, 0.03, 0.33]) * base[0].sum() * SHORT_SCALE[2]
    base[3] = base[0] * SHORT_SCALE[3]
    return base


def _splits(rng, rows, ath) -> np.ndarray:
    """Swim/t1/bike/t2/run seconds. Discipline strengths tilt the shares; slow athletes lose
    most on the run; DNFs stop in the swim, bike or run; a few splits are missing."""
    d, n, status = rows["dist"], len(rows["dist"]), rows["status"]
    base = _split_base()
    p = np.log(base[d])
    p[:, [0, 2, 4]] += 0.08 * ath["tilt"][rows["ath"]]
    p += rng.normal(0, [0.04, 0.15, 0.04, 0.15, 0.04], (n, 5))
    p[:, 4] += 0.5 * np.log(rows["time"] / base[d].sum(1))
    np.exp(p, out=p)
    p *= (rows["time"] / p.sum(1))[:, None]
    splits = np.round(p, out=p)
    splits[:, 2] += rows["time"] - splits.sum(1)  # the splits add up to the time
    rows["clean_total"] = np.where(status == 0, rows["time"], np.nan)
    missing = np.array([[_cal(i)["split_missing"][j] for j in (0, 0, 1, 1, 2)]
                        for i in range(len(DISTANCES))]) * [1, 0.3, 1, 2, 1]
    miss = rng.random((n, 5)) < missing[d]
    stage = rng.choice([0, 2, 4], size=n, p=[0.1, 0.45, 0.45])
    miss |= (status == 1)[:, None] & (np.arange(5) >= stage[:, None])
    splits[miss] = np.nan
    return splits


def _rank_within(key, value, valid) -> tuple[np.ndarray, np.ndarray]:
    """1-based rank of ``value`` among valid rows with the same ``key`` and that group's size;
    0 for rows that are not valid."""
    idx = np.flatnonzero(valid)
    order = idx[np.lexsort((value[idx], key[idx]))]
    k = key[order]
    new = np.r_[True, k[1:] != k[:-1]]
    starts = np.flatnonzero(new)
    grp = np.cumsum(new) - 1
    rank, size = np.zeros(len(key), np.int64), np.zeros(len(key), np.int64)
    rank[order] = np.arange(len(order)) - starts[grp] + 1
    size[order] = np.diff(np.r_[starts, len(order)])[grp]
    return rank, size


def _age_group_codes(rng, src, female, pro, age) -> np.ndarray:
    """Index into LABELS: each source writes the athlete's age group its own way."""
    code = np.clip(np.searchsorted(AGE_LOWS, age, "right") - 1, 0, 10)
    code = np.where(src == 1, code + 11 * (1 + female), code)
    legacy = (src == 2) | ((src == 3) & (age >= 70))
    code = np.where(legacy, LEGACY_CODES[np.searchsorted(LEGACY_LOWS, age, "right") - 1], code)
    code[(src == 3) & (rng.random(len(src)) < 0.05)] = UNKNOWN_AGE
    code[pro] = np.where(src[pro] == 1, PRO_LABEL + 1 + female[pro], PRO_LABEL)
    return code


def _race_frame(rng, rows, ath, eds) -> pd.DataFrame:
    """The athlete_race frame, ordered by year, edition and finishing position."""
    order = np.lexsort((rows["time"], rows["status"], rows["ed"], rows["year"]))
    for name, values in rows.items():
        rows[name] = values[order]
    a, d, n, ed, status = rows["ath"], rows["dist"], len(rows["ath"]), rows["ed"], rows["status"]
    src, female, pro = eds["source"][ed], ath["female"][a], rows["pro"]
    splits = rows["splits"] = _splits(rng, rows, ath)
    code = _age_group_codes(rng, src, female, pro, rows["age"])
    band = np.array(["18-29", "30-39", "40-49", "50-59", "60-69", "70+"], object)
    gender = np.where(female, "F", "M").astype(object)
    gender[rng.random(n) < np.where(src == 3, 0.04, 0.005)] = None
    is_pro = pro.astype(object)
    is_pro[src == 2] = np.where(pro, "True", "False")[src == 2]  # this source writes strings
    is_pro[(src == 3) | (~pro & (rng.random(n) < 0.02))] = None

    fin, time = status == 0, rows["time"]
    overall, _ = _rank_within(ed, time, fin)
    gender_rank, _ = _rank_within(ed * 2 + female, time, fin & (gender != None))  # noqa: E711
    ag_rank, _ = _rank_within(ed * 64 + code, time, fin)
    div_rank, div_size = _rank_within((ed * 2 + female) * 64 + code, time, fin)
    total = rows["clean_total"]
    swim, t1, bike, t2, run = splits.T
    base = _split_base()
    with np.errstate(invalid="ignore", divide="ignore"):
        rows["fade"] = (run / bike) / (base[d, 4] / base[d, 2])
        derived = {
            "swim_pct": 100 * swim / total, "bike_pct": 100 * bike / total,
            "run_pct": 100 * run / total, "transition_pct": 100 * (t1 + t2) / total,
            "bike_run_ratio": bike / run, "fade_ratio": rows["fade"],
            "implied_bike_if": np.clip(0.72 - 0.1 * np.log(bike / base[d, 2])
                                       + rng.normal(0, 0.03, n), 0.5, 0.98),
            "cohort_percentile": np.where(fin, 100 - 100 * (div_rank - 1) / div_size, np.nan),
        }
    bad = np.flatnonzero(fin & (rng.random(n) < CORRUPT_RATE))  # minutes for seconds, +1 day
    rows["corrupted"] = np.zeros(n, bool)
    rows["corrupted"][bad] = True
    rows["total"] = total.copy()
    rows["total"][bad] = np.where(rng.random(len(bad)) < 0.5, np.round(total[bad] / 60, 1),
                                  total[bad] + 86400)
    country = COUNTRIES[ath["country"][a]]
    event = eds["event"][ed]
    columns = {
        "athlete_hash": ath["hash"][a],
        "athlete_name": np.where(rows["anon"], None,
                                 NAMES[female * NAMES.size // 2 + ath["name"][a]]),
        "gender": gender, "age_group": LABELS[code],
        "age_band": np.where(code == UNKNOWN_AGE, None,
                             band[np.clip(rows["age"] // 10 - 2, 0, 5)]),
        "country": country[:, 0], "country_iso2": country[:, 1], "is_pro": is_pro,
        "event_name": eds["name"][event], "event_year": YEARS[rows["year"]],
        "event_location": eds["location"][event],
        "event_distance": np.array(DISTANCES, object)[d], "source": np.array(SOURCES, object)[src],
        "swim_sec": swim, "t1_sec": t1, "bike_sec": bike, "t2_sec": t2, "run_sec": run,
        "total_sec": rows["total"],
        **{col: pd.arrays.IntegerArray(r, r == 0) for col, r in (
            ("overall_rank", overall), ("gender_rank", gender_rank),
            ("age_group_rank", ag_rank), ("division_rank", div_rank))},
        "finish_status": STATUS[src, status],
        **{col: np.round(v, 3 if col in ("bike_run_ratio", "fade_ratio", "implied_bike_if") else 2)
           for col, v in derived.items()},
    }
    return pd.DataFrame(columns, columns=RACE_COLUMNS, copy=False)


def _profiles(rows, ath) -> pd.DataFrame:
    """One row per named athlete with the data contract's definitions: total_races counts
    results (rows with a total_sec), pb_total_sec is their minimum over all distances,
    consistency_cv their std/mean (ddof 1), improvement_slope the OLS slope on event_year."""
    named = ~rows["anon"]
    a, d, total = rows["ath"][named], rows["dist"][named], rows["total"][named]
    splits, year = rows["splits"][named], YEARS[rows["year"][named]].astype(float)
    shares = splits[:, [0, 2, 4]] / rows["clean_total"][named][:, None]
    strength = np.full_like(shares, np.nan)  # discipline share, standardised per distance
    for dd in range(len(DISTANCES)):
        m = d == dd
        strength[m] = -(shares[m] - np.nanmean(shares[m], 0)) / np.nanstd(shares[m], 0)
    fin = ~np.isnan(total)
    x, y = (year - 2014) * fin, np.nan_to_num(total)
    g = pd.DataFrame({
        "a": a, "total": total, "x": x, "y": y, "xy": x * y, "xx": x * x,
        "swim": splits[:, 0], "bike": splits[:, 2], "run": splits[:, 4],
        "zs": strength[:, 0], "zb": strength[:, 1], "zr": strength[:, 2],
        "fade": rows["fade"][named], "year": year, "fin_year": np.where(fin, year, np.nan),
        "dnf": rows["status"][named] == 1,
    }).groupby("a", sort=True).agg(
        n=("total", "count"), pb=("total", "min"), mean=("total", "mean"), std=("total", "std"),
        sx=("x", "sum"), sy=("y", "sum"), sxy=("xy", "sum"), sxx=("xx", "sum"),
        pb_swim=("swim", "min"), pb_bike=("bike", "min"), pb_run=("run", "min"),
        zs=("zs", "mean"), zb=("zb", "mean"), zr=("zr", "mean"), fade=("fade", "mean"),
        first=("year", "min"), last=("year", "max"), fin_first=("fin_year", "min"),
        fin_last=("fin_year", "max"), starts=("a", "size"), dnf=("dnf", "sum"))
    ids, n = g.index.to_numpy(), g["n"].to_numpy()
    with np.errstate(invalid="ignore", divide="ignore"):
        slope = (g["sxy"] - g["sx"] * g["sy"] / n) / (g["sxx"] - g["sx"] ** 2 / n)
    z = g[["zs", "zb", "zr"]].to_numpy()
    dominant = np.array(["swim", "bike", "run"], object)[np.argmax(np.nan_to_num(z, nan=-9), 1)]
    dominant[np.isnan(z).all(1)] = None
    female = ath["female"][ids]
    return pd.DataFrame({
        "athlete_hash": ath["hash"][ids],
        "athlete_name": NAMES[female * NAMES.size // 2 + ath["name"][ids]],
        "gender": np.where(female, "F", "M"), "country": COUNTRIES[ath["country"][ids], 0],
        "total_races": n, "years_active": (g["last"] - g["first"] + 1).astype(int),
        "distances_raced": sum(np.bincount(a[d == dd], minlength=len(ath["kind"]))[ids] > 0
                               for dd in range(len(DISTANCES))),
        "pb_swim_sec": g["pb_swim"], "pb_bike_sec": g["pb_bike"], "pb_run_sec": g["pb_run"],
        "pb_total_sec": g["pb"], "first_race_year": g["first"].astype(int),
        "latest_race_year": g["last"].astype(int),
        "improvement_slope": slope.where(g["fin_last"] > g["fin_first"]).round(2),
        "consistency_cv": (g["std"] / g["mean"]).where(n >= 2).round(6),
        "swim_strength_z": z[:, 0].round(3), "bike_strength_z": z[:, 1].round(3),
        "run_strength_z": z[:, 2].round(3), "dominant_discipline": dominant,
        "dnf_count": g["dnf"].astype(int), "dnf_rate": (g["dnf"] / g["starts"]).round(4),
        "mean_fade": g["fade"].round(3),
    }, columns=PROFILE_COLUMNS).reset_index(drop=True)


def _clusters(profiles: pd.DataFrame) -> pd.DataFrame:
    """KMeans over standardised profiles of athletes with 3+ results; ids ordered by pb."""
    keep = (profiles["total_races"] >= 3).to_numpy()
    p = profiles[keep]
    feats = np.column_stack([
        np.log1p(p["total_races"]), np.log(p["pb_total_sec"]),
        *(p[c] for c in ("consistency_cv", "improvement_slope", "swim_strength_z",
                         "bike_strength_z", "run_strength_z", "dnf_rate", "mean_fade"))])
    if len(feats) < 8:
        return pd.DataFrame({c: pd.Series(dtype="int64" if c == "cluster_id" else "str")
                             for c in CLUSTER_COLUMNS})
    with np.errstate(invalid="ignore", divide="ignore"):
        feats = np.clip(np.nan_to_num((feats - np.nanmean(feats, 0)) / np.nanstd(feats, 0)), -4, 4)
    km = KMeans(n_clusters=8, n_init=2, random_state=0).fit(feats)
    relabel = np.argsort(np.argsort(km.cluster_centers_[:, 1]))
    return pd.DataFrame({"athlete_hash": p["athlete_hash"].to_numpy(),
                         "cluster_id": relabel[km.labels_]}, columns=CLUSTER_COLUMNS)
