"""How far the published forecasts of the full synthetic world are from oracles that know the
simulator; writes bench/ORACLE.md.

The forecasts are bench/_work/full_outputs/bayesian_predictions_{70.3,140.6}.csv, made by
`.venv/bin/python bench/run.py --part full_scale` from the full world of seed 0
(bench/_work/full-0, written by `simulate.write_demo_data(folder, "full", seed=0)`). This script

1. simulates that world again with the simulator's truth (``simulate_world("full", 0,
   truth=True)``) and checks that it writes bench/_work/full-0/athlete_race.csv byte for byte;
2. rebuilds the model frame from the three input CSVs with the project's readers and
   ``model_frame_and_seasons`` (its as-of history columns), and lines up the truth and each
   distance's predictions with it row by row (stopping with a message when they do not);
3. scores the model, oracle A (the full truth but the race day and the race noise) and
   oracle B (Bayes at the simulator's true settings from earlier seasons' finishes at both
   distances) and a few variants of B, on the held-out season and the fitted seasons, by
   group (first race, finishes here, debut after the other distance, new course), with
   edition-clustered SEs of the model-minus-B differences, and, for debuts after finishes at the
   other distance, the true spread of ability there against the model's athlete scale for them (tau_other);
4. writes bench/ORACLE.md.

Run: `.venv/bin/python bench/oracle.py` from anywhere. It takes 3.5 to 4 minutes on 2 cores
and peaks at about 6.5 GB of memory, while the model frame is built (measured 2026-12-06). It
writes bench/ORACLE.md and nothing else but a temporary copy of athlete_race.csv (1 GB, in
bench/_work, removed at once). `--size demo --output PATH` checks the script in
10 s on the demo world and `make run`'s forecasts of it (bench/_work/demo-0, demo_outputs).
"""

from __future__ import annotations

import argparse
import datetime as dt
import filecmp
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import numpy as np
import pandas as pd
from scipy import stats

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(REPO))

from racedayai_bayes.demo import simulate as sim  # noqa: E402
from racedayai_bayes.lib.data.contracts import read_clusters, read_profiles, read_races  # noqa: E402
from racedayai_bayes.lib.data import MODEL_DISTANCES, history  # noqa: E402
from racedayai_bayes.lib.data.frame import frame_order, frame_rules, model_frame_and_seasons  # noqa: E402
from racedayai_bayes.lib.data.split import row_groups  # noqa: E402
from racedayai_bayes.lib.evaluation.report import markdown_table  # noqa: E402
from racedayai_bayes.lib.evaluation.scores import clustered_mean, edition_labels  # noqa: E402
from racedayai_bayes.lib.outputs.io import write_csv_atomic  # noqa: E402

SEED = 0
REPORT = HERE / "ORACLE.md"
DISTANCES = MODEL_DISTANCES  # ("70.3", "140.6"): index = the simulator's distance code


@dataclass(frozen=True)
class Setup:
    """Where a world's inputs and forecasts are (bench/run.py's folders) and what makes them."""
    size: str
    inputs: Path
    outputs: Path
    remake: str  # the command that makes the inputs (when missing) and the forecasts


SETUPS = {
    "full": Setup("full", HERE / "_work" / f"full-{SEED}", HERE / "_work" / "full_outputs",
                  "`.venv/bin/python bench/run.py --part full_scale`"),
    # a quick check of this script: the demo world and `make run`'s refit of it
    "demo": Setup("demo", HERE / "_work" / f"demo-{SEED}", HERE / "_work" / "demo_outputs",
                  "`.venv/bin/python bench/run.py --part demo_rerun`"),
}

Z90 = stats.norm.ppf(0.95)
P_BAD, M_BAD = sim.BAD_DAY_P, sim.BAD_DAY_MEAN
BAD_MEAN, BAD_VAR = P_BAD * M_BAD, P_BAD * 2 * M_BAD**2 - (P_BAD * M_BAD) ** 2
DAY, WITHIN, COURSE, BETWEEN = sim.DAY_SD[:2], sim.WITHIN_SD[:2], sim.COURSE_SD[:2], sim.BETWEEN_SD[:2]
MIX = sim.ABILITY_SHARED**2 + sim.ABILITY_SPECIFIC**2  # variance of an ability's standard normal mix
FIN_BINS = ([-1, 0, 1, 2, 4, 10**6], ["0", "1", "2", "3-4", "5+"])  # finishes here
TRUTH_USED = ["latent", "log_med", "ability", "trend_term", "course_effect", "day_effect", "athlete",
              "center_year", "trend", "age", "female", "pro"]
HISTORY_USED = ["hist_starts", "hist_starts_same", "hist_finishes_same", "hist_finishes_other", "hist_rel_other"]


def fail(message: str) -> NoReturn:
    raise SystemExit(f"bench/oracle.py: {message}")


def log(message: str, t0: float = time.perf_counter()) -> None:
    print(f"[{time.perf_counter() - t0:6.0f} s, peak {peak_gb():.1f} GB] {message}", flush=True)


def peak_gb() -> float:
    """This process's peak resident memory so far (Linux; 0 elsewhere)."""
    try:
        status = Path("/proc/self/status").read_text()
    except OSError:
        return 0.0
    return next((int(line.split()[1]) / 1e6 for line in status.splitlines() if line.startswith("VmHWM:")), 0.0)


# ---------------------------------------------------------------------------------------------
# Inputs: the world again with its truth, the model frame, the predictions, lined up by row
# ---------------------------------------------------------------------------------------------

def require_inputs(setup: Setup) -> None:
    """Stop with a message when an input or a prediction file is missing."""
    need = [setup.inputs / f"{name}.csv" for name in ("athlete_race", "athlete_profile", "cluster_assignments")]
    need += [setup.outputs / f"bayesian_predictions_{d}.csv" for d in DISTANCES]
    need += [setup.outputs / "forecast_posterior_means.csv"]
    missing = [str(p.relative_to(REPO)) for p in need if not p.exists()]
    if missing:
        fail(f"missing {', '.join(missing)}: run {setup.remake} (it makes both the inputs and the forecasts)")


def regenerate_truth(setup: Setup) -> pd.DataFrame:
    """The world of seed 0 with its truth; stops unless its athlete_race is the stored CSV
    byte for byte (written by the project's own writer, as bench/run.py's ``_inputs``)."""
    world = sim.simulate_world(setup.size, SEED, truth=True)
    races, truth = world.pop("athlete_race"), world.pop("truth")
    del world
    stored = setup.inputs / "athlete_race.csv"
    # the 1 GB copy goes beside the stored inputs (bench/_work), not to the system's temporary folder
    with tempfile.TemporaryDirectory(dir=setup.inputs.parent, prefix="oracle-") as tmp:
        again = write_csv_atomic(races, Path(tmp) / "athlete_race.csv")
        if not filecmp.cmp(again, stored, shallow=False):
            line = _first_different_line(again, stored)
            fail(f"the regenerated world differs from {stored.relative_to(REPO)} (first at line {line}): the "
                 f"simulator or the seed changed since those inputs were made; remove {setup.inputs.relative_to(REPO)} "
                 f"and run {setup.remake}")
    log(f"the regenerated world writes {stored.relative_to(REPO)} byte for byte ({len(races):,} rows)")
    return truth


def _first_different_line(a: Path, b: Path) -> int:
    i = 0
    with open(a, "rb") as fa, open(b, "rb") as fb:
        for i, (la, lb) in enumerate(zip(fa, fb), start=1):
            if la != lb:
                return i
    return i + 1


