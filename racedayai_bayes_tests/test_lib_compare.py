"""Held-out scores with clustered SEs (lib/evaluation/scores.py) and the publishing rule
(lib/evaluation/compare.py), on hand-made forecasts whose answers are known."""

from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

from racedayai_bayes.lib.evaluation import diagnostics as dx
from racedayai_bayes.lib.evaluation.compare import SWITCH_SE, decide
from racedayai_bayes.lib.evaluation.judge import Evaluation, Judged
from racedayai_bayes.lib.evaluation.scores import clustered_mean, coverage_se, elpd_difference, score
from racedayai_bayes.lib.models.base import Prediction

EDITIONS, PER_EDITION = 40, 25


def _rows() -> pd.DataFrame:
    n = EDITIONS * PER_EDITION
    return pd.DataFrame({
        "athlete_hash": pd.array([f"a{i}" for i in range(n)], dtype="string"),
        "event_name": pd.array([f"E{i // PER_EDITION}" for i in range(n)], dtype="string"),
        "event_year": pd.array([2024] * n, dtype="Int64"),
        "total_sec": np.full(n, 20000.0),
        "hist_starts": np.where(np.arange(n) % 2 == 0, 0, 3).astype(np.int32),
    })


def test_clustered_mean_uses_per_cluster_sums():
    values = np.array([1.0, 1.0, 5.0, 5.0, 3.0, 3.0])
    clusters = np.array(["a", "a", "b", "b", "c", "c"])
    mean, se = clustered_mean(values, clusters)
    assert mean == 3.0
    # cluster sums 2, 10, 6 around 3 x 2 rows: residuals -4, 4, 0; sqrt(3/2 * 32) / 6
    assert se == pytest.approx(np.sqrt(1.5 * 32) / 6)
    # independent rows would claim a smaller error: the clustering is what widens it
    iid = np.std(values, ddof=1) / np.sqrt(len(values))
    assert se > iid


def test_coverage_se_never_falls_below_the_binomial_error_at_90_percent():
    inside = np.ones(20)
    cov, se = coverage_se(inside, np.arange(20))
    assert cov == 1.0 and se == pytest.approx(np.sqrt(0.09 / 20))


def test_score_reports_maes_coverage_and_elpd_with_clustered_errors():
    rows = _rows()
    n = len(rows)
    y = rows["total_sec"].to_numpy()
    rng = np.random.default_rng(0)
    day = np.repeat(rng.normal(0, 600, EDITIONS), PER_EDITION)  # each edition's day moves all its rows
    pred = Prediction(y + day, np.full(n, 900.0), y + day - 1500, y + day + 60, y + day + 1500,
                      np.full(n, -9.0) + np.repeat(rng.normal(0, 0.2, EDITIONS), PER_EDITION))
    clusters = (rows["event_name"] + "|2024").to_numpy()
    s = score(y, pred, clusters, {"first race": rows["hist_starts"].to_numpy() == 0})
    assert s.mae_pred_sec == pytest.approx(np.mean(np.abs(day)))
    assert s.mae_p50_sec == pytest.approx(np.mean(np.abs(day + 60)))
    assert s.coverage_90 == pytest.approx(np.mean(np.abs(day) <= 1500))
    assert s.elpd == pytest.approx(pred.log_density.mean())
    # 40 editions, not 1,000 rows: the SE is that of 40 edition means
    assert s.elpd_se == pytest.approx(np.std(pred.log_density.reshape(EDITIONS, -1).mean(1), ddof=1) / np.sqrt(EDITIONS), rel=0.05)
    assert s.editions == EDITIONS and s.rows == n
    assert s.groups["first race"]["rows"] == n // 2
    assert len(s.deciles) == 10 and s.deciles["rows"].sum() == n


def _judged(name, lpd, asof=True, passed=True, rows=None):
    rows = _rows() if rows is None else rows
    n = len(rows)
    y = rows["total_sec"].to_numpy()
    pred = Prediction(y, np.full(n, 900.0), y - 1500, y, y + 1500, np.asarray(lpd, dtype=float))
    clusters = (rows["event_name"] + "|2024").to_numpy()
    ev = Evaluation("held-out", np.arange(n), y, pred, score(y, pred, clusters), clusters)
    checks = [dx.CheckOutcome("rhat", dx.PASS if passed else dx.ERROR, 1.0, "<= 1.01")]
    model = SimpleNamespace(name=name, asof=asof, distance="70.3")
    return Judged(model=model, split={}, in_sample=ev, holdout=ev, checks=checks)


def _lpd(base, shift, noise=0.3, seed=0):
    rng = np.random.default_rng(seed)
    per_edition = np.repeat(rng.normal(0, noise, EDITIONS), PER_EDITION)
    return base + shift + per_edition + rng.normal(0, 0.5, EDITIONS * PER_EDITION)


def _decide(judged, **kw):
    rows = _rows()
    train = rows.assign(event_year=pd.array([2023] * len(rows), dtype="Int64"))
    return decide(judged, rows, train, **kw)


def test_the_best_eligible_model_by_elpd_is_published_and_the_leaky_one_never_by_itself():
    base = _lpd(-9.5, 0.0)
    judged = {
        "seed_profile": _judged("seed_profile", base + 1.0, asof=False),  # the best score, but it leaks
        "seed_asof": _judged("seed_asof", base),
        "forecast": _judged("forecast", base + 0.3),
    }
    d = _decide(judged)
    assert d.published == "forecast" and "highest held-out ELPD" in d.reason
    assert d.table.set_index("model").loc["forecast", "published"]
    # differences against the published model, overall and by group
    row = d.differences.query("model == 'seed_asof' and group == 'all'").iloc[0]
    assert row["elpd_diff"] == pytest.approx(-0.3)
    assert _decide(judged, publish="seed_profile").published == "seed_profile"


def test_last_weeks_model_stays_unless_beaten_by_more_than_two_standard_errors():
    base = _lpd(-9.5, 0.0)
    # noise per edition, shared by both models' differences: the SE of a difference
    close = {"seed_asof": _judged("seed_asof", base), "forecast": _judged("forecast", _lpd(-9.5, 0.01, seed=1))}
    d = _decide(close, previous="seed_asof")
    diff, se, _ = elpd_difference(close["forecast"].holdout.prediction.log_density, base,
                                  (_rows()["event_name"] + "|2024").to_numpy())
    assert diff > 0 and diff < SWITCH_SE * se  # forecast is better, but not clearly
    assert d.published == "seed_asof" and "stays published" in d.reason and not d.changed
    far = {"seed_asof": _judged("seed_asof", base), "forecast": _judged("forecast", base + 0.5)}
    d = _decide(far, previous="seed_asof")
    assert d.published == "forecast" and d.changed and "beats last week's seed_asof" in d.reason


def test_a_model_that_failed_a_check_is_not_published_and_nothing_is_when_none_passes():
    base = _lpd(-9.5, 0.0)
    judged = {"seed_asof": _judged("seed_asof", base), "forecast": _judged("forecast", base + 0.5, passed=False)}
    d = _decide(judged, previous="forecast")
    assert d.published == "seed_asof" and "not eligible" in d.reason
    none = {"seed_asof": _judged("seed_asof", base, passed=False), "forecast": _judged("forecast", base, passed=False)}
    d = _decide(none)
    assert d.published is None and d.chosen is None and "nothing published" in d.reason
    forced = _decide(none, publish="forecast")
    assert forced.published is None and "asked for" in forced.reason
    with pytest.raises(ValueError, match="publish must be one of"):
        _decide(judged, publish="best")
