r"""The forecast model's likelihood with every coefficient and every athlete integrated out.

Write the model (lib/models/forecast/model.py) of the training rows, after the edition
offsets, as :math:`y = Xb + Zu + \varepsilon`: b the coefficients (gender intercepts,
cell, course, slopes; prior :math:`N(0, D)`), u one level per athlete
(:math:`N(0, \tau^2_{g(j)})`), and :math:`\varepsilon_i \sim N(0, \sigma^2_{h(i)})` with
:math:`h(i)` the row's noise class: 0 for a first race, 1 for a returning one. The
athlete's class :math:`g(j)` is 1 (scale ``tau_other``) when the other distance's level was
known at the athlete's first finish here, else 0 (``tau``): the slopes on that level then
explain part of the athlete's level, and what is left varies less (on the full synthetic
world, debuts with the other distance's level had forecast intervals about 15% too wide with
one scale for every athlete). Given the scales :math:`\theta` everything is Gaussian.

**Athletes out.** Athletes are independent, so :math:`y \mid b \sim N(Xb, \Sigma)` with
:math:`\Sigma` block diagonal, one block :math:`\Sigma_j = W_j^{-1} + \tau^2 11^\top` per
athlete (:math:`\tau = \tau_{g(j)}`), :math:`W_j = \mathrm{diag}(w_{h(i)})`, :math:`w_h = \sigma_h^{-2}`. By Woodbury,

.. math::

    \Sigma_j^{-1} = W_j - c_j\, W_j 1 1^\top W_j,\qquad
    c_j = \big(\tau^{-2} + \textstyle\sum_h n_{jh} w_h\big)^{-1},\qquad
    \log|\Sigma_j| = \textstyle\sum_h n_{jh}\log\sigma_h^2 + \log(1 + \tau^2 \sum_h n_{jh} w_h).

:math:`c_j` depends on the athlete only through the **pattern** :math:`p = (n_{j0}, n_{j1}, g(j))`
of their rows' classes and their own class. With :math:`s_{jh} = \sum_{i \in j, h(i)=h} x_i` and
:math:`Y_{jh}` the matching sum of y,

.. math::

    Q = X^\top \Sigma^{-1} X = \textstyle\sum_h w_h A_h
        - \sum_p c_p \sum_{h,h'} w_h w_{h'} T_{p,hh'},\qquad
    T_{p,hh'} = \textstyle\sum_{j \in p} s_{jh} s_{jh'}^\top,\quad
    A_h = \textstyle\sum_{h(i) = h} x_i x_i^\top,

and likewise :math:`q = X^\top\Sigma^{-1}y` and :math:`y^\top\Sigma^{-1}y`. The matrices
:math:`A_h, T_{p,hh'}` (and their vector and scalar companions) are computed once, by
sparse products over passes of whole athletes (:data:`CHUNK_ROWS` rows each); for any
:math:`\theta` the three quantities are one weighted sum of them.

**Coefficients out.** As in the seed's exact engine (lib/models/seed/exact.py), with
:math:`B = I + D^{1/2} Q D^{1/2} = LL^\top` and :math:`v = L^{-1} D^{1/2} q`,

.. math::

    \log p(y \mid \theta) = -\tfrac12\big(n \log 2\pi + \log|\Sigma| + 2\textstyle\sum_k \log L_{kk}
        + y^\top\Sigma^{-1}y - v^\top v\big),

and :math:`b \mid y, \theta \sim N(D^{1/2}L^{-\top}v,\ D^{1/2}B^{-1}D^{1/2})`: one exact
draw is :math:`b = D^{1/2}L^{-\top}(v + z)`. The code factors :math:`P = D^{-1} + Q = R^\top R`
instead, the same matrix scaled by :math:`D^{-1/2}` on both sides (:math:`L = D^{1/2}R^\top`),
which needs no scaling of Q's entries: :math:`2\sum_k \log L_{kk} = \log|D| + 2\sum_k \log R_{kk}`,
:math:`v = R^{-\top} q` and :math:`b = R^{-1}(v + z)`. The million athlete effects are never drawn: a
forecast needs only each athlete's posterior given their own earlier races
(lib/models/forecast/predict.py). Everything is float64, evaluated for a batch of
:math:`\theta` at once (sparse products of :data:`MATRIX_BATCH` thetas, then a Cholesky per
:math:`\theta`): no gradient and no compile.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
import scipy.linalg
import scipy.sparse as sp

from racedayai_bayes.lib.arrays import unique_inverse
from racedayai_bayes.lib.inference.imh import log_halfnormal_of_log

# theta = log of these scales, in this order
# (tau_other last: the first five keep the places they had before it existed)
SCALES = ("sigma_first", "sigma_returning", "tau", "sigma_course", "sigma_cell", "tau_other")
TAU_INDEX = (SCALES.index("tau"), SCALES.index("tau_other"))  # the athlete scale of class 0 and 1
PRIOR_SCALE = 0.5  # HalfNormal scale of every entry of SCALES (log-time units)
PRIOR_GENDER_SD = 1.0  # the gender effects are the intercepts; y is centred on the training mean
PRIOR_SLOPE_SD = 0.5  # per standard deviation of a covariate
CHUNK_ROWS = 1 << 18  # rows per pass of pattern_stats: bounds its working memory
MATRIX_BATCH = 64  # thetas per product in evaluate() (their packed triangles: 26 MB at K = 317)


@dataclass
class FitData:
    """One distance's training rows as the marginal likelihood sees them."""

    y: np.ndarray  # (n,) log time - edition offset - y_center
    x: "sp.csr_matrix | DesignParts"  # (n, K): the matrix, or its parts (made into one only if asked)
    first: np.ndarray  # (n,) bool: noise class 0
    athlete: np.ndarray  # (n,) int: athlete id; a row without an athlete_hash has its own
    block_slices: dict  # block -> slice of the columns
    # (n,) the athlete's class (module docstring): True for tau_other. One value per athlete:
    # an athlete is of class 1 if any of their rows says so. None: every athlete of class 0.
    other_known: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.y)


