r"""Forecasts of the forecast model: each race from the population and the athlete's earlier seasons.

**The athlete.** A forecast of athlete j's race in season s learns the athlete's level
:math:`u_j` only from j's finishes at this distance in seasons before s. Each such finish k
is a noisy reading of :math:`u_j`: its residual at the posterior-mean population effects,
:math:`r_k = y_k - \hat\delta_{e(k)} - x_k\bar b`, has variance
:math:`\bar\sigma^2_{h(k)} + e_k` around :math:`u_j`, where :math:`e_k` adds the day's
variance when the edition has no offset (a held-out edition), and the course's or cell's
when the fit never saw them. With :math:`\bar w_k = (\bar\sigma^2_{h(k)} + e_k)^{-1}`,

.. math::

    A = \textstyle\sum_{k} \bar w_k r_k,\quad W = \sum_k \bar w_k,\qquad
    u_j \mid \text{earlier races} \sim N\big(A/\lambda,\ 1/\lambda\big),\ \lambda = \bar\tau^{-2} + W,

with :math:`\bar\tau` the posterior mean of the athlete's own scale: ``tau_other`` when the
other distance's level was known at their first finish here (before one: is known now),
``tau`` otherwise (marginal.py).

(A, W) is the athlete's **as-of summary**: two numbers, computed at the posterior means of
the population parameters, as the issue asks, and additive over seasons.

**The race.** Given draw d of the population parameters, the forecast of log time is Normal:

.. math::

    \mu_d = x b_d + A/\lambda,\qquad
    s_d^2 = \sigma^2_{h,d} + 1/\lambda + \sigma_\delta^2
            + [\text{new course}]\,\sigma^2_{\mathrm{course},d} + [\text{new cell}]\,\sigma^2_{\mathrm{cell},d},

h the race's own noise class, :math:`\sigma_\delta` the day's sd (a forecast never knows
the day). A new course or cell contributes a draw from its population: 0 to the mean, its
variance to the spread. The forecast is the mixture over draws. Its moments are exact
averages over the draws; its quantiles use the mixture's mean, variance and skewness
(Cornish-Fisher), which a test checks against the exact mixture quantiles and Monte
Carlo. In seconds (:math:`T = e^{y}`) the quantiles transform exactly, the mean is
:math:`\mathrm{mean}_d\, e^{\mu_d + s_d^2/2}`, and the log density of an observed time
includes the Jacobian: :math:`\log p(t) = \log \mathrm{mean}_d\, N(\log t; \mu_d, s_d) - \log t`.
Nothing is random: the same draws give the same numbers.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.special import ndtri

from racedayai_bayes.lib.arrays import unique_inverse
from racedayai_bayes.lib.inference.draws import log_mean_exp
from racedayai_bayes.lib.models.forecast.design import ForecastDesign, ForecastEncoding
from racedayai_bayes.lib.runreport import every_tenth, with_progress

QUANTILES = (0.05, 0.5, 0.95)
_Z = ndtri(np.asarray(QUANTILES))


@dataclass
class PopulationDraws:
    """Draws of the population parameters: ``scales`` (D, len(marginal.SCALES)) in that order, ``b`` (D, K)."""

    scales: np.ndarray
    b: np.ndarray

    def __len__(self) -> int:
        return len(self.b)


def linear_part(design: ForecastDesign, enc: ForecastEncoding, b: np.ndarray, *, forecast: bool) -> np.ndarray:
    """x b for one coefficient vector b, per row.

    ``forecast=True`` drops the course of a row on a new course (a forecast cannot know it);
    ``False`` keeps every level the fit knows (a residual of an observed race). Unseen
    levels contribute 0.
    """
    sl = enc.slices
    out = b[sl["gender"].start + design.gender]
    cell = design.cell
    out = out + np.where(cell >= 0, b[sl["cell"].start + np.maximum(cell, 0)], 0.0)
    use_course = design.course >= 0
    if forecast:
        use_course &= ~design.new_course
    out = out + np.where(use_course, b[sl["course"].start + np.maximum(design.course, 0)], 0.0)
    return out + design.z @ b[sl["slope"]]


def observation_weights(design: ForecastDesign, scales_mean: np.ndarray, day_sd: float, offset_known: np.ndarray) -> np.ndarray:
    """w-bar of each row as a reading of its athlete's level (module docstring)."""
    s2 = np.where(design.first, scales_mean[0] ** 2, scales_mean[1] ** 2)
    extra = (
        np.where(offset_known, 0.0, day_sd**2)
        + np.where(design.course >= 0, 0.0, scales_mean[3] ** 2)
        + np.where(design.cell >= 0, 0.0, scales_mean[4] ** 2)
    )
    return 1.0 / (s2 + extra)


