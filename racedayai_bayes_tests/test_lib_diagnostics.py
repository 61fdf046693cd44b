"""Convergence diagnostics and predictive checks with their thresholds (lib/diagnostics.py)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import mean_absolute_error, r2_score

from racedayai_bayes.lib.evaluation.diagnostics import (
    ERROR,
    PASS,
    WARN,
    check_coverage,
    check_divergences,
    check_ess,
    check_rhat,
    parameter_names,
    predictive_metrics,
    summary_table,
)
from racedayai_bayes.lib.inference.nuts import Draws

CHAINS, DRAWS = 4, 1000


def _iid_draws(seed: int = 0) -> Draws:
    rng = np.random.default_rng(seed)
    samples = {
        "mu_global": rng.normal(2.0, 0.5, size=(CHAINS, DRAWS)),
        "mu_age": rng.normal(0.0, 1.0, size=(CHAINS, DRAWS, 3)),
    }
    return Draws(samples=samples, diverging=np.zeros((CHAINS, DRAWS), dtype=bool), engine="test")


def test_summary_of_iid_draws_has_rhat_one_and_full_ess():
    draws = _iid_draws()
    table = summary_table(draws)
    assert list(table.index) == ["mu_age[0]", "mu_age[1]", "mu_age[2]", "mu_global"] == parameter_names(draws)
    assert list(table.columns) == ["mean", "sd", "p5", "p95", "ess_bulk", "r_hat"]
    # iid draws: r_hat is 1 up to sampling noise (about 1/n), bulk ESS is the draw count
    # up to its own sampling error (a few percent at n = 4000)
    assert (table["r_hat"] - 1).abs().max() < 0.005
    n = CHAINS * DRAWS
    assert table["ess_bulk"].between(0.85 * n, 1.15 * n).all()
    flat = draws.samples["mu_global"].ravel()
    assert table.loc["mu_global", "mean"] == pytest.approx(flat.mean(), rel=1e-12)
    assert table.loc["mu_global", "sd"] == pytest.approx(flat.std(ddof=1), rel=1e-12)
    assert table.loc["mu_global", "p5"] == pytest.approx(np.percentile(flat, 5), rel=1e-12)
    assert table.loc["mu_age[2]", "p95"] == pytest.approx(np.percentile(draws.samples["mu_age"][..., 2], 95), rel=1e-12)
    assert check_rhat(table).level == PASS
    assert check_ess(table).level == PASS


def test_two_chains_stuck_at_different_values_fail_the_rhat_check():
    rng = np.random.default_rng(1)
    n = 1000
    samples = {
        "mu_global": rng.normal(2.0, 0.5, size=(2, n)),
        "sigma_age": np.stack([rng.normal(0.0, 0.01, n), rng.normal(5.0, 0.01, n)]),
        "mu_age": rng.normal(0.0, 1.0, size=(2, n, 2)),
    }
    table = summary_table(Draws(samples=samples, diverging=np.zeros((2, n), dtype=bool), engine="test"))
    # rank-normalised split r_hat of two separated chains is about 1.8 (the rank transform
    # bounds it); anything above 1.01 fails
    assert table.loc["sigma_age", "r_hat"] > 1.5
    assert table.drop(index="sigma_age")["r_hat"].max() < 1.01
    assert table.loc["sigma_age", "ess_bulk"] < 10
    outcome = check_rhat(table)
    assert outcome.level == ERROR and not outcome.passed
    assert outcome.worst == "sigma_age"
    assert outcome.value == table.loc["sigma_age", "r_hat"]
    assert "sigma_age" in outcome.description
    ess = check_ess(table)
    assert ess.level == ERROR and ess.worst == "sigma_age"


def test_a_chain_with_the_same_centre_but_another_spread_fails_the_rhat_check():
    """Rank-normalised r_hat (Vehtari et al. 2021) is the larger of the bulk r_hat and the
    folded one, which compares the chains' spreads: one chain 2.5x as wide as three others with
    the same centre fails. A bulk-only (z_scale) or classic split r_hat would call it 1.00."""
    rng = np.random.default_rng(3)
    wide = np.stack([rng.normal(0, 1, 1000), rng.normal(0, 1, 1000), rng.normal(0, 1, 1000), rng.normal(0, 2.5, 1000)])
    draws = Draws(samples={"sigma": wide, "mu_global": rng.normal(size=(4, 1000))},
                  diverging=np.zeros((4, 1000), dtype=bool), engine="test")
    table = summary_table(draws)
    assert table.loc["sigma", "r_hat"] > 1.05 and table.loc["mu_global", "r_hat"] < 1.01
    assert check_rhat(table).worst == "sigma" and check_rhat(table).level == ERROR


def test_bulk_ess_is_rank_based_so_a_monotone_transform_of_the_draws_keeps_it():
    """Bulk ESS ranks the draws first: the ESS of a parameter and of exp(2 x) of it are the
    same number (the plain 'mean' ESS of an autocorrelated, skewed exp(2 x) is another one)."""
    rng = np.random.default_rng(4)
    x = np.zeros((4, 1000))
    for c in range(4):  # AR(1) chains: an ESS well below the draw count
        e = rng.normal(size=1000)
        for t in range(1, 1000):
            x[c, t] = 0.7 * x[c, t - 1] + e[t]
    table = summary_table(Draws(samples={"a": x, "b": np.exp(2 * x)}, diverging=np.zeros((4, 1000), dtype=bool),
                                engine="test"))
    assert table.loc["a", "ess_bulk"] == pytest.approx(table.loc["b", "ess_bulk"], rel=1e-9)
    assert 400 < table.loc["a", "ess_bulk"] < 1000  # about (1 - 0.7) / (1 + 0.7) x 4000 = 706


def test_single_chain_gives_an_rhat_error_not_a_crash():
    # r_hat needs 2+ chains; ArviZ returns NaN, which must fail the check
    rng = np.random.default_rng(2)
    draws = Draws(samples={"mu_global": rng.normal(size=(1, 500)), "sigma": rng.gamma(5.0, size=(1, 500))},
                  diverging=np.zeros((1, 500), dtype=bool), engine="test")
    table = summary_table(draws)
    assert table["r_hat"].isna().all()
    outcome = check_rhat(table)
    assert outcome.level == ERROR
    assert np.isnan(outcome.value)


def test_a_constant_parameter_fails_the_rhat_check():
    # identical draws everywhere (a stuck sampler): r_hat is undefined (NaN), not a pass
    draws = _iid_draws()
    draws.samples["sigma"] = np.full((CHAINS, DRAWS), 0.3)
    table = summary_table(draws)
    assert np.isnan(table.loc["sigma", "r_hat"])
    outcome = check_rhat(table)
    assert outcome.level == ERROR
    assert outcome.worst == "sigma"


def _summary(r_hat: list[float], ess: list[float]) -> pd.DataFrame:
    names = [f"p{i}" for i in range(len(r_hat))]
    return pd.DataFrame({"r_hat": r_hat, "ess_bulk": ess}, index=pd.Index(names, name="parameter"))


@pytest.mark.parametrize(
    "worst, level",
    [(1.0, PASS), (1.01, PASS), (1.0101, ERROR), (float("nan"), ERROR)],
)
def test_rhat_threshold_is_1_01_inclusive(worst, level):
    outcome = check_rhat(_summary([1.0, worst, 1.001], [1000, 1000, 1000]))
    assert outcome.level == level
    assert outcome.threshold == "<= 1.01"
    if level == ERROR:
        assert outcome.worst == "p1"  # a NaN r_hat is named as the worst too


@pytest.mark.parametrize("worst, level", [(400.0, PASS), (5000.0, PASS), (399.9, ERROR), (float("nan"), ERROR)])
def test_ess_threshold_is_400_inclusive(worst, level):
    outcome = check_ess(_summary([1.0, 1.0, 1.0], [1200.0, worst, 800.0]))
    assert outcome.level == level
    assert outcome.worst == ("p2" if worst > 800 else "p1")
    if not np.isnan(worst):
        assert outcome.value == min(worst, 800.0)
    assert outcome.threshold == ">= 400"


@pytest.mark.parametrize(
    "n_div, level",
    [(0, PASS), (1, WARN), (30, WARN), (31, ERROR), (300, ERROR)],  # 30 of 3000 is exactly 1%
)
def test_divergences_levels(n_div, level):
    diverging = np.zeros((2, 1500), dtype=bool)
    diverging[1, :n_div] = True
    outcome = check_divergences(diverging)
    assert outcome.level == level
    assert outcome.value == n_div
    assert outcome.extra["per_chain"] == [0, n_div]
    assert outcome.extra["share"] == pytest.approx(n_div / 3000)
    assert outcome.worst == ("chain 2" if n_div else None)


@pytest.mark.parametrize(
    "coverage, level",
    [(0.85, PASS), (0.90, PASS), (0.95, PASS), (0.8499, ERROR), (0.9501, ERROR), (0.0, ERROR), (1.0, ERROR)],
)
def test_coverage_bounds_are_inclusive(coverage, level):
    outcome = check_coverage(coverage, 0.0, rows=10_000, editions=100)  # no noise: the band as is
    assert outcome.level == level
    assert outcome.value == coverage
    assert "90% predictive interval covers" in outcome.description


def test_predictive_metrics_equal_sklearn_and_hand_values():
    y = np.array([1.0, 2.0, 3.0, 4.0])
    pred = np.array([1.0, 3.0, 2.0, 4.0])
    p05 = np.array([0.5, 2.0, 3.5, 3.0])  # rows 0, 1 (on the bound) and 3 are covered
    p95 = np.array([1.5, 4.0, 4.0, 4.0])  # row 3 on the upper bound: covered
    sd = np.array([1.0, 2.0, 3.0, 6.0])
    m = predictive_metrics(y, pred, p05, p95, sd)
    assert m["mae_sec"] == mean_absolute_error(y, pred) == 0.5
    assert m["r2"] == pytest.approx(r2_score(y, pred), rel=1e-15)
    assert m["r2"] == pytest.approx(1 - 2 / 5, rel=1e-15)  # SS_res 2, SS_tot 5
    assert m["coverage_90"] == 0.75
    assert m["mean_pred_sd_sec"] == 3.0
    assert m["rows"] == 4


@pytest.mark.parametrize("n", [2, 3, 7, 1000, 250_001])
def test_point_metrics_are_sklearns_to_the_last_bit(n):
    """The seed's MAE and R² (scikit-learn), computed without importing it: the same numbers."""
    from racedayai_bayes.lib.evaluation.diagnostics import point_metrics

    rng = np.random.default_rng(n)
    y = rng.normal(20_000.0, 3_000.0, n)
    for pred in (y + rng.normal(0.0, 2_000.0, n), np.full(n, 21_000.0), y[::-1].copy(), y):
        m = point_metrics(y, pred)
        assert m["mae_sec"] == mean_absolute_error(y, pred)
        assert m["r2"] == r2_score(y, pred)
    constant = np.full(n, 5.0)
    assert point_metrics(constant, constant)["r2"] == r2_score(constant, constant) == 1.0
    assert point_metrics(constant, constant + 1.0)["r2"] == r2_score(constant, constant + 1.0) == 0.0


