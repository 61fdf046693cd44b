r"""Exact full-data posterior: integrate out the coefficients, run NUTS on the four scales.

Write the model of :mod:`racedayai_bayes.lib.models.seed.model` as :math:`y = Xb + \varepsilon` (columns
as in :mod:`racedayai_bayes.lib.models.seed.suffstats`). Given :math:`\theta = \log(\sigma, \sigma_g,
\sigma_a, \sigma_c)` the prior on b is :math:`N(m_0, D)`,
:math:`m_0 = (0, 0_{n_g}, 0_{n_a}, 0_{n_c}, 0.3, -0.1)`,
:math:`D = \mathrm{diag}(1, \sigma_g^2 1_{n_g}, \sigma_a^2 1_{n_a}, \sigma_c^2 1_{n_c}, 0.2^2,
0.1^2)`, so :math:`y \mid \theta \sim N(X m_0, \sigma^2 I + X D X^\top)`. With
:math:`r = y - X m_0` (:math:`X^\top r = X^\top y - X^\top X m_0`,
:math:`r^\top r = y^\top y - 2 m_0^\top X^\top y + m_0^\top X^\top X m_0`) and the K x K
matrix :math:`B = I + D^{1/2} X^\top X D^{1/2} / \sigma^2 = L L^\top` (eigenvalues >= 1, no
division by a small group scale), :math:`u = D^{1/2} X^\top r / \sigma^2`,
:math:`w = L^{-1} u`, :math:`a = B^{-1} u = L^{-\top} w`, the determinant lemma
(:math:`|\sigma^2 I + XDX^\top| = \sigma^{2n}|B|`) and Woodbury give

.. math::

    \ell(\theta) = \log p(y \mid \theta) = -\tfrac{n}{2}\log(2\pi\sigma^2)
        - \textstyle\sum_k \log L_{kk} - \tfrac12 (r^\top r / \sigma^2 - w^\top w).

The conditional posterior of b is :math:`N(m_0 + D^{1/2} a,\ D^{1/2} B^{-1} D^{1/2})` (the
usual :math:`P^{-1}`, :math:`P = D^{-1} + X^\top X/\sigma^2 = D^{-1/2} B D^{-1/2}`); one exact
draw is :math:`b = m_0 + D^{1/2} L^{-\top} (w + z)`, :math:`z \sim N(0, I)`.

Gradient (Fisher's identity, :math:`\nabla \ell = E_{b \mid y}[\nabla \log p(y, b)]`), with
:math:`\beta = \mathrm{diag}(B^{-1})`:

.. math::

    \partial\ell/\partial\log\sigma = -n + r^\top r/\sigma^2 - w^\top w - a^\top a + K
        - \textstyle\sum_k \beta_k,\qquad
    \partial\ell/\partial\log\sigma_g = \textstyle\sum_{j \in g} (a_j^2 + \beta_j - 1),

likewise for age and cluster. One triangular inverse replaces autodiff through the Cholesky,
which XLA's CPU backend does slowly for K ~ 50.

NUTS samples :math:`p(\theta \mid y) \propto p(\theta)\, p(y \mid \theta)` (HalfNormal priors
of model.py, moved to the log scale). As ``run_nuts`` starts adaptation from a unit mass
matrix and :math:`\log\sigma` is ~1000 times better determined than a group scale, the model
samples whitened coordinates :math:`\theta = \hat\theta + C z` from a Laplace fit
(:math:`\hat\theta` the mode, :math:`CC^\top` the inverse negative Hessian); this is only a
change of variables, so the draws of :math:`\theta` are those of the notebook's posterior.
Every chain starts at z = 0 (the mode), so warmup has no wild first phase.

The Laplace fit, the independence sampler (the default) and the b draws run in numpy (a
K x K problem needs no compile); only the NUTS target is JAX, in exact_nuts.py, which only a
NUTS fit imports. Everything is float64: the statistics of millions of rows need it.
"""

from __future__ import annotations

import time

import numpy as np
import scipy.linalg