def model_frame(setup: Setup) -> tuple[pd.DataFrame, np.ndarray]:
    """The model frame (with its as-of history) from the stored inputs, as the refit builds it,
    and the position in athlete_race.csv of each of its rows."""
    races = read_races(setup.inputs / "athlete_race.csv").frame
    profiles = read_profiles(setup.inputs / "athlete_profile.csv").frame
    clusters = read_clusters(setup.inputs / "cluster_assignments.csv").frame
    frame, _, _ = model_frame_and_seasons(races, profiles, clusters)
    # the frame keeps the input rows that every one of its rules keeps, one distance's after
    # the other's, each distance's in input order (lib/data/frame.frame_order)
    positions = frame_order(races, np.flatnonzero(np.logical_and.reduce(list(frame_rules(races).values()))))
    if len(positions) != len(frame) or not _same_rows(frame, races.iloc[positions]):
        fail("the model frame's rows are not the input rows its rules keep (lib/data/frame.frame_rules) in "
             "lib/data/frame.frame_order; update model_frame() here")
    return frame[["athlete_hash", "gender", "event_name", "event_distance", "event_year", "total_sec",
                  *HISTORY_USED]], positions


def _same_rows(a: pd.DataFrame, b: pd.DataFrame, columns=("athlete_hash", "event_name", "event_year", "total_sec")) -> bool:
    """Whether two frames hold the same keys row by row (missing equals missing)."""
    for c in columns:
        x, y = a[c].reset_index(drop=True), b[c].reset_index(drop=True)
        if x.dtype.kind in "fiu" or c in ("event_year", "total_sec"):
            x, y = x.to_numpy(np.float64, na_value=np.nan), y.to_numpy(np.float64, na_value=np.nan)
            if not ((x == y) | (np.isnan(x) & np.isnan(y))).all():
                return False
        elif not (x.astype("string").fillna("\0") == y.astype("string").fillna("\0")).all():
            return False
    return True


