"""Held-out scores with clustered SEs (lib/evaluation/scores.py) and the publishing rule
(lib/evaluation/compare.py), on hand-made forecasts whose answers are known."""

from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

from racedayai_bayes.lib.data.split import row_groups
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
        # of the returning rows, every other one a debut here after finishes at the other distance
        "hist_starts_same": np.where(np.arange(n) % 4 == 1, 0, np.where(np.arange(n) % 2 == 0, 0, 3)).astype(np.int32),
        "hist_finishes_other": np.where(np.arange(n) % 4 == 1, 2, 0).astype(np.int32),
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


def test_edition_labels_are_course_and_season_and_a_row_without_a_course_is_its_own():
    from racedayai_bayes.lib.evaluation.scores import edition_labels

    rows = pd.DataFrame({
        "event_name": pd.array(["Oslo", "Oslo", "Oslo", None, "Rome", None], dtype="string"),
        "event_year": pd.array([2024, 2024, 2025, 2024, 2024, 2024], dtype="Int64"),
    })
    labels = edition_labels(rows)
    assert list(labels[[0, 1, 2, 4]]) == ["Oslo|2024", "Oslo|2024", "Oslo|2025", "Rome|2024"]
    assert labels[3] != labels[5] and len(set(labels)) == 5  # two rows without a course: two clusters
    # at positions: the labels of those rows, a lone row named by its position in ``rows``
    assert list(edition_labels(rows, np.array([5, 0, 1]))) == [labels[5], "Oslo|2024", "Oslo|2024"]


def test_the_judge_clusters_every_standard_error_by_edition():
    """The judge scores a model's held-out rows with one cluster per edition (course and
    season), not per row: its SEs are those of the edition sums, and its editions count them."""
    from racedayai_bayes.lib.data.split import Split
    from racedayai_bayes.lib.evaluation.judge import JudgeSettings, judge

    rows = _rows()
    n = len(rows)
    rng = np.random.default_rng(1)
    day = np.repeat(rng.normal(0, 0.3, EDITIONS), PER_EDITION)  # a shared day per edition
    lpd = -9.0 + day + rng.normal(0, 0.05, n)

    class Model:
        name, asof, distance = "m", True, "70.3"

        def predict(self, frame, positions=None, log_density=False, progress=None):
            k = np.arange(len(frame)) if positions is None else np.asarray(positions)
            y = frame["total_sec"].to_numpy()[k]
            return Prediction(y, np.full(len(k), 900.0), y - 1500, y, y + 1500, lpd[k] if log_density else None)

        def diagnostics(self):
            return []

    held = np.ones(n, dtype=bool)
    held[: PER_EDITION * 4] = False  # four editions fitted, 36 held out
    split = Split(rows=rows, held_out=held, rule="latest_year", description="test", season=2024)
    judged = judge(Model(), split, JudgeSettings(eval_rows=50))
    s = judged.holdout.scores
    assert s.editions == EDITIONS - 4 and s.rows == n - 4 * PER_EDITION
    by_edition = lpd[held].reshape(EDITIONS - 4, PER_EDITION).mean(1)
    assert s.elpd_se == pytest.approx(np.std(by_edition, ddof=1) / np.sqrt(EDITIONS - 4), rel=1e-9)
    # as if rows were independent, the SE would be about 5x smaller here
    assert s.elpd_se > 3 * np.std(lpd[held], ddof=1) / np.sqrt(held.sum())
    assert list(judged.holdout.clusters[:2]) == ["E4|2024", "E4|2024"]


