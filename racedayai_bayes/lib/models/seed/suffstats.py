r"""Sufficient statistics of the finish-time model's linear part.

Every parameter of :func:`racedayai_bayes.lib.models.seed.model.finish_time_model` except the four
scales is a coefficient of one linear Gaussian model

.. math::

    y = X b + \varepsilon,\qquad \varepsilon \sim N(0, \sigma^2 I),\qquad
    X = [\,1 \mid G \mid A \mid C \mid f \mid e\,]

with G, A, C the one-hot gender, age-group and cluster columns and f, e the standardised
fitness and experience. Given the scales, the likelihood depends on the rows only through
:math:`X^\top X`, :math:`X^\top y`, :math:`y^\top y` and n, which are computed here in one
pass.

Rows sharing a cell (gender, age, cluster) share the one-hot part ``z`` of their row, so
with per-cell sums :math:`N_k` (count), :math:`F_k = \sum_{i \in k} f_i, E_k, Y_k`
(np.bincount on the combined cell index), Z the cells' one-hot rows and the plain totals
:math:`FF = \sum f^2, EE, FE, FY, EY, YY` (f and e have no cell-specific columns),

.. math::

    X^\top X &= Z^\top \mathrm{diag}(N) Z + (Z^\top F) e_f^\top + e_f (Z^\top F)^\top
               + (Z^\top E) e_e^\top + e_e (Z^\top E)^\top \\
             &\quad + FF\, e_f e_f^\top + EE\, e_e e_e^\top
               + FE\, (e_f e_e^\top + e_e e_f^\top) \\
    X^\top y &= Z^\top Y + FY\, e_f + EY\, e_e, \qquad y^\top y = YY.

All sums are float64: with millions of rows float32 would lose several digits.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from racedayai_bayes.lib.models.seed.encoding import Design

# Coefficient blocks in column order; the three group blocks are one-hot.
BLOCKS = ("mu_global", "mu_gender", "mu_age", "mu_cluster", "beta_fitness", "beta_experience")


def column_slices(n_gender: int, n_age: int, n_cluster: int) -> dict[str, slice]:
    """Slices of each coefficient block in the columns of X (see module docstring)."""
    sizes = (1, n_gender, n_age, n_cluster, 1, 1)
    ends = np.cumsum(sizes)
    return {name: slice(int(e - s), int(e)) for name, s, e in zip(BLOCKS, sizes, ends)}


@dataclass(frozen=True, eq=False)
class SuffStats:
    """X'X, X'y, y'y and n of a set of rows, with the column layout of X.

    Statistics of disjoint row sets with the same group sizes add up (``a + b``), so large
    data can be read in chunks.
    """

    xtx: np.ndarray  # (K, K) float64
    xty: np.ndarray  # (K,) float64
    yty: float
    n: int
    n_gender: int
    n_age: int
    n_cluster: int

    @property
    def num_columns(self) -> int:
        return 3 + self.n_gender + self.n_age + self.n_cluster

    @property
    def slices(self) -> dict[str, slice]:
        return column_slices(self.n_gender, self.n_age, self.n_cluster)

    @property
    def columns(self) -> tuple[str, ...]:
        """Column names, e.g. ('mu_global', 'mu_gender[0]', ..., 'beta_experience')."""
        names = []
        for block, sl in self.slices.items():
            width = sl.stop - sl.start
            if block.startswith("mu_") and block != "mu_global":
                names.extend(f"{block}[{j}]" for j in range(width))
            else:
                names.append(block)
        return tuple(names)

    @property
    def sizes(self) -> dict[str, int]:
        return dict(n_gender=self.n_gender, n_age=self.n_age, n_cluster=self.n_cluster)

    def __add__(self, other: SuffStats) -> SuffStats:
        if self.sizes != other.sizes:
            raise ValueError(f"cannot add statistics of sizes {self.sizes} and {other.sizes}")
        return SuffStats(
            xtx=self.xtx + other.xtx,
            xty=self.xty + other.xty,
            yty=self.yty + other.yty,
            n=self.n + other.n,
            **self.sizes,
        )


def _check_indices(design: Design) -> None:
    n = len(design)
    for name in ("gender_idx", "age_idx", "cluster_idx", "experience"):
        if len(getattr(design, name)) != n:
            raise ValueError(f"design.{name} has {len(getattr(design, name))} rows, expected {n}")
    for name, size in (("gender", design.n_gender), ("age", design.n_age),
                       ("cluster", design.n_cluster)):
        idx = np.asarray(getattr(design, f"{name}_idx"))
        if size < 1:
            raise ValueError(f"n_{name} must be at least 1, got {size}")
        if (idx < 0).any():
            raise ValueError(
                f"{int((idx < 0).sum())} rows have an UNSEEN {name} index (-1); a fit needs "
                "every row encoded with fitting=True"
            )
        if (idx >= size).any():
            raise ValueError(f"{name}_idx reaches {int(idx.max())}, but n_{name} is {size}")


def _check_design(design: Design) -> None:
    if design.y is None:
        raise ValueError("sufficient statistics need observed finish times (design.y is None)")
    if len(design) == 0:
        raise ValueError("sufficient statistics need at least one row")
    if len(design.y) != len(design):
        raise ValueError(f"design.y has {len(design.y)} rows, expected {len(design)}")
    _check_indices(design)
    for name in ("fitness", "experience", "y"):
        values = np.asarray(getattr(design, name), dtype=np.float64)
        if not np.isfinite(values).all():
            raise ValueError(f"design.{name} has {int((~np.isfinite(values)).sum())} missing "
                             "or non-finite values")


def sufficient_stats(design: Design) -> SuffStats:
    """One pass over the rows: per-cell sums by np.bincount, then X'X, X'y, y'y, n."""
    _check_design(design)
    ng, na, nc = design.n_gender, design.n_age, design.n_cluster
    g = np.asarray(design.gender_idx, dtype=np.int64)
    a = np.asarray(design.age_idx, dtype=np.int64)
    c = np.asarray(design.cluster_idx, dtype=np.int64)
    f = np.asarray(design.fitness, dtype=np.float64)
    e = np.asarray(design.experience, dtype=np.float64)
    y = np.asarray(design.y, dtype=np.float64)

    n_cells = ng * na * nc
    cell = (g * na + a) * nc + c

    def per_cell(weights=None):
        return np.bincount(cell, weights=weights, minlength=n_cells).astype(np.float64)

    # Only the one-hot part of a row depends on its cell, so only 1, f, e and y need
    # per-cell sums; f², e², fe, fy, ey, y² enter X'X, X'y, y'y as plain totals.
    counts = per_cell()
    sf, se, sy = per_cell(f), per_cell(e), per_cell(y)
    sff, see, sfe = float(f @ f), float(e @ e), float(f @ e)
    sfy, sey, syy = float(f @ y), float(e @ y), float(y @ y)

    # one-hot part of each cell's row: intercept + gender + age + cluster columns
    sl = column_slices(ng, na, nc)
    k = sl["beta_experience"].stop
    cg, ca, cc = np.unravel_index(np.arange(n_cells), (ng, na, nc))
    z = np.zeros((n_cells, k))
    z[:, 0] = 1.0
    z[np.arange(n_cells), sl["mu_gender"].start + cg] = 1.0
    z[np.arange(n_cells), sl["mu_age"].start + ca] = 1.0
    z[np.arange(n_cells), sl["mu_cluster"].start + cc] = 1.0

    jf, je = sl["beta_fitness"].start, sl["beta_experience"].start
    xtx = z.T @ (counts[:, None] * z)
    zf, ze = z.T @ sf, z.T @ se  # zero in the f and e positions, so no double counting
    xtx[:, jf] += zf
    xtx[jf, :] += zf
    xtx[:, je] += ze
    xtx[je, :] += ze
    xtx[jf, jf], xtx[je, je] = sff, see
    xtx[jf, je] = xtx[je, jf] = sfe
    xty = z.T @ sy
    xty[jf], xty[je] = sfy, sey
    return SuffStats(xtx=xtx, xty=xty, yty=syy, n=len(y), n_gender=ng, n_age=na, n_cluster=nc)


def dense_design_matrix(design: Design) -> np.ndarray:
    """X itself, (n, K) float64: for tests and small data only (memory is n*K*8 bytes)."""
    _check_indices(design)
    ng, na, nc = design.n_gender, design.n_age, design.n_cluster
    sl = column_slices(ng, na, nc)
    n = len(design)
    x = np.zeros((n, sl["beta_experience"].stop))
    rows = np.arange(n)
    x[:, 0] = 1.0
    x[rows, sl["mu_gender"].start + np.asarray(design.gender_idx)] = 1.0
    x[rows, sl["mu_age"].start + np.asarray(design.age_idx)] = 1.0
    x[rows, sl["mu_cluster"].start + np.asarray(design.cluster_idx)] = 1.0
    x[:, sl["beta_fitness"].start] = design.fitness
    x[:, sl["beta_experience"].start] = design.experience
    return x