def joined_rows(setup: Setup, frame: pd.DataFrame, positions: np.ndarray, truth: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """Per distance, the model frame's rows with their truth and their published forecast,
    lined up by position (the prediction CSVs keep the frame's order)."""
    rows = pd.concat([frame.reset_index(drop=True), truth.iloc[positions][TRUTH_USED].reset_index(drop=True)], axis=1)
    out = {}
    for d in DISTANCES:
        r = rows[(rows["event_distance"] == d).to_numpy()].reset_index(drop=True)
        path = setup.outputs / f"bayesian_predictions_{d}.csv"
        pred = pd.read_csv(path, usecols=["athlete_hash", "event_name", "event_year", "total_sec", "bayes_p05",
                                          "bayes_p50", "bayes_p95", "held_out", "model"],
                           dtype={"athlete_hash": "string", "event_name": "string"},
                           true_values=["true", "True"], false_values=["false", "False"])
        published = set(pred["model"].dropna().unique())
        if published != {"forecast"}:  # the spread analysis reads the forecast model's athlete scale
            fail(f"{path.relative_to(REPO)} holds forecasts of {sorted(published)}, not of the forecast model alone: "
                 f"publish the forecast model (the default `auto` does on the full world) and run {setup.remake}")
        if pred["held_out"].dtype != bool:
            fail(f"{path.relative_to(REPO)}: held_out is not true/false")
        if len(pred) != len(r) or not _same_rows(r, pred):
            fail(f"{path.relative_to(REPO)} does not line up with the model frame rebuilt from "
                 f"{setup.inputs.relative_to(REPO)} ({len(pred):,} rows against {len(r):,}): the forecasts were made "
                 f"from other inputs; run {setup.remake}")
        for c in ("bayes_p05", "bayes_p50", "bayes_p95"):
            r[c] = pred[c].to_numpy(np.float64)
        r["held_out"] = pred["held_out"].to_numpy()
        r["dd"] = DISTANCES.index(d)
        out[d] = r
        log(f"{d}: {len(r):,} rows lined up with {path.relative_to(REPO)}")
    return out


# ---------------------------------------------------------------------------------------------
# The simulator's predictive of a finish time: Normal + bad day, squeezed and cut at the cutoff
# ---------------------------------------------------------------------------------------------

def mix_logpdf(x, s):
    """Log density of N(0, s^2) plus the bad day (Bernoulli(P_BAD) x Exponential(mean M_BAD))."""
    s = np.broadcast_to(s, np.shape(x))
    a = np.log(1 - P_BAD) + stats.norm.logpdf(x, 0, s)
    b = np.log(P_BAD) + stats.exponnorm.logpdf(x, M_BAD / s, loc=0, scale=s)
    return np.logaddexp(a, b)


def mix_cdf(x, s):
    """Distribution function of N(0, s^2) plus the bad day."""
    return (1 - P_BAD) * stats.norm.cdf(x, 0, s) + P_BAD * stats.exponnorm.cdf(x, M_BAD / s, loc=0, scale=s)


def mix_quantile(q, s, lo=-1.5, hi=1.5, iterations=45):
    """Quantile ``q`` of N(0, s^2) plus the bad day, row by row, by bisection."""
    lo, hi = np.full(q.shape, lo), np.full(q.shape, hi)
    for _ in range(iterations):
        mid = 0.5 * (lo + hi)
        below = mix_cdf(mid, s) < q
        lo, hi = np.where(below, mid, lo), np.where(below, hi, mid)
    return 0.5 * (lo + hi)


def squeeze_map(cut: float) -> tuple[float, float, float]:
    """The simulator's squeeze near the cutoff: a drawn time t in (soft, hard] is published as
    soft + (t - soft) x slope; over hard it is a DNF."""
    soft, hard = sim.SQUEEZE_FROM * cut, sim.DNF_OVER * cut
    return soft, hard, (cut - sim.SQUEEZE_MARGIN_SEC - soft) / (hard - soft)


def exact_predictive(centre, s, t_obs, cut, interval=True) -> dict[str, np.ndarray]:
    """The simulator's predictive of an observed finish time given the log centre and the sd
    ``s`` of its Normal part: Normal + bad day; times over SQUEEZE_FROM x cutoff squeezed under
    the cutoff (with the map's Jacobian); times over DNF_OVER x cutoff are DNFs, which never
    reach the frame (the predictive is truncated there). Returns the absolute error of its median
    (minutes), the log density of ``t_obs`` (seconds), the log median and, with ``interval``,
    whether t_obs lies within its 5% and 95% quantiles."""
    soft, hard, slope = squeeze_map(cut)
    p_finish = mix_cdf(np.log(hard) - centre, s)
    squeezed = t_obs > soft
    t_drawn = np.where(squeezed, soft + (t_obs - soft) / slope, t_obs)
    lpd = (mix_logpdf(np.log(t_drawn) - centre, s) - np.log(t_drawn) - np.log(p_finish)
           - np.where(squeezed, np.log(slope), 0.0))

    def quantile(q):
        t = np.exp(centre + mix_quantile(q * p_finish, s))
        return np.where(t > soft, soft + (t - soft) * slope, t)

    median = quantile(0.5)
    out = {"ae": np.abs(median - t_obs) / 60, "lpd": lpd, "log_median": np.log(median)}
    if interval:
        out["cov"] = (t_obs >= quantile(0.05)) & (t_obs <= quantile(0.95))
    return out


# ---------------------------------------------------------------------------------------------
# The model, oracle A and oracle B
# ---------------------------------------------------------------------------------------------

def score_model(r: pd.DataFrame) -> None:
    """The model's scores. Its log density is approximated by a Normal in log time with median
    p50 and the sd that puts p05 and p95 at its 5% and 95% points (not its actual mixture)."""
    y = np.log(r["total_sec"].to_numpy(np.float64))
    p05, p50, p95 = (r[c].to_numpy() for c in ("bayes_p05", "bayes_p50", "bayes_p95"))
    r["sd_model"] = (np.log(p95) - np.log(p05)) / (2 * Z90)
    r["lpd_model"] = stats.norm.logpdf(y, np.log(p50), r["sd_model"]) - y
    r["ae_model"] = np.abs(p50 - r["total_sec"]) / 60
    r["res_model"] = y - np.log(p50)
    r["cov_model"] = (r["total_sec"] >= p05) & (r["total_sec"] <= p95)


def oracle_a(r: pd.DataFrame) -> None:
    """Oracle A: the latent time (everything known before the race) plus the day effect and
    the race noise as one Normal of sd sqrt(DAY_SD^2 + WITHIN_SD^2): as a plain Normal in log
    time, and exactly (the bad day, the squeeze and the cut at the cutoff)."""
    d = int(r["dd"].iloc[0])
    y = np.log(r["total_sec"].to_numpy(np.float64))
    s = np.hypot(DAY[d], WITHIN[d])
    latent = r["latent"].to_numpy()
    r["ae_A_exp_latent"] = np.abs(np.exp(latent) - r["total_sec"]) / 60
    r["lpd_A_normal"] = stats.norm.logpdf(y, latent, s) - y
    exact = exact_predictive(latent, np.full(len(r), s), r["total_sec"].to_numpy(np.float64), sim.CUTOFF[d])
    r["ae_A"], r["lpd_A"], r["cov_A"], r["res_A"] = exact["ae"], exact["lpd"], exact["cov"], y - exact["log_median"]


def log_med_step(r: pd.DataFrame) -> np.ndarray:
    """The gender's median at the midpoint of the athlete's age group (what a per-age-group cell
    can represent) instead of at the exact age."""
    d = int(r["dd"].iloc[0])
    cal = sim.CALIBRATION[DISTANCES[d]]
    age = np.where(r["pro"], sim.PRO_AGE, r["age"])
    group = np.clip(np.searchsorted(sim.AGE_LOWS, age, "right") - 1, 0, 10)
    return np.where(r["female"], np.log(np.array(cal["median_f"]))[group], np.log(np.array(cal["median_m"]))[group])


def earlier_season_sums(rows: dict[str, pd.DataFrame], level: str) -> dict[str, pd.DataFrame]:
    """Per distance and row: sums over the athlete's finishes in strictly earlier seasons, per
    distance k, of 1, the season, its square, the residual r and season x r, where r is the log
    time as drawn (a squeezed time unsqueezed) less the level column, the course, the day and
    the bad day's mean. Only named athletes' finishes in the model frame count (the project's
    own as-of sums, ``lib/data/history.earlier_season_sums``, over both distances' rows)."""
    codes, years, values = [], [], {f"{p}{j}": [] for j in (0, 1) for p in ("n", "sy", "syy", "sr", "syr")}
    for d, r in rows.items():
        k = DISTANCES.index(d)
        soft, _, slope = squeeze_map(sim.CUTOFF[k])
        t = r["total_sec"].to_numpy(np.float64)
        drawn = np.log(np.where(t > soft, soft + (t - soft) / slope, t))
        resid = (drawn - r[level] - r["course_effect"] - r["day_effect"] - BAD_MEAN).to_numpy()
        year = r["event_year"].to_numpy(np.int64)
        codes.append(np.where(r["athlete_hash"].notna().to_numpy(), r["athlete"].to_numpy(np.int64), -1))
        years.append(year)
        for j in (0, 1):
            on = float(j == k)
            values[f"n{j}"].append(np.full(len(r), on))
            values[f"sy{j}"].append(on * year)
            values[f"syy{j}"].append(on * year.astype(np.float64) ** 2)
            values[f"sr{j}"].append(on * resid)
            values[f"syr{j}"].append(on * year * resid)
    sums = history.earlier_season_sums(np.concatenate(codes), np.concatenate(years),
                                       {name: np.concatenate(v) for name, v in values.items()})
    out, start = {}, 0
    for d, r in rows.items():
        out[d] = pd.DataFrame({name: v[start:start + len(r)] for name, v in sums.items()})
        start += len(r)
    return out


def oracle_b_posterior(r: pd.DataFrame, sums: pd.DataFrame, trend_sd: float, same_only: bool) -> tuple[np.ndarray, np.ndarray]:
    """Posterior mean and variance of the row's level at its distance (ability + trend x (season
    - career centre)) given its athlete's earlier finishes at both distances (only this one
    with ``same_only``): a conjugate Normal update of (level at 70.3, level at 140.6, trend)
    with the simulator's prior (abilities correlated ABILITY_SHARED^2 / MIX, trend sd
    ``trend_sd``, the career centre unknown: its offset's first two moments over the rows) and
    each past finish's noise variance WITHIN_SD^2 + the bad day's."""
    d = int(r["dd"].iloc[0])
    season = r["event_year"].to_numpy(np.float64)
    offset = season - r["center_year"].to_numpy(np.float64)
    es, es2 = float(offset.mean()), float((offset**2).mean())
    col = {c: sums[c].to_numpy() for c in sums.columns}  # 0 for an anonymous row: no known history
    v70, v140 = BETWEEN[0] ** 2 * MIX, BETWEEN[1] ** 2 * MIX
    cov = BETWEEN[0] * BETWEEN[1] * sim.ABILITY_SHARED**2
    t2 = trend_sd**2
    prior = np.array([[v70 + t2 * es2, cov + t2 * es2, t2 * es],
                      [cov + t2 * es2, v140 + t2 * es2, t2 * es],
                      [t2 * es, t2 * es, t2]])
    if trend_sd == 0:
        prior = prior[:2, :2]
    k = len(prior)
    precision = np.broadcast_to(np.linalg.inv(prior), (len(r), k, k)).copy()
    eta = np.zeros((len(r), k))
    for j in (0, 1):
        if same_only and j != d:
            continue
        w = 1.0 / (WITHIN[j] ** 2 + BAD_VAR)
        n, sy, syy, sr, syr = (col[f"{p}{j}"] for p in ("n", "sy", "syy", "sr", "syr"))
        sx, sxx, sxr = sy - n * season, syy - 2 * season * sy + n * season**2, syr - season * sr
        precision[:, j, j] += w * n
        eta[:, j] += w * sr
        if k == 3:
            precision[:, j, 2] += w * sx
            precision[:, 2, j] += w * sx
            precision[:, 2, 2] += w * sxx
            eta[:, 2] += w * sxr
    v = np.linalg.inv(precision)
    mean = np.einsum("nij,nj->ni", v, eta)
    return mean[:, d], v[:, d, d]


# oracle B and its variants: (the level column, the trend's sd, this distance's history only)
B_VARIANTS = {
    "B": ("log_med", sim.TREND_SD, False),
    "Bnotrend": ("log_med", 0.0, False),
    "Bstep": ("log_med_step", sim.TREND_SD, False),
    "Bsame": ("log_med", sim.TREND_SD, True),
}


def oracle_b(rows: dict[str, pd.DataFrame]) -> None:
    """Oracle B and its variants on every row: the posterior of the athlete's level from earlier
    seasons, plus the level column and the course's effect (unknown for a new course: mean 0,
    variance COURSE_SD^2), with the day, the race noise and the bad day as in the simulator
    (the exact predictive). B is also scored as a plain Normal in log time."""
    for r in rows.values():
        r["log_med_step"] = log_med_step(r)
    sums = {level: earlier_season_sums(rows, level) for level in ("log_med", "log_med_step")}
    for name, (level, trend_sd, same_only) in B_VARIANTS.items():
        for d, r in rows.items():
            k = DISTANCES.index(d)
            mean, var = oracle_b_posterior(r, sums[level][d], trend_sd, same_only)
            new = r["g_new course"].to_numpy()
            s = np.sqrt(var + DAY[k] ** 2 + WITHIN[k] ** 2 + np.where(new, COURSE[k] ** 2, 0.0))
            centre = r[level].to_numpy() + np.where(new, 0.0, r["course_effect"].to_numpy()) + mean
            t = r["total_sec"].to_numpy(np.float64)
            exact = exact_predictive(centre, s, t, sim.CUTOFF[k], interval=name == "B")
            r[f"ae_{name}"], r[f"lpd_{name}"] = exact["ae"], exact["lpd"]
            r[f"res_{name}"] = np.log(t) - exact["log_median"]
            if name == "B":
                r["cov_B"] = exact["cov"]
                r["lpd_B_normal"] = stats.norm.logpdf(np.log(t), centre + BAD_MEAN, np.sqrt(s**2 + BAD_VAR)) - np.log(t)
                r["level_mean_B"], r["level_sd_B"] = mean, np.sqrt(var)
            log(f"{d}: oracle {name}")


# ---------------------------------------------------------------------------------------------
# Groups and tables
# ---------------------------------------------------------------------------------------------

def add_groups(r: pd.DataFrame) -> None:
    """The comparison's groups (lib/data/split.row_groups, the course known from the
    training rows, i.e. the fitted seasons) and the number of finishes here."""
    for name, mask in row_groups(r, r[~r["held_out"]]).items():
        r[f"g_{name}"] = mask
    r["g_fin_here"] = pd.cut(r["hist_finishes_same"], FIN_BINS[0], labels=FIN_BINS[1]).astype(str)


GROUPS = {
    "all": lambda r: np.ones(len(r), bool),
    "first race ever": lambda r: r["g_first race"].to_numpy(),
    **{f"{b} fin here": (lambda b: lambda r: (r["g_fin_here"] == b).to_numpy())(b) for b in FIN_BINS[1]},
    "1-4 fin here": lambda r: r["g_fin_here"].isin(["1", "2", "3-4"]).to_numpy(),
    "debut after other dist.": lambda r: r["g_debut after the other distance"].to_numpy(),
    "new course": lambda r: r["g_new course"].to_numpy(),
    "known course": lambda r: r["g_known course"].to_numpy(),
    "blank athlete_hash": lambda r: r["athlete_hash"].isna().to_numpy(),
    "returning, other-dist. finishes": lambda r: ((r["hist_finishes_same"] > 0) & (r["hist_finishes_other"] > 0)).to_numpy(),
}
MAIN_GROUPS = ["all", "first race ever", "0 fin here", "1 fin here", "2 fin here", "3-4 fin here", "5+ fin here",
               "debut after other dist.", "new course", "known course", "blank athlete_hash"]
SE_GROUPS = ["all", "first race ever", "1-4 fin here", "5+ fin here", "debut after other dist.", "new course"]
VARIANT_GROUPS = ["all", "first race ever", "1 fin here", "2 fin here", "3-4 fin here", "5+ fin here",
                  "debut after other dist.", "returning, other-dist. finishes"]


def in_split(r: pd.DataFrame, split: str) -> np.ndarray:
    """The rows of the held-out season ("held-out") or of the fitted seasons ("fitted")."""
    return r["held_out"].to_numpy() == (split == "held-out")


def split_rows(r: pd.DataFrame, split: str, columns: list[str]) -> pd.DataFrame:
    """``columns`` of the split's rows, renumbered (a copy of a few columns, not of all)."""
    return r.loc[in_split(r, split), columns].reset_index(drop=True)


def group_table(r: pd.DataFrame, split: str) -> pd.DataFrame:
    """Per group of the split's rows: MAE (min), LPD (nats per row on seconds), bias (mean log
    residual) and 90% coverage of the model, B and A; w(M-A) is the group's share of the
    split times the MAE gap to A."""
    rows = in_split(r, split)
    out = []
    for name in MAIN_GROUPS:
        m = GROUPS[name](r) & rows
        if not m.any():
            continue
        mean = {c: r[c].to_numpy()[m].mean() for c in (
            "ae_model", "ae_B", "ae_A", "ae_A_exp_latent", "lpd_model", "lpd_B", "lpd_B_normal", "lpd_A_normal",
            "lpd_A", "res_model", "res_B", "res_A", "cov_model", "cov_B", "cov_A")}
        w = m.sum() / rows.sum()
        out.append({"group": name, "n": int(m.sum()), "share": w,
                    "MAE M": mean["ae_model"], "MAE B": mean["ae_B"], "MAE A": mean["ae_A"],
                    "MAE A exp(latent)": mean["ae_A_exp_latent"],
                    "w(M-B)": w * (mean["ae_model"] - mean["ae_B"]), "w(M-A)": w * (mean["ae_model"] - mean["ae_A"]),
                    "LPD M": mean["lpd_model"], "LPD B": mean["lpd_B"], "LPD B normal": mean["lpd_B_normal"],
                    "LPD A normal": mean["lpd_A_normal"], "LPD A exact": mean["lpd_A"],
                    "bias M": mean["res_model"], "bias B": mean["res_B"], "bias A": mean["res_A"],
                    "cov90 M": mean["cov_model"], "cov90 B": mean["cov_B"], "cov90 A": mean["cov_A"]})
    return pd.DataFrame(out).set_index("group")


def variants_table(r: pd.DataFrame, split: str) -> pd.DataFrame:
    """Per group of the split's rows: what B loses without the trend, with the age group's
    median for the exact age's, and with this distance's history only; and B as a plain Normal."""
    rows = in_split(r, split)
    out = []
    for name in VARIANT_GROUPS:
        m = GROUPS[name](r) & rows

        def diff(a, b):
            return (r[a].to_numpy()[m] - r[b].to_numpy()[m]).mean()

        row = {"group": name, "n": int(m.sum()), "MAE B": r["ae_B"].to_numpy()[m].mean(),
               "LPD B": r["lpd_B"].to_numpy()[m].mean(), "LPD B normal-B": diff("lpd_B_normal", "lpd_B")}
        for v in ("Bnotrend", "Bstep", "Bsame"):
            row[f"MAE {v}-B"], row[f"LPD {v}-B"] = diff(f"ae_{v}", "ae_B"), diff(f"lpd_{v}", "lpd_B")
        out.append(row)
    return pd.DataFrame(out).set_index("group")


def clustered_table(r: pd.DataFrame) -> pd.DataFrame:
    """Per group of held-out rows: model minus B (MAE, LPD) and B without the trend minus B
    (MAE), each with its edition-clustered SE (lib/evaluation/scores.clustered_mean)."""
    h = split_rows(r, "held-out", ["event_name", "event_year", "athlete_hash", "g_first race", "g_fin_here",
                                   "g_debut after the other distance", "g_new course", "ae_model", "ae_B", "ae_Bnotrend",
                                   "lpd_model", "lpd_B", "lpd_Bnotrend"])
    clusters = edition_labels(h)
    diffs = {"MAE M-B": h.ae_model - h.ae_B, "LPD M-B": h.lpd_model - h.lpd_B,
             "MAE Bnotrend-B": h.ae_Bnotrend - h.ae_B, "LPD Bnotrend-B": h.lpd_Bnotrend - h.lpd_B}
    out = []
    for name in SE_GROUPS:
        m = GROUPS[name](h)
        if not m.any():
            continue
        row = {"group": name, "n": int(m.sum()), "editions": len(set(clusters[m]))}
        for label, diff in diffs.items():
            row[label], row[f"{label} SE"] = clustered_mean(diff.to_numpy()[m], clusters[m])
        out.append(row)
    return pd.DataFrame(out).set_index("group")


# ---------------------------------------------------------------------------------------------
# Debuts after the other distance, and diagnostics
# ---------------------------------------------------------------------------------------------

def debut_after_other(r: pd.DataFrame, tau: float) -> dict:
    """A debut here after finishes at the other distance: the true spread of the athlete's level
    given that information (B's posterior, and a regression on the model's own feature
    hist_rel_other) against the model's tau; what swapping tau inside the model's spread does
    to its intervals; the slopes on the other level, model against truth."""
    d = int(r["dd"].iloc[0])
    level = r["ability"] + r["trend_term"]
    debut = r["g_debut after the other distance"].to_numpy()
    no_info = ((r["hist_finishes_same"] == 0) & (r["hist_finishes_other"] == 0)).to_numpy()
    spread = [{"group": "no finish anywhere yet", "n": int(no_info.sum()), "sd true level": level[no_info].std(),
               "sd given B": (level - r.level_mean_B)[no_info].std(), "B posterior sd": r.level_sd_B[no_info].mean()}]
    g = r[debut & r["hist_rel_other"].notna().to_numpy()].copy()
    g["other"] = pd.cut(g["hist_finishes_other"], [0, 1, 2, 4, 10**6], labels=["1", "2", "3-4", "5+"]).astype(str)
    for other, h in [*g.groupby("other", sort=False), ("all", g)]:
        h_level = (h.ability + h.trend_term).to_numpy()
        x = np.column_stack([np.ones(len(h)), h.hist_rel_other.to_numpy(float), h.log_med.to_numpy(float),
                             (h.gender == "F").fillna(False).to_numpy(float)])
        b, *_ = np.linalg.lstsq(x, h_level, rcond=None)
        # slopes on the other level, with the course too: the model's log p50 and the true latent time
        xc = np.column_stack([x, h.course_effect.to_numpy(float)])
        slope_model = np.linalg.lstsq(xc, np.log(h.bayes_p50.to_numpy(float)), rcond=None)[0][1]
        slope_true = np.linalg.lstsq(xc, h_level + (h.log_med + h.course_effect).to_numpy(), rcond=None)[0][1]
        spread.append({"group": f"debut after other dist., other finishes {other}", "n": len(h),
                       "sd true level": h_level.std(ddof=1), "sd given B": (h_level - h.level_mean_B).std(),
                       "B posterior sd": h.level_sd_B.mean(), "sd given hist_rel_other": (h_level - x @ b).std(),
                       "slope true": slope_true, "slope model": slope_model})
    spread = pd.DataFrame(spread).set_index("group")
    floor = BETWEEN[d] * np.sqrt(MIX - sim.ABILITY_SHARED**4 / MIX)
    resid = spread.loc["debut after other dist., other finishes all", "sd given hist_rel_other"]
    # the model's spread with tau swapped for the true one (Normal approximation in log time)
    y, mu, sd = np.log(r.total_sec.to_numpy(float)), np.log(r.bayes_p50.to_numpy(float)), r.sd_model.to_numpy()
    swaps = []
    for split in ("held-out", "fitted"):
        m = debut & (r.held_out.to_numpy() == (split == "held-out"))
        for label, s in (("model as published", sd[m]),
                         (f"tau -> {resid:.3f}", np.sqrt(np.maximum(sd[m] ** 2 - tau**2 + resid**2, 1e-6))),
                         ("tau -> B's posterior sd", np.sqrt(np.maximum(sd[m] ** 2 - tau**2 + r.level_sd_B.to_numpy()[m] ** 2, 1e-6)))):
            z = (y[m] - mu[m]) / s
            swaps.append({"split": split, "variant": label, "n": int(m.sum()), "mean sd": s.mean(),
                          "cov90": (np.abs(z) <= Z90).mean(), "LPD": (stats.norm.logpdf(y[m], mu[m], s) - y[m]).mean(),
                          "sd of z": z.std()})
        swaps.append({"split": split, "variant": "oracle B", "n": int(m.sum()), "mean sd": np.nan,
                      "cov90": r.cov_B.to_numpy()[m].mean(), "LPD": r.lpd_B.to_numpy()[m].mean(), "sd of z": np.nan})
    residual_spread = {}
    for split in ("held-out", "fitted"):
        for name, m in (("debut after other dist.", debut), ("no finish anywhere yet", no_info)):
            mm = m & (r.held_out.to_numpy() == (split == "held-out"))
            residual_spread[(split, name)] = (np.std(y[mm] - mu[mm]), sd[mm].mean())
    return {"tau": tau, "floor": floor, "spread": spread, "swaps": pd.DataFrame(swaps),
            "residual_spread": residual_spread}


def diagnostics(r: pd.DataFrame) -> dict:
    """Numbers the bottom line leans on: the held-out season's own day effect, how much of the
    day the fitted seasons' first-race forecasts carry, the fitness trend the model ignores, the
    age-group step, and B's median near the cutoff."""
    d = int(r["dd"].iloc[0])
    out = {}
    for split in ("held-out", "fitted"):
        s = split_rows(r, split, ["event_name", "event_year", "day_effect", "res_A", "res_B", "g_first race",
                                  "bayes_p50", "total_sec"])
        out[f"day_{split}"] = s.day_effect.mean()
        out[f"editions_{split}"] = len(set(edition_labels(s)))
        out[f"bias_A_{split}"] = s.res_A.mean()
        first = s[s["g_first race"].to_numpy()]
        gap = np.log(first.bayes_p50) - (np.log(first.total_sec) - first.res_B)  # log p50 - log median of B
        out[f"leak_slope_{split}"] = np.polyfit(first.day_effect, gap, 1)[0]
        out[f"leak_corr_{split}"] = np.corrcoef(first.day_effect, gap)[0, 1]
    # the trend's error against the athlete's mean earlier finish season here
    named = r.loc[r.athlete_hash.notna().to_numpy(), ["athlete", "event_year"]]
    seasons = named.groupby(["athlete", "event_year"]).size().rename("n").reset_index()
    seasons["sy"] = seasons.n * seasons.event_year
    earlier = seasons.groupby("athlete")[["n", "sy"]].cumsum() - seasons[["n", "sy"]]
    seasons["mean_year"] = earlier.sy / earlier.n.where(earlier.n > 0)
    mean_year = pd.MultiIndex.from_frame(seasons[["athlete", "event_year"]])
    key = pd.MultiIndex.from_arrays([r.athlete, r.event_year])
    before = pd.Series(seasons.mean_year.to_numpy(), index=mean_year).reindex(key).to_numpy()
    has = np.isfinite(before) & r.athlete_hash.notna().to_numpy()
    gap = (r.trend.to_numpy() * (r.event_year.to_numpy(float) - before))
    out["trend_gap_rms"] = np.sqrt(np.mean(gap[has] ** 2))
    for split in ("held-out", "fitted"):
        m = has & (r.held_out.to_numpy() == (split == "held-out"))
        for c in ("res_model", "res_B", "res_Bnotrend"):
            out[f"trend_slope_{c}_{split}"] = np.polyfit(gap[m], r[c].to_numpy()[m], 1)[0]
    out["step_rms"] = np.sqrt(np.mean((r.log_med - r.log_med_step) ** 2))
    # near the cutoff: how often the time falls under B's median (0.5 if the median is right)
    fitted = split_rows(r, "fitted", ["total_sec", "res_A", "res_B", "res_model"])
    headroom = np.log(sim.SQUEEZE_FROM * sim.CUTOFF[d]) - (np.log(fitted.total_sec) - fitted.res_B)
    bins = pd.cut(headroom, [-1, 0.1, 0.15, 0.2, 0.3, 2])
    out["near_cutoff"] = fitted.groupby(bins, observed=True).agg(
        n=("res_B", "size"), below_B=("res_B", lambda x: (x < 0).mean()),
        below_A=("res_A", lambda x: (x < 0).mean()), below_M=("res_model", lambda x: (x < 0).mean()))
    return out


# ---------------------------------------------------------------------------------------------
# The report
# ---------------------------------------------------------------------------------------------

def fmt_table(frame: pd.DataFrame, formats: dict[str, str], index: bool = True) -> str:
    """A markdown table (lib/evaluation/report.markdown_table) with a format per column: the
    column's own, else the first matching prefix (a key ending in '*'), else plain text."""
    frame = frame.reset_index() if index else frame.copy()
    for c in frame.columns:
        f = formats.get(c) or next((v for k, v in formats.items() if k.endswith("*") and c.startswith(k[:-1])), None)
        if f is not None:
            frame[c] = [("" if pd.isna(v) else f.format(v)) for v in frame[c]]
        else:
            frame[c] = frame[c].astype(str)
    return markdown_table(frame, index=False)


TABLE_FORMATS = {"n": "{:d}", "share": "{:.3f}", "MAE*": "{:.1f}", "w(*": "{:.2f}", "LPD*": "{:.3f}",
                 "bias*": "{:+.4f}", "cov90*": "{:.3f}"}


def pm(value: float, se: float, digits: int = 2, sign: bool = True) -> str:
    return f"{value:{'+' if sign else ''}.{digits}f} ± {se:.{digits}f}"


def head_commit() -> str:
    def git(*args):
        return subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True).stdout.strip()
    commit = git("rev-parse", "--short", "HEAD") or "unknown"
    return commit + (" (with uncommitted changes in the working tree)" if git("status", "--porcelain") else "")


