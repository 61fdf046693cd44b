"""bench/oracle.py's mathematics: the simulator's exact predictive of a finish time, and oracle
B's conjugate update, against the simulator's own draws and against brute-force conditioning.

The oracle's report (bench/ORACLE.md) is only as good as these two pieces: the predictive
scores every oracle, and oracle B's posterior is the benchmark the forecast is measured against.
"""

import importlib.util
import sys

import numpy as np
import pandas as pd
import pytest
from scipy import integrate

from racedayai_bayes.demo import simulate as sim
from racedayai_bayes_tests.conftest import REPO


@pytest.fixture(scope="module")
def oracle():
    spec = importlib.util.spec_from_file_location("bench_oracle", REPO / "bench" / "oracle.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    try:
        spec.loader.exec_module(module)
        yield module
    finally:
        sys.modules.pop(spec.name, None)


def simulator_times(distance: int, shift: float, n: int, seed: int = 0) -> tuple[np.ndarray, float]:
    """``n`` finish times of one 40-year-old man at ``distance``, drawn by the simulator's own
    code (``_finish_times``) with a day effect of ``shift``; DNFs (over the cutoff) left out.
    Returns the times (seconds, unrounded: the published ones are rounded to the second) and the
    log centre the predictive is given: everything but the race noise and the bad day."""
    ath = {"female": np.zeros(1, dtype=int), "z": np.zeros(1), "z_dist": np.zeros((1, len(sim.DISTANCES))),
           "trend": np.zeros(1), "center": np.zeros(1, dtype=np.int64)}
    rows = {"ath": np.zeros(n, dtype=np.int64), "dist": np.full(n, distance), "pro": np.zeros(n, dtype=bool),
            "age": np.full(n, 40), "year": np.zeros(n, dtype=np.int64), "ed": np.zeros(n, dtype=np.int64),
            "status": np.zeros(n, dtype=np.int64)}
    sim._finish_times(np.random.default_rng(seed), rows, ath, {"effect": np.array([shift])}, truth=True)
    centre = float(rows["log_med"][0] + rows["ability"][0] + rows["trend_term"][0] + shift)
    # the rounding is the simulator's last step: undo it with the terms it kept
    t = np.exp(centre + rows["noise"] + rows["bad_day"])
    finished = rows["status"] == 0
    np.testing.assert_allclose(rows["time"][finished], np.round(_published(t[finished], distance)), atol=0.5)
    return _published(t[finished], distance), centre


def _published(t: np.ndarray, distance: int) -> np.ndarray:
    """The simulator's squeeze of a drawn time under the cutoff (its code, written out)."""
    cut = sim.CUTOFF[distance]
    soft, hard = sim.SQUEEZE_FROM * cut, sim.DNF_OVER * cut
    return np.where(t > soft, soft + (t - soft) * (cut - sim.SQUEEZE_MARGIN_SEC - soft) / (hard - soft), t)


# a typical finisher, and one whose centre is near the cutoff: there the squeeze and the DNFs
# (the truncation) shape the predictive
CASES = [(0, 0.0), (1, 0.0), (0, "near cutoff"), (1, "near cutoff")]


def _case(distance, shift):
    if shift == "near cutoff":  # centre at 0.97 x the cutoff
        _, centre = simulator_times(distance, 0.0, 1)
        shift = np.log(0.97 * sim.CUTOFF[distance]) - centre
    return distance, float(shift)


@pytest.mark.parametrize("distance,shift", CASES)
def test_the_exact_predictive_is_a_density_of_the_published_time(oracle, distance, shift):
    distance, shift = _case(distance, shift)
    _, centre = simulator_times(distance, shift, 1)
    s = oracle.WITHIN[distance]
    cut = sim.CUTOFF[distance]
    soft, hard, slope = oracle.squeeze_map(cut)
    top = soft + (hard - soft) * slope  # the latest time a finish is published at

    def density(t):
        return float(np.exp(oracle.exact_predictive(np.array([centre]), np.array([s]), np.array([t]), cut,
                                                   interval=False)["lpd"][0]))

    lo = np.exp(centre - 8 * s)
    below, _ = integrate.quad(density, lo, soft, limit=400, points=[np.exp(centre)] if np.exp(centre) < soft else None)
    above, _ = integrate.quad(density, soft, top, limit=400)
    assert below + above == pytest.approx(1.0, abs=2e-4)
    if shift:  # near the cutoff, a real share of the mass is squeezed
        assert above > 0.05


@pytest.mark.parametrize("distance,shift", CASES)
def test_the_exact_predictive_matches_the_simulators_draws(oracle, distance, shift):
    distance, shift = _case(distance, shift)
    t, centre = simulator_times(distance, shift, 400_000, seed=1)
    s = oracle.WITHIN[distance]
    cut = sim.CUTOFF[distance]
    # the quantiles the predictive reports, at the draws' own quantiles: the median's error is
    # 0, and the 5-95% interval holds 90% of the draws (Monte Carlo SE ~0.001 on 100,000)
    q05, q50, q95 = np.quantile(t, [0.05, 0.5, 0.95])
    out = oracle.exact_predictive(np.full(3, centre), np.full(3, s), np.array([q05, q50, q95]), cut)
    median = np.exp(out["log_median"][0])
    assert median == pytest.approx(q50, rel=2e-3)
    assert out["ae"][1] * 60 == pytest.approx(abs(median - q50))
    some = t[:100_000]
    cov = oracle.exact_predictive(np.full(len(some), centre), np.full(len(some), s), some, cut)["cov"]
    assert cov.mean() == pytest.approx(0.90, abs=0.004)
    # the log density against a histogram of the draws, where most of the mass is (but for the
    # bin across the squeeze's start, where the density jumps)
    edges = np.quantile(t, np.linspace(0.02, 0.98, 25))
    counts, _ = np.histogram(t, edges)
    mid = 0.5 * (edges[1:] + edges[:-1])
    dens = np.exp(oracle.exact_predictive(np.full(len(mid), centre), np.full(len(mid), s), mid, cut,
                                          interval=False)["lpd"])
    soft = oracle.squeeze_map(cut)[0]
    smooth = ~((edges[:-1] < soft) & (edges[1:] > soft))
    np.testing.assert_allclose((counts / len(t) / np.diff(edges))[smooth], dens[smooth], rtol=0.06)


def test_the_bad_day_mixture_quantile_inverts_its_distribution(oracle):
    s = np.array([0.03, 0.07, 0.12])
    q = np.array([0.05, 0.5, 0.95])
    x = oracle.mix_quantile(q, s)
    np.testing.assert_allclose(oracle.mix_cdf(x, s), q, atol=1e-10)
    # the density is the distribution's derivative
    h = 1e-6
    np.testing.assert_allclose(np.exp(oracle.mix_logpdf(x, s)),
                               (oracle.mix_cdf(x + h, s) - oracle.mix_cdf(x - h, s)) / (2 * h), rtol=1e-5)


def _brute_force_b(distance, season, center, history, trend_sd):
    """The level at ``distance`` in ``season`` (ability + trend x (season - center)) given earlier
    finishes ``history`` [(distance, season, residual)], by conditioning the joint Normal of
    (ability 70.3, ability 140.6, trend, every residual) directly."""
    s = sim
    between = s.BETWEEN_SD[:2]
    mix = s.ABILITY_SHARED**2 + s.ABILITY_SPECIFIC**2
    prior = np.diag([between[0] ** 2 * mix, between[1] ** 2 * mix, trend_sd**2])
    prior[0, 1] = prior[1, 0] = between[0] * between[1] * s.ABILITY_SHARED**2
    p_bad, m_bad = s.BAD_DAY_P, s.BAD_DAY_MEAN
    bad_var = p_bad * 2 * m_bad**2 - (p_bad * m_bad) ** 2
    # each residual (the bad day's mean already taken off) = ability_k + trend x (year - center) + noise
    a = np.array([[k == 0, k == 1, year - center] for k, year, _ in history], dtype=float)
    noise = np.diag([s.WITHIN_SD[k] ** 2 + bad_var for k, _, _ in history])
    target = np.array([distance == 0, distance == 1, season - center], dtype=float)
    r = np.array([res for _, _, res in history])
    cov_tr = target @ prior @ a.T
    cov_rr = a @ prior @ a.T + noise
    mean = cov_tr @ np.linalg.solve(cov_rr, r)
    var = target @ prior @ target - cov_tr @ np.linalg.solve(cov_rr, cov_tr)
    return mean, var


@pytest.mark.parametrize("trend_sd", [0.0, "simulator"])
@pytest.mark.parametrize("distance", [0, 1])
def test_oracle_b_is_exact_conditioning_on_earlier_finishes(oracle, distance, trend_sd):
    trend_sd = sim.TREND_SD if trend_sd == "simulator" else trend_sd
    season, center = 2026, 2021
    history = [(0, 2019, 0.05), (0, 2021, 0.09), (1, 2022, 0.02), (0, 2024, 0.11), (1, 2025, -0.01)]
    sums = {f"{p}{j}": 0.0 for j in (0, 1) for p in ("n", "sy", "syy", "sr", "syr")}
    for k, year, res in history:
        sums[f"n{k}"] += 1
        sums[f"sy{k}"] += year
        sums[f"syy{k}"] += year**2
        sums[f"sr{k}"] += res
        sums[f"syr{k}"] += year * res
    # one row: the career centre's offset is then known exactly (its two moments over the rows)
    r = pd.DataFrame({"dd": [distance], "event_year": [season], "center_year": [center]})
    mean, var = oracle.oracle_b_posterior(r, pd.DataFrame({k: [v] for k, v in sums.items()}), trend_sd, same_only=False)
    expected_mean, expected_var = _brute_force_b(distance, season, center, history, trend_sd)
    assert mean[0] == pytest.approx(expected_mean, abs=1e-12)
    assert var[0] == pytest.approx(expected_var, rel=1e-10)
    # this distance's finishes only
    mean, var = oracle.oracle_b_posterior(r, pd.DataFrame({k: [v] for k, v in sums.items()}), trend_sd, same_only=True)
    own = [h for h in history if h[0] == distance]
    expected_mean, expected_var = _brute_force_b(distance, season, center, own, trend_sd)
    assert mean[0] == pytest.approx(expected_mean, abs=1e-12)
    assert var[0] == pytest.approx(expected_var, rel=1e-10)


def test_the_oracles_model_frame_lines_up_with_the_input_rows(oracle, demo_world, tmp_path):
    """The oracle attaches the simulator's truth to the model frame by each row's position in
    athlete_race.csv: its positions are the rows the frame's rules keep in the frame's own
    order (one distance's after the other's), row by row the same races."""
    from racedayai_bayes_tests.conftest import small_world, write_inputs

    world = small_world(demo_world, share=0.05)
    folder = write_inputs(world, tmp_path / "inputs")
    frame, positions = oracle.model_frame(oracle.Setup("test", folder, tmp_path / "outputs", ""))
    races = world["athlete_race"]
    assert len(frame) == len(positions) and len(set(positions)) == len(positions)
    distances = frame["event_distance"].to_numpy(dtype=object)
    assert (distances[:-1] <= distances[1:]).all() or (distances[:-1] >= distances[1:]).all()  # one block each
    assert frame["total_sec"].to_numpy().tolist() == races["total_sec"].to_numpy(dtype=float)[positions].tolist()
    assert (frame["event_distance"].to_numpy(dtype=object) == races["event_distance"].astype(str).to_numpy(dtype=object)[positions]).all()