@dataclass(frozen=True, eq=False)
class DesignParts:
    """X as :func:`design_matrix` would make it, kept as its parts: each row's one-hot columns
    (``onehot``: (n, blocks) absolute column indices in increasing block order, -1 for none)
    and the dense covariates, its last columns (``dense``: (n, p)).

    :func:`pattern_stats` reads a pass's rows from these directly, so the fit never makes the
    sparse matrix: at full scale 70.3 that matrix is 2.2M rows x 12 entries, 320 MB of index
    and value arrays made, faulted in and read once (0.85 s of the fit's CPU by py-spy,
    2026-12-06 ~23:50; the statistics, design included, took a median 1.45 s against 1.63 s
    in 6 alternated pairs of fresh processes). It is made on request (:meth:`tocsr`,
    :meth:`toarray`), e.g. by :func:`dense_log_lik`'s tests.
    """

    onehot: np.ndarray
    dense: np.ndarray
    num_columns: int

    @property
    def shape(self) -> tuple[int, int]:
        return (len(self.dense), self.num_columns)

    def tocsr(self) -> sp.csr_matrix:
        return design_matrix(list(self.onehot.T), self.dense, self.num_columns)

    def toarray(self) -> np.ndarray:
        return self.tocsr().toarray()


def design_matrix(onehot: list[np.ndarray], dense: np.ndarray, num_columns: int) -> sp.csr_matrix:
    """Sparse X: a 1 at each row's column of each ``onehot`` array, then the dense columns.

    ``onehot`` holds absolute column indices in increasing block order; -1 means the row has
    no column in that block (stored as an explicit 0 in column 0, which changes no product).
    Built directly in CSR form (every row has the same number of entries), with 32-bit
    indices where they fit: no intermediate copy of the rows.
    """
    n, p = dense.shape
    width = len(onehot) + p
    index_type = np.int32 if n * width < np.iinfo(np.int32).max else np.int64
    indices = np.empty((n, width), dtype=index_type)
    values = np.empty((n, width), dtype=np.float64)
    for j, c in enumerate(onehot):
        np.maximum(c, 0, out=indices[:, j], casting="unsafe")
        np.greater_equal(c, 0, out=values[:, j], casting="unsafe")
    indices[:, len(onehot):] = np.arange(num_columns - p, num_columns, dtype=index_type)
    values[:, len(onehot):] = dense
    indptr = np.arange(0, n * width + 1, width, dtype=index_type)
    return sp.csr_matrix((values.reshape(-1), indices.reshape(-1), indptr), shape=(n, num_columns))


