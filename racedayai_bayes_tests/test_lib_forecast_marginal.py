"""The forecast model's collapsed likelihood (lib/models/forecast/marginal.py) against brute force."""

import numpy as np
import pytest

from racedayai_bayes.lib.models.forecast import marginal as M

SLICES = {"gender": slice(0, 3), "cell": slice(3, 8), "course": slice(8, 14), "slope": slice(14, 16)}
K = 16


def small_problem(seed: int = 1, n: int = 160, athletes: int = 45):
    rng = np.random.default_rng(seed)
    athlete = rng.integers(0, athletes, n)
    athlete[: athletes // 3] = np.arange(athletes, athletes + athletes // 3)  # singletons too
    first = rng.random(n) < 0.35
    g, c, co = rng.integers(0, 3, n), rng.integers(0, 5, n), rng.integers(0, 6, n)
    z = rng.standard_normal((n, 2))
    x = M.design_matrix([g, 3 + c, 8 + co], z, K)
    y = rng.standard_normal(n) * 0.2
    # athletes of either class (tau or tau_other); an athlete is of class 1 if any of their
    # rows says so, so some athletes' rows disagree
    other_known = (athlete % 3 == 0) & (rng.random(n) < 0.8)
    return M.FitData(y=y, x=x, first=first, athlete=athlete, block_slices=SLICES, other_known=other_known)


def test_design_matrix_has_one_one_per_block_and_the_dense_columns():
    data = small_problem()
    x = data.x.toarray()
    assert x.shape == (160, K)
    np.testing.assert_array_equal(x[:, SLICES["gender"]].sum(1), 1.0)
    np.testing.assert_array_equal(x[:, SLICES["cell"]].sum(1), 1.0)
    np.testing.assert_array_equal(x[:, SLICES["course"]].sum(1), 1.0)


def test_a_missing_level_contributes_no_column():
    x = M.design_matrix([np.array([0, 1]), np.array([3, -1])], np.zeros((2, 1)), 6).toarray()
    np.testing.assert_array_equal(x, [[1, 0, 0, 1, 0, 0], [0, 1, 0, 0, 0, 0]])


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_log_likelihood_equals_the_dense_multivariate_normal(seed):
    data = small_problem(seed)
    stats = M.pattern_stats(data)
    rng = np.random.default_rng(seed)
    thetas = np.log(rng.uniform(0.03, 0.3, size=(4, len(M.SCALES))))
    got = M.evaluate(stats, thetas).log_lik
    want = [M.dense_log_lik(data, th) for th in thetas]
    np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-8)


def test_an_evaluation_runs_blas_on_one_thread_and_gives_the_limit_back(monkeypatch):
    """Every evaluation, not only the first (its controller of the BLAS libraries is made
    once), runs BLAS on one thread, and the caller's limit is back afterwards."""
    from threadpoolctl import threadpool_info, threadpool_limits

    def blas_threads():
        return {pool["num_threads"] for pool in threadpool_info() if pool["user_api"] == "blas"}

    seen, real = [], M._evaluate

    def spy(*args, **kwargs):
        seen.append(blas_threads())
        return real(*args, **kwargs)

    monkeypatch.setattr(M, "_evaluate", spy)
    stats = M.pattern_stats(small_problem())
    thetas = np.log(np.full((2, len(M.SCALES)), 0.1))
    with threadpool_limits(limits=2, user_api="blas"):
        first, second = M.evaluate(stats, thetas).log_lik, M.evaluate(stats, thetas).log_lik
        after = blas_threads()
    assert seen == [{1}, {1}]
    assert after == {2}
    np.testing.assert_array_equal(first, second)


@pytest.mark.parametrize("chunk_rows", [1, 7, 40])
def test_statistics_made_in_several_passes_equal_one_pass(chunk_rows):
    """pattern_stats in passes of whole athletes (patterns split across passes too) adds up
    to the statistics of one pass over every row."""
    data = small_problem(5)
    one, many = M.pattern_stats(data), M.pattern_stats(data, chunk_rows=chunk_rows)
    for name in ("kind", "h1", "h2", "term_n", "term_class", "pat_n", "pat_count", "pat_class", "n_class"):
        np.testing.assert_array_equal(getattr(many, name), getattr(one, name))
    np.testing.assert_allclose(many.mat_t.toarray(), one.mat_t.toarray(), rtol=1e-12, atol=1e-12)
    for name in ("vec", "scal"):
        np.testing.assert_allclose(getattr(many, name), getattr(one, name), rtol=1e-12, atol=1e-12)