def test_point_metrics_refuse_what_sklearn_refuses():
    from racedayai_bayes.lib.evaluation.diagnostics import point_metrics

    with pytest.raises(ValueError, match="NaN"):
        point_metrics(np.array([1.0, np.nan]), np.array([1.0, 2.0]))
    with pytest.raises(ValueError):
        point_metrics(np.array([1.0, 2.0]), np.array([1.0, 2.0, 3.0]))
    one = point_metrics(np.array([3.0]), np.array([1.0]))
    assert one["mae_sec"] == 2.0 and np.isnan(one["r2"])


def test_coverage_interval_is_the_estimate_plus_minus_2_576_standard_errors():
    from racedayai_bayes.lib.evaluation.diagnostics import coverage_interval

    lo, hi = coverage_interval(0.9, 0.01)
    assert lo == pytest.approx(0.9 - 0.02576) and hi == pytest.approx(0.9 + 0.02576)
    assert coverage_interval(0.9, float("nan")) == (0.9, 0.9)


@pytest.mark.parametrize(
    "coverage, se, level",
    [
        (0.965, 0.03, PASS),  # a small holdout: 0.965 is noise around 0.95
        (0.965, 0.003, ERROR),  # the same share measured precisely is real over-coverage
        (0.70, 0.03, ERROR),  # far out even on few rows
        (0.953, 0.001, ERROR),  # interval (0.950, 0.956) just above the band
        (0.951, 0.001, PASS),  # interval reaches into the band
        (0.85, 0.001, PASS),
    ],
)
def test_coverage_check_allows_for_clustered_noise(coverage, se, level):
    outcome = check_coverage(coverage, se, rows=50_000, editions=120, label="held-out")
    assert outcome.level == level
    assert "50,000 held-out rows in 120 editions" in outcome.description and "99% interval" in outcome.description
    assert outcome.extra["ci_low"] <= coverage <= outcome.extra["ci_high"]
    assert outcome.extra["se"] == se


