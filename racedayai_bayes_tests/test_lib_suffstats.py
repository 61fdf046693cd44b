"""Sufficient statistics: exact equality with the dense design matrix, layout and validation."""

import dataclasses

import numpy as np
import pytest

from racedayai_bayes.lib.models.seed.encoding import UNSEEN, Design
from racedayai_bayes.lib.models.seed.suffstats import (
    SuffStats,
    column_slices,
    dense_design_matrix,
    sufficient_stats,
)


def random_design(n=500, n_gender=2, n_age=4, n_cluster=5, seed=0) -> Design:
    rng = np.random.default_rng(seed)
    return Design(
        gender_idx=rng.integers(0, n_gender, n),
        age_idx=rng.integers(0, n_age, n),
        cluster_idx=rng.integers(0, n_cluster, n),
        fitness=rng.normal(size=n),
        experience=rng.normal(size=n),
        y=rng.normal(size=n) + 3.0,
        n_gender=n_gender,
        n_age=n_age,
        n_cluster=n_cluster,
    )


def assert_matches_dense(design: Design, stats: SuffStats) -> None:
    x = dense_design_matrix(design)
    assert stats.xtx.dtype == np.float64 and stats.xty.dtype == np.float64
    np.testing.assert_allclose(stats.xtx, x.T @ x, rtol=1e-12, atol=1e-9)
    np.testing.assert_allclose(stats.xty, x.T @ design.y, rtol=1e-12, atol=1e-9)
    assert stats.yty == pytest.approx(float(design.y @ design.y), rel=1e-12)
    assert stats.n == len(design)
    np.testing.assert_array_equal(stats.xtx, stats.xtx.T)


def test_stats_equal_dense_products():
    design = random_design()
    assert_matches_dense(design, sufficient_stats(design))


def test_stats_with_empty_cells_and_a_single_row_cluster():
    # age 2 and cluster 3 never occur (empty cells, zero rows/columns in X'X); cluster 4 has
    # exactly one row; the last age level has no rows in the female group
    d = random_design(n=300, n_age=4, n_cluster=6, seed=3)
    age = np.where(d.age_idx == 2, 1, d.age_idx)
    age = np.where((d.gender_idx == 1) & (age == 3), 0, age)
    cluster = np.where(np.isin(d.cluster_idx, [3, 4]), 0, d.cluster_idx)
    cluster[17] = 4
    design = dataclasses.replace(d, age_idx=age, cluster_idx=cluster)
    stats = sufficient_stats(design)
    assert_matches_dense(design, stats)
    sl = stats.slices
    assert stats.xtx[sl["mu_age"].start + 2].sum() == 0.0
    assert stats.xtx[sl["mu_cluster"].start + 3].sum() == 0.0
    j = sl["mu_cluster"].start + 4
    assert stats.xtx[j, j] == 1.0
    assert stats.xty[j] == design.y[17]


def test_stats_of_chunks_add_up():
    design = random_design(n=400, seed=5)
    half = {f.name: getattr(design, f.name) for f in dataclasses.fields(design)}
    first = Design(**{k: v[:150] if isinstance(v, np.ndarray) else v for k, v in half.items()})
    rest = Design(**{k: v[150:] if isinstance(v, np.ndarray) else v for k, v in half.items()})
    total = sufficient_stats(first) + sufficient_stats(rest)
    assert_matches_dense(design, total)


def test_column_layout():
    stats = sufficient_stats(random_design(n_gender=2, n_age=3, n_cluster=2))
    assert stats.num_columns == 3 + 2 + 3 + 2 == stats.xtx.shape[0]
    assert stats.columns == (
        "mu_global", "mu_gender[0]", "mu_gender[1]", "mu_age[0]", "mu_age[1]", "mu_age[2]",
        "mu_cluster[0]", "mu_cluster[1]", "beta_fitness", "beta_experience",
    )
    assert column_slices(2, 3, 2) == stats.slices
    assert stats.slices["mu_age"] == slice(3, 6)
    # every one-hot block sums to the intercept column: row sums of the block in X'X equal n
    for block in ("mu_gender", "mu_age", "mu_cluster"):
        assert stats.xtx[0, stats.slices[block]].sum() == stats.n


def test_large_data_in_float64():
    # sums over many rows with a large offset: float32 accumulation would be off by far more
    rng = np.random.default_rng(11)
    n = 1_000_000
    design = dataclasses.replace(
        random_design(n=n, seed=11), y=1e3 + rng.normal(size=n), fitness=rng.normal(size=n)
    )
    stats = sufficient_stats(design)
    assert stats.yty == pytest.approx(float(np.sum(design.y.astype(np.float64) ** 2)), rel=1e-13)
    assert stats.xty[0] == pytest.approx(float(np.sum(design.y)), rel=1e-13)


@pytest.mark.parametrize("field", ["age_idx", "cluster_idx", "gender_idx"])
def test_rejects_unseen_indices(field):
    design = random_design(n=50)
    idx = getattr(design, field).copy()
    idx[7] = UNSEEN
    bad = dataclasses.replace(design, **{field: idx})
    with pytest.raises(ValueError, match="UNSEEN"):
        sufficient_stats(bad)
    with pytest.raises(ValueError, match="UNSEEN"):
        dense_design_matrix(bad)


def test_rejects_missing_or_bad_values():
    design = random_design(n=50)
    with pytest.raises(ValueError, match="design.y is None"):
        sufficient_stats(dataclasses.replace(design, y=None))
    y = design.y.copy()
    y[3] = np.nan
    with pytest.raises(ValueError, match="y has 1 missing"):
        sufficient_stats(dataclasses.replace(design, y=y))
    with pytest.raises(ValueError, match="n_age is 4"):
        sufficient_stats(dataclasses.replace(design, age_idx=np.full(50, 4)))
    with pytest.raises(ValueError, match="at least one row"):
        sufficient_stats(random_design(n=0))
    with pytest.raises(ValueError, match="cannot add"):
        sufficient_stats(design) + sufficient_stats(random_design(n=50, n_age=3))