@dataclass
class PatternStats:
    """The statistics of the module docstring, packed for batched evaluation.

    ``mat_t`` (K(K+1)/2, terms) holds A_0, A_1 and every T_{p,hh'} as columns (upper
    triangles; the two mixed terms of a pattern are stored once, symmetrised), sparse: an
    athlete's races touch few courses, so most entries of most T terms are 0 (9% are not, at
    full scale), and evaluate()'s product with the weights costs that share of a dense
    one's multiplications (measured: 2.7x faster). ``vec`` (terms, K) and ``scal``
    (terms,) their companions. A term's weight is ``w_{h1}`` for an A term (``kind`` 0) and
    ``-c_p w_{h1} w_{h2}`` for a T term (``kind`` 1), ``c_p`` with the athlete scale of the
    pattern's class (``term_class``). ``pat_n`` (patterns, 2), ``pat_class`` and
    ``pat_count`` give log|Sigma|.
    """

    num_columns: int
    n: int
    n_class: np.ndarray  # (2,) rows per noise class
    kind: np.ndarray  # (terms,)
    h1: np.ndarray
    h2: np.ndarray
    term_n: np.ndarray  # (terms, 2) the pattern of a T term (0 for A terms)
    term_class: np.ndarray  # (terms,) the athlete class of a T term's pattern (0 for A terms)
    mat_t: sp.csr_matrix
    vec: np.ndarray
    scal: np.ndarray
    pat_n: np.ndarray  # (patterns, 2)
    pat_count: np.ndarray  # (patterns,)
    pat_class: np.ndarray  # (patterns,) the athletes' class, 0 or 1
    block_slices: dict

    @property
    def num_terms(self) -> int:
        return len(self.kind)


