r"""Exact full-data posterior: integrate out the coefficients, run NUTS on the four scales.

Write the model of :mod:`racedayai_bayes.lib.model` as :math:`y = Xb + \varepsilon` (column
layout in :mod:`racedayai_bayes.lib.suffstats`). Given the scales
:math:`\theta = (\sigma, \sigma_g, \sigma_a, \sigma_c)` the prior on b is Gaussian,
:math:`b \sim N(m_0, D)` with

.. math::

    m_0 = (0, 0_{n_g}, 0_{n_a}, 0_{n_c}, 0.3, -0.1),\qquad
    D = \mathrm{diag}(1, \sigma_g^2 1_{n_g}, \sigma_a^2 1_{n_a}, \sigma_c^2 1_{n_c},
                      0.2^2, 0.1^2),

so :math:`y \mid \theta \sim N(X m_0, \sigma^2 I + X D X^\top)`. With :math:`r = y - X m_0`,
:math:`X^\top r = X^\top y - X^\top X m_0`,
:math:`r^\top r = y^\top y - 2 m_0^\top X^\top y + m_0^\top X^\top X m_0` and the
well-conditioned K x K matrix (eigenvalues >= 1, no division by a small group scale)

.. math::

    B = I + D^{1/2} X^\top X D^{1/2} / \sigma^2 = L L^\top,\qquad
    u = D^{1/2} X^\top r / \sigma^2,\qquad w = L^{-1} u,

the determinant lemma (:math:`|\sigma^2 I + XDX^\top| = \sigma^{2n} |B|`) and Woodbury give

.. math::

    \log p(y \mid \theta) = -\tfrac{n}{2}\log(2\pi\sigma^2) - \textstyle\sum_k \log L_{kk}
        - \tfrac12 \left(r^\top r / \sigma^2 - w^\top w\right).

(This is the usual :math:`P = D^{-1} + X^\top X/\sigma^2` form with
:math:`P = D^{-1/2} B D^{-1/2}`.) The conditional posterior of b is
:math:`N(m_0 + D^{1/2} B^{-1} u,\ D^{1/2} B^{-1} D^{1/2})`, so one exact draw is

.. math::

    b = m_0 + D^{1/2} L^{-\top} (w + z),\qquad z \sim N(0, I_K).

NUTS samples :math:`p(\theta \mid y) \propto p(\theta)\, p(y \mid \theta)` (four
dimensions, each gradient one K x K Cholesky); one exact b per scale draw then gives exact
draws from the joint posterior of the notebook's model, whatever the number of rows.
"""

from __future__ import annotations

import functools
import time

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
from jax.scipy.linalg import solve_triangular

from .encoding import Design
from .inference import SCALAR_SITES, SCALE_SITES, VECTOR_SITES, Draws, ProgressFn, run_nuts
from .model import (
    PRIOR_BETA_EXPERIENCE,
    PRIOR_BETA_FITNESS,
    PRIOR_GROUP_SCALE,
    PRIOR_MU_GLOBAL_SD,
    PRIOR_SIGMA_SCALE,
)
from .suffstats import SuffStats, column_slices, sufficient_stats

_COEFFICIENT_STREAM = 7  # fold_in tag: keeps the b draws' key apart from run_nuts' chain keys


def prior_mean(n_gender: int, n_age: int, n_cluster: int) -> np.ndarray:
    """m0, the prior mean of b in the column order of X."""
    m0 = np.zeros(3 + n_gender + n_age + n_cluster)
    m0[-2], m0[-1] = PRIOR_BETA_FITNESS[0], PRIOR_BETA_EXPERIENCE[0]
    return m0


def _prior_sd(sigma_gender, sigma_age, sigma_cluster, n_gender, n_age, n_cluster):
    """Square root of diag(D), as a jax array."""
    one = jnp.ones(())
    return jnp.concatenate([
        jnp.atleast_1d(PRIOR_MU_GLOBAL_SD * one),
        jnp.full((n_gender,), sigma_gender),
        jnp.full((n_age,), sigma_age),
        jnp.full((n_cluster,), sigma_cluster),
        jnp.atleast_1d(PRIOR_BETA_FITNESS[1] * one),
        jnp.atleast_1d(PRIOR_BETA_EXPERIENCE[1] * one),
    ])


def _factor(sigma, sigma_gender, sigma_age, sigma_cluster, xtx, xty, yty, *, sizes):
    """(L, w, sqrt(diag D), m0, r'r) of the module docstring."""
    m0 = jnp.asarray(prior_mean(*sizes))
    sd = _prior_sd(sigma_gender, sigma_age, sigma_cluster, *sizes)
    s2 = sigma**2
    xtr = xty - xtx @ m0
    rtr = yty - 2.0 * m0 @ xty + m0 @ xtx @ m0
    chol = jnp.linalg.cholesky(jnp.eye(sd.shape[0]) + sd[:, None] * xtx * sd[None, :] / s2)
    w = solve_triangular(chol, sd * xtr / s2, lower=True)
    return chol, w, sd, m0, rtr


def _log_marginal(sigma, sigma_gender, sigma_age, sigma_cluster, xtx, xty, yty, n, *, sizes):
    chol, w, _, _, rtr = _factor(sigma, sigma_gender, sigma_age, sigma_cluster, xtx, xty, yty,
                                 sizes=sizes)
    s2 = sigma**2
    return (-0.5 * n * jnp.log(2.0 * jnp.pi * s2) - jnp.sum(jnp.log(jnp.diag(chol)))
            - 0.5 * (rtr / s2 - w @ w))


