"""Predictions from a posterior for any model-frame rows (the seed's sections 5 and 6).

A row whose age group or cluster the posterior never saw gets a *new* group effect from the
population distribution N(0, sigma_group): zero in the posterior-mean prediction, and its
variance added to the predictive spread. It never silently borrows group 0.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from .encoding import Design, Encoding, encode
from .frame import MODEL_DISTANCES
from .inference import Draws

PREDICTION_COLUMNS = ("athlete_hash", "event_distance", "event_year", "total_sec", "bayes_pred", "bayes_std")
_GROUPS = (("age_idx", "mu_age", "sigma_age"), ("cluster_idx", "mu_cluster", "sigma_cluster"))


def posterior_means(draws: Draws) -> dict[str, np.ndarray]:
    return {name: draws.flat(name).mean(axis=0) for name in draws.samples}


def _effect(values: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """values[..., idx] with UNSEEN (-1) indices given 0; values has a trailing group axis."""
    safe = np.where(idx < 0, 0, idx)
    return np.where(idx < 0, 0.0, np.take(values, safe, axis=-1))


def _row_effect(values: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """values[idx] for a (groups, draws) array, with UNSEEN (-1) rows given 0."""
    safe = np.where(idx < 0, 0, idx)
    return np.where((idx < 0)[:, None], 0.0, values[safe])


def row_quantiles(values: np.ndarray, qs: tuple[float, ...]) -> list[np.ndarray]:
    """Per-row quantiles, identical to np.quantile(values, qs, axis=1) (linear method).

    One np.partition at the needed order statistics replaces np.quantile's more general
    path, which is about 2.5x slower on (rows, 1000 draws) blocks.
    """
    n = values.shape[1]
    pos = [q * (n - 1) for q in qs]
    lo = [int(np.floor(x)) for x in pos]
    hi = [min(i + 1, n - 1) for i in lo]
    part = np.partition(values, sorted(set(lo + hi)), axis=1)
    return [part[:, a] + (x - a) * (part[:, b] - part[:, a]) for x, a, b in zip(pos, lo, hi)]


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


def predict_frame(draws: Draws, enc: Encoding, frame: pd.DataFrame) -> pd.DataFrame:
    """The contract's prediction table for ``frame`` (seconds), in frame order."""
    design = encode(frame, enc)
    mu, sd = mean_prediction(draws, design)
    out = frame[["athlete_hash", "event_distance", "event_year", "total_sec"]].copy()
    out["bayes_pred"] = mu * enc.y_std + enc.y_mean
    out["bayes_std"] = sd * enc.y_std
    return out.reset_index(drop=True)


def predictive_summary(
    draws: Draws,
    enc: Encoding,
    design: Design,
    *,
    max_draws: int = 1000,
    seed: int = 1,
    chunk_rows: int = 20_000,
) -> dict[str, np.ndarray]:
    """Posterior predictive mean, sd and 5/50/95% quantiles per row, in seconds.

    Uses up to ``max_draws`` posterior draws (evenly thinned) and one simulated finish time
    per draw and row, processed in row chunks so memory stays at chunk_rows x max_draws.
    """
    # one stream per purpose, drawn row by row, so results do not depend on chunk_rows
    noise_rng, *group_rngs = np.random.default_rng(seed).spawn(1 + len(_GROUPS))
    total = draws.num_chains * draws.num_draws
    pick = np.unique(np.linspace(0, total - 1, min(max_draws, total)).round().astype(int))
    # rows x draws layout: every per-row reduction below runs over contiguous memory
    p = {name: np.ascontiguousarray(draws.flat(name)[pick].T) for name in draws.samples}
    out = {k: np.empty(len(design)) for k in ("mean", "sd", "p05", "p50", "p95")}
    for start in range(0, len(design), chunk_rows):
        sl = slice(start, start + chunk_rows)
        g, f, e = design.gender_idx[sl], design.fitness[sl], design.experience[sl]
        mu = (
            p["mu_global"][None, :]
            + p["mu_gender"][g]
            + f[:, None] * p["beta_fitness"][None, :]
            + e[:, None] * p["beta_experience"][None, :]
        )
        for (idx_name, site, scale), grng in zip(_GROUPS, group_rngs):
            idx = getattr(design, idx_name)[sl]
            mu += _row_effect(p[site], idx)
            unseen = idx < 0
            if unseen.any():
                mu[unseen] += grng.standard_normal((int(unseen.sum()), len(pick))) * p[scale][None, :]
        mu += noise_rng.standard_normal(mu.shape) * p["sigma"][None, :]
        sim = mu
        sim *= enc.y_std
        sim += enc.y_mean
        out["mean"][sl] = sim.mean(axis=1)
        out["sd"][sl] = sim.std(axis=1)
        out["p05"][sl], out["p50"][sl], out["p95"][sl] = row_quantiles(sim, (0.05, 0.5, 0.95))
    return out


def posterior_means_row(draws: Draws, distance: str) -> dict[str, float]:
    """One row of bayesian_posterior_means.csv: scalars by name, vectors as name_i."""
    row: dict[str, float | str] = {"distance": distance}
    for name, value in sorted(posterior_means(draws).items()):
        if np.ndim(value) == 0:
            row[name] = float(value)
        else:
            row.update({f"{name}_{i}": float(v) for i, v in enumerate(value)})
    return row


def means_table(
    rows: dict[str, dict], previous: pd.DataFrame | None = None, keep: tuple[str, ...] = ()
) -> pd.DataFrame:
    """The table of bayesian_posterior_means.csv: one row per distance, in ``MODEL_DISTANCES`` order.

    ``rows`` maps a distance to its fresh row (:func:`posterior_means_row`); for each distance
    in ``keep`` the row of ``previous`` (the file as last written) is carried over unchanged,
    so a distance whose new posterior is blocked keeps its last good values.
    """
    carried = {}
    if previous is not None and len(previous):
        for d in keep:
            match = previous.loc[previous["distance"].astype(str) == d]
            if len(match):
                carried[d] = {k: v for k, v in match.iloc[0].items() if not pd.isna(v)}
    table = {**carried, **rows}
    order = [d for d in MODEL_DISTANCES if d in table]
    return pd.DataFrame([table[d] for d in order])