from racedayai_bayes.lib.models.seed.encoding import Design
from racedayai_bayes.lib.inference.draws import Draws
from racedayai_bayes.lib.inference.sampler import ProgressFn, Sampler
from racedayai_bayes.lib.models.seed.model import SCALAR_SITES, SCALE_SITES, VECTOR_SITES
from racedayai_bayes.lib.models.seed.model import (
    PRIOR_BETA_EXPERIENCE,
    PRIOR_BETA_FITNESS,
    PRIOR_GROUP_SCALE,
    PRIOR_MU_GLOBAL_SD,
    PRIOR_SIGMA_SCALE,
)
from racedayai_bayes.lib.models.seed.suffstats import SuffStats, column_slices, sufficient_stats

_PRIOR_SCALES = (PRIOR_SIGMA_SCALE, PRIOR_GROUP_SCALE, PRIOR_GROUP_SCALE, PRIOR_GROUP_SCALE)
_COEFFICIENT_STREAM = 7  # seeds the b draws' generator apart from run_nuts' PRNG keys


def prior_mean(n_gender: int, n_age: int, n_cluster: int) -> np.ndarray:
    """m0, the prior mean of b in the column order of X."""
    m0 = np.zeros(3 + n_gender + n_age + n_cluster)
    m0[-2], m0[-1] = PRIOR_BETA_FITNESS[0], PRIOR_BETA_EXPERIENCE[0]
    return m0


def _prior_sd(theta, sizes, xp=np):
    """sqrt(diag D) for log scales theta = (log sigma, log sigma_g, log sigma_a, log sigma_c)."""
    group = xp.exp(theta[1:])
    return xp.concatenate([
        xp.ones(1) * PRIOR_MU_GLOBAL_SD, *(xp.ones(m) * group[i] for i, m in enumerate(sizes)),
        xp.asarray([PRIOR_BETA_FITNESS[1], PRIOR_BETA_EXPERIENCE[1]]),
    ])


def _prior_sd_batch(theta: np.ndarray, sizes) -> np.ndarray:
    """:func:`_prior_sd` for each row of ``theta`` (m, 4) -> (m, K), in one numpy expression."""
    group = np.exp(theta[:, 1:])
    return np.concatenate([np.full((len(theta), 1), PRIOR_MU_GLOBAL_SD),
                           *(np.repeat(group[:, [i]], m, axis=1) for i, m in enumerate(sizes)),
                           np.tile([PRIOR_BETA_FITNESS[1], PRIOR_BETA_EXPERIENCE[1]], (len(theta), 1))], axis=1)


# The maths is written once for numpy (Laplace fit, exact draws: no compile) and jax.numpy
# (the NUTS target, exact_nuts.py): ``lin`` is the array module and its triangular solver.
_NUMPY = (np, scipy.linalg.solve_triangular)


def _forward(theta, xtx, xty, yty, sizes, lin=_NUMPY):
    """(L, w, sqrt(diag D), m0, r'r, sigma^2) of the module docstring."""
    xp, tri = lin
    m0 = xp.asarray(prior_mean(*sizes))
    sd = _prior_sd(theta, sizes, xp)
    s2 = xp.exp(2.0 * theta[0])
    rtr = yty - 2.0 * m0 @ xty + m0 @ xtx @ m0
    chol = xp.linalg.cholesky(xp.eye(sd.shape[0]) + sd[:, None] * xtx * sd[None, :] / s2)
    w = tri(chol, sd * (xty - xtx @ m0) / s2, lower=True)
    return chol, w, sd, m0, rtr, s2


def _value_and_grad(theta, xtx, xty, yty, n, sizes, lin=_NUMPY):
    """log p(y | theta) and its gradient in theta (module docstring)."""
    xp, tri = lin
    chol, w, _, _, rtr, s2 = _forward(theta, xtx, xty, yty, sizes, lin)
    k = w.shape[0]
    value = (-0.5 * n * xp.log(2.0 * np.pi * s2) - xp.sum(xp.log(xp.diag(chol)))
             - 0.5 * (rtr / s2 - w @ w))
    linv = tri(chol, xp.eye(k), lower=True)
    a = linv.T @ w
    beta = xp.sum(linv**2, axis=0)  # diag(B^-1) = column norms of L^-1
    per_coef = a**2 + beta - 1.0
    ends = np.cumsum([1, *sizes])
    grad = xp.stack([
        -n + rtr / s2 - w @ w - a @ a + k - xp.sum(beta),
        *(xp.sum(per_coef[s:e]) for s, e in zip(ends[:-1], ends[1:])),
    ])
    return value, grad