def test_a_deciles_coverage_se_comes_from_its_editions_sums():
    from racedayai_bayes.lib.evaluation.scores import decile_table

    n = 400
    clusters = np.repeat(np.arange(20), 20).astype(str)  # 20 editions of 20 rows
    observed = np.full(n, 20000.0)
    predicted = np.tile(np.linspace(15000, 25000, 20), 20)  # each edition has rows in every decile
    miss = np.isin(np.repeat(np.arange(20), 20), [0, 1, 2])  # three editions missed entirely: a bad day
    lo = np.where(miss, observed + 1, observed - 1)
    pred = Prediction(predicted, np.full(n, 900.0), lo, predicted, lo + 3000)
    table = decile_table(observed, pred, clusters)
    codes = pd.qcut(predicted, 10, labels=False)
    for k in range(10):
        inside = (~miss[codes == k]).astype(float)
        c = clusters[codes == k]
        want = clustered_mean(inside, c)[1]
        assert table["se"].iloc[k] == pytest.approx(max(want, np.sqrt(0.09 / len(inside))))
        assert table["se"].iloc[k] > np.sqrt(0.09 / len(inside))  # the shared bad days widen it past the binomial floor


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
    return decide(judged, row_groups(rows, train), **kw)


def test_the_best_eligible_model_by_elpd_is_published_and_the_leaky_one_never_by_itself():
    base = _lpd(-9.5, 0.0)
    judged = {
        "seed_profile": _judged("seed_profile", base + 1.0, asof=False),  # the best score, but it leaks
        "seed_asof": _judged("seed_asof", base),
        "forecast": _judged("forecast", base + 0.3),
    }
    d = _decide(judged)
    assert d.published == "forecast" and "highest held-out ELPD" in d.reason
    # and why the better-scoring seed_profile is not it, in words
    assert ("seed_profile is not eligible: its features are not as of the race (computed over every race, the "
            "predicted one included), so its higher held-out ELPD is not a forecast's") in d.reason
    assert d.table.set_index("model").loc["forecast", "published"]
    # differences against the published model, overall and by group; a group without rows (no new
    # course: every course was trained on before) is left out, not shown as nan
    row = d.differences.query("model == 'seed_asof' and group == 'all'").iloc[0]
    assert row["elpd_diff"] == pytest.approx(-0.3)
    assert "new course" not in set(d.differences["group"]) and "known course" in set(d.differences["group"])
    debuts = d.differences.query("model == 'seed_asof' and group == 'debut after the other distance'")
    assert int(debuts["rows"].iloc[0]) == EDITIONS * PER_EDITION // 4  # of the returning half, every other row
    assert (d.differences["rows"] > 0).all() and d.differences["elpd_diff"].notna().all()
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


def test_the_comparisons_known_course_is_the_forecast_models():
    """row_groups matches a course as the model's encoding does (frame.course_index): a held-out
    row whose course the training rows spell otherwise, but for case and spacing, is on a known
    course; a course first run in the row's own season, or never, is new."""
    from racedayai_bayes.lib.models.forecast import design as fdesign

    names = ["IRONMAN 70.3 Alpha", "IRONMAN 70.3 Beta", "ironman 70.3  alpha", "IRONMAN 70.3 Beta", "IRONMAN 70.3 Gamma", None]
    years = [2024, 2025, 2025, 2025, 2025, 2025]
    rows = pd.DataFrame({"event_name": pd.array(names, dtype="string"), "event_year": years,
                         "hist_starts": [0, 1, 2, 0, 3, 0], "hist_starts_same": [0, 1, 2, 0, 3, 0],
                         "hist_finishes_other": 0, "gender": "M", "age_group": "30-34",
                         "total_sec": 18000.0, "hist_finishes_same": 0, "hist_rel_other": np.nan, "hist_dnf": 0,
                         "hist_unfinished_debut": 0.0, "hist_rel_other_at_debut": np.nan})
    train = rows.iloc[:2]
    groups = row_groups(rows, train)
    assert groups["known course"].tolist() == [False, False, True, False, False, False]
    np.testing.assert_array_equal(groups["new course"], ~groups["known course"])
    enc = fdesign.fit_encoding(train, "70.3")
    np.testing.assert_array_equal(fdesign.encode(rows, enc).new_course, groups["new course"])
