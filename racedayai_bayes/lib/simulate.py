"""A synthetic world of triathlon results that makes the demo data (the three input CSVs).

The world, not the model: athletes have a gender, an age that grows year by year and a latent
ability (log scale). Each races a number of 70.3 and/or 140.6 editions (some both distances)
in a window of years; an edition is one event in one year, with a persistent course
difficulty and a day effect. A finish time is the gender/age median (interpolated over age)
times exp(ability + fitness trend + course + day + race-to-race noise, with the odd bad day).
Slow athletes drop out more often; times near the course cutoff are squeezed under it, and
starts far over it become DNFs. Pros race faster. Editions come from four sources that
format age groups, statuses and is_pro differently; one source publishes 70.3 results
without names (empty athlete_hash). Short-course athletes race sprint/olympic only. A few
total times are corrupted by the upstream ETL (minutes for seconds, a day added).

Profiles are derived from the simulated rows with the data contract's definitions and
clusters by KMeans over profiles of athletes with 3+ results. Numbers come from
real_results_summary.json (``CALIBRATION``); the world's own constants are tuned so that the
seed's model frame matches its per-distance statistics.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.cluster import KMeans

from racedayai_bayes.lib.io import write_csv_atomic

SIZES = {"demo": 100_000, "full": 3_700_000}

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

AGE_GROUPS = ("18-24", "25-29", "30-34", "35-39", "40-44", "45-49", "50-54", "55-59",
              "60-64", "65-69", "70+")
DISTANCES = ("70.3", "140.6", "sprint", "olympic")
YEARS = np.arange(2002, 2027)

# From /work/shared/calibration/real_results_summary.json; per-age tuples follow AGE_GROUPS,
# finishes_share is for 1..9 and 10+ finishes, year_counts start at first_year.
CALIBRATION = {
    "70.3": dict(
        ag_finishers=1741083, dnf_share=0.0584, mean=21584.4, sd=3339.1, p50=21248.0,
        female_share=0.2387,
        age_share=(.0474, .115, .1592, .174, .1748, .1404, .0977, .0542, .025, .0089, .0034),
        median_m=(20365, 20399, 20381, 20499, 20720, 20981, 21363, 21875, 22616, 23514, 25386),
        median_f=(22134, 22042, 22132, 22318, 22566, 22896, 23332, 23803, 24642, 25685, 27145),
        split_median=(2334.0, 10707.0, 7520.0), split_missing=(.0362, .0053, .0009),
        sd_edition=.0763, sd_within=.0638, sd_between=.1232,
        finishes_share=(.5964, .1859, .0852, .0456, .0273, .0175, .0116, .0077, .0057, .0172),
        first_year=2004,
        year_counts=(1844, 4022, 7725, 8589, 12086, 20954, 36444, 45082, 61928, 68672, 85011,
                     110421, 118146, 127391, 130387, 150034, 10567, 87386, 126317, 125845,
                     146860, 156077, 99295),
        per_edition=1280.2),
    "140.6": dict(
        ag_finishers=1008541, dnf_share=0.0972, mean=45434.7, sd=6731.1, p50=45000.0,
        female_share=0.1856,
        age_share=(.0289, .0882, .1491, .1763, .1959, .1608, .1128, .0552, .0232, .0071, .0025),
        median_m=(43891, 42853, 42628, 42989, 43886, 44816, 46120, 47710, 49499, 51250, 54670),
        median_f=(46649, 46000, 46244, 46929, 47811, 48717, 49900, 50970, 52867, 55304, 56867),
        split_median=(4563.0, 22336.0, 16954.0), split_missing=(.0216, .0047, .0027),
        sd_edition=.0824, sd_within=.069, sd_between=.1166,
        finishes_share=(.6209, .1791, .0787, .0414, .0246, .0154, .0105, .007, .0049, .0174),
        first_year=2002,
        year_counts=(5060, 9869, 9133, 16961, 21047, 27399, 30001, 31055, 36729, 40725, 50073,
                     53643, 64361, 63842, 63758, 63128, 64686, 63592, 3815, 42874, 60096,
                     50064, 51415, 57682, 27533),
        per_edition=1503.0),
    "athletes": 1132764,
    "athletes_both_distances": 282183,
}

# The world's own constants (not in the JSON).
ANON_SHARE = 0.20  # share of 70.3 finishes published without names
SHORT_SHARE = 0.04  # sprint + olympic rows per modelled row
PRO_SHARE = 0.006
DQ_RATE = 0.003
CORRUPT_RATE = 0.0005
CUTOFF = np.array([30600.0, 61200.0, 3 * 3600.0, 5 * 3600.0])  # 8.5h, 17h, sprint, olympic
SHORT_SCALE = np.array([1.0, 1.0, 0.24, 0.47])  # short-course medians relative to 70.3
# JSON sd_log_between_athletes is the sd of athletes' mean residuals, which still holds
# averaged-over-few-races within-athlete and edition noise: the latent sd is smaller.
# LEVEL and BETWEEN_SD are tuned so the model frame's mean and sd of total_sec match.
BETWEEN_SD = np.array([0.103, 0.110, 0.103, 0.103])
LEVEL = np.array([0.0, 0.0, 0.0, 0.0])
TREND_SD = 0.006  # per-athlete fitness trend, log scale per year
DNF_SLOWNESS = 0.8  # DNF odds grow by exp(0.8) per sd of slowness
AGE_MIDS = np.array([21, 27, 32, 37, 42, 47, 52, 57, 62, 67, 73.0])
AGE_LOWS = np.array([18, 25, 30, 35, 40, 45, 50, 55, 60, 65, 70])
AGE_WIDTHS = np.array([7, 5, 5, 5, 5, 5, 5, 5, 5, 5, 8])
LEGACY_LOWS = np.array([18, 20, 25, 30, 35, 40, 45, 50, 55, 60, 65, 70, 75, 80])
LEGACY_LABELS = np.array(["16-19", "20-24", *AGE_GROUPS[1:10], "70-74", "75-79", "80+"], object)
SOURCES = ("ironman.com", "athlinks", "legacy-archive", "results-feed")
STATUS = np.array([["finisher", "dnf", "dq"], ["FIN", "DNF", "DQ"], ["FIN", "DNF", "DQ"],
                   ["finisher", "DNF", "dq"]], object)
COUNTRIES = [("United States", "US", 32), ("United Kingdom", "GB", 7), ("Germany", "DE", 6),
             ("Australia", "AU", 6), ("Canada", "CA", 5), ("Brazil", "BR", 5), ("Mexico", "MX", 4),
             ("France", "FR", 4), ("Spain", "ES", 4), ("Italy", "IT", 3), ("China", "CN", 3),
             ("South Africa", "ZA", 3), ("Japan", "JP", 2), ("Netherlands", "NL", 2),
             ("Switzerland", "CH", 2), ("Austria", "AT", 2), ("Denmark", "DK", 2),
             ("New Zealand", "NZ", 2), ("Argentina", "AR", 2), ("Sweden", "SE", 2),
             ("Belgium", "BE", 2), ("Ireland", "IE", 1), ("Poland", "PL", 1), ("Chile", "CL", 1)]
FIRST_M = "James John Robert Michael David William Richard Thomas Daniel Matthew Lukas Jan Pierre Marco Javier Carlos Hiroshi Wei Liam Noah Ben Sam Tom Felix Max Jonas Pablo Diego Andrew Peter".split()
FIRST_F = "Mary Patricia Jennifer Linda Sarah Emma Olivia Sophie Anna Laura Julia Marie Chiara Lucia Carmen Yuki Mei Chloe Grace Ella Hannah Lea Sofia Isabel Kate Lisa Nina Eva Claire Amy".split()
LAST = "Smith Johnson Williams Brown Jones Miller Davis Garcia Rodriguez Wilson Martinez Anderson Taylor Thomas Moore Martin Lee Walker Hall Young King Wright Lopez Hill Scott Green Adams Baker Nelson Carter Mueller Schmidt Schneider Fischer Weber Meyer Wagner Becker Rossi Russo Ferrari Bianchi Dubois Durand Moreau Laurent Tanaka Suzuki Sato Wang Li Zhang Silva Santos Costa Pereira Jansen Visser Novak Nielsen".split()
PLACE_PREFIX = "Lake Port Mount Cape Bay Glen North South East West New Fort Saint Grand Little Upper".split()
PLACE_BASE = "Aria Bellmont Cedar Dunmore Elmwood Fjordby Granite Harbor Irisvale Juniper Kestrel Larkspur Marlow Northam Oakridge Pinecrest Quarry Riverton Sandpoint Tidewater".split()


def simulate_world(size: str = "demo", seed: int = 0) -> dict[str, pd.DataFrame]:
    """Simulate the world and return the three input frames with the contract's columns."""
    return _simulate(SIZES[size], seed)