def report(setup: Setup, res: dict, wall: float) -> str:
    """ORACLE.md from the results."""
    g = {d: res[d]["tables"]["held-out"] for d in DISTANCES}
    se = {d: res[d]["clustered"] for d in DISTANCES}
    q5 = {d: res[d]["q5"] for d in DISTANCES}
    dg = {d: res[d]["diagnostics"] for d in DISTANCES}
    var = {d: res[d]["variants"]["held-out"] for d in DISTANCES}
    gapA = {d: g[d].loc["all", "w(M-A)"] for d in DISTANCES}
    firstA = {d: g[d].loc["first race ever", "w(M-A)"] for d in DISTANCES}
    mb = {d: se[d].loc["all"] for d in DISTANCES}
    deb = "debut after other dist., other finishes all"
    held = {d: q5[d]["swaps"][q5[d]["swaps"]["split"] == "held-out"].set_index("variant") for d in DISTANCES}
    pub = {d: held[d].loc["model as published"] for d in DISTANCES}
    swap = {d: held[d].iloc[1] for d in DISTANCES}  # tau -> the regression's residual sd
    L = []
    L.append(f"# How far the forecasts are from oracles that know the simulator ({setup.size} world, seed {SEED})\n")
    L.append(f"Generated by `bench/oracle.py` on {dt.date.today().isoformat()} at commit {head_commit()} "
             f"in {wall / 60:.1f} minutes. Forecasts: `{setup.outputs.relative_to(REPO)}/bayesian_predictions_"
             f"{{70.3,140.6}}.csv`, made by {setup.remake}; truth: "
             f"`simulate_world(\"{setup.size}\", {SEED}, truth=True)`.\n")
    L.append("## Bottom line\n")
    L.append(f"- **Oracle A** (the full truth but the race day and the race noise) beats the model by "
             f"{gapA['70.3']:.1f} min MAE at 70.3 and {gapA['140.6']:.1f} min at 140.6 on the held-out season. "
             f"First races, whose ability no forecaster can know yet, make {firstA['70.3']:.1f} of those "
             f"{gapA['70.3']:.1f} weighted minutes at 70.3 ({firstA['70.3'] / gapA['70.3']:.0%}) and "
             f"{firstA['140.6']:.1f} of {gapA['140.6']:.1f} at 140.6 ({firstA['140.6'] / gapA['140.6']:.0%}); new courses "
             f"{g['70.3'].loc['new course', 'w(M-A)']:.2f} at 70.3 (B gains only "
             f"{g['70.3'].loc['new course', 'w(M-B)']:.2f} there).")
    L.append(f"- **Oracle B** (Bayes at the simulator's true settings from earlier seasons' finishes at both distances): "
             f"on the held-out season the model minus B is "
             f"{pm(mb['70.3']['MAE M-B'], mb['70.3']['MAE M-B SE'])} min MAE and "
             f"{pm(mb['70.3']['LPD M-B'], mb['70.3']['LPD M-B SE'], 3)} nats per row at 70.3, and "
             f"{pm(mb['140.6']['MAE M-B'], mb['140.6']['MAE M-B SE'])} min and "
             f"{pm(mb['140.6']['LPD M-B'], mb['140.6']['LPD M-B SE'], 3)} nats at 140.6 (edition-clustered SEs; "
             "positive MAE and negative LPD: the model is worse).")
    L.append(f"- **Per row the largest gap to B in MAE** is the debut after the other distance: "
             f"{pm(se['70.3'].loc['debut after other dist.', 'MAE M-B'], se['70.3'].loc['debut after other dist.', 'MAE M-B SE'])} min and "
             f"{pm(se['70.3'].loc['debut after other dist.', 'LPD M-B'], se['70.3'].loc['debut after other dist.', 'LPD M-B SE'], 3)} nats at 70.3, "
             f"{pm(se['140.6'].loc['debut after other dist.', 'MAE M-B'], se['140.6'].loc['debut after other dist.', 'MAE M-B SE'])} min and "
             f"{pm(se['140.6'].loc['debut after other dist.', 'LPD M-B'], se['140.6'].loc['debut after other dist.', 'LPD M-B SE'], 3)} nats at 140.6. "
             f"The true level (ability + trend) there spreads by sd {q5['70.3']['spread'].loc[deb, 'sd given B']:.3f} (70.3) and "
             f"{q5['140.6']['spread'].loc[deb, 'sd given B']:.3f} (140.6) against the model's athlete scale for them (tau_other) of "
             f"{q5['70.3']['tau']:.3f} and {q5['140.6']['tau']:.3f}, and the model's intervals there cover "
             f"{g['70.3'].loc['debut after other dist.', 'cov90 M']:.3f} and {g['140.6'].loc['debut after other dist.', 'cov90 M']:.3f}. "
             "Swapping that scale for the true spread around a regression on hist_rel_other moves that coverage to "
             + " and ".join(f"{swap[d].loc['cov90']:.3f} ({d})" for d in DISTANCES) + " and the LPD by "
             + " and ".join(f"{swap[d].loc['LPD'] - pub[d].loc['LPD']:+.3f}" for d in DISTANCES) + ".")
    L.append(f"- **Cheap features:** a per-athlete fitness trend is worth "
             f"{pm(mb['70.3']['MAE Bnotrend-B'], mb['70.3']['MAE Bnotrend-B SE'], 3)} min at 70.3 and "
             f"{pm(mb['140.6']['MAE Bnotrend-B'], mb['140.6']['MAE Bnotrend-B SE'], 3)} min at 140.6 to B "
             f"({var['70.3'].loc['5+ fin here', 'MAE Bnotrend-B']:+.2f} and {var['140.6'].loc['5+ fin here', 'MAE Bnotrend-B']:+.2f} min "
             f"for athletes with 5+ finishes here); exact age within an age group "
             f"{var['70.3'].loc['all', 'MAE Bstep-B']:+.3f} and {var['140.6'].loc['all', 'MAE Bstep-B']:+.3f} min. "
             f"Modelling the bad days' right tail and the cutoff is worth {-var['70.3'].loc['all', 'LPD B normal-B']:.3f} and "
             f"{-var['140.6'].loc['all', 'LPD B normal-B']:.3f} nats per row to B (B as a plain Normal in log time with the same "
             "mean and spread), and nothing in MAE.")
    L.append("- **Bias on the held-out season** (mean log t - log median) against the season's row-weighted day effect, "
             "which no forecaster knows, and oracle A's bias: " + "; ".join(
                 f"{d}: model {g[d].loc['all', 'bias M']:+.4f}, day {dg[d]['day_held-out']:+.4f}, A {g[d].loc['all', 'bias A']:+.4f}"
                 for d in DISTANCES) + ".")
    L.append(f"- **Fitted seasons** are not as of the race for the model: its first-race forecasts carry "
             f"{dg['70.3']['leak_slope_fitted']:.2f} (70.3) and {dg['140.6']['leak_slope_fitted']:.2f} (140.6) of the edition's day "
             f"effect (correlation {dg['70.3']['leak_corr_fitted']:.2f} and {dg['140.6']['leak_corr_fitted']:.2f}; held-out, "
             f"over {dg['70.3']['editions_held-out']} and {dg['140.6']['editions_held-out']} editions: "
             f"{dg['70.3']['leak_corr_held-out']:.2f} and {dg['140.6']['leak_corr_held-out']:.2f}); there the model minus B is "
             + " and ".join(f"{res[d]['tables']['fitted'].loc['all', 'MAE M'] - res[d]['tables']['fitted'].loc['all', 'MAE B']:+.2f} min "
                            f"({d})" for d in DISTANCES) + ". Judge on the held-out season.\n")

    L.append("## What the oracles are\n")
    L.append("- **Latent time** (known before the race): the gender's median at the exact age, the athlete's ability at "
             "this distance, trend x (season - career centre) and the course's effect. The day's effect, the race noise "
             "and the bad day are the rest.")
    L.append("- **Oracle A**: the latent time plus one Normal of sd sqrt(DAY_SD^2 + WITHIN_SD^2). *Normal*: that Normal in "
             "log time. *Exact* (the tables' MAE, LPD, cov90 of A): plus the bad day (BAD_DAY_P x Exponential(BAD_DAY_MEAN)), "
             "the squeeze of times over SQUEEZE_FROM x cutoff (with its Jacobian) and the cut of those over DNF_OVER x cutoff "
             "(DNFs, never in the frame: the predictive is truncated). Its point forecast is the exact median; exp(latent) "
             "is the *MAE A exp(latent)* column.")
    L.append("- **Oracle B**: a conjugate Normal posterior of the athlete's level (ability + trend) at both distances and a "
             "random trend, at the simulator's settings (abilities correlated ABILITY_SHARED^2 / (ABILITY_SHARED^2 + "
             "ABILITY_SPECIFIC^2) = 0.904 across distances, TREND_SD), from the named athlete's finishes in the model frame "
             "in strictly earlier seasons at both distances, each with its day, course and age median known. The course "
             "of the row is known unless new (not in the fitted seasons before the row's season): then mean 0, variance "
             "COURSE_SD^2. The row's day, noise and bad day as in oracle A's exact predictive.")
    L.append("- **Variants of B**: *Bnotrend* without the trend, *Bstep* with the age group's median instead of the exact "
             "age's, *Bsame* with this distance's history only, *B normal* B's mean and spread as a plain Normal in log time.\n")
    L.append("## Approximations\n")
    L.append("- The model's LPD is a Normal in log time with median p50 and the sd that puts p05 and p95 at its 5% and 95% "
             "points, (log p95 - log p05) / 3.29, minus log t: not the model's actual (mixture) distribution.")
    L.append("- B treats bad days in the history as Gaussian noise of the same mean and variance, ignores earlier DNFs and the "
             "cut-off tail of earlier races, and knows earlier editions' day effects; so it is a benchmark, not the exact "
             "optimum. The career centre is unknown to it (the first two moments of season - centre over the rows).")
    L.append("- Pros whose is_pro is blank stay in the frame; B gives them the age-group prior.")
    L.append(f"- One held-out season ({res['held_out_seasons']}) only: see the SEs.\n")

    L.append("## Reproduction and alignment\n")
    for line in res["checks"]:
        L.append(f"- {line}")
    L.append("")

    for split, title in (("held-out", f"Held-out season ({res['held_out_seasons']})"), ("fitted", "Fitted seasons")):
        L.append(f"## {title}\n")
        L.append("MAE in minutes; LPD in nats per row on seconds; bias = mean of log t - log median; M = model; "
                 "w(M-A) = the group's share x the MAE gap. New course: not in the fitted seasons before the row's season.\n")
        for d in DISTANCES:
            t = res[d]["tables"][split]
            L.append(f"**{d} ({t.loc['all', 'n']:,} rows{'' if 'new course' in t.index else '; no new courses'})**\n")
            L.append(fmt_table(t[["n", "MAE M", "MAE B", "MAE A", "w(M-A)", "LPD M", "LPD B", "LPD A normal", "bias M",
                                  "cov90 M"]], TABLE_FORMATS) + "\n")
            L.append(f"<details><summary>all columns ({d}, {split})</summary>\n")
            L.append(fmt_table(t, TABLE_FORMATS) + "\n\n</details>\n")

    L.append("## Model minus B on the held-out season, with edition-clustered SEs\n")
    L.append("Positive MAE and negative LPD differences: the model is worse. SEs from per-edition sums with the "
             "E/(E-1) small-sample factor (`lib/evaluation/scores.clustered_mean`). *Bnotrend-B*: what B loses without "
             "the trend.\n")
    for d in DISTANCES:
        t = se[d]
        cols = pd.DataFrame({
            "n": t["n"], "editions": t["editions"],
            "MAE M-B (min)": [pm(a, b) for a, b in zip(t["MAE M-B"], t["MAE M-B SE"])],
            "LPD M-B (nats)": [pm(a, b, 3) for a, b in zip(t["LPD M-B"], t["LPD M-B SE"])],
            "MAE Bnotrend-B (min)": [pm(a, b, 3) for a, b in zip(t["MAE Bnotrend-B"], t["MAE Bnotrend-B SE"])],
            "LPD Bnotrend-B (nats)": [pm(a, b, 4) for a, b in zip(t["LPD Bnotrend-B"], t["LPD Bnotrend-B SE"])]},
            index=t.index)
        L.append(f"**{d}**\n")
        L.append(fmt_table(cols, {"n": "{:d}", "editions": "{:d}"}) + "\n")

    L.append("## What features are worth (variants of B)\n")
    L.append("Differences to B (MAE in minutes: positive, the variant is worse; LPD in nats: negative, the variant is worse).\n")
    for split in ("held-out", "fitted"):
        for d in DISTANCES:
            L.append(f"**{d}, {split}**\n")
            L.append(fmt_table(res[d]["variants"][split], {"n": "{:d}", "MAE B": "{:.1f}", "LPD B": "{:.3f}",
                                                           "MAE *": "{:+.3f}", "LPD *": "{:+.4f}"}) + "\n")
    L.append("**The fitness trend the model ignores** (TREND_SD = 0.006 per year): trend x (season - mean earlier finish "
             "season here), for rows with earlier finishes here; the slope of each residual on it (1: none of it recovered).\n")
    trend = pd.DataFrame({d: {"RMS (log)": dg[d]["trend_gap_rms"],
                              **{f"slope of {c} residual, {s}": dg[d][f"trend_slope_res_{c}_{s}"]
                                 for s in ("held-out", "fitted") for c in ("model", "B", "Bnotrend")}}
                          for d in DISTANCES}).rename_axis("")
    L.append(fmt_table(trend, {d: "{:.3f}" for d in DISTANCES}) + "\n")
    L.append(f"RMS of the exact-age median minus the age group's: {dg['70.3']['step_rms']:.4f} (70.3), "
             f"{dg['140.6']['step_rms']:.4f} (140.6) in logs.\n")

    L.append("## Debut here after finishes at the other distance\n")
    L.append("The sd of the true level (ability + trend) around B's posterior mean (*sd given B*), around a regression on "
             "the model's own feature (hist_rel_other, with log_med and gender), and B's mean posterior sd; *slope*: of the "
             "true latent time and of the model's log p50 on hist_rel_other (with log_med, gender, course). All seasons.\n")
    for d in DISTANCES:
        q = q5[d]
        L.append(f"**{d}**: the model's athlete scale for these athletes (tau_other) {q['tau']:.4f}; the floor if the other distance's ability were known exactly "
                 f"{q['floor']:.4f}.\n")
        L.append(fmt_table(q["spread"], {"n": "{:d}", "sd*": "{:.4f}", "B posterior sd": "{:.4f}", "slope*": "{:.3f}"}) + "\n")
        L.append("Swapping the model's athlete scale for them (tau_other; tau before 2026-12-06) for the true spread inside the model's spread (sd^2 - tau^2 + new^2; Normal approximation):\n")
        L.append(fmt_table(q["swaps"], {"n": "{:d}", "mean sd": "{:.4f}", "cov90": "{:.3f}", "LPD": "{:.4f}",
                                        "sd of z": "{:.3f}"}, index=False) + "\n")
        rs = q["residual_spread"]
        L.append("Spread of log t - log p50 against the model's mean sd: " + "; ".join(
            f"{split} {name}: {a:.4f} vs {b:.4f}" for (split, name), (a, b) in rs.items()) + ".\n")

    L.append("## Diagnostics\n")
    diag = pd.DataFrame({d: {"editions held out": f"{dg[d]['editions_held-out']:d}",
                             **{label: f"{dg[d][key]:+.4f}" for label, key in (
                                 ("row-weighted day effect, held-out", "day_held-out"),
                                 ("row-weighted day effect, fitted", "day_fitted"),
                                 ("bias of A, held-out", "bias_A_held-out"),
                                 ("first races: slope of log p50 - B's log median on the day, fitted", "leak_slope_fitted"),
                                 ("... its correlation, fitted", "leak_corr_fitted"),
                                 ("first races: slope, held-out", "leak_slope_held-out"),
                                 ("... its correlation, held-out", "leak_corr_held-out"))}} for d in DISTANCES})
    L.append(fmt_table(diag.rename_axis(""), {}) + "\n")
    L.append("Near the cutoff (fitted seasons): the share of times under the median, by the headroom log(SQUEEZE_FROM x "
             "cutoff) - B's log median (0.5 if the median is right).\n")
    for d in DISTANCES:
        nc = dg[d]["near_cutoff"].copy()
        nc.index = nc.index.astype(str)
        L.append(f"**{d}**\n")
        L.append(fmt_table(nc.rename_axis("headroom"), {"n": "{:d}", "below*": "{:.3f}"}) + "\n")
    return "\n".join(L)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", choices=list(SETUPS), default="full",
                        help="the world (default full; demo: a quick check of this script on the demo world)")
    parser.add_argument("--output", type=Path, help="the report (default bench/ORACLE.md; required with --size demo)")
    args = parser.parse_args()
    setup = SETUPS[args.size]
    if args.output is None and args.size != "full":
        parser.error("--size demo needs --output (bench/ORACLE.md is the full world's report)")
    output = args.output or REPORT
    t0 = time.perf_counter()
    require_inputs(setup)
    truth = regenerate_truth(setup)
    checks = [f"`simulate_world(\"{setup.size}\", {SEED}, truth=True)` writes "
              f"`{(setup.inputs / 'athlete_race.csv').relative_to(REPO)}` byte for byte ({len(truth):,} rows)."]
    frame, positions = model_frame(setup)
    log(f"model frame: {len(frame):,} rows")
    rows = joined_rows(setup, frame, positions, truth)
    del frame, truth
    checks.append(f"The model frame rebuilt with the project's readers and `model_frame_and_seasons` has "
                  f"{sum(len(r) for r in rows.values()):,} rows, the input rows its rules keep, each distance's in input "
                  "order; the truth is attached by position.")
    for d, r in rows.items():
        named = r.athlete_hash.notna()
        dup = int(r[named].duplicated(["athlete_hash", "event_name", "event_year"]).sum())
        checks.append(f"{d}: `bayesian_predictions_{d}.csv` lines up row by row ({len(r):,} rows; athlete_hash, "
                      f"event_name, event_year and total_sec equal), so the join is by position: {int((~named).sum()):,} "
                      f"rows have a blank athlete_hash; named rows have {dup} duplicate (athlete, event, season) keys.")
    # the athlete scale of a debut after the other distance: tau_other since 2026-12-06 (the
    # other distance's level is known at the first finish here), tau for an older posterior
    means = pd.read_csv(setup.outputs / "forecast_posterior_means.csv", dtype={"distance": str}).set_index("distance")
    tau = means["tau_other"].fillna(means["tau"]) if "tau_other" in means else means["tau"]
    for r in rows.values():
        add_groups(r)
        score_model(r)
        oracle_a(r)
        log(f"{DISTANCES[int(r['dd'].iloc[0])]}: model and oracle A")
    oracle_b(rows)
    held = sorted({int(y) for r in rows.values() for y in r.loc[r["held_out"].to_numpy(), "event_year"].unique()})
    res = {"checks": checks, "held_out_seasons": ", ".join(map(str, held))}
    for d, r in rows.items():
        res[d] = {"tables": {s: group_table(r, s) for s in ("held-out", "fitted")},
                  "variants": {s: variants_table(r, s) for s in ("held-out", "fitted")},
                  "clustered": clustered_table(r), "q5": debut_after_other(r, float(tau[d])), "diagnostics": diagnostics(r)}
        log(f"{d}: tables")
    output.write_text(report(setup, res, time.perf_counter() - t0))
    log(f"wrote {output}")


if __name__ == "__main__":
    main()