def test_statistics_do_not_depend_on_how_the_design_is_stored():
    """The covariates' dense blocks and the fast row gathers (design_matrix's layout: the
    same number of entries in every row, covariates last) give the statistics of the plain
    sparse products: X with its explicit zeros removed (rows of unequal length), and X with
    no dense block at all, give the same."""
    data = small_problem(6)
    data.x = M.design_matrix([data.x.indices.reshape(len(data), -1)[:, j].copy() for j in range(3)],
                             data.x.toarray()[:, SLICES["slope"]], K)
    data.x.data[::7] = 0.0  # some entries 0: one-hot ones (as for a row without a course), covariates too
    want = M.pattern_stats(data)
    ragged = M.FitData(y=data.y, x=data.x.copy(), first=data.first, athlete=data.athlete, block_slices=SLICES,
                       other_known=data.other_known)
    ragged.x.eliminate_zeros()
    assert len(set(np.diff(ragged.x.indptr))) > 1
    no_dense = M.FitData(y=data.y, x=data.x, first=data.first, athlete=data.athlete,
                         block_slices={k: v for k, v in SLICES.items() if k != "slope"}, other_known=data.other_known)
    for other in (M.pattern_stats(ragged), M.pattern_stats(no_dense)):
        np.testing.assert_allclose(other.mat_t.toarray(), want.mat_t.toarray(), rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(other.vec, want.vec, rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(other.scal, want.scal, rtol=1e-12, atol=1e-12)
    rows = np.array([5, 0, 17, 5])
    for x, fast in ((data.x, True), (ragged.x, False)):
        design = M._DesignRows(x, SLICES)
        assert (design._idx is not None) == fast
        one, dense = design.take(rows)
        assert dense.shape == (len(rows), 2) and one.shape == (len(rows), K - 2)
        np.testing.assert_array_equal(np.hstack([one.toarray(), dense]), data.x.toarray()[rows])


def test_statistics_of_the_design_parts_equal_those_of_the_matrix():
    """X given as its parts (DesignParts: the one-hot columns, -1 for a row without a level,
    and the covariates), as the fit gives it, yields the same statistics as the matrix
    design_matrix makes of them, bit for bit, in one pass and in several; the parts make that
    same matrix on request; without covariates the parts are read as the matrix."""
    rng = np.random.default_rng(7)
    data = small_problem(7)
    codes = data.x.indices.reshape(len(data), -1)[:, :3].copy()
    codes[rng.random(codes.shape) < 0.1] = -1  # missing levels: no column in that block
    codes[:, 0] = np.maximum(codes[:, 0], 0)  # every row has a gender
    dense = data.x.toarray()[:, SLICES["slope"]]
    matrix = M.design_matrix(list(codes.T), dense, K)
    parts = M.DesignParts(codes, dense, K)
    assert parts.shape == (len(data), K)
    np.testing.assert_array_equal(parts.toarray(), matrix.toarray())
    for chunk_rows in (M.CHUNK_ROWS, 9):
        want = M.pattern_stats(M.FitData(y=data.y, x=matrix, first=data.first, athlete=data.athlete,
                                         block_slices=SLICES, other_known=data.other_known), chunk_rows=chunk_rows)
        got = M.pattern_stats(M.FitData(y=data.y, x=parts, first=data.first, athlete=data.athlete,
                                        block_slices=SLICES, other_known=data.other_known), chunk_rows=chunk_rows)
        assert (got.mat_t != want.mat_t).nnz == 0
        np.testing.assert_array_equal(got.vec, want.vec)
        np.testing.assert_array_equal(got.scal, want.scal)
    design = M._DesignRows(parts, SLICES)
    assert design._parts is not None
    rows = np.array([5, 0, 17, 5])
    one, cov = design.take(rows)
    np.testing.assert_array_equal(np.hstack([one.toarray(), cov]), matrix.toarray()[rows])
    no_dense = {k: v for k, v in SLICES.items() if k != "slope"}  # the covariates' block unnamed
    assert M._DesignRows(parts, no_dense)._parts is None


def test_batch_evaluation_equals_one_at_a_time(monkeypatch):
    monkeypatch.setattr(M, "MATRIX_BATCH", 2)  # several matrix batches within one evaluation
    stats = M.pattern_stats(small_problem())
    thetas = np.log(np.random.default_rng(0).uniform(0.03, 0.3, size=(5, len(M.SCALES))))
    batch = M.evaluate(stats, thetas).log_lik
    single = [M.evaluate(stats, th[None, :]).log_lik[0] for th in thetas]
    np.testing.assert_allclose(batch, single, rtol=0, atol=1e-9)


def test_an_evaluation_in_a_workspace_equals_one_in_fresh_memory():
    """Evaluations that reuse one workspace for their factors give the numbers of evaluations
    in fresh memory; each one's factors are views of the workspace until the next one."""
    stats = M.pattern_stats(small_problem(2))
    rng = np.random.default_rng(1)
    workspace = M.Workspace()
    for n in (3, 4, 2):  # the workspace grows, then is reused
        thetas = np.log(rng.uniform(0.03, 0.3, size=(n, len(M.SCALES))))
        want = M.evaluate(stats, thetas)
        got = M.evaluate(stats, thetas, workspace)
        np.testing.assert_array_equal(got.log_lik, want.log_lik)
        np.testing.assert_array_equal(got.v, want.v)
        np.testing.assert_array_equal(got.upper, want.upper)
        assert np.shares_memory(got.upper, workspace.matrices(len(thetas), stats.num_columns))


def test_the_factor_is_written_in_place_and_a_matrix_that_is_not_positive_definite_gets_zero_density(monkeypatch):
    rng = np.random.default_rng(3)
    a = rng.standard_normal((6, 6))
    spd = a @ a.T + 6 * np.eye(6)
    batch = np.stack([spd, -np.eye(6)])  # C-ordered, as evaluate() holds them
    assert M._factor_in_place(batch[0])
    np.testing.assert_allclose(batch[0], np.linalg.cholesky(spd).T, rtol=1e-12, atol=1e-12)
    assert np.all(np.tril(batch[0], -1) == 0.0)
    assert not M._factor_in_place(batch[1])
    np.testing.assert_array_equal(batch[1], np.eye(6))
    # within an evaluation: the one theta whose matrix cannot be factored gets -inf, the others theirs
    stats = M.pattern_stats(small_problem())
    thetas = np.log(np.full((3, len(M.SCALES)), 0.1))
    real = M.evaluate(stats, thetas).log_lik
    original = M._factor_in_place
    calls = []

    def second_fails(mat):
        calls.append(1)
        return original(mat) if len(calls) != 2 else (mat.__setitem__(Ellipsis, np.eye(len(mat))) or False)

    monkeypatch.setattr(M, "_factor_in_place", second_fails)
    out = M.evaluate(stats, thetas).log_lik
    assert out[1] == -np.inf
    np.testing.assert_array_equal(out[[0, 2]], real[[0, 2]])


def test_coefficient_draws_follow_the_exact_conditional_posterior():
    data = small_problem(4)
    stats = M.pattern_stats(data)
    theta = np.log([0.1, 0.07, 0.12, 0.08, 0.1, 0.05])
    ev = M.evaluate(stats, theta[None, :])
    # the conditional posterior of b from the dense marginal covariance of y given b
    s = np.exp(theta)
    x = data.x.toarray()
    same = data.athlete[:, None] == data.athlete[None, :]
    of_class_1 = np.isin(data.athlete, data.athlete[data.other_known])
    tau = np.where(of_class_1, s[M.SCALES.index("tau_other")], s[M.SCALES.index("tau")])
    sigma = np.diag(np.where(data.first, s[0] ** 2, s[1] ** 2)) + tau[:, None] ** 2 * same
    d = M.prior_sd(theta[None, :], SLICES, K)[0] ** 2
    precision = np.diag(1 / d) + x.T @ np.linalg.solve(sigma, x)
    cov = np.linalg.inv(precision)
    mean = cov @ x.T @ np.linalg.solve(sigma, data.y)
    rng = np.random.default_rng(0)
    draws = np.array([M.draw_coefficients(ev, 0, rng) for _ in range(4000)])
    se = np.sqrt(np.diag(cov) / len(draws))
    assert np.all(np.abs(draws.mean(0) - mean) < 5 * se)
    np.testing.assert_allclose(np.cov(draws.T), cov, atol=0.1 * np.abs(cov).max())


def test_log_prior_is_the_half_normal_of_each_scale_with_the_jacobian():
    from scipy.stats import halfnorm

    theta = np.log([0.05, 0.1, 0.2, 0.3, 0.4, 0.15])
    want = np.sum(halfnorm(scale=M.PRIOR_SCALE).logpdf(np.exp(theta)) + theta)
    assert M.log_prior(theta[None, :])[0] == pytest.approx(want, rel=1e-12)


def test_each_athlete_class_has_its_own_scale():
    """Athletes of class 1 (the other distance's level known at their first finish here) vary
    with tau_other, the others with tau: moving one scale moves the likelihood only through
    the athletes of its class, and with no athlete of class 1, tau_other changes nothing."""
    data = small_problem(7)
    stats = M.pattern_stats(data)
    assert set(stats.pat_class) == {0, 1}
    base = np.log([0.1, 0.07, 0.12, 0.08, 0.1, 0.05])
    other = base.copy()
    other[M.SCALES.index("tau_other")] = np.log(0.2)
    got = M.evaluate(stats, np.stack([base, other])).log_lik
    assert got[0] != got[1]
    np.testing.assert_allclose(got, [M.dense_log_lik(data, base), M.dense_log_lik(data, other)], rtol=1e-10)
    plain = M.FitData(y=data.y, x=data.x, first=data.first, athlete=data.athlete, block_slices=SLICES)
    none = M.pattern_stats(plain)
    assert set(none.pat_class) == {0}
    same = M.evaluate(none, np.stack([base, other])).log_lik
    assert same[0] == same[1]
    # every athlete of class 1, with tau_other equal to tau: the likelihood of one class
    every = M.FitData(y=data.y, x=data.x, first=data.first, athlete=data.athlete, block_slices=SLICES,
                      other_known=np.ones(len(data), dtype=bool))
    swapped = base.copy()
    swapped[M.SCALES.index("tau_other")] = base[M.SCALES.index("tau")]
    swapped[M.SCALES.index("tau")] = np.log(0.5)
    assert M.evaluate(M.pattern_stats(every), swapped[None, :]).log_lik[0] == pytest.approx(
        M.evaluate(none, base[None, :]).log_lik[0], rel=1e-12)
