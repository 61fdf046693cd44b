r"""First pass: the day of each training edition, estimated once before the exact fit.

An edition is a course in one season: one race day. Its effect (how fast that day ran,
beyond the course's usual level) is shared by all of its rows. A forecast never knows the
day, so the day's variance belongs in every forecast's spread; but 1,400 edition effects are
too many to integrate inside the exact sampler. This pass estimates them once, and the exact
fit then models :math:`y - \hat\delta_{e(i)}`: its posterior is **exact given the edition
offsets** :math:`\hat\delta`.

The model of this pass is

.. math::

    y_i = \alpha_{\mathrm{cell}(i)} + c_{\mathrm{course}(i)} + \delta_{e(i)} + \eta_i,
    \qquad \eta_i \sim N(0, \sigma^2),

with a free (unpooled) mean per cell, and Normal course and day effects, each with its own
scale. Cells hold thousands of rows, so pooling them would change nothing but the speed
of convergence: an intercept beside pooled cells is a ridge that backfitting crawls
along. The athlete is left in
:math:`\eta`: the athletes of one edition are different people, so their levels are
independent noise around the day, and each edition has hundreds of them. Without the
athlete the model needs only per-(cell, edition) counts and sums, so each sweep costs a few
operations per (cell, edition), not per row.

It is fitted by backfitting (Ghosh, Hastie & Owen 2022): each block in turn is set to its
posterior mean given the others (a cell to the mean of its partial residuals), and after
each sweep every scale takes its EM update :math:`\sigma_b^2 = \mathrm{mean}_k(\hat b_k^2 +
v_k)`, :math:`v_k` the level's posterior variance, and :math:`\sigma^2 = (\sum_i
\hat\eta_i^2 + \sum_b \sum_k n_k v_k)/n`. The course
and its days form one nested block, updated together exactly. For course c with editions
e, residual sums :math:`S_e` over :math:`n_e` rows,
:math:`\bar r_e = S_e/n_e \mid c \sim N(c, \sigma_\delta^2 + \sigma^2/n_e)`, so

.. math::

    P_c = \sigma_c^{-2} + \textstyle\sum_e (\sigma_\delta^2 + \sigma^2/n_e)^{-1},\quad
    \hat c = P_c^{-1} \textstyle\sum_e \bar r_e (\sigma_\delta^2 + \sigma^2/n_e)^{-1},\quad
    \hat\delta_e = \frac{S_e - n_e \hat c}{\sigma^2 p_e},\ p_e = \frac{n_e}{\sigma^2} + \sigma_\delta^{-2},

with :math:`\mathrm{Var}\,\delta_e = p_e^{-1} + (n_e/\sigma^2 p_e)^2 P_c^{-1}`: the day's
variance is not underestimated where a course has few editions, as it would be if the
course and its days were updated one after the other. The day's scale :math:`\sigma_\delta`
and the offsets :math:`\hat\delta_e` are this pass's result; the exact fit re-estimates
every other scale. A test recovers the simulated day sd from demo data.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from racedayai_bayes.lib.arrays import unique_inverse

START = {"eta": 0.14, "course": 0.06, "day": 0.05}


@dataclass(frozen=True)
class FirstPass:
    """The first pass's scales and each training edition's day offset (log scale)."""

    sigma: float  # sd of eta: athlete and race-to-race variation together
    scales: dict[str, float]  # sd of the course and day effects
    offsets: np.ndarray  # (editions,)
    sweeps: int

    @property
    def day_sd(self) -> float:
        return self.scales["day"]


def first_pass(
    y: np.ndarray,
    cell: np.ndarray,
    edition: np.ndarray,
    edition_course: np.ndarray,
    *,
    max_sweeps: int = 200,
    tol: float = 1e-5,
) -> FirstPass:
    """Fit the module docstring's model to log times ``y``.

    ``cell`` and ``edition`` are the rows' level indices (0-based); ``edition_course`` gives
    the course (0-based) of each edition. The sweeps stop when no offset moves by more than
    ``tol`` (log scale: 1e-5 is a fraction of a second) and the day's variance by less than
    ``tol`` relative: the result of this pass. The other scales' EM steps are slow along the
    intercept/cell ridge, but they are only a start: the exact fit re-estimates them.
    """
    y = np.asarray(y, dtype=np.float64)
    n = len(y)
    n_cell = int(cell.max()) + 1
    n_ed = len(edition_course)
    ed_course = np.asarray(edition_course, dtype=np.int64)
    n_course = int(ed_course.max()) + 1
    combos, inverse = unique_inverse(np.asarray(cell, np.int64) * n_ed + edition)
    w = np.bincount(inverse).astype(np.float64)
    sy = np.bincount(inverse, weights=y)
    syy = float(y @ y)
    c_cell, c_ed = combos // n_ed, combos % n_ed
    cell_n = np.bincount(c_cell, weights=w, minlength=n_cell)
    ed_n = np.bincount(c_ed, weights=w, minlength=n_ed)
    seen = ed_n > 0

    alpha = np.zeros(n_cell)
    course = np.zeros(n_course)
    day = np.zeros(n_ed)
    var = {b: START[b] ** 2 for b in ("course", "day")}
    s2 = START["eta"] ** 2
    sweeps = 0
    previous_day = day
    for sweeps in range(1, max_sweeps + 1):
        # cell block: free means
        rest = course[ed_course[c_ed]] + day[c_ed]
        sums = np.bincount(c_cell, weights=sy - w * rest, minlength=n_cell)
        alpha = sums / np.maximum(cell_n, 1)
        # nested course/day block (module docstring)
        s_e = np.bincount(c_ed, weights=sy - w * alpha[c_cell], minlength=n_ed)
        mean_e = np.where(seen, s_e / np.maximum(ed_n, 1), 0.0)
        prec_e = np.where(seen, 1.0 / (var["day"] + s2 / np.maximum(ed_n, 1)), 0.0)
        p_c = 1.0 / var["course"] + np.bincount(ed_course, weights=prec_e, minlength=n_course)
        course = np.bincount(ed_course, weights=mean_e * prec_e, minlength=n_course) / p_c
        v_course = 1.0 / p_c
        p_e = ed_n / s2 + 1.0 / var["day"]
        gain = ed_n / (s2 * p_e)
        day = (s_e - ed_n * course[ed_course]) / (s2 * p_e)
        v_day = 1.0 / p_e + gain**2 * v_course[ed_course]
        v_sum = v_day + v_course[ed_course] - 2.0 * gain * v_course[ed_course]  # Var(c + delta_e)
        fit = alpha[c_cell] + course[ed_course[c_ed]] + day[c_ed]
        rss = syy - 2.0 * (sy @ fit) + w @ fit**2
        old_day_var = var["day"]
        var = {
            "course": float(np.mean(course**2 + v_course)),
            "day": float(np.mean(day[seen] ** 2 + v_day[seen])),
        }
        s2 = float((rss + ed_n @ v_sum) / (n - np.count_nonzero(cell_n)))  # each free cell mean costs a degree of freedom
        moved = float(np.max(np.abs(day - previous_day))) if sweeps > 1 else np.inf
        previous_day = day
        if moved < tol and abs(var["day"] / old_day_var - 1.0) < tol:
            break
    return FirstPass(
        sigma=float(np.sqrt(s2)),
        scales={b: float(np.sqrt(v)) for b, v in var.items()},
        offsets=day,
        sweeps=sweeps,
    )