class _Triangles:
    """Sums of K x K products, each term's kept as its packed upper triangle: the columns of
    PatternStats.mat_t. No dense K x K matrix is made.

    A product comes in three blocks (:class:`_DesignRows`): the one-hot columns with each
    other (sparse), with the dense columns, and the dense columns with each other."""

    def __init__(self, k: int, dense: int):
        self.k = k
        self.k_onehot = k - dense
        self.parts: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []  # (packed position, term, value)

    def _append(self, term: int, row: np.ndarray, col: np.ndarray, value: np.ndarray) -> None:
        position = row * self.k - row * (row - 1) // 2 + (col - row)  # np.triu_indices(k)'s order
        self.parts.append((position, np.full(len(position), term, dtype=np.int64), value))

    def add(self, term: int, onehot, cross: np.ndarray | None, dense: np.ndarray | None, mixed: bool = False) -> None:
        """Add a symmetric product to ``term``, given as its one-hot block ``onehot`` (sparse,
        k_onehot x k_onehot), the upper off-diagonal block ``cross`` (k_onehot x dense; None
        without dense columns) and the dense block ``dense``. With ``mixed``, ``onehot`` and
        ``dense`` are those of m, and the sum m + m^T is added (the two mixed terms of a
        pattern, stored once): ``cross`` must then already be that sum's block."""
        m = onehot.tocoo()
        row, col, value = m.row.astype(np.int64), m.col.astype(np.int64), m.data
        if mixed:  # entry (i, j) of m + m^T is m_ij + m_ji: each entry goes to (min, max), the diagonal twice
            row, col = np.minimum(row, col), np.maximum(row, col)
            value = np.where(row == col, 2.0 * value, value)
        else:  # symmetric: its upper triangle
            upper = row <= col
            row, col, value = row[upper], col[upper], value[upper]
        self._append(term, row, col, value)
        if cross is None:
            return
        i, j = np.nonzero(cross)  # the dense columns come after every one-hot column: all above the diagonal
        self._append(term, i.astype(np.int64), (j + self.k_onehot).astype(np.int64), cross[i, j])
        d = dense + dense.T if mixed else dense
        i, j = np.triu_indices(len(d))
        self._append(term, i + self.k_onehot, j + self.k_onehot, d[i, j])

    def matrix(self, terms: int) -> sp.csr_matrix:
        """(K(K+1)/2, terms), duplicates summed."""
        if not self.parts:
            return sp.csr_matrix((self.k * (self.k + 1) // 2, terms))
        position, term, value = (np.concatenate(a) for a in zip(*self.parts))
        out = sp.coo_matrix((value, (position, term)), shape=(self.k * (self.k + 1) // 2, terms)).tocsr()  # sums duplicates
        out.eliminate_zeros()
        return out


class _DesignRows:
    """The rows of X as its one-hot columns (sparse) and its dense covariate columns (the
    ``slope`` block, the last columns), gathered a pass at a time.

    A row of X has a few one-hot entries and every covariate: in a sparse product, the
    covariates' entries make most of the work (12 entries a row at full scale, 9 of them
    covariates: 144 products per row, 9 without them), and they are dense anyway, so their
    blocks are dense products. In design_matrix's layout (every row the same number of
    entries, the covariates last and in order) a pass's rows are gathered from views of X's
    own arrays: no copy of the whole design is made, and the gather is several times faster
    than scipy's. A :class:`DesignParts` is gathered the same way from its one-hot codes (as
    design_matrix would store them: an int and a 0/1 value per row and block, made once) and
    its covariates, and gives the same matrices. Any other X is gathered by scipy and split
    per pass; a design whose covariates are not its last columns stays sparse as a whole.
    """

    def __init__(self, x: "sp.csr_matrix | DesignParts", slices: dict):
        n, k = x.shape
        slope = slices.get("slope")
        self.dense = 0 if slope is None or slope.stop != k else slope.stop - slope.start
        self.onehot = k - self.dense
        self._idx = self._val = None
        self._parts = None
        if isinstance(x, DesignParts):
            codes = x.onehot
            if x.dense.shape[1] == self.dense and self.dense and codes.shape[1] and len(codes) == n:
                # the one-hot entries as design_matrix stores them (a -1 is an explicit 0 in
                # column 0), the covariates as they are: the same matrices a pass takes
                index_type = np.int32 if n * (codes.shape[1] + self.dense) < np.iinfo(np.int32).max else np.int64
                index = np.empty(codes.shape, dtype=index_type)
                np.maximum(codes, 0, out=index, casting="unsafe")
                self._parts = (index, (codes >= 0).astype(np.float64),
                               np.ascontiguousarray(x.dense, dtype=np.float64), index_type)
                return
            x = x.tocsr()  # any other layout: as a matrix
        self.x = x.tocsr()
        width = self.x.nnz // n if n else 0
        w = width - self.dense
        if (n and w > 0 and self.x.nnz == n * width
                and np.array_equal(self.x.indptr, np.arange(0, n * width + 1, width))):
            idx = self.x.indices.reshape(n, width)
            if np.array_equal(idx[:, w:], np.broadcast_to(np.arange(self.onehot, k, dtype=idx.dtype), (n, self.dense))):
                self._idx, self._val = idx, self.x.data.reshape(n, width)

    def take(self, rows: np.ndarray) -> tuple[sp.csr_matrix, np.ndarray]:
        """The one-hot part (CSR, k_onehot columns) and the covariates (dense) of ``rows``."""
        if self._parts is not None:
            idx, val, dense, index_type = self._parts
            w = idx.shape[1]
            one = sp.csr_matrix((val[rows].reshape(-1), idx[rows].reshape(-1),
                                 np.arange(0, len(rows) * w + 1, w, dtype=index_type)), shape=(len(rows), self.onehot))
            return one, dense[rows]
        if self._idx is not None:
            w = self._idx.shape[1] - self.dense
            idx, val = self._idx[rows], self._val[rows]
            one = sp.csr_matrix((np.ascontiguousarray(val[:, :w]).reshape(-1), np.ascontiguousarray(idx[:, :w]).reshape(-1),
                                 np.arange(0, len(rows) * w + 1, w, dtype=self.x.indptr.dtype)), shape=(len(rows), self.onehot))
            return one, np.ascontiguousarray(val[:, w:])
        part = self.x[rows]
        return part[:, :self.onehot].tocsr(), part[:, self.onehot:].toarray()


def pattern_stats(data: FitData, chunk_rows: int = CHUNK_ROWS) -> PatternStats:
    """A_h, T_{p,hh'} and companions (see the module docstring), in passes of about
    ``chunk_rows`` rows.

    The athletes are ordered by pattern, and their rows with them, so that each pass holds
    whole athletes and most patterns fall in one pass. Each pass adds its rows' share to
    every term: the working memory is that of one pass, not of every athlete at once. The
    one-hot columns' products are sparse, the covariates' dense (:class:`_DesignRows`).
    """
    k = data.x.shape[1]
    y = np.asarray(data.y, dtype=np.float64)
    cls = (~np.asarray(data.first)).astype(np.int8)  # 0 first, 1 returning
    athlete = np.asarray(data.athlete)
    if len(athlete) and not (athlete.min() >= 0 and (np.bincount(athlete) > 0).all()):
        _, athlete = unique_inverse(athlete)  # number the athletes 0..m-1
    n_ath = int(athlete.max()) + 1 if len(athlete) else 0
    n_jh = [np.bincount(athlete[cls == h], minlength=n_ath) for h in (0, 1)]
    ath_class = np.zeros(n_ath, dtype=np.int64)
    if data.other_known is not None and n_ath:
        ath_class = (np.bincount(athlete, weights=np.asarray(data.other_known, dtype=np.float64), minlength=n_ath) > 0)
        ath_class = ath_class.astype(np.int64)
    top = int(n_jh[1].max()) + 1 if n_ath else 1
    top0 = int(n_jh[0].max()) + 1 if n_ath else 1
    keys, pat_of, pat_count = unique_inverse((ath_class * top0 + n_jh[0]) * top + n_jh[1], return_counts=True)
    pats = np.column_stack([(keys // top) % top0, keys % top])
    pat_class = keys // top // top0

    # the terms: A_0, A_1, then each pattern's (0,0), (1,1) and (0,1) products that exist
    kinds, h1s, h2s, tn, tc = [0, 0], [0, 1], [0, 1], [(0, 0), (0, 0)], [0, 0]
    pattern_terms = []
    for (n0, n1), g in zip(pats, pat_class):
        own = []
        for a, b in ((0, 0), (1, 1), (0, 1)):
            if (n0, n1)[a] and (n0, n1)[b]:
                own.append((a, b, len(kinds)))
                kinds.append(1)
                h1s.append(a)
                h2s.append(b)
                tn.append((int(n0), int(n1)))
                tc.append(int(g))
        pattern_terms.append(own)
    design = _DesignRows(data.x, data.block_slices)
    k1, p = design.onehot, design.dense
    triangle = _Triangles(k, p)  # each term's upper triangle
    vec = np.zeros((len(kinds), k))
    scal = np.zeros(len(kinds))

    # athletes in pattern order (their rank); each class's rows in athlete-rank order, so that
    # a pass's rows of a class are one run of that order; passes cut between athletes
    by_pattern = np.argsort(pat_of, kind="stable")
    rank = np.empty(n_ath, dtype=np.int64)
    rank[by_pattern] = np.arange(n_ath)
    row_rank = rank[athlete]
    classes = []
    for h in (0, 1):
        rows_h = np.flatnonzero(cls == h)
        order = rows_h[np.argsort(row_rank[rows_h], kind="stable")]
        classes.append((row_rank[order], order))
    rows_end = np.cumsum((n_jh[0] + n_jh[1])[by_pattern])  # end of each athlete's rows, in rank order
    cuts = np.unique(np.r_[0, np.searchsorted(rows_end, np.arange(chunk_rows, len(y), chunk_rows), side="left") + 1, n_ath])
    for a_lo, a_hi in zip(cuts[:-1], cuts[1:]):
        s, sz, yy = [], [], []
        for h, (ranks, order) in enumerate(classes):
            lo, hi = np.searchsorted(ranks, [a_lo, a_hi])
            xh, zh = design.take(order[lo:hi])
            yh = y[order[lo:hi]]
            local = ranks[lo:hi] - a_lo  # athlete of each row, 0..a_hi-a_lo-1
            cross = (xh.T @ zh) if p else None
            triangle.add(h, xh.T @ xh, cross, zh.T @ zh)
            vec[h, :k1] += xh.T @ yh
            vec[h, k1:] += zh.T @ yh
            scal[h] += yh @ yh
            incidence = sp.csr_matrix((np.ones(len(yh)), (local, np.arange(len(yh)))), shape=(a_hi - a_lo, len(yh)))
            s.append((incidence @ xh).tocsr())
            sz.append(incidence @ zh)
            yy.append(incidence @ yh)
        chunk_pats = pat_of[by_pattern[a_lo:a_hi]]  # non-decreasing
        starts = np.r_[0, np.flatnonzero(np.diff(chunk_pats)) + 1]
        for lo, hi in zip(starts, np.r_[starts[1:], len(chunk_pats)]):
            for a, b, t in pattern_terms[chunk_pats[lo]]:
                sa, sb = s[a][lo:hi], s[b][lo:hi]
                za, zb = sz[a][lo:hi], sz[b][lo:hi]
                ya, yb = yy[a][lo:hi], yy[b][lo:hi]
                v1, v2, sc = sa.T @ yb, za.T @ yb, ya @ yb
                cross = (sa.T @ zb) if p else None
                if a != b:  # both mixed terms, stored once
                    v1, v2, sc = v1 + sb.T @ ya, v2 + zb.T @ ya, 2.0 * sc
                    if p:
                        cross = cross + sb.T @ za
                triangle.add(t, sa.T @ sb, cross, za.T @ zb, mixed=a != b)
                vec[t, :k1] += v1
                vec[t, k1:] += v2
                scal[t] += sc
    return PatternStats(
        num_columns=k,
        n=len(y),
        n_class=np.array([int((cls == 0).sum()), int((cls == 1).sum())]),
        kind=np.array(kinds),
        h1=np.array(h1s),
        h2=np.array(h2s),
        term_n=np.array(tn, dtype=np.float64).reshape(-1, 2),
        term_class=np.array(tc, dtype=np.int64),
        mat_t=triangle.matrix(len(kinds)),
        vec=vec,
        scal=scal,
        pat_n=pats.astype(np.float64),
        pat_count=pat_count.astype(np.float64),
        pat_class=np.asarray(pat_class, dtype=np.int64),
        block_slices=dict(data.block_slices),
    )


def prior_sd(theta: np.ndarray, slices: dict, num_columns: int) -> np.ndarray:
    """sqrt(diag D) for each row of theta (B, len(SCALES)): (B, K)."""
    scales = np.exp(theta)
    sd = np.empty((len(theta), num_columns))
    sd[:, slices["gender"]] = PRIOR_GENDER_SD
    sd[:, slices["cell"]] = scales[:, [SCALES.index("sigma_cell")]]
    sd[:, slices["course"]] = scales[:, [SCALES.index("sigma_course")]]
    sd[:, slices["slope"]] = PRIOR_SLOPE_SD
    return sd


def log_prior(theta: np.ndarray) -> np.ndarray:
    """HalfNormal(PRIOR_SCALE) on every scale, as a density of its log (with the Jacobian)."""
    return log_halfnormal_of_log(theta, PRIOR_SCALE)


@dataclass
class Evaluation:
    """log p(y | theta) for a batch, and what an exact draw of b needs (for each theta)."""

    log_lik: np.ndarray  # (B,)
    upper: np.ndarray  # (thetas, K, K): each theta's R, with D^-1 + Q = R^T R
    v: np.ndarray  # (B, K): R^-T q


class Workspace:
    """Memory that successive evaluations reuse for their K x K factors.

    A batch of 64 factors at K = 320 is 52 MB (of 256, 210 MB): allocated afresh for every
    batch, each of its pages is faulted in and zeroed again (system time, and on this VM
    memory the host has taken back costs much more). With a workspace, an evaluation's
    ``upper`` is a view of this memory, valid until the next evaluation with the same
    workspace: a caller that keeps a factor past that copies it (the sampler does, for its
    chains' states).
    """

    def __init__(self):
        self._matrices: np.ndarray | None = None

    def matrices(self, count: int, k: int) -> np.ndarray:
        m = self._matrices
        if m is None or m.shape[0] < count or m.shape[1] != k:
            m = self._matrices = np.empty((count, k, k))
        return m[:count]


def evaluate(stats: PatternStats, theta: np.ndarray, workspace: Workspace | None = None) -> Evaluation:
    """The module docstring's log p(y | theta) for each row of ``theta`` (B, len(SCALES)).

    With a ``workspace``, the factors are written to its memory (see :class:`Workspace`).
    BLAS runs on one thread here: a batch of Choleskys of a few hundred columns is about
    eight times slower with OpenBLAS's two threads fighting over two cores than with one
    (measured), and the pipeline runs two steps at once anyway.
    """
    with _blas().limit(limits=1, user_api="blas"):
        return _evaluate(stats, np.atleast_2d(np.asarray(theta, dtype=np.float64)), workspace)


@functools.cache
def _blas():
    """threadpoolctl's controller of this process's BLAS libraries, made once: NumPy's and
    SciPy's, which this module's imports have loaded before any evaluation.

    ``threadpool_limits`` makes a new controller at every call, which looks through every
    library the process has loaded: 1.9-2.1 ms a call in a step process (the step server's
    preload), against 0.015 ms for a limit of this one (measured 2026-12-07), at each of a
    fit's evaluations (52-57 at either distance of the demo data: the Laplace fit's, the
    proposal's pilots and the sampler's batches)."""
    from threadpoolctl import ThreadpoolController

    return ThreadpoolController()


def _evaluate(stats: PatternStats, theta: np.ndarray, workspace: Workspace | None = None) -> Evaluation:
    k = stats.num_columns
    w = np.exp(-2.0 * theta[:, :2])  # (B, 2): 1/sigma_first^2, 1/sigma_returning^2
    log_tau = theta[:, list(TAU_INDEX)]  # (B, 2): each athlete class's scale
    c = 1.0 / (np.exp(-2.0 * log_tau)[:, stats.term_class] + w @ stats.term_n.T)  # (B, terms), only used for T terms
    coef = np.where(
        stats.kind[None, :] == 0,
        w[:, stats.h1],
        -c * w[:, stats.h1] * w[:, stats.h2],
    )
    q = coef @ stats.vec
    yy = coef @ stats.scal
    pat_w = stats.pat_n @ w.T  # (patterns, B)
    tau2 = np.exp(2.0 * log_tau).T[stats.pat_class]  # (patterns, B)
    log_det_sigma = (2.0 * theta[:, :2]) @ stats.n_class + stats.pat_count @ np.log1p(tau2 * pat_w)

    sd = prior_sd(theta, stats.block_slices, k)
    prior_precision = sd**-2.0  # diag D^-1
    row_start = np.r_[0, np.cumsum(np.arange(k, 0, -1))]  # where row i's upper part starts in the packed triangle
    diagonal = np.arange(k)
    upper = workspace.matrices(len(theta), k) if workspace is not None else np.empty((len(theta), k, k))
    bad = np.zeros(len(theta), dtype=bool)
    coef_t = np.ascontiguousarray(coef.T)
    # P = D^-1 + Q for MATRIX_BATCH thetas at a time: their packed triangles side by side (one
    # sparse product), copied row by row into the upper triangles of their slots of ``upper``
    # (row i of a packed upper triangle is one run: one copy per row for the whole batch,
    # instead of a gather of every entry per matrix, which took 0.5-0.7 ms per theta at
    # K = 317) and factored there by LAPACK, which reads the upper triangle only (the lower
    # one is left unset until the factor clears it). P is B = I + D^1/2 Q D^1/2 scaled by
    # D^-1/2 on both sides, so it needs no scaling of the packed entries (two passes over
    # them, about a quarter of an evaluation: measured 2026-12-05), and its factor R gives
    # B's: U = R D^1/2.
    for lo in range(0, len(theta), MATRIX_BATCH):
        part = slice(lo, lo + MATRIX_BATCH)
        packed = stats.mat_t @ coef_t[:, part]  # (K(K+1)/2, b): Q, packed
        block = upper[part]
        for i in range(k):
            block[:, i, i:] = packed[row_start[i]:row_start[i + 1]].T
        block[:, diagonal, diagonal] += prior_precision[part]
        del packed
        for i in range(block.shape[0]):
            bad[lo + i] = not _factor_in_place(upper[lo + i])
    v = np.empty((len(theta), k))
    for b in range(len(theta)):
        # v = L_B^-1 D^1/2 q = R^-T q, with L_B = U^T = D^1/2 R^T
        v[b] = scipy.linalg.solve_triangular(upper[b], q[b], lower=False, trans="T", check_finite=False)
    # log|B| = log|D| + log|P|
    log_det_b = 2.0 * np.log(np.diagonal(upper, axis1=1, axis2=2)).sum(axis=1) + 2.0 * np.log(sd).sum(axis=1)
    log_lik = -0.5 * (stats.n * np.log(2.0 * np.pi) + log_det_sigma + log_det_b + yy - np.einsum("bk,bk->b", v, v))
    log_lik[bad | ~np.isfinite(log_lik)] = -np.inf
    return Evaluation(log_lik=log_lik, upper=upper, v=v)


def _factor_in_place(mat: np.ndarray) -> bool:
    """Overwrite the C-ordered ``mat``, whose upper triangle holds a symmetric matrix (the lower
    one is ignored: it may be unset), with that matrix's upper Cholesky factor U (= U^T U),
    zeros below the diagonal; False if it is not numerically positive definite.

    D^-1 + Q is positive definite in exact arithmetic; at the extreme scales a
    heavy-tailed proposal sometimes draws, rounding can break that. Such a theta gets zero
    density (its factor is the identity, never used), instead of failing the whole batch.
    LAPACK works in Fortran order: ``mat.T`` is the same symmetric matrix, and its lower
    factor, written in place, is U in ``mat``'s own order (measured: a third less time than
    numpy's batched Cholesky, which also allocates its result).
    """
    factor, info = scipy.linalg.lapack.dpotrf(mat.T, lower=1, clean=1, overwrite_a=1)
    if info == 0 and not np.shares_memory(factor, mat):  # f2py copied after all: take its result
        mat[...] = factor.T
    if info != 0:
        mat[...] = np.eye(len(mat))
        return False
    return True


def draw_coefficients(ev: Evaluation, index: int, rng: np.random.Generator) -> np.ndarray:
    """One exact draw of b | y, theta for the ``index``-th theta of an evaluation."""
    return draw_b(ev.upper[index], ev.v[index], rng)


def draw_b(upper: np.ndarray, v: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """b = D^1/2 L^-T (v + z) = R^-1 (v + z), z standard normal (the module docstring), with
    L = D^1/2 R^T the factor of B and R that of D^-1 + Q = R^T R."""
    z = rng.standard_normal(len(v))
    return scipy.linalg.solve_triangular(upper, v + z, lower=False, check_finite=False)


def dense_log_lik(data: FitData, theta: np.ndarray) -> float:
    """log p(y | theta) from the full n x n covariance: for tests on small data only."""
    from scipy.stats import multivariate_normal

    theta = np.asarray(theta, dtype=np.float64)
    s = np.exp(theta)
    x = data.x.toarray()
    noise = np.where(data.first, s[0] ** 2, s[1] ** 2)
    same = data.athlete[:, None] == data.athlete[None, :]
    # each athlete's class: 1 if any of their rows says so
    known = np.zeros(len(data.y), dtype=bool) if data.other_known is None else np.asarray(data.other_known, dtype=bool)
    of_class_1 = (same & known[None, :]).any(axis=1)
    tau2 = np.where(of_class_1, s[TAU_INDEX[1]] ** 2, s[TAU_INDEX[0]] ** 2)
    sd = prior_sd(theta[None, :], data.block_slices, x.shape[1])[0]
    cov = np.diag(noise) + tau2[:, None] * same + (x * sd**2) @ x.T
    return float(multivariate_normal(mean=np.zeros(len(data.y)), cov=cov).logpdf(data.y))