def test_coverage_by_decile_warns_only_for_deciles_outside_the_band_up_to_noise():
    from racedayai_bayes.lib.evaluation.diagnostics import WARN, check_coverage_by_decile

    deciles = pd.DataFrame({"decile": [1, 2, 3], "coverage": [0.90, 0.80, 0.99], "se": [0.01, 0.05, 0.005]})
    outcome = check_coverage_by_decile(deciles)
    # decile 2: 0.80 +- 0.129 meets the band; decile 3: 0.99 - 0.0129 > 0.95 does not
    assert outcome.level == WARN and outcome.extra["deciles_outside"] == 1
    assert "0.990 (decile 3)" in outcome.description
    assert check_coverage_by_decile(deciles.iloc[:2]).passed


def test_the_seed_summary_names_each_group_level_and_the_checks_name_it_too():
    """mu_age[17] means nothing in the UI: the seed models' summary has a ``level`` column, and
    the r_hat and ESS checks name the worst parameter's level."""
    from racedayai_bayes.lib.models.seed.encoding import Encoding
    from racedayai_bayes.lib.models.seed.fit import _with_levels

    enc = Encoding(distance="70.3", age_levels=("30-34", "40-44"), cluster_levels=(-1, 3), y_mean=20000.0,
                   y_std=3000.0, exp_mean=1.0, exp_std=0.5, default_cluster_idx=0)
    table = pd.DataFrame({"r_hat": [1.0, 1.02, 1.0, 1.0, 1.0], "ess_bulk": [900.0, 1000.0, 350.0, 800.0, 700.0]},
                         index=pd.Index(["mu_age[0]", "mu_age[1]", "mu_cluster[1]", "mu_gender[1]", "sigma"], name="parameter"))
    named = _with_levels(table, enc)
    assert named["level"].tolist() == ["30-34", "40-44", "cluster 3", "Female", ""]  # as the group-effects plot says
    assert _with_levels(table.rename(index={"mu_cluster[1]": "mu_cluster[0]"}), enc)["level"].iloc[2] == "no cluster"
    assert check_rhat(named).worst == "mu_age[1] (40-44)" and check_ess(named).worst == "mu_cluster[1] (cluster 3)"
    assert check_rhat(table).worst == "mu_age[1]"  # a summary without levels (the forecast model's)
