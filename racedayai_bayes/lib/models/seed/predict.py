"""Predictions from a posterior for any model-frame rows (the seed's sections 5 and 6).

A row whose age group or cluster the posterior never saw gets a *new* group effect from the
population distribution N(0, sigma_group): zero in the posterior-mean prediction, and its
variance added to the predictive spread. It never silently borrows group 0.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pandas as pd

from racedayai_bayes.lib.arrays import unique_inverse
from racedayai_bayes.lib.data.frame import MODEL_DISTANCES
from racedayai_bayes.lib.inference.draws import Draws, log_mean_exp
from racedayai_bayes.lib.models.base import INTERVAL_COLUMNS, PREDICTION_COLUMNS, ProgressFn
from racedayai_bayes.lib.models.seed.encoding import Design, Encoding, encode
from racedayai_bayes.lib.runreport import every_tenth, with_progress

_GROUPS = (("age_idx", "mu_age", "sigma_age"), ("cluster_idx", "mu_cluster", "sigma_cluster"))


def posterior_means(draws: Draws) -> dict[str, np.ndarray]:
    return {name: draws.flat(name).mean(axis=0) for name in draws.samples}


def _effect(values: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """values[..., idx] with UNSEEN (-1) indices given 0; values has a trailing group axis."""
    safe = np.where(idx < 0, 0, idx)
    return np.where(idx < 0, 0.0, np.take(values, safe, axis=-1))


def mean_prediction(draws: Draws, design: Design) -> tuple[np.ndarray, np.ndarray]:
    """Posterior-mean linear predictor and predictive sd, both on the standardised scale.

    As in the seed, the sd is the posterior mean of sigma; rows with an unseen group add
    that group's scale in quadrature.
    """
    pm = posterior_means(draws)
    mu = (
        pm["mu_global"]
        + pm["mu_gender"][design.gender_idx]
        + _effect(pm["mu_age"], design.age_idx)
        + _effect(pm["mu_cluster"], design.cluster_idx)
        + pm["beta_fitness"] * design.fitness
        + pm["beta_experience"] * design.experience
    )
    var = np.full(len(design), float(pm["sigma"]) ** 2)
    for idx_name, _, scale in _GROUPS:
        var = var + np.where(getattr(design, idx_name) < 0, float(pm[scale]) ** 2, 0.0)
    return mu, np.sqrt(var)


PREDICTION_INTERVAL_COLUMNS = INTERVAL_COLUMNS
QUANTILES = (0.05, 0.5, 0.95)


def predict_frame(
    draws: Draws,
    enc: Encoding,
    frame: pd.DataFrame,
    *,
    interval_draws: int = 1000,
    seed: int = 1,
    workers: int | None = None,
    progress: ProgressFn = None,
) -> pd.DataFrame:
    """The contract's prediction table for ``frame`` (seconds), in frame order.

    The contract's columns come first and keep the seed's meaning (posterior-mean
    prediction, posterior mean of sigma); ``bayes_p05, bayes_p50, bayes_p95`` follow: the
    5/50/95% quantiles of the posterior predictive, so parameter uncertainty is included.
    ``progress`` hears how many rows' intervals are done, about ten times.
    """
    design = encode(frame, enc)
    mu, sd = mean_prediction(draws, design)
    out = frame[["athlete_hash", "event_distance", "event_year", "total_sec"]].copy()
    out["bayes_pred"] = mu * enc.y_std + enc.y_mean
    out["bayes_std"] = sd * enc.y_std
    if interval_draws > 0:
        pp = predictive_summary(
            draws, enc, design, max_draws=interval_draws, seed=seed, workers=workers, progress=progress
        )
        for column, key in zip(PREDICTION_INTERVAL_COLUMNS, ("p05", "p50", "p95")):
            out[column] = pp[key]
    return out.reset_index(drop=True)


def thinned_draws(total: int, max_draws: int) -> np.ndarray:
    """Indices of up to ``max_draws`` evenly spaced draws out of ``total`` (chains stacked)."""
    return np.unique(np.linspace(0, total - 1, min(max_draws, total)).round().astype(int))


def stratified_normal(rng: np.random.Generator, n: int) -> np.ndarray:
    """n standard normals, one from each of n equal-probability strata, in random order.

    Latin hypercube sampling: an unbiased sample of N(0, 1) whose empirical quantiles are
    nearly exact, so quantiles of (linear predictor + noise) carry almost no noise error.
    """
    from scipy.special import ndtri

    return ndtri((rng.permutation(n) + rng.random(n)) / n)


def _combinations(p: dict[str, np.ndarray], design: Design) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per (gender, age group, cluster) combination present: the intercept and the noise
    variance of each draw. Returns (mu, var, inverse): ``mu[k, d]`` = mu_global + the seen
    group effects of combination k, ``var[k, d]`` = sigma^2 plus sigma_group^2 for each
    unseen group (a new group's effect is a N(0, sigma_group) draw), and ``inverse`` maps
    each row to its combination."""
    n_age, n_cluster = design.n_age + 1, design.n_cluster + 1  # the last index is "new group"
    a = np.where(design.age_idx < 0, design.n_age, design.age_idx)
    c = np.where(design.cluster_idx < 0, design.n_cluster, design.cluster_idx)
    codes, inverse = unique_inverse((design.gender_idx * n_age + a) * n_cluster + c)
    g, rest = np.divmod(codes, n_age * n_cluster)
    ua, uc = np.divmod(rest, n_cluster)
    new_age, new_cluster = (ua == design.n_age)[:, None], (uc == design.n_cluster)[:, None]
    ages = np.vstack([p["mu_age"].T, np.zeros_like(p["sigma"])])
    clusters = np.vstack([p["mu_cluster"].T, np.zeros_like(p["sigma"])])
    var = (
        p["sigma"][None, :] ** 2
        + np.where(new_age, p["sigma_age"][None, :] ** 2, 0.0)
        + np.where(new_cluster, p["sigma_cluster"][None, :] ** 2, 0.0)
    )
    mu = p["mu_global"][None, :] + p["mu_gender"].T[g] + ages[ua] + clusters[uc]
    return mu, var, inverse.reshape(-1)