def _log_prior_theta(theta, xp=np):
    """The seed's HalfNormal priors on the scales, as a density of their logs (+ Jacobian)."""
    scales = xp.exp(theta)
    inv = 1.0 / np.asarray(_PRIOR_SCALES)
    # log HalfNormal(s; c) = log(2 / c) - 0.5 log(2 pi) - s^2 / (2 c^2); plus log|ds/dtheta|
    return xp.sum(np.log(2.0 * inv) - 0.5 * np.log(2.0 * np.pi) - 0.5 * (scales * inv) ** 2
                  + theta)


def _stats_args(stats: SuffStats, xp=np) -> tuple:
    return (xp.asarray(stats.xtx, dtype=np.float64), xp.asarray(stats.xty, dtype=np.float64),
            xp.asarray(stats.yty, dtype=np.float64), xp.asarray(float(stats.n)))


def _sizes(stats: SuffStats) -> tuple[int, int, int]:
    return (stats.n_gender, stats.n_age, stats.n_cluster)  # hashable: a static jit argument


def log_marginal_likelihood(stats: SuffStats, *, sigma: float, sigma_gender: float,
                            sigma_age: float, sigma_cluster: float) -> float:
    """log p(y | scales) with b integrated out, from the sufficient statistics alone."""
    theta = np.log([sigma, sigma_gender, sigma_age, sigma_cluster])
    return float(_value_and_grad(theta, *_stats_args(stats), _sizes(stats))[0])


def conditional_posterior(stats: SuffStats, *, sigma: float, sigma_gender: float,
                          sigma_age: float, sigma_cluster: float) -> tuple[np.ndarray, np.ndarray]:
    """Mean and covariance of b given the scales (for checks; the sampler never forms them)."""
    theta = np.log([sigma, sigma_gender, sigma_age, sigma_cluster])
    chol, w, sd, m0, _, _ = _forward(theta, *_stats_args(stats)[:3], _sizes(stats))
    lt_inv = np.linalg.inv(chol.T)
    return m0 + sd * (lt_inv @ w), (sd[:, None] * lt_inv) @ (lt_inv.T * sd[None, :])


def initial_scales(stats: SuffStats) -> dict[str, float]:
    """Rough scales from the statistics (a few K x K solves): the Laplace fit's start."""
    k = stats.num_columns
    xtx, xty = stats.xtx, stats.xty
    # sigma: residual of least squares; X is rank-deficient (each one-hot block sums to the
    # intercept column), so add a ridge far below the data's scale
    b = np.linalg.solve(xtx + 1e-9 * max(np.trace(xtx) / k, 1.0) * np.eye(k), xty)
    rss = max(stats.yty - 2.0 * b @ xty + b @ xtx @ b, 0.0)
    dof = stats.n - np.linalg.matrix_rank(xtx)
    sigma = float(np.clip(np.sqrt(rss / dof) if dof > 0 else 0.6745, 1e-3, 10.0))
    # group scales: spread of the group coefficients of the posterior mean at the prior's
    # median scale, which shrinks groups with few rows instead of fitting their noise
    median = PRIOR_GROUP_SCALE * 0.6745
    sd = _prior_sd(np.log([sigma, median, median, median]), _sizes(stats))
    b = np.linalg.solve(xtx / sigma**2 + np.diag(sd**-2.0),
                        xty / sigma**2 + prior_mean(*_sizes(stats)) / sd**2)
    out = {"sigma": sigma}
    for site, block in zip(SCALE_SITES[1:], ("mu_gender", "mu_age", "mu_cluster")):
        coef = b[stats.slices[block]]
        spread = float(np.std(coef, ddof=1)) if coef.size > 1 else median
        out[site] = float(np.clip(spread, 0.02, 2.0))
    return out