def _tables(design: ForecastDesign, enc: ForecastEncoding, draws: PopulationDraws):
    """Rows sharing (gender, cell or new, course or new, noise class) share the per-draw
    intercept c and variance S; tabulate both per combination. Returns (inverse, c, S, slopes)
    with c, S of shape (combinations, D) and slopes (D, p)."""
    sl = enc.slices
    scales2 = draws.scales**2  # (D, len(marginal.SCALES))
    cell = np.where(design.cell >= 0, design.cell, -1)
    course = np.where((design.course >= 0) & ~design.new_course, design.course, -1)
    h = (~design.first).astype(np.int64)
    n_cell, n_course = len(enc.cells) + 1, len(enc.courses) + 1
    key = ((design.gender * n_cell + (cell + 1)) * n_course + (course + 1)) * 2 + h
    keys, inverse = unique_inverse(key)
    k_h = keys % 2
    rest = keys // 2
    k_course = rest % n_course - 1
    rest //= n_course
    k_cell = rest % n_cell - 1
    k_gender = rest // n_cell
    b = draws.b
    c = (
        b[:, sl["gender"].start + k_gender].T
        + np.where(k_cell[:, None] >= 0, b[:, sl["cell"].start + np.maximum(k_cell, 0)].T, 0.0)
        + np.where(k_course[:, None] >= 0, b[:, sl["course"].start + np.maximum(k_course, 0)].T, 0.0)
    )
    s = (
        np.where(k_h[:, None] == 0, scales2[:, 0][None, :], scales2[:, 1][None, :])
        + np.where(k_course[:, None] < 0, scales2[:, 3][None, :], 0.0)
        + np.where(k_cell[:, None] < 0, scales2[:, 4][None, :], 0.0)
        + enc.day_sd**2
    )
    return inverse.reshape(-1), c, s, b[:, sl["slope"]]


def _athlete(athlete_a, athlete_w, tau_mean):
    """Each row's athlete posterior (mean, variance); ``tau_mean`` one scale or one per row."""
    lam = 1.0 / np.asarray(tau_mean, dtype=np.float64)**2 + np.asarray(athlete_w, dtype=np.float64)
    return np.asarray(athlete_a, dtype=np.float64) / lam, 1.0 / lam