def _draw_b(sigma, sigma_gender, sigma_age, sigma_cluster, z, xtx, xty, yty, *, sizes):
    chol, w, sd, m0, _ = _factor(sigma, sigma_gender, sigma_age, sigma_cluster, xtx, xty, yty,
                                 sizes=sizes)
    return m0 + sd * solve_triangular(chol.T, w + z, lower=False)


# one compiled function per (shape, sizes): repeated fits of equal-sized problems reuse it
_draw_b_batch = jax.jit(
    jax.vmap(_draw_b, in_axes=(0, 0, 0, 0, 0, None, None, None)), static_argnames="sizes"
)


def _stats_kwargs(stats: SuffStats) -> dict:
    return dict(
        xtx=jnp.asarray(stats.xtx, dtype=jnp.float64),
        xty=jnp.asarray(stats.xty, dtype=jnp.float64),
        yty=jnp.asarray(stats.yty, dtype=jnp.float64),
        n=jnp.asarray(float(stats.n), dtype=jnp.float64),
    )


def _sizes(stats: SuffStats) -> tuple[int, int, int]:
    # (n_gender, n_age, n_cluster): hashable, so it can be a static argument of jax.jit
    return (stats.n_gender, stats.n_age, stats.n_cluster)


def log_marginal_likelihood(
    stats: SuffStats, *, sigma: float, sigma_gender: float, sigma_age: float,
    sigma_cluster: float,
) -> float:
    """log p(y | scales) with b integrated out, from the sufficient statistics alone."""
    kw = _stats_kwargs(stats)
    return float(_log_marginal(sigma, sigma_gender, sigma_age, sigma_cluster, **kw,
                               sizes=_sizes(stats)))


def collapsed_model(xtx, xty, yty, n, *, n_gender: int, n_age: int, n_cluster: int):
    """NumPyro model of the scales: the seed's HalfNormal priors plus log p(y | scales)."""
    sigma_gender = numpyro.sample("sigma_gender", dist.HalfNormal(PRIOR_GROUP_SCALE))
    sigma_age = numpyro.sample("sigma_age", dist.HalfNormal(PRIOR_GROUP_SCALE))
    sigma_cluster = numpyro.sample("sigma_cluster", dist.HalfNormal(PRIOR_GROUP_SCALE))
    sigma = numpyro.sample("sigma", dist.HalfNormal(PRIOR_SIGMA_SCALE))
    sizes = (n_gender, n_age, n_cluster)
    numpyro.factor(
        "log_marginal_likelihood",
        _log_marginal(sigma, sigma_gender, sigma_age, sigma_cluster, xtx, xty, yty, n,
                      sizes=sizes),
    )


def initial_scales(stats: SuffStats) -> dict[str, float]:
    """A sensible starting point for NUTS, from the statistics (a few K x K solves).

    Starting at the prior median would put sigma (posterior sd ~ 1/sqrt(2n)) thousands of
    posterior sds from its mode, and early warmup would spend many long trajectories there.
    """
    k = stats.num_columns
    xtx, xty = stats.xtx, stats.xty
    # sigma: residual of a least-squares fit. X is rank-deficient (each one-hot block sums
    # to the intercept column), so add a ridge far below the data's scale.
    ridge = 1e-9 * max(float(np.trace(xtx)) / k, 1.0)
    b = np.linalg.solve(xtx + ridge * np.eye(k), xty)
    rss = max(stats.yty - 2.0 * b @ xty + b @ xtx @ b, 0.0)
    dof = stats.n - np.linalg.matrix_rank(xtx)
    sigma = np.sqrt(rss / dof) if dof > 0 else PRIOR_SIGMA_SCALE * 0.6745  # prior median
    sigma = float(np.clip(sigma, 1e-3, 10.0))
    # group scales: spread of the group coefficients of the posterior mean at the prior's
    # median scale; shrinking groups with few rows keeps their noise out of the spread.
    sl = column_slices(**stats.sizes)
    median = PRIOR_GROUP_SCALE * 0.6745
    sd = np.asarray(_prior_sd(median, median, median, **stats.sizes))
    m0 = prior_mean(**stats.sizes)
    prec = xtx / sigma**2 + np.diag(1.0 / sd**2)
    b = np.linalg.solve(prec, xty / sigma**2 + m0 / sd**2)
    out = {"sigma": sigma}
    for site in SCALE_SITES[1:]:
        coef = b[sl["mu_" + site.removeprefix("sigma_")]]
        spread = float(np.std(coef, ddof=1)) if coef.size > 1 else median
        out[site] = float(np.clip(spread, 0.02, 2.0))
    return out


def conditional_posterior(
    stats: SuffStats, *, sigma: float, sigma_gender: float, sigma_age: float,
    sigma_cluster: float,
) -> tuple[np.ndarray, np.ndarray]:
    """Mean and covariance of b given the scales (for checks; the sampler never forms them)."""
    kw = _stats_kwargs(stats)
    del kw["n"]
    chol, w, sd, m0, _ = (np.asarray(a) for a in _factor(
        sigma, sigma_gender, sigma_age, sigma_cluster, **kw, sizes=_sizes(stats)))
    lt_inv = np.linalg.inv(chol.T)
    mean = m0 + sd * (lt_inv @ w)
    cov = (sd[:, None] * lt_inv) @ (lt_inv.T * sd[None, :])
    return mean, cov
