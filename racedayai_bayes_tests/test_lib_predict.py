"""Predictions from hand-made posteriors (lib/predict.py): exact where the draws are constant."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy.stats import norm

from racedayai_bayes.lib.models.seed.encoding import UNSEEN, Encoding, encode
from racedayai_bayes.lib.inference.nuts import Draws
from racedayai_bayes.lib.models.seed.predict import (
    PREDICTION_COLUMNS,
    PREDICTION_INTERVAL_COLUMNS,
    _combination_table,
    _order_statistics,
    mean_prediction,
    posterior_means_row,
    predict_frame,
    predictive_draws,
    predictive_summary,
    thinned_draws,
)

from .conftest import constant_draws, hand_draws

CHAINS, DRAWS = 2, 500
# Values exactly representable in binary, so posterior means and sums are exact.
SCALARS = {
    "mu_global": 0.5,
    "sigma_gender": 0.25,
    "sigma_age": 0.75,
    "sigma_cluster": 0.375,
    "beta_fitness": 0.25,
    "beta_experience": -0.125,
    "sigma": 0.5,
}
MU_GENDER = np.array([0.0, 0.25])
MU_AGE = np.array([1.0, -0.5])  # index 0 is large: borrowing it for an unseen group would show
MU_CLUSTER = np.array([0.125, -0.25])

ENC = Encoding(
    distance="70.3",
    age_levels=("25-29", "30-34"),
    cluster_levels=(-1, 3),
    y_mean=20000.0,
    y_std=4000.0,
    exp_mean=0.5,
    exp_std=2.0,
    default_cluster_idx=0,
)


def _draws(chains: int = CHAINS, draws: int = DRAWS, alternate: bool = False) -> Draws:
    out = constant_draws({**SCALARS, "mu_gender": MU_GENDER, "mu_age": MU_AGE, "mu_cluster": MU_CLUSTER}, chains, draws)
    samples, shape = out.samples, (chains, draws)
    if alternate:
        # same posterior means, but the draws vary: sigma in {0.25, 0.75}, mu_global in {0, 1}
        flip = (np.arange(draws) % 2).astype(float)
        samples["sigma"] = np.broadcast_to(0.25 + 0.5 * flip, shape).copy()
        samples["mu_global"] = np.broadcast_to(flip, shape).copy()
    return out


def _frame(n_rows: int | None = None, **cols) -> pd.DataFrame:
    base = {
        "athlete_hash": ["a", "b", None, "d", "e"],
        "gender": pd.array(["M", "F", None, "F", "M"], dtype="string"),
        "age_group": pd.array(["25-29", "30-34", "30-34", "25-29", "25-29"], dtype="string"),
        "event_distance": pd.array(["70.3"] * 5, dtype="string"),
        "event_year": pd.array([2019, 2020, 2021, 2022, 2023], dtype="Int64"),
        "total_sec": [18000.0, 21000.5, 23000.0, 19000.0, np.nan],
        "pb_total_sec": [24000.0, np.nan, 16000.0, 20000.0, 22000.0],
        "total_races": [np.nan, 3.0, 1.0, 10.0, 0.0],
        "cluster_id": pd.array([3, None, 3, None, 3], dtype="Int64"),
        "consistency_cv": [0.1] * 5,  # extra column: not in the output
    }
    base.update(cols)
    return pd.DataFrame(base)


def _expected_mu(frame: pd.DataFrame, *, age_effect: bool = True, cluster_effect: bool = True) -> np.ndarray:
    g = frame["gender"].map({"M": 0, "F": 1}).fillna(0).astype(int).to_numpy()
    a = frame["age_group"].map({"25-29": 0, "30-34": 1}).to_numpy()
    c = frame["cluster_id"].fillna(-1).astype(int).map({-1: 0, 3: 1}).to_numpy()
    fitness = (frame["pb_total_sec"].fillna(ENC.y_mean) - ENC.y_mean) / ENC.y_std
    experience = (np.log1p(frame["total_races"].fillna(0)) - ENC.exp_mean) / ENC.exp_std
    mu = SCALARS["mu_global"] + MU_GENDER[g] + SCALARS["beta_fitness"] * fitness + SCALARS["beta_experience"] * experience
    if age_effect:
        mu = mu + MU_AGE[a.astype(int)]
    if cluster_effect:
        mu = mu + MU_CLUSTER[c.astype(int)]
    return np.asarray(mu, dtype=float)


@pytest.mark.parametrize("alternate", [False, True], ids=["constant", "varying"])
def test_predict_frame_is_the_posterior_mean_linear_predictor(alternate):
    frame = _frame()
    frame.index = [10, 7, 3, 99, 0]  # any index: the output follows frame order
    out = predict_frame(_draws(alternate=alternate), ENC, frame)

    assert list(PREDICTION_COLUMNS) == [
        "athlete_hash", "event_distance", "event_year", "total_sec", "bayes_pred", "bayes_std",
    ]
    # the contract's columns unchanged and first; the predictive quantiles appended
    assert list(out.columns) == list(PREDICTION_COLUMNS) + ["bayes_p05", "bayes_p50", "bayes_p95"]
    assert list(PREDICTION_INTERVAL_COLUMNS) == ["bayes_p05", "bayes_p50", "bayes_p95"]
    assert list(out.index) == [0, 1, 2, 3, 4]
    pd.testing.assert_frame_equal(
        out[["athlete_hash", "event_distance", "event_year", "total_sec"]],
        frame[["athlete_hash", "event_distance", "event_year", "total_sec"]].reset_index(drop=True),
    )
    np.testing.assert_allclose(out["bayes_pred"], _expected_mu(frame) * 4000.0 + 20000.0, rtol=1e-14)
    # the seed: posterior mean of sigma times the target sd, the same for every seen row
    assert out["bayes_std"].tolist() == [2000.0] * 5
    # row 0 by hand: mu_global 0.5 + gender M 0 + age 25-29 1.0 + cluster 3 -0.25
    #   + 0.25 * fitness (24000-20000)/4000 - 0.125 * experience (log1p(0)-0.5)/2 = 1.53125
    assert out.loc[0, "bayes_pred"] == 1.53125 * 4000 + 20000 == 26125.0
    if not alternate:
        # constant draws: the predictive is exactly Normal(bayes_pred, bayes_std)
        z95 = norm.ppf(0.95)
        for column, z in (("bayes_p05", -z95), ("bayes_p50", 0.0), ("bayes_p95", z95)):
            np.testing.assert_allclose(out[column], out["bayes_pred"] + z * out["bayes_std"], atol=0.02 * 2000)
    assert (out["bayes_p05"] < out["bayes_p50"]).all() and (out["bayes_p50"] < out["bayes_p95"]).all()


def test_predict_frame_without_intervals_keeps_the_contract_columns():
    out = predict_frame(_draws(), ENC, _frame(), interval_draws=0)
    assert list(out.columns) == list(PREDICTION_COLUMNS)


def test_unseen_age_group_gets_zero_effect_and_wider_sd():
    frame = _frame(age_group=pd.array(["80+", "30-34", None, "25-29", "PRO"], dtype="string"))
    assert encode(frame, ENC).age_idx.tolist() == [UNSEEN, 1, UNSEEN, 0, UNSEEN]
    out = predict_frame(_draws(), ENC, frame)

    unseen = np.array([True, False, True, False, True])
    seen_mu = _expected_mu(frame.assign(age_group=frame["age_group"].fillna("25-29").replace({"80+": "25-29", "PRO": "25-29"})))
    no_age_mu = _expected_mu(frame.assign(age_group="25-29"), age_effect=False)
    expected = np.where(unseen, no_age_mu, seen_mu) * 4000 + 20000
    np.testing.assert_allclose(out["bayes_pred"], expected, rtol=1e-14)
    # never index 0's effect (1.0 on the standardised scale = 4000 s)
    with_idx0 = _expected_mu(frame.assign(age_group="25-29")) * 4000 + 20000
    np.testing.assert_allclose(with_idx0[unseen] - out["bayes_pred"].to_numpy()[unseen], MU_AGE[0] * 4000, rtol=1e-12)

    wide = np.sqrt(0.5**2 + 0.75**2) * 4000
    np.testing.assert_allclose(out["bayes_std"], np.where(unseen, wide, 2000.0), rtol=1e-14)


def test_unseen_cluster_and_both_unseen_add_in_quadrature():
    frame = _frame(
        age_group=pd.array(["25-29", "99+", "30-34", "25-29", "25-29"], dtype="string"),
        cluster_id=pd.array([42, 42, 3, None, 3], dtype="Int64"),
    )
    design = encode(frame, ENC)
    assert design.cluster_idx.tolist() == [UNSEEN, UNSEEN, 1, 0, 1]
    mu, sd = mean_prediction(_draws(), design)
    np.testing.assert_allclose(
        sd,
        [np.hypot(0.5, 0.375), np.sqrt(0.5**2 + 0.75**2 + 0.375**2), 0.5, 0.5, 0.5],
        rtol=1e-14,
    )
    # row 0: cluster effect 0 (not MU_CLUSTER[0]); row 1: neither age nor cluster effect
    base = _expected_mu(frame.assign(age_group="25-29", cluster_id=pd.array([3] * 5, dtype="Int64")),
                        age_effect=False, cluster_effect=False)
    assert mu[0] == pytest.approx(base[0] + MU_AGE[0], abs=1e-14)
    assert mu[1] == pytest.approx(base[1], abs=1e-14)


def test_log_density_is_the_log_of_the_mean_density_over_draws_in_seconds():
    """The seed models' ELPD per row: log of the mean over draws of the Normal density of
    total_sec in seconds (the Jacobian 1/y_std included), an unseen group's effect in the
    variance. The draws alternate between two posteriors (sigma 0.25 and mu_global 0, sigma
    0.75 and mu_global 1), so the mean of the densities is not the density of any one draw and
    not the mean of the log densities."""
    from racedayai_bayes.lib.models.seed.predict import log_density

    frame = _frame(age_group=pd.array(["25-29", "99+", "30-34", "25-29", "25-29"], dtype="string"))
    frame["total_sec"] = [18000.0, 21000.5, 23000.0, 19000.0, 26000.0]
    design = encode(frame, ENC)
    got = log_density(_draws(alternate=True), ENC, design, frame["total_sec"].to_numpy(), max_draws=CHAINS * DRAWS)
    unseen_age = np.array([0.0, SCALARS["sigma_age"] ** 2, 0.0, 0.0, 0.0])  # row 1's age group is new
    base = _expected_mu(frame.assign(age_group=["25-29", "25-29", "30-34", "25-29", "25-29"])).copy()
    base[1] -= MU_AGE[0]  # a new age group has no effect of its own, only its variance
    densities = []
    for mu_global, sigma in ((0.0, 0.25), (1.0, 0.75)):
        mu = base - SCALARS["mu_global"] + mu_global
        densities.append(norm.pdf(frame["total_sec"].to_numpy(), ENC.y_mean + ENC.y_std * mu,
                                  ENC.y_std * np.sqrt(sigma**2 + unseen_age)))
    want = np.log(0.5 * densities[0] + 0.5 * densities[1])
    np.testing.assert_allclose(got, want, rtol=1e-10)
    assert not np.allclose(got, 0.5 * (np.log(densities[0]) + np.log(densities[1])), rtol=1e-3)  # not the mean log
    # rows go in chunks (each row's work is its own): the same numbers, bit for bit, in any chunks
    for chunk in (1, 2):
        np.testing.assert_array_equal(
            log_density(_draws(alternate=True), ENC, design, frame["total_sec"].to_numpy(), max_draws=CHAINS * DRAWS,
                        chunk_rows=chunk), got)


# --- the posterior predictive summary -----------------------------------------------------

N_SAME = 200  # identical rows per kind; averaging over them shrinks the Monte Carlo error


def _summary_frame() -> pd.DataFrame:
    n = 2 * N_SAME
    return pd.DataFrame({
        "athlete_hash": [f"h{i}" for i in range(n)],
        "gender": pd.array(["F"] * n, dtype="string"),
        "age_group": pd.array(["30-34"] * N_SAME + ["80+"] * N_SAME, dtype="string"),  # second half unseen
        "event_distance": "70.3",
        "event_year": 2020,
        "total_sec": 20000.0,
        "pb_total_sec": 24000.0,
        "total_races": np.nan,
        "cluster_id": pd.array([3] * n, dtype="Int64"),
    })


def test_predictive_summary_matches_normal_quantiles():
    frame = _summary_frame()
    design = encode(frame, ENC)
    out = predictive_summary(_draws(), ENC, design, seed=7)  # 1000 draws in all, all used

    mu_seen = _expected_mu(frame.iloc[:1])[0]
    mu_unseen = _expected_mu(frame.iloc[:1], age_effect=False)[0]
    # With constant draws the predictive distribution is exactly Normal(mean, sd), in seconds.
    # The noise (with an unseen row's new group) is stratified: one draw per 1/1000 of
    # probability. An empirical quantile is then off by about one stratum at most:
    # 1 / (1000 * phi(1.645)) = 0.0097 sd at the 5% and 95% points, 0.0025 sd at the
    # median; the mean and sd are within a few thousandths of an sd.
    tol = {"mean": 0.005, "sd": 0.01, "p05": 0.02, "p50": 0.005, "p95": 0.02}
    kinds = [
        (slice(0, N_SAME), mu_seen * 4000 + 20000, 0.5 * 4000),
        (slice(N_SAME, None), mu_unseen * 4000 + 20000, np.hypot(0.5, 0.75) * 4000),
    ]
    z95 = norm.ppf(0.95)
    for rows, mean, sd in kinds:
        target = {"mean": mean, "sd": sd, "p05": mean - z95 * sd, "p50": mean, "p95": mean + z95 * sd}
        for key in target:
            np.testing.assert_allclose(out[key][rows], target[key], atol=tol[key] * sd, err_msg=key)


def _brute_force(draws, design, *, max_draws=1000, seed=1):
    """The simulated draws predictive_summary summarises, built explicitly (standardised scale)."""
    pick = thinned_draws(draws.num_chains * draws.num_draws, max_draws)
    p = {name: draws.flat(name)[pick] for name in draws.samples}
    table, inverse = _combination_table(p, design, np.random.default_rng(seed))
    return (
        table[inverse]
        + design.fitness[:, None] * p["beta_fitness"][None, :]
        + design.experience[:, None] * p["beta_experience"][None, :]
    )


def test_predictive_summary_equals_moments_and_quantiles_of_its_draws():
    rng = np.random.default_rng(3)
    draws = _draws()
    for name in draws.samples:  # draws that vary and are correlated: parameter uncertainty
        draws.samples[name] = draws.samples[name] + 0.1 * rng.standard_normal(draws.samples[name].shape)
    for name in ("sigma", "sigma_age", "sigma_cluster"):
        draws.samples[name] = np.abs(draws.samples[name])
    frame = _frame(age_group=pd.array(["25-29", "80+", "30-34", None, "25-29"], dtype="string"),
                   cluster_id=pd.array([3, 42, None, 3, 3], dtype="Int64"))
    design = encode(frame, ENC)
    out = predictive_summary(draws, ENC, design, seed=9)
    sim = _brute_force(draws, design, seed=9) * 4000 + 20000
    np.testing.assert_allclose(out["mean"], sim.mean(axis=1), rtol=1e-12)
    np.testing.assert_allclose(out["sd"], sim.std(axis=1), rtol=1e-9)
    # quantiles are taken in float32: equal to numpy's to float32 precision (~1e-7 of 4000 s)
    for key, q in (("p05", 0.05), ("p50", 0.5), ("p95", 0.95)):
        np.testing.assert_allclose(out[key], np.quantile(sim, q, axis=1), atol=0.01, err_msg=key)


def test_order_statistics_equal_those_of_a_full_sort(monkeypatch):
    rng = np.random.default_rng(5)
    n = 1000
    near = np.sort(rng.standard_normal((300, n)), axis=1) + 0.003 * rng.standard_normal((300, n))
    far = np.sort(rng.standard_normal((50, n)), axis=1)
    far[:, [10, 990]] = far[:, [990, 10]]  # two values hundreds of places from their ranks
    shuffled = rng.standard_normal((50, n))  # not sorted at all
    ties = np.round(near[:40] * 4) / 4  # many equal values
    nan_in_window, nan_in_gap = near[:3].copy(), near[3:6].copy()
    nan_in_window[:, 500] = np.nan
    nan_in_gap[:, 200] = np.nan
    low_after = near[6:12].copy()  # a value below the window's, after it: only the check after the window sees it
    low_after[:3, 600] = low_after[:3, 0] - 1.0
    low_after[3:, 520] = low_after[3:, 0] - 1.0
    sim = np.vstack([near, far, shuffled, ties, nan_in_window, nan_in_gap, low_after]).astype(np.float32)
    for wanted in ([49, 50, 499, 500, 949, 950], [0, 1, 998, 999], [500]):
        got = _order_statistics(sim, wanted)
        ordered = np.sort(sim, axis=1)
        for k in wanted:
            np.testing.assert_array_equal(got[k], ordered[:, k], err_msg=f"rank {k}")
    # the nearly sorted rows take the windows, not a sort of the whole row: count whole-row sorts
    whole_rows = []

    def counting_sort(a, axis=-1, **kw):
        if np.ndim(a) == 2 and a.shape[1] == n:
            whole_rows.append(a.shape[0])
        return real_sort(a, axis=axis, **kw)

    real_sort = np.sort
    monkeypatch.setattr(np, "sort", counting_sort)
    _order_statistics(sim[:300], [49, 50, 499, 500, 949, 950])
    assert sum(whole_rows) == 0  # none of the 300 nearly sorted rows
    _order_statistics(sim[300:400], [49, 50, 499, 500, 949, 950])
    assert sum(whole_rows) == 100  # every one of the far and shuffled rows: the count sees a whole-row sort
    with pytest.raises(ValueError):
        _order_statistics(sim, [n])
    few = sim[:, :40]  # the windows would cover most of the row: a plain sort
    got = _order_statistics(few, [1, 2, 19, 20, 37, 38])
    for k in (1, 2, 19, 20, 37, 38):
        np.testing.assert_array_equal(got[k], np.sort(few, axis=1)[:, k])


def test_predictive_summary_quantiles_are_those_of_a_full_sort_of_its_draws():
    # the order statistics are taken from windows of the draws (_order_statistics): the
    # quantiles must be, bit for bit, those of sorting every row's simulated draws
    rng = np.random.default_rng(8)
    draws = _draws()
    for name in draws.samples:
        draws.samples[name] = draws.samples[name] + 0.01 * rng.standard_normal(draws.samples[name].shape)
    for name in ("sigma", "sigma_age", "sigma_cluster"):
        draws.samples[name] = np.abs(draws.samples[name])
    frame = pd.concat([_summary_frame()] * 3, ignore_index=True)
    frame["pb_total_sec"] = np.linspace(15000.0, 40000.0, len(frame))  # every row its own fitness
    design = encode(frame, ENC)
    out = predictive_summary(draws, ENC, design, seed=4)
    pick = thinned_draws(draws.num_chains * draws.num_draws, 1000)
    p = {name: draws.flat(name)[pick] for name in draws.samples}
    table, inverse = _combination_table(p, design, np.random.default_rng(4))
    sim = table.astype(np.float32)[inverse]
    sim += design.fitness[:, None].astype(np.float32) * p["beta_fitness"].astype(np.float32)[None, :]
    sim += design.experience[:, None].astype(np.float32) * p["beta_experience"].astype(np.float32)[None, :]
    sim.sort(axis=1)
    n = sim.shape[1]
    for key, q in (("p05", 0.05), ("p50", 0.5), ("p95", 0.95)):
        pos = q * (n - 1)
        lo = int(np.floor(pos))
        a, b = sim[:, lo].astype(np.float64), sim[:, min(lo + 1, n - 1)].astype(np.float64)
        np.testing.assert_array_equal(out[key], (a + (pos - lo) * (b - a)) * ENC.y_std + ENC.y_mean, err_msg=key)


def test_predictive_intervals_include_parameter_uncertainty():
    # mu_global alternates 0/1 and sigma 0.25/0.75: the predictive is the equal mixture of
    # N(m, 0.25) and N(m + 1, 0.75) (standardised), far wider than Normal(mean, E[sigma]).
    from scipy.optimize import brentq

    frame = _summary_frame().iloc[:N_SAME]
    out = predictive_summary(_draws(alternate=True), ENC, encode(frame, ENC), seed=2)
    m = _expected_mu(frame.iloc[:1])[0] - SCALARS["mu_global"]

    def cdf(x):
        return 0.5 * norm.cdf(x, m, 0.25) + 0.5 * norm.cdf(x, m + 1, 0.75)

    def pdf(x):
        return 0.5 * norm.pdf(x, m, 0.25) + 0.5 * norm.pdf(x, m + 1, 0.75)

    for key, q in (("p05", 0.05), ("p50", 0.5), ("p95", 0.95)):
        x = brentq(lambda v: cdf(v) - q, m - 10, m + 10)
        # which stratified z fall to which component is random: ordinary Monte Carlo error
        # of a quantile over 1000 draws, sqrt(q(1-q)/n) / density; 4.5 standard errors
        se = np.sqrt(q * (1 - q) / 1000) / pdf(x)
        np.testing.assert_allclose(out[key], x * 4000 + 20000, atol=4.5 * se * 4000, err_msg=key)
    naive_width = 2 * norm.ppf(0.95) * 0.5 * 4000
    assert (out["p95"] - out["p05"]).min() > 1.2 * naive_width


def test_predictive_summary_is_deterministic_for_a_seed():
    design = encode(_summary_frame(), ENC)
    a = predictive_summary(_draws(), ENC, design, seed=11)
    b = predictive_summary(_draws(), ENC, design, seed=11)
    c = predictive_summary(_draws(), ENC, design, seed=12)
    assert set(a) == {"mean", "sd", "p05", "p50", "p95"}
    for key in a:
        np.testing.assert_array_equal(a[key], b[key])
        assert not np.array_equal(a[key], c[key])


def test_predictive_summary_does_not_depend_on_chunk_rows():
    design = encode(_summary_frame(), ENC)
    whole = predictive_summary(_draws(), ENC, design, seed=5, chunk_rows=100_000)
    for chunk, workers in ((1, 1), (7, 2), (250, 2)):
        part = predictive_summary(_draws(), ENC, design, seed=5, chunk_rows=chunk, workers=workers)
        for key in whole:
            np.testing.assert_array_equal(part[key], whole[key], err_msg=f"{key}, chunk_rows={chunk}")


def test_predictive_summary_thins_evenly_to_max_draws():
    # sigma = 0 makes each simulation equal its draw's linear predictor; mu_global = flat
    # draw index / 1000 shows which draws were used: 3 of 1000 -> indices 0, 500 and 999.
    draws = _draws()
    draws.samples["sigma"] = np.zeros((CHAINS, DRAWS))
    draws.samples["mu_global"] = np.arange(CHAINS * DRAWS, dtype=float).reshape(CHAINS, DRAWS) / 1000
    frame = _summary_frame().iloc[:3]  # seen groups only: no random group effects
    out = predictive_summary(draws, ENC, encode(frame, ENC), max_draws=3, seed=0)
    rest = _expected_mu(frame) - SCALARS["mu_global"]
    picked = np.array([0, 500, 999]) / 1000
    np.testing.assert_allclose(out["mean"], (picked.mean() + rest) * 4000 + 20000, rtol=1e-13)
    np.testing.assert_allclose(out["p50"], (picked[1] + rest) * 4000 + 20000, rtol=1e-7)  # float32 sort
    np.testing.assert_allclose(out["sd"], picked.std() * 4000, rtol=1e-12)


# --- the posterior means row --------------------------------------------------------------


def test_posterior_means_row_has_the_seed_layout():
    shapes = {**{k: () for k in SCALARS}, "mu_gender": (2,), "mu_age": (50,), "mu_cluster": (9,)}
    draws = hand_draws(chains=2, draws=30, n_age=50, n_cluster=9)
    assert {k: v.shape[2:] for k, v in draws.samples.items()} == shapes
    samples = draws.samples

    row = {"distance": "70.3", **posterior_means_row(draws)}
    assert len(row) == 69
    expected_names = ["distance"]
    for name in sorted(shapes):
        expected_names += [name] if shapes[name] == () else [f"{name}_{i}" for i in range(shapes[name][0])]
    assert list(row) == expected_names
    assert list(row)[:4] == ["distance", "beta_experience", "beta_fitness", "mu_age_0"]
    assert row["distance"] == "70.3"
    assert row["sigma"] == pytest.approx(samples["sigma"].mean(), rel=1e-14)
    assert row["mu_age_49"] == pytest.approx(samples["mu_age"][..., 49].mean(), rel=1e-14)
    assert row["mu_cluster_8"] == pytest.approx(samples["mu_cluster"][..., 8].mean(), rel=1e-14)
    assert all(isinstance(v, float) for k, v in row.items() if k != "distance")
    # one CSV row per distance, as written by the pipeline
    table = pd.DataFrame([row, {"distance": "140.6", **posterior_means_row(draws)}])
    assert table.shape == (2, 69)


def test_predictive_draws_are_a_joint_sample_with_unseen_groups_drawn_new():
    frame = _summary_frame()
    design = encode(frame, ENC)
    sims = predictive_draws(_draws(), ENC, design, draws_per_chain=250, seed=4)
    assert sims.shape == (CHAINS, 250, len(frame)) and sims.dtype == np.float32
    flat = sims.reshape(-1, len(frame)).astype(float)
    seen, unseen = flat[:, :N_SAME], flat[:, N_SAME:]
    mu_seen = _expected_mu(frame.iloc[:1])[0] * 4000 + 20000
    mu_unseen = _expected_mu(frame.iloc[:1], age_effect=False)[0] * 4000 + 20000
    # 500 draws x 200 rows: each row has its own noise, so the sample sd over all is tight
    assert seen.mean() == pytest.approx(mu_seen, abs=0.02 * 2000)
    assert seen.std() == pytest.approx(2000, rel=0.02)
    assert unseen.mean() == pytest.approx(mu_unseen, abs=0.1 * 3606)
    assert unseen.std() == pytest.approx(np.hypot(0.5, 0.75) * 4000, rel=0.05)
    # independent noise per row (the summary's shared noise would make rows identical)
    assert np.corrcoef(seen[:, 0], seen[:, 1])[0, 1] < 0.2
    # the new age group is one group per draw: unseen rows share its effect (correlated)
    assert np.corrcoef(unseen[:, 0], unseen[:, 1])[0, 1] > 0.5
    np.testing.assert_array_equal(sims, predictive_draws(_draws(), ENC, design, draws_per_chain=250, seed=4))