def _combination_table(p: dict[str, np.ndarray], design: Design, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Per combination (:func:`_combinations`), one simulated intercept per draw.

    Returns (table, inverse): ``table[k, d]`` = the combination's intercept + s * z[d]. Given
    the draw's parameters, the noise and the effect of each unseen group are independent
    normals, so together they are one normal with variance s^2 (``var``); z is one
    stratified N(0, 1) sample shared by all combinations.
    """
    z = stratified_normal(rng, len(p["sigma"]))
    mu, var, inverse = _combinations(p, design)
    return mu + np.sqrt(var) * z[None, :], inverse


def log_density(draws: Draws, enc: Encoding, design: Design, total_sec: np.ndarray, *,
                max_draws: int = 200, chunk_rows: int = 1024) -> np.ndarray:
    """log p(total_sec) in seconds per row: the log of the mean over (evenly thinned) draws of
    the Normal density of the standardised time, minus log(y_std) (the Jacobian). In chunks of
    1,024 rows, whose temporaries stay in the CPU's caches (200,000 rows, 2026-12-06: 0.26 s
    against 0.34 s in chunks of 8,192 with the steps' allocator settings, 0.25 against
    0.39 s with glibc's defaults)."""
    pick = thinned_draws(draws.num_chains * draws.num_draws, max_draws)
    p = {name: draws.flat(name)[pick] for name in draws.samples}
    mu_table, var_table, inverse = _combinations(p, design)
    y = (np.asarray(total_sec, dtype=np.float64) - enc.y_mean) / enc.y_std
    out = np.empty(len(y))
    for lo in range(0, len(y), chunk_rows):
        rows = slice(lo, lo + chunk_rows)
        k = inverse[rows]
        mu = (mu_table[k] + design.fitness[rows, None] * p["beta_fitness"][None, :]
              + design.experience[rows, None] * p["beta_experience"][None, :])
        var = var_table[k]
        lp = -0.5 * np.log(2.0 * np.pi * var) - 0.5 * (y[rows, None] - mu) ** 2 / var
        out[rows] = log_mean_exp(lp) - np.log(enc.y_std)
    return out


ORDER_WINDOW = 16  # draws either side of a wanted order statistic that _order_statistics sorts


def _order_statistics(sim: np.ndarray, wanted: list[int], window: int = ORDER_WINDOW) -> dict[int, np.ndarray]:
    """The ``wanted`` order statistics (0-based ranks) of each row of ``sim`` (floats), exactly,
    fast for rows that are nearly sorted already.

    A row's simulated values are its combination's simulated intercepts plus its slopes'
    terms, with the draws in the order of those intercepts: the slopes' terms vary little
    from draw to draw, so each value sits within a few places of its rank (a row's largest
    displacement: 5 places or fewer in nine rows of ten of the full-scale 70.3 seed_asof
    posterior, 13 or fewer in the demo's, 2026-12-06).

    For rank k, sort only the places [a, b) around it, and let x be the window's (k - a)-th
    smallest value. If no value before the window is above x and none after it is below x,
    then at most k values are below x and at least k + 1 are at most x: x is the row's k-th
    order statistic. The check is a maximum and a minimum per segment of the row (a NaN
    outside the window fails it; one inside sorts last, as in a full sort). A row that fails
    it for any rank (a value far from its place: very uncertain parameters, or an unseen
    group whose scale varies from draw to draw) is sorted whole. Either way each value is the
    one a full sort gives (which of an equal -0.0 and +0.0 it is may differ: no sort defines
    that).
    """
    if not all(0 <= k < sim.shape[1] for k in wanted):
        raise ValueError(f"ranks {wanted} are not all within a row of {sim.shape[1]} values")
    rows, n = sim.shape
    windows = []  # merged, non-overlapping [a, b) around the wanted ranks, in order
    for k in sorted(wanted):
        a, b = max(k - window, 0), min(k + window + 1, n)
        if windows and a <= windows[-1][1]:
            windows[-1][1] = max(windows[-1][1], b)
        else:
            windows.append([a, b])
    if sum(b - a for a, b in windows) * 2 >= n:  # few draws: the windows are most of the row
        ordered = np.sort(sim, axis=1)
        return {k: ordered[:, k] for k in wanted}
    cuts = [0, *(c for w in windows for c in w), n]  # segments: gap, window, gap, window, ..., gap
    seg_max = [sim[:, lo:hi].max(axis=1) if hi > lo else None for lo, hi in zip(cuts[:-1], cuts[1:])]
    seg_min = [sim[:, lo:hi].min(axis=1) if hi > lo else None for lo, hi in zip(cuts[:-1], cuts[1:])]
    before, after = [None] * len(seg_max), [None] * len(seg_min)  # max before / min after each segment
    running = np.full(rows, -np.inf, dtype=sim.dtype)
    for i in range(len(seg_max)):
        before[i] = running.copy()
        if seg_max[i] is not None:
            np.maximum(running, seg_max[i], out=running)
    running = np.full(rows, np.inf, dtype=sim.dtype)
    for i in range(len(seg_min) - 1, -1, -1):
        after[i] = running.copy()
        if seg_min[i] is not None:
            np.minimum(running, seg_min[i], out=running)
    ok = np.ones(rows, dtype=bool)
    out: dict[int, np.ndarray] = {}
    for w, (a, b) in enumerate(windows):
        seg = 2 * w + 1  # the window's own segment
        part = np.sort(sim[:, a:b], axis=1)
        for k in wanted:
            if a <= k < b:
                x = out[k] = part[:, k - a]
                ok &= (before[seg] <= x) & (after[seg] >= x)
    bad = np.flatnonzero(~ok)
    if len(bad):
        ordered = np.sort(sim[bad], axis=1)
        for k in wanted:
            out[k][bad] = ordered[:, k]
    return out


def predictive_summary(
    draws: Draws,
    enc: Encoding,
    design: Design,
    *,
    max_draws: int = 1000,
    seed: int = 1,
    chunk_rows: int = 1024,
    workers: int | None = None,
    progress: ProgressFn = None,
) -> dict[str, np.ndarray]:
    """Posterior predictive mean, sd and 5/50/95% quantiles per row, in seconds.

    Uses up to ``max_draws`` posterior draws (evenly thinned) and one simulated finish time
    per draw and row: linear predictor + noise, plus a new group effect for unseen groups.
    The noise is one stratified N(0, 1) sample per draw, shared by all rows (see
    :func:`_combination_table`); each row's draws are still an exact sample of its
    predictive distribution, and the stratification keeps its quantiles nearly free of
    Monte Carlo noise when the parameters are well determined.

    Sharing z lets every (gender, age, cluster) combination's intercepts be simulated once,
    so a row costs three gathers and two multiply-adds over the draws, in float32, and the
    quantiles' order statistics (:func:`_order_statistics`: those of a full sort, from
    about a hundred of the draws and a maximum and a minimum over the row, in most rows),
    in row chunks on ``workers`` threads (numpy releases the GIL). A chunk of 1,024 rows of
    1,000 draws (4 MB, and as much again for the slopes' terms) stays in the CPU's shared cache.
    Measured on 200,000 rows, one thread, with the steps' allocator settings
    (step_server.STEP_MALLOC_ENV), 2026-12-06: 0.48-0.54 s against 1.45-1.49 s with a
    sort of every row in chunks of 4,096 (the method before), on the full-scale and the
    demo's 70.3 seed posteriors alike; in chunks of 4,096 this method took 1.9 times as
    long. The mean and sd are exact moments of those draws, computed in float64 from
    per-combination covariances. Results do not depend on chunk_rows or workers.
    """
    pick = thinned_draws(draws.num_chains * draws.num_draws, max_draws)
    p = {name: draws.flat(name)[pick] for name in draws.samples}
    table, inverse = _combination_table(p, design, np.random.default_rng(seed))
    slopes = np.vstack([p["beta_fitness"], p["beta_experience"]])  # (2, draws)

    # exact mean and variance over draws of table[k] + f * b_f + e * b_e
    t_mean, s_mean = table.mean(axis=1), slopes.mean(axis=1)
    t_dev, s_dev = table - t_mean[:, None], slopes - s_mean[:, None]
    n = len(pick)
    t_var = np.einsum("kd,kd->k", t_dev, t_dev) / n
    t_s_cov = t_dev @ s_dev.T / n  # (combinations, 2)
    s_cov = s_dev @ s_dev.T / n  # (2, 2)
    f, e = design.fitness, design.experience
    var = (
        t_var[inverse]
        + 2 * (f * t_s_cov[inverse, 0] + e * t_s_cov[inverse, 1])
        + f * f * s_cov[0, 0] + e * e * s_cov[1, 1] + 2 * f * e * s_cov[0, 1]
    )
    out = {
        "mean": (t_mean[inverse] + f * s_mean[0] + e * s_mean[1]) * enc.y_std + enc.y_mean,
        "sd": np.sqrt(np.clip(var, 0.0, None)) * enc.y_std,
    }
    for key in ("p05", "p50", "p95"):
        out[key] = np.empty(len(design))

    # each combination's draws in the order of its simulated intercepts: a row's simulated
    # values (the intercept plus its slopes' terms, which vary little from draw to draw) are
    # then nearly sorted (see _order_statistics), and their multiset, so every quantile, is
    # the same as in any order. The slopes' draws go with each combination's order.
    order = np.argsort(table, axis=1, kind="stable")
    table32 = np.take_along_axis(table, order, axis=1).astype(np.float32)
    b_f, b_e = (s.astype(np.float32)[order] for s in slopes)  # (combinations, draws)
    f32, e32 = f[:, None].astype(np.float32), e[:, None].astype(np.float32)
    positions = [q * (n - 1) for q in QUANTILES]
    wanted = sorted({k for pos in positions for k in (int(np.floor(pos)), min(int(np.floor(pos)) + 1, n - 1))})

    def quantiles(start: int) -> None:
        rows = slice(start, start + chunk_rows)
        k = inverse[rows]
        # elementwise, not a BLAS product: BLAS kernels (and their FMA use) vary by CPU and
        # build, and the CSV's digits must not. The same float32 operations, in the same
        # order, as intercept + fitness * slope + experience * slope for each draw
        sim = table32[k]
        term = b_f[k]
        term *= f32[rows]
        sim += term
        np.take(b_e, k, axis=0, out=term, mode="clip")  # k is in range; "raise" would copy through a buffer
        term *= e32[rows]
        sim += term
        del term
        ranked = _order_statistics(sim, wanted)
        for key, pos in zip(("p05", "p50", "p95"), positions):
            lo = int(np.floor(pos))
            hi = min(lo + 1, n - 1)
            a, b = ranked[lo].astype(np.float64), ranked[hi].astype(np.float64)
            out[key][rows] = (a + (pos - lo) * (b - a)) * enc.y_std + enc.y_mean

    starts = range(0, len(design), chunk_rows)
    report_after = every_tenth(len(starts)) if progress is not None else set()

    def done(count: int) -> None:
        if count in report_after:
            rows = min(count * chunk_rows, len(design))
            progress(with_progress(f"predictive intervals of {rows:,}/{len(design):,} rows", rows, len(design)))

    workers = workers or min(2, os.cpu_count() or 1)
    if workers > 1 and len(design) > chunk_rows:
        with ThreadPoolExecutor(workers) as pool:
            for count, _ in enumerate(pool.map(quantiles, starts), start=1):
                done(count)
    else:
        for count, start in enumerate(starts, start=1):
            quantiles(start)
            done(count)
    return out


def predictive_draws(
    draws: Draws, enc: Encoding, design: Design, *, draws_per_chain: int = 200, seed: int = 1
) -> np.ndarray:
    """Posterior predictive draws in seconds, shape (chains, draws_per_chain, rows), float32.

    Unlike :func:`predictive_summary` every row gets its own noise: a joint sample of the
    rows' finish times given the parameters, as stored in a posterior artifact's
    ``posterior_predictive`` group. The encoding keeps no label for groups it never saw, so
    all unseen age groups (and all unseen clusters) of the rows share one new effect per
    draw: each row's marginal is exact, but two rows of *different* unseen groups are more
    correlated than they should be. Draws are thinned evenly within each chain.
    """
    noise_rng, group_rng = np.random.default_rng(seed).spawn(2)
    per_chain = thinned_draws(draws.num_draws, draws_per_chain)
    out = np.empty((draws.num_chains, len(per_chain), len(design)), dtype=np.float32)
    for chain in range(draws.num_chains):
        p = {name: draws.samples[name][chain, per_chain] for name in draws.samples}
        mu = (
            p["mu_global"][:, None]
            + p["mu_gender"][:, design.gender_idx]
            + p["beta_fitness"][:, None] * design.fitness[None, :]
            + p["beta_experience"][:, None] * design.experience[None, :]
        )
        for idx_name, site, scale in _GROUPS:
            idx = getattr(design, idx_name)
            mu += _effect(p[site], idx)
            unseen = idx < 0
            if unseen.any():
                # the encoding keeps no identity of unseen levels: they share one new group per draw
                mu[:, unseen] += (group_rng.standard_normal(len(per_chain)) * p[scale])[:, None]
        mu += noise_rng.standard_normal(mu.shape) * p["sigma"][:, None]
        out[chain] = mu * enc.y_std + enc.y_mean
    return out


def posterior_means_row(draws: Draws) -> dict[str, float]:
    """Posterior means as one row of bayesian_posterior_means.csv: scalars by name, vectors
    as name_i, in sorted site order (the notebook's layout)."""
    row: dict[str, float] = {}
    for name, value in sorted(posterior_means(draws).items()):
        if np.ndim(value) == 0:
            row[name] = float(value)
        else:
            row.update({f"{name}_{i}": float(v) for i, v in enumerate(value)})
    return row