def laplace(stats: SuffStats, max_iter: int = 50) -> tuple[np.ndarray, np.ndarray]:
    """Mode and inverse negative Hessian of log p(theta | y), by damped Newton (numpy).

    The Hessian is central differences of the exact gradient (4 dims: 8 gradient calls);
    its eigenvalues are floored so that a flat direction gets sd <= 10 on the log scale.
    """
    args = (*_stats_args(stats), _sizes(stats))
    prior_var = np.asarray(_PRIOR_SCALES) ** 2

    def value_grad(th):
        v, g = _value_and_grad(th, *args)
        # d/dtheta of the log prior: 1 - exp(2 theta) / c^2
        return v + _log_prior_theta(th), g + 1.0 - np.exp(2.0 * th) / prior_var

    def neg_hessian(th, eps=1e-4):
        h = np.array([(value_grad(th - eps * e)[1] - value_grad(th + eps * e)[1]) / (2 * eps)
                      for e in np.eye(4)])
        vals, vecs = np.linalg.eigh(0.5 * (h + h.T))
        return vecs, np.maximum(vals, 1e-2)

    theta = np.log([initial_scales(stats)[s] for s in SCALE_SITES])
    value, grad = value_grad(theta)
    for _ in range(max_iter):
        vecs, vals = neg_hessian(theta)
        step = vecs @ ((vecs.T @ grad) / vals)
        decrement = float(grad @ step)  # Newton decrement squared
        if not decrement > 1e-10:
            break
        t = 1.0
        while t > 1e-6:  # backtracking keeps every accepted step an ascent step
            new_value, new_grad = value_grad(theta + t * step)
            if np.isfinite(new_value) and new_value >= value + 1e-4 * t * decrement:
                break
            t *= 0.5
        else:
            break
        theta, value, grad = theta + t * step, new_value, new_grad
    vecs, vals = neg_hessian(theta)
    return theta, (vecs / vals) @ vecs.T


def draw_coefficients(stats: SuffStats, theta: np.ndarray, rng: np.random.Generator,
                      block: int = 512) -> np.ndarray:
    """One exact draw of b | y, scales per row of theta (m, 4) -> (m, K); batched numpy."""
    xtx, xty, yty, _ = _stats_args(stats)
    m0 = prior_mean(*_sizes(stats))
    xtr = xty - xtx @ m0
    rtr = yty - 2.0 * m0 @ xty + m0 @ xtx @ m0
    out = np.empty((len(theta), stats.num_columns))
    for lo in range(0, len(theta), block):
        th = theta[lo:lo + block]
        sd = _prior_sd_batch(th, _sizes(stats))
        chol, w, _, ok = _augmented_factors(xtx, xtr, rtr, sd, np.exp(2.0 * th[:, 0]))
        if len(ok) < len(th):
            raise np.linalg.LinAlgError(f"{len(th) - len(ok)} draws of the scales give no Cholesky factor of B")
        z = rng.standard_normal(w.shape)
        out[lo:lo + block] = m0 + sd * scipy.linalg.solve_triangular(
            chol, (w + z)[..., None], lower=True, trans="T", check_finite=False)[..., 0]
    return out


