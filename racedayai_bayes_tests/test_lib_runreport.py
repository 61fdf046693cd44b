"""Progress messages and the pieces of the refit report (lib/runreport.py)."""

import pytest

from racedayai_bayes.lib.runreport import (
    CheckResult,
    PosteriorChecks,
    QuarterGate,
    bar,
    every_tenth,
    parse_progress,
    with_progress,
)


def test_a_progress_tail_round_trips_and_plain_messages_have_none():
    message = with_progress("chain 1/2: sampling 150/1500 (0.1 s, 0 divergent)", 1650, 6000)
    assert message == "chain 1/2: sampling 150/1500 (0.1 s, 0 divergent) [progress 1650/6000]"
    text, fraction = parse_progress(message)
    assert text == "chain 1/2: sampling 150/1500 (0.1 s, 0 divergent)"
    assert fraction == pytest.approx(0.275)
    assert parse_progress("chain 1/2: warmup done in 2.4 s") is None
    assert parse_progress("1/2 done [progress 3/0]") is None  # no total: no fraction
    assert parse_progress(with_progress("x", 9, 4))[1] == 1.0  # clipped


def test_every_tenth_reports_about_ten_times_and_always_at_the_end():
    for total in (1, 3, 10, 16, 537):
        marks = every_tenth(total)
        assert max(marks) == total and len(marks) <= 10 and min(marks) >= 1
    assert every_tenth(16) == {2, 4, 5, 7, 8, 10, 12, 13, 15, 16}
    assert every_tenth(0) == set()


def test_the_quarter_gate_lets_one_line_through_per_step_and_quarter():
    gate = QuarterGate(min_seconds=2.0)
    seen = [gate.allow("posterior", f, elapsed_s=10.0) for f in (0.1, 0.26, 0.3, 0.5, 0.74, 0.75, 0.99, 1.0)]
    assert seen == [None, 1, None, 2, None, 3, None, None]  # the end is the step's own line
    assert gate.allow("predictions", 0.6, elapsed_s=10.0) == 2  # steps are independent; a skipped quarter is skipped
    assert gate.allow("predictions", 0.8, elapsed_s=10.0) == 3


def test_the_quarter_gate_is_silent_for_a_fast_step():
    gate = QuarterGate(min_seconds=2.0)
    assert gate.allow("fast", 0.5, elapsed_s=0.4) is None
    assert gate.allow("fast", 0.8, elapsed_s=2.5) == 3  # long enough now: the current quarter only


def test_bar():
    assert bar(0.0, 10) == "[----------]"
    assert bar(0.45, 10) == "[####------]"
    assert bar(1.2, 10) == "[##########]"


def test_a_posterior_that_passes_is_one_line_with_each_value():
    post = PosteriorChecks("posterior", "70.3", [
        CheckResult("rhat_max", True, "ERROR", "", 1.0014),
        CheckResult("divergences", True, "ERROR", "", 0.0),
    ])
    assert post.line() == "posterior 70.3: all 2 checks pass (rhat_max 1.001, divergences 0)"
    assert not post.blocking_failure


def test_a_posterior_that_fails_spells_out_each_failed_check():
    post = PosteriorChecks("seed_asof", "140.6", [
        CheckResult("rhat_max", True, "ERROR", "", 1.001),
        CheckResult("ess_bulk_min", False, "ERROR", "min bulk ESS 7 (mu_age[4])", 7.2, ">= 400"),
        CheckResult("prediction_drift", False, "WARN", "moved 300 s", 300.0, "<= 120 s"),
    ])
    line = post.line()
    assert "\n" not in line
    assert line.startswith("seed_asof 140.6: 2 of 3 checks FAILED: ")
    assert "ess_bulk_min FAIL (ERROR): min bulk ESS 7 (mu_age[4]) [value 7.2, threshold >= 400]" in line
    assert "prediction_drift FAIL (WARN): moved 300 s [value 300, threshold <= 120 s]" in line
    assert line.endswith("passed: rhat_max")
    assert post.blocking_failure


def test_a_posterior_whose_step_never_finished_says_so():
    assert PosteriorChecks("posterior", "70.3").line() == "posterior 70.3: no check ran (its step did not finish)"


def test_a_first_refits_drift_check_reads_none_not_zero():
    """On a model's first refit the drift check has nothing to compare with: the report says so
    rather than 'prediction_drift 0', which reads as 'did not move' (as a later refit's 0 does)."""
    from racedayai_bayes.lib.evaluation.diagnostics import check_drift
    from racedayai_bayes.lib.runreport import CheckResult, PosteriorChecks

    def line(outcome):
        post = PosteriorChecks("posterior_forecast", "70.3")
        post.results.append(CheckResult("prediction_drift", True, "WARN", outcome.description, outcome.value, "<= 600 s"))
        return post.line()

    assert line(check_drift(None)).endswith("(prediction_drift none (no previous refit))")
    unmoved = {"mean_abs_shift_sec": 0.0, "p99_abs_shift_sec": 0.0, "mean_shift_sec": 0.0, "rows": 10}
    assert line(check_drift(unmoved)).endswith("(prediction_drift 0)")