def write_demo_data(out_dir: str | os.PathLike, size: str = "demo", seed: int = 0) -> dict[str, Path]:
    """Simulate the world and write the three input CSVs atomically into ``out_dir``."""
    frames = simulate_world(size, seed)
    return {name: write_csv_atomic(frame, Path(out_dir) / f"{name}.csv")
            for name, frame in frames.items()}


def _simulate(n_target: int, seed: int) -> dict[str, pd.DataFrame]:
    rng = np.random.default_rng(seed)
    ath = _athletes(rng, n_target)
    rows = _starts(rng, ath)
    eds = _editions(rng, rows, n_target)
    _assign_editions(rng, rows, eds)
    _finish_times(rng, rows, ath, eds)
    races = _race_frame(rng, rows, ath, eds)
    profiles, feats = _profiles(rows, ath)
    return {"athlete_race": races, "athlete_profile": profiles,
            "cluster_assignments": _clusters(profiles, feats)}


def _finish_counts(rng, share, n) -> np.ndarray:
    k = rng.choice(np.arange(1, 11), size=n, p=np.asarray(share) / np.sum(share))
    tail = k == 10  # the JSON's "10" means 10 or more
    k[tail] += rng.geometric(0.25, tail.sum()) - 1
    return k


def _athletes(rng, n_target: int) -> dict[str, np.ndarray]:
    """Athletes of five kinds: 70.3 only, 140.6 only, both, short course, anonymous 70.3."""
    c70, c140 = CALIBRATION["70.3"], CALIBRATION["140.6"]
    mean_k = [np.dot(np.r_[1:10, 13], c["finishes_share"]) for c in (c70, c140)]
    rows70 = n_target * c70["ag_finishers"] / (c70["ag_finishers"] + c140["ag_finishers"])
    a70, a140 = rows70 * (1 - ANON_SHARE) / mean_k[0], (n_target - rows70) / mean_k[1]
    f_both = CALIBRATION["athletes_both_distances"] / CALIBRATION["athletes"]
    both = f_both * (a70 + a140) / (1 + f_both)
    sizes = np.round([a70 - both, a140 - both, both, SHORT_SHARE * n_target / mean_k[0],
                      rows70 * ANON_SHARE]).astype(int)
    kind = np.repeat(np.arange(5), sizes)
    n = len(kind)
    # 70.3 rows of "both" athletes follow 140.6 shares; 70.3-only athletes make up for it.
    w = both * mean_k[0] / rows70
    fix = w / (1 - ANON_SHARE - w)
    female_p = np.where((kind == 1) | (kind == 2), c140["female_share"], c70["female_share"])
    female_p[kind == 0] += fix * (c70["female_share"] - c140["female_share"])
    age_p = np.array([c70["age_share"], c70["age_share"], c140["age_share"]])
    age_p[0] = np.clip(age_p[0] + fix * (age_p[0] - age_p[2]), 0, None)
    age_p /= age_p.sum(1, keepdims=True)
    which = np.where((kind == 1) | (kind == 2), 2, (kind != 0).astype(int))
    u, grp = rng.random(n), np.empty(n, int)
    for i, cdf in enumerate(np.cumsum(age_p, 1)):
        grp[which == i] = np.minimum(np.searchsorted(cdf, u[which == i], "right"), 10)
    k70 = np.where(np.isin(kind, (0, 2)), _finish_counts(rng, c70["finishes_share"], n), 0)
    k140 = np.where(np.isin(kind, (1, 2)), _finish_counts(rng, c140["finishes_share"], n), 0)
    kshort = np.where(kind == 3, _finish_counts(rng, c70["finishes_share"], n), 0)
    ksprint = rng.binomial(kshort, 0.5)
    k70[kind == 4] = 1
    span = np.minimum(rng.poisson(0.7 * (k70 + k140 + kshort - 1)), 14)
    year_w = _year_weights()[:2].sum(0)
    center = rng.choice(len(YEARS), size=n, p=year_w / year_w.sum())
    hashes = np.sort(rng.choice(2**48, size=n - sizes[4], replace=False))
    return dict(
        kind=kind, female=rng.random(n) < female_p,
        ref_age=AGE_LOWS[grp] + rng.random(n) * AGE_WIDTHS[grp],
        z=rng.standard_normal(n), zdist=rng.standard_normal((n, 4)),
        trend=rng.normal(0, TREND_SD, n), tilt=rng.standard_normal((n, 3)),
        pro=(kind <= 2) & (rng.random(n) < PRO_SHARE),
        k=np.stack([k70, k140, ksprint, kshort - ksprint]),
        center=center, lo=np.clip(center - span // 2, 0, None),
        hi=np.minimum(center - span // 2 + span, len(YEARS) - 1),
        country=rng.choice(len(COUNTRIES), size=n, p=_country_p()),
        first=rng.integers(0, len(FIRST_M), n), last=rng.integers(0, len(LAST), n),
        hash=np.r_[_hex(hashes), np.full(sizes[4], None, object)],
    )


def _year_weights() -> np.ndarray:
    w = np.zeros((4, len(YEARS)))
    for d, name in enumerate(DISTANCES[:2]):
        c = CALIBRATION[name]
        w[d, c["first_year"] - YEARS[0]:] = c["year_counts"]
    w[2:] = w[0]
    return w


def _country_p() -> np.ndarray:
    w = np.array([c[2] for c in COUNTRIES], float)
    return w / w.sum()


def _hex(values: np.ndarray) -> np.ndarray:
    nibbles = (values[:, None] >> np.arange(44, -1, -4, dtype=np.int64)) & 15
    chars = np.frombuffer(b"0123456789abcdef", np.uint8)[nibbles]
    return chars.view("S12").ravel().astype("U12").astype(object)


def _starts(rng, ath) -> dict[str, np.ndarray]:
    """One row per start: finishes per the athlete's counts plus extra DNF and DQ starts."""
    idx = np.arange(len(ath["kind"]))
    slow = np.exp(DNF_SLOWNESS * ath["z"] - DNF_SLOWNESS**2 / 2)
    parts = []
    for d, k in enumerate(ath["k"]):
        p = CALIBRATION[DISTANCES[min(d, 1)]]["dnf_share"]
        for status, lam in ((0, None), (1, k * p / (1 - p) * slow), (2, k * DQ_RATE)):
            n = k if lam is None else rng.poisson(lam)
            parts.append((np.repeat(idx, n), d, status))
    a = np.concatenate([p[0] for p in parts])
    dist = np.concatenate([np.full(len(p[0]), p[1], np.int8) for p in parts])
    status = np.concatenate([np.full(len(p[0]), p[2], np.int8) for p in parts])
    cdf = np.cumsum(_year_weights(), 1)
    cdf /= cdf[:, -1:]
    first = (cdf > 0).argmax(1)[dist]
    lo = np.maximum(ath["lo"][a], first)
    hi = np.maximum(ath["hi"][a], lo)
    c_lo = np.where(lo > 0, cdf[dist, np.maximum(lo - 1, 0)], 0.0)
    u = c_lo + rng.random(len(a)) * (cdf[dist, hi] - c_lo)
    year = np.empty(len(a), int)
    for d in range(len(DISTANCES)):
        year[dist == d] = np.searchsorted(cdf[d], u[dist == d], "right")
    year = np.clip(year, lo, hi)
    age = np.floor(ath["ref_age"][a] + year - ath["center"][a]).astype(int)
    return dict(ath=a, dist=dist, status=status, year=year, age=np.clip(age, 18, 90),
                anon=ath["kind"][a] == 4, pro=ath["pro"][a])


def _editions(rng, rows, n_target: int) -> dict[str, np.ndarray]:
    """Editions of a pool of events per (distance, year, anonymous source), sized like real ones."""
    c70, c140 = CALIBRATION["70.3"], CALIBRATION["140.6"]
    scale = n_target / (c70["ag_finishers"] + c140["ag_finishers"])
    per_ed = np.array([c70["per_edition"], c140["per_edition"], 300.0, 300.0])
    per_ed = np.minimum(per_ed, np.maximum(per_ed * scale, [150.0, 150.0, 75.0, 75.0]))
    ny = len(YEARS)
    counts = np.bincount(_group(rows), minlength=len(DISTANCES) * ny * 2).reshape(-1, ny, 2)
    n_ed = np.where(counts > 0, np.maximum(1, np.round(counts / per_ed[:, None, None])), 0)
    places = np.array([f"{p} {b}" for p in PLACE_PREFIX for b in PLACE_BASE], object)
    title = ["IRONMAN 70.3 {}", "IRONMAN {}", "{} Sprint Triathlon", "5150 {}"]
    ev_name, ev_loc, ev_course, parts = [], [], [], []
    for d in range(len(DISTANCES)):
        pool = rng.permutation(len(places))[: min(len(places), int(n_ed[d].sum(1).max() * 1.25) + 3)]
        country = rng.choice(len(COUNTRIES), size=len(pool), p=_country_p())
        popularity = rng.gamma(2.0, size=len(pool))
        sd = CALIBRATION[DISTANCES[min(d, 1)]]["sd_edition"]
        first_event = len(ev_name)
        ev_name += [title[d].format(places[i]) for i in pool]
        ev_loc += [f"{places[i]}, {COUNTRIES[c][0]}" for i, c in zip(pool, country)]
        ev_course.append(rng.normal(0, sd * np.sqrt(0.6), len(pool)))
        for y in range(ny):
            n_named, n_anon = (min(int(v), len(pool)) for v in n_ed[d, y])
            n_anon = min(n_anon, len(pool) - n_named)
            chosen = rng.choice(len(pool), n_named + n_anon, replace=False,
                                p=popularity / popularity.sum())
            for anon, ev in ((0, chosen[:n_named]), (1, chosen[n_named:])):
                if d >= 2:
                    src = np.where(rng.random(len(ev)) < 0.3, 1, 0)
                elif anon:
                    src = np.full(len(ev), 3)
                else:
                    u = rng.random(len(ev))
                    src = np.where(u < (0.35 if YEARS[y] < 2012 else 0.0), 2, np.where(u > 0.92, 1, 0))
                parts.append((np.full(len(ev), (d * ny + y) * 2 + anon), ev + first_event, src,
                              rng.normal(0, sd * np.sqrt(0.4), len(ev)), np.full(len(ev), y)))
    group, event, source, day, year = (np.concatenate([p[i] for p in parts]) for i in range(5))
    n_groups = len(DISTANCES) * ny * 2
    return dict(group=group, event=event, source=source, year=year,
                effect=np.concatenate(ev_course)[event] + day, weight=rng.gamma(2.0, size=len(group)),
                start=np.searchsorted(group, np.arange(n_groups)),
                size=np.bincount(group, minlength=n_groups),
                name=np.array(ev_name, object), location=np.array(ev_loc, object))


def _group(rows) -> np.ndarray:
    return (rows["dist"].astype(int) * len(YEARS) + rows["year"]) * 2 + rows["anon"]


def _assign_editions(rng, rows, eds) -> None:
    """Each start picks an edition of its (distance, year, source kind), big editions more often;
    an athlete racing one edition twice is moved to the next edition, or dropped."""
    g = _group(rows)
    cw = np.cumsum(eds["weight"])
    start, size = eds["start"][g], eds["size"][g]
    w_lo = np.where(start > 0, cw[np.maximum(start - 1, 0)], 0.0)
    t = w_lo + rng.random(len(g)) * (cw[start + size - 1] - w_lo)
    ed = np.clip(np.searchsorted(cw, t, "right"), start, start + size - 1)
    n_ed = len(eds["group"])
    for attempt in range(4):
        key = np.where(rows["anon"], -1 - np.arange(len(g)), rows["ath"].astype(np.int64) * n_ed + ed)
        order = np.argsort(key, kind="stable")
        dup = np.zeros(len(g), bool)
        dup[order[1:]] = key[order[1:]] == key[order[:-1]]
        if attempt == 3 or not dup.any():
            break
        ed[dup] = start[dup] + (ed[dup] - start[dup] + 1) % size[dup]
    rows["ed"] = ed
    for name, values in rows.items():
        rows[name] = values[~dup]


def _finish_times(rng, rows, ath, eds) -> None:
    """Time of each start (seconds), squeezed under the cutoff; far over it is a DNF."""
    a, d, n = rows["ath"], rows["dist"], len(rows["ath"])
    female = ath["female"][a]
    age = np.where(rows["pro"], 32, rows["age"])
    log_med = np.empty(n)
    for dd in range(len(DISTANCES)):
        c = CALIBRATION[DISTANCES[min(dd, 1)]]
        for g, med in enumerate((c["median_m"], c["median_f"])):
            m = (d == dd) & (female == g)
            log_med[m] = np.interp(age[m], AGE_MIDS, np.log(np.asarray(med) * SHORT_SCALE[dd]))
    z = 0.95 * ath["z"][a] + 0.31 * ath["zdist"][a, d]
    ability = np.where(rows["pro"], -0.30 + 0.04 * z, BETWEEN_SD[d] * z)
    sd_within = np.array([CALIBRATION[DISTANCES[min(i, 1)]]["sd_within"] for i in range(4)])[d]
    bad_day = (rng.random(n) < 0.04) * rng.exponential(0.10, n)
    log_t = (log_med + LEVEL[d] + ability + ath["trend"][a] * (rows["year"] - ath["center"][a])
             + eds["effect"][rows["ed"]] + sd_within * rng.standard_normal(n) + bad_day)
    t = np.exp(log_t)
    cut = CUTOFF[d]
    soft, hard = 0.93 * cut, 1.08 * cut
    fin = rows["status"] == 0
    rows["status"][fin & (t > hard)] = 1
    squeeze = fin & (t > soft) & (t <= hard)
    t[squeeze] = (soft + (t - soft) * (cut - 60 - soft) / (hard - soft))[squeeze]
    rows["time"] = t


LABELS = np.array([*AGE_GROUPS, *(f"M{g}" for g in AGE_GROUPS), *(f"F{g}" for g in AGE_GROUPS),
                   "16-19", "20-24", "70-74", "75-79", "80+", "18-99", "PRO", "MPRO", "FPRO"], object)
_LEGACY_CODE = np.array([list(LABELS).index(lab) for lab in LEGACY_LABELS])


def _split_base() -> np.ndarray:
    """Median swim, t1, bike, t2, run per distance; transitions take what the medians leave."""
    base = np.empty((4, 5))
    for d in range(2):
        c = CALIBRATION[DISTANCES[d]]
        swim, bike, run = c["split_median"]
        gap = c["p50"] - swim - bike - run
        base[d] = swim, 0.58 * gap, bike, 0.42 * gap, run
    base[2] = np.array([0.14, 0.04, 0.46, 0.03, 0.33]) * base[0].sum() * SHORT_SCALE[2]
    base[3] = base[0] * SHORT_SCALE[3]
    return base


def _splits(rng, rows, ath) -> np.ndarray:
    """Swim/t1/bike/t2/run seconds: the athlete's discipline strengths tilt the shares and slow
    athletes lose most on the run. DNFs stop after the swim or the bike; missing splits."""
    d, n, status = rows["dist"], len(rows["dist"]), rows["status"]
    base = _split_base()
    log_p = np.log(base[d]) + np.c_[0.08 * ath["tilt"][rows["ath"]], np.zeros((n, 2))][:, [0, 3, 1, 4, 2]]
    log_p += rng.normal(0, [0.04, 0.15, 0.04, 0.15, 0.04], (n, 5))
    log_p[:, 4] += 0.5 * np.log(rows["time"] / base[d].sum(1))
    p = np.exp(log_p)
    splits = np.round(rows["time"][:, None] * p / p.sum(1, keepdims=True))
    missing = np.array([[*CALIBRATION[DISTANCES[min(i, 1)]]["split_missing"]] for i in range(4)])
    miss = rng.random((n, 5)) < np.c_[missing, np.full((4, 2), 0.01)][:, [0, 3, 1, 4, 2]][d]
    stage = rng.choice([0, 2, 4], size=n, p=[0.1, 0.45, 0.45])
    miss |= (status == 1)[:, None] & (np.arange(5) >= stage[:, None])
    rows["clean_total"] = np.where(status == 0, splits.sum(1), np.nan)
    splits[miss] = np.nan
    return splits


def _rank_within(key, value, valid) -> tuple[np.ndarray, np.ndarray]:
    """1-based rank of ``value`` among valid rows with the same ``key``, and that group's size."""
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


def _race_frame(rng, rows, ath, eds) -> pd.DataFrame:
    order = np.lexsort((rows["time"], rows["status"], rows["ed"], rows["year"]))
    for name, values in rows.items():
        rows[name] = values[order]
    a, d, n, ed, status = rows["ath"], rows["dist"], len(rows["ath"]), rows["ed"], rows["status"]
    src, female, pro, age = eds["source"][ed], ath["female"][a], rows["pro"], rows["age"]
    splits = _splits(rng, rows, ath)
    code = np.clip(np.searchsorted(AGE_LOWS, age, "right") - 1, 0, 10)
    code = np.where(src == 1, code + 11 * (1 + female), code)
    code = np.where(src == 2, _LEGACY_CODE[np.searchsorted(LEGACY_LOWS, age, "right") - 1], code)
    code[(src == 3) & (rng.random(n) < 0.05)] = 38  # '18-99': the source did not know the age
    code[pro] = np.where(src[pro] == 1, 40 + female[pro], 39)
    band = np.array(["18-29", "30-39", "40-49", "50-59", "60-69", "70+"], object)
    age_band = np.where(code == 38, None, band[np.clip(age // 10 - 1, 0, 5)])
    gender = np.where(female, "F", "M").astype(object)
    gender[rng.random(n) < np.where(src == 3, 0.04, 0.005)] = None
    is_pro = np.where(src == 2, np.where(pro, "True", "False"), pro).astype(object)
    is_pro[(src == 3) | (~pro & (rng.random(n) < 0.02))] = None
    names = np.array([f"{f} {s}" for first in (FIRST_M, FIRST_F) for f in first for s in LAST], object)
    name = np.where(rows["anon"], None, names[(female * len(FIRST_M) + ath["first"][a]) * len(LAST) + ath["last"][a]])
    country = np.array(COUNTRIES, object)[ath["country"][a]]

    fin = status == 0
    time = rows["time"]
    known = fin & (gender != None)  # noqa: E711  (elementwise test on an object array)
    overall, _ = _rank_within(ed, time, fin)
    g_rank, _ = _rank_within(ed * 2 + female, time, known)
    ag_rank, _ = _rank_within(ed * 64 + code, time, fin)
    div_rank, div_size = _rank_within((ed * 2 + female) * 64 + code, time, fin)
    total = rows["clean_total"]
    swim, t1, bike, t2, run = splits.T
    base = _split_base()
    with np.errstate(invalid="ignore", divide="ignore"):
        derived = {
            "swim_pct": 100 * swim / total, "bike_pct": 100 * bike / total,
            "run_pct": 100 * run / total, "transition_pct": 100 * (t1 + t2) / total,
            "bike_run_ratio": bike / run,
            "fade_ratio": (run / bike) / (base[d, 4] / base[d, 2]),
            "implied_bike_if": np.clip(0.72 - 0.1 * np.log(bike / base[d, 2])
                                       + rng.normal(0, 0.03, n), 0.5, 0.98),
            "cohort_percentile": np.where(fin, 100 * (1 - (div_rank - 1) / np.maximum(div_size, 1)), np.nan),
        }
    rows["fade"] = derived["fade_ratio"]
    rows["splits"] = splits
    bad = fin & (rng.random(n) < CORRUPT_RATE)  # ETL errors: minutes for seconds, a day added
    rows["total"] = total.copy()
    rows["total"][bad] = np.where(rng.random(bad.sum()) < 0.5, np.round(total[bad] / 60, 1), total[bad] + 86400)

    def ranks(r):
        return pd.arrays.IntegerArray(r, r == 0)

    frame = {
        "athlete_hash": ath["hash"][a], "athlete_name": name, "gender": gender,
        "age_group": LABELS[code], "age_band": age_band, "country": country[:, 0],
        "country_iso2": country[:, 1], "is_pro": is_pro,
        "event_name": eds["name"][eds["event"][ed]], "event_year": YEARS[rows["year"]],
        "event_location": eds["location"][eds["event"][ed]],
        "event_distance": np.array(DISTANCES, object)[d], "source": np.array(SOURCES, object)[src],
        "swim_sec": swim, "t1_sec": t1, "bike_sec": bike, "t2_sec": t2, "run_sec": run,
        "total_sec": rows["total"], "overall_rank": ranks(overall), "gender_rank": ranks(g_rank),
        "age_group_rank": ranks(ag_rank), "division_rank": ranks(div_rank),
        "finish_status": STATUS[src, status],
        **{k: np.round(v, 3 if k in ("bike_run_ratio", "fade_ratio", "implied_bike_if") else 2)
           for k, v in derived.items()},
    }
    return pd.DataFrame(frame, columns=RACE_COLUMNS)