def _augmented_factors(xtx: np.ndarray, xtr: np.ndarray, rtr: float, sd: np.ndarray, s2: np.ndarray
                       ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(L, w, d, ok) for a stack of scales, from one stacked Cholesky and no solve.

    ``sd`` (m, K) and ``s2`` (m,) are sqrt(diag D) and sigma^2 per draw. The Cholesky factor
    of the augmented matrix [[B, u], [u', r'r/sigma^2]] is [[L, 0], [w', d]]: its top left is
    L (B = LL'), its last row holds w = L^-1 u, and d^2 = r'r/sigma^2 - w'w, the quadratic
    form of the module docstring. By Woodbury that is r'(sigma^2 I + XDX')^-1 r > 0, so the
    augmented matrix is positive definite whenever B is. ``ok`` are the positions of the
    draws whose factor exists (a non-finite or numerically indefinite matrix is left out); the
    other outputs hold those draws only. A failing stack is factored one matrix at a time.
    """
    k = xtx.shape[0]
    ok = np.flatnonzero(np.all(np.isfinite(sd), axis=1) & np.isfinite(s2) & (s2 > 0))
    sd, s2 = sd[ok], s2[ok]
    aug = np.empty((len(ok), k + 1, k + 1))
    block = aug[:, :k, :k]  # D^1/2 X'X D^1/2 / sigma^2 + I, written in place (no temporaries)
    np.multiply(xtx, sd[:, :, None], out=block)
    block *= (sd / s2[:, None])[:, None, :]
    block[:, np.arange(k), np.arange(k)] += 1.0
    aug[:, k, :k] = aug[:, :k, k] = sd * xtr / s2[:, None]
    aug[:, k, k] = rtr / s2
    try:
        chol = np.linalg.cholesky(aug)
    except np.linalg.LinAlgError:
        good, factors = [], []
        for i, mat in enumerate(aug):
            try:
                factors.append(np.linalg.cholesky(mat))
            except np.linalg.LinAlgError:
                continue
            good.append(i)
        ok = ok[np.asarray(good, dtype=int)]
        chol = np.stack(factors) if factors else np.empty((0, k + 1, k + 1))
    return chol[:, :k, :k], chol[:, k, :k], chol[:, k, k], ok


def log_posterior_batch(stats: SuffStats, theta: np.ndarray, block: int = 256) -> np.ndarray:
    """log p(theta | y) up to a constant for each row of ``theta`` (m, 4): the module
    docstring's marginal likelihood plus the log-scale priors, batched in numpy (no compile).
    A theta whose matrix B is not numerically positive definite gets -inf."""
    theta = np.atleast_2d(np.asarray(theta, dtype=np.float64))
    xtx, xty, yty, n = _stats_args(stats)
    sizes = _sizes(stats)
    m0 = prior_mean(*sizes)
    xtr = xty - xtx @ m0
    rtr = yty - 2.0 * m0 @ xty + m0 @ xtx @ m0
    inv_prior = 1.0 / np.asarray(_PRIOR_SCALES)
    out = np.empty(len(theta))
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        for lo in range(0, len(theta), block):
            th = theta[lo:lo + block]
            s2 = np.exp(2.0 * th[:, 0])
            chol, _, d, ok = _augmented_factors(xtx, xtr, rtr, _prior_sd_batch(th, sizes), s2)
            value = np.full(len(th), -np.inf)
            logdet = np.sum(np.log(np.diagonal(chol, axis1=1, axis2=2)), axis=1)
            value[ok] = -0.5 * n * np.log(2.0 * np.pi * s2[ok]) - logdet - 0.5 * d**2
            prior = np.sum(np.log(2.0 * inv_prior) - 0.5 * np.log(2.0 * np.pi)
                           - 0.5 * (np.exp(th) * inv_prior) ** 2 + th, axis=1)
            out[lo:lo + block] = np.where(np.isfinite(value + prior), value + prior, -np.inf)
    return out


# the independence sampler's proposal: a multivariate t on the log scales at the Laplace fit
PROPOSAL_DF = 7.0
PROPOSAL_ADAPT = 1024  # pilot draws: at 256 the scale of a one-level group mixed more slowly (bench)


PRIOR_COMPONENT_SHARE = 0.7  # of the proposals, when a group level has one group (see _one_group_defence)


def _one_group_defence(stats: SuffStats):
    """The proposal's defence for group levels with a single group (seed_asof's cluster level,
    or a training set of one age group): their scale's posterior is nearly its prior, whose
    left tail on the log scale no fitted t covers (imh.PriorDefended). None when every level
    has two groups or more: the proposal, and so every draw, is then what it always was."""
    from racedayai_bayes.lib.inference import imh

    sizes = (stats.n_gender, stats.n_age, stats.n_cluster)
    coords = [1 + i for i, n in enumerate(sizes) if n == 1]
    if not coords:
        return None
    scales = [_PRIOR_SCALES[c] for c in coords]
    return lambda proposal: imh.PriorDefended(proposal, coords, scales, PRIOR_COMPONENT_SHARE)


def fit_exact_imh_from_stats(stats: SuffStats, sampler: Sampler = Sampler(), progress: ProgressFn = None) -> Draws:
    """Exact joint posterior draws from sufficient statistics, without NUTS or a compile.

    The four log scales are drawn by independence Metropolis-Hastings
    (lib/inference/imh.py): a multivariate t proposal at the Laplace fit, re-centred on
    importance-weighted pilot draws before any kept step, mixed with draws from the prior for
    the scale of any level of one group (:func:`_one_group_defence`); each step's density is the module
    docstring's exact log p(theta | y). Then one exact draw of b per draw, as the NUTS engine
    does. Every draw of the chain is a draw of the notebook's posterior; PSIS k-hat of the
    proposal's weights says whether it covered the posterior well (the ``proposal`` check).
    """
    from racedayai_bayes.lib.inference import imh

    say = progress or (lambda _msg: None)
    t0 = time.perf_counter()
    loc, cov = laplace(stats)
    t_laplace = time.perf_counter() - t0
    say("exact: Laplace mode " + ", ".join(
        f"{s}={v:.4g}" for s, v in zip(SCALE_SITES, np.exp(loc))) + f" ({t_laplace:.2f} s)")

    def target(theta):
        return log_posterior_batch(stats, theta), None

    result = imh.independence_mh(
        target, imh.MultivariateT(loc, cov, PROPOSAL_DF), chains=sampler.num_chains, draws=sampler.num_samples,
        warmup=sampler.num_warmup, seed=sampler.seed, batch=128, adapt=PROPOSAL_ADAPT,
        defend=_one_group_defence(stats), progress=progress,
    )
    t1 = time.perf_counter()
    theta = result.draws.reshape(-1, 4)
    shape, k = result.draws.shape[:2], stats.num_columns
    rng = np.random.default_rng([sampler.seed, _COEFFICIENT_STREAM])
    b = draw_coefficients(stats, theta, rng).reshape(shape + (k,))
    t2 = time.perf_counter()
    say(f"exact: {theta.shape[0]} coefficient draws in {t2 - t1:.2f} s")
    scales = np.exp(result.draws)
    out = {s: scales[..., i] for i, s in enumerate(SCALE_SITES)}
    for site, sl in column_slices(**stats.sizes).items():
        out[site] = b[..., sl] if site in VECTOR_SITES else b[..., sl.start]
    info = dict(
        rows=int(stats.n), columns=k, laplace_mode=dict(zip(SCALE_SITES, np.exp(loc).tolist())),
        laplace_s=t_laplace, sampling_s=t1 - t0 - t_laplace, coefficients_s=t2 - t1,
        acceptance=result.acceptance, pareto_khat=imh.pareto_khat(result.log_weights),
        evaluations=result.evaluations, sampler="independence Metropolis-Hastings", wall_s=time.perf_counter() - t0,
    )
    return Draws(samples={s: out[s] for s in (*SCALAR_SITES, *VECTOR_SITES)},
                 diverging=np.zeros(shape, dtype=bool), engine="exact", info=info)


def fit_exact(design: Design, sampler: Sampler = Sampler(), progress: ProgressFn = None, *,
              method: str = "imh") -> Draws:
    """Exact joint posterior draws on all rows of ``design``: one pass over the rows, then the
    four scales by independence MH (``method="imh"``, the default) or by NUTS (``"nuts"``)."""
    t0 = time.perf_counter()
    stats = sufficient_stats(design)
    t_stats = time.perf_counter() - t0
    if progress is not None:
        progress(f"exact: sufficient statistics of {stats.n} rows in {t_stats:.2f} s")
    if method == "imh":
        run = fit_exact_imh_from_stats
    else:  # NUTS needs JAX: imported only by a fit that uses it
        from racedayai_bayes.lib.models.seed.exact_nuts import fit_exact_from_stats as run
    draws = run(stats, sampler, progress)
    draws.info.update(stats_s=t_stats, wall_s=time.perf_counter() - t0)
    if method != "imh":
        draws.engine = "exact_nuts"
    return draws