def predictive(
    design: ForecastDesign,
    enc: ForecastEncoding,
    draws: PopulationDraws,
    athlete_a: np.ndarray,
    athlete_w: np.ndarray,
    tau_mean: float | np.ndarray,
    *,
    log_time: np.ndarray | None = None,
    chunk_rows: int = 4096,
    progress=None,
) -> dict[str, np.ndarray]:
    r"""Forecast summaries per row (module docstring), in seconds, and log densities.

    ``athlete_a``, ``athlete_w``: each row's as-of summary (A, W); ``tau_mean``: the athlete
    scale's posterior mean, one for every row or one per row; ``log_time``: observed
    log(total_sec) of the rows whose log density is wanted (NaN elsewhere, or None).
    Returns ``mean``, ``sd``, ``p05``, ``p50``, ``p95`` (seconds), ``log_mean`` and
    ``log_sd`` (the mixture's, on the log scale) and, with ``log_time``, ``log_density``.

    The mixture's moments are computed without looping over draws per row. Over draws, a
    row's :math:`\mu_d = c_{k,d} + z\cdot\beta_d + m` and :math:`s^2_d = S_{k,d} + v`, with
    k the row's combination (:func:`_tables`), z its covariates and (m, v) its athlete's
    posterior. Write :math:`a = c_k - \bar c_k`, :math:`g = \beta - \bar\beta`,
    :math:`\tilde S = S_k - \bar S_k`: every central moment the quantiles need is a
    polynomial in z whose coefficients are moments over draws of (a, g, S~) per combination
    (for example :math:`E(a + z\cdot g)^2 = E a^2 + 2 z\cdot E[a g] + z^\top E[g g^\top] z`),
    so they are exact, at a cost per row that does not grow with the number of draws. The
    moments in seconds use :math:`E e^{X} = e^{E X} e^{\mathrm{Var} X/2}(1 + O(E|X - EX|^3))`
    for the tiny spread X of :math:`\mu_d + s^2_d/2` over draws (about 1e-3: the neglected
    term is about 1e-9 of the result); :func:`predictive_by_draws` is the plain loop over
    draws that a test compares with.
    Rows go in chunks of ``chunk_rows`` (4,096): with glibc's default allocator, as in the
    command line's ``predict``, each large chunk's temporaries are fresh pages (the
    full-scale 70.3 split's 2.35M rows: 1.48 s, against 2.24 s in chunks of 65,536); with
    the steps' allocator settings (step_server.STEP_MALLOC_ENV), which reuse freed memory,
    the chunk matters little (600,000 rows: 0.44-0.55 s against 0.49-0.50 s, 2026-12-06).
    No number depends on the chunk beyond rounding.
    """
    n = len(design)
    inverse, c, s, slopes = _tables(design, enc, draws)
    d = len(draws)
    m_ath, v_ath = _athlete(athlete_a, athlete_w, tau_mean)
    c_bar, s_bar, beta_bar = c.mean(axis=1), s.mean(axis=1), slopes.mean(axis=0)
    a, s_dev, g = c - c_bar[:, None], s - s_bar[:, None], slopes - beta_bar[None, :]
    p = g.shape[1]
    # The chunks work in the transposed layout (covariates x rows: each row of it contiguous)
    # on the upper triangle of z z^T (T = p(p+1)/2 products, an off-diagonal one weighted 2 for
    # its mirror): the quadratic and cubic forms are sums over that triangle. Against the
    # rows x p*p layout with einsum's row-wise products: 1.05 against 1.28 s for every row
    # of the full-scale 70.3 split (6 alternated runs, 2026-12-06); the same to 2e-13 relative.
    tri_j, tri_k = np.triu_indices(p)
    weight = np.where(tri_j == tri_k, 1.0, 2.0)
    e_a2, e_a3, e_as, e_s2 = (a**2).mean(1), (a**3).mean(1), (a * s_dev).mean(1), (s_dev**2).mean(1)
    # per combination, (p or T, keys): what a chunk gathers by its rows' combinations
    e_ag_t = np.ascontiguousarray((a @ g / d).T)
    e_a2g_t = np.ascontiguousarray(((a**2) @ g / d).T)
    e_gs_t = np.ascontiguousarray((s_dev @ g / d).T)
    # E[a g g^T] per combination as one matrix product with each draw's g g^T (einsum's loop
    # over three operands took 0.47 s of the full-scale 70.3 split's 15,595 combinations x
    # 200 draws, the product 0.016 s)
    e_agg_t = np.ascontiguousarray((a @ (g[:, tri_j] * g[:, tri_k] * weight) / d).T)  # (T, keys)
    e_gg_tri = (g.T @ g / d)[tri_j, tri_k] * weight  # (T,)
    e_ggg_tri_t = np.ascontiguousarray((np.einsum("dj,dk,dl->jkl", g, g, g) / d)[tri_j, tri_k, :].T * weight)  # (p, T)

    def dot(table_t, k, x_t):  # each row's table entry (of its combination k) dotted with its column of x_t
        return (np.take(table_t, k, axis=1) * x_t).sum(axis=0)

    out = {k: np.empty(n) for k in ("mean", "sd", "p05", "p50", "p95", "log_mean", "log_sd")}
    chunks = -(-n // chunk_rows)
    report_after = {c - 1 for c in every_tenth(chunks)} if progress is not None else set()
    for lo in range(0, n, chunk_rows):
        rows = slice(lo, min(lo + chunk_rows, n))
        k = inverse[rows]
        z_t = np.ascontiguousarray(design.z[rows].T)  # (p, rows)
        zz_t = z_t[tri_j] * z_t[tri_k]  # (T, rows)
        var_mu = e_a2[k] + 2.0 * dot(e_ag_t, k, z_t) + e_gg_tri @ zz_t  # E(a + z.g)^2
        cross = e_as[k] + dot(e_gs_t, k, z_t)  # E[(a + z.g) S~]
        third_mu = (e_a3[k] + 3.0 * dot(e_a2g_t, k, z_t) + 3.0 * dot(e_agg_t, k, zz_t)
                    + ((e_ggg_tri_t @ zz_t) * z_t).sum(axis=0))
        mean = c_bar[k] + beta_bar @ z_t + m_ath[rows]  # centred log time
        e_s = s_bar[k] + v_ath[rows]
        var = e_s + var_mu
        sd = np.sqrt(var)
        skew = (third_mu + 3.0 * cross) / var**1.5
        base = enc.y_center + mean
        for key_q, zq in zip(("p05", "p50", "p95"), _Z):
            out[key_q][rows] = np.exp(base + sd * (zq + (zq * zq - 1.0) * skew / 6.0))
        # seconds: E e^{mu + s^2/2} and E e^{2 mu + 2 s^2} over draws
        var_half = var_mu + cross + 0.25 * e_s2[k]  # Var(mu_d + s_d^2 / 2)
        var_two = 4.0 * (var_mu + 2.0 * cross + e_s2[k])  # Var(2 mu_d + 2 s_d^2)
        e1 = np.exp(base + 0.5 * e_s + 0.5 * var_half)
        e2 = np.exp(2.0 * base + 2.0 * e_s + 0.5 * var_two)
        out["mean"][rows] = e1
        out["sd"][rows] = np.sqrt(np.maximum(e2 - e1**2, 0.0))
        out["log_mean"][rows] = base
        out["log_sd"][rows] = sd
        if progress is not None and (lo // chunk_rows) in report_after:
            done = min(lo + chunk_rows, n)
            progress(with_progress(f"forecasts of {done:,}/{n:,} rows", done, n))
    if log_time is not None:
        out["log_density"] = log_density(design, enc, draws, athlete_a, athlete_w, tau_mean, log_time,
                                         tables=(inverse, c, s, slopes))
    return out


def log_density(design, enc, draws, athlete_a, athlete_w, tau_mean, log_time, *, tables=None, chunk_rows: int = 2048):
    """log p(total_sec) in seconds per row: log of the mean over draws of the Normal density
    of log time, minus log t (the Jacobian). NaN where ``log_time`` is NaN."""
    inverse, c, s, slopes = tables if tables is not None else _tables(design, enc, draws)
    m_ath, v_ath = _athlete(athlete_a, athlete_w, tau_mean)
    y = np.asarray(log_time, dtype=np.float64) - enc.y_center
    out = np.full(len(design), np.nan)
    want = np.flatnonzero(np.isfinite(y))
    half_log_2pi = 0.5 * np.log(2.0 * np.pi)
    for lo in range(0, len(want), chunk_rows):
        idx = want[lo:lo + chunk_rows]
        k = inverse[idx]
        mu = c[k] + design.z[idx] @ slopes.T + m_ath[idx, None]
        s2 = s[k] + v_ath[idx, None]
        lp = -half_log_2pi - 0.5 * np.log(s2) - 0.5 * (y[idx, None] - mu) ** 2 / s2
        out[idx] = log_mean_exp(lp) - np.asarray(log_time)[idx]
    return out


def predictive_by_draws(design, enc, draws, athlete_a, athlete_w, tau_mean) -> dict[str, np.ndarray]:
    """The mixture's moments by a plain loop over draws (for tests): mean and sd in seconds,
    mean, variance and third central moment of log time."""
    inverse, c, s, slopes = _tables(design, enc, draws)
    m_ath, v_ath = _athlete(athlete_a, athlete_w, tau_mean)
    mu = c[inverse] + design.z @ slopes.T + m_ath[:, None] + enc.y_center
    s2 = s[inverse] + v_ath[:, None]
    m1 = mu.mean(axis=1)
    dev = mu - m1[:, None]
    e1 = np.exp(mu + 0.5 * s2).mean(axis=1)
    e2 = np.exp(2.0 * mu + 2.0 * s2).mean(axis=1)
    return {
        "mean": e1, "sd": np.sqrt(e2 - e1**2), "log_mean": m1,
        "log_var": s2.mean(axis=1) + (dev**2).mean(axis=1),
        "log_third": (dev**3).mean(axis=1) + 3.0 * (dev * s2).mean(axis=1),
    }
