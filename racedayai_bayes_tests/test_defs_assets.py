"""The asset graph materialised in process on a small simulated world: every model, the
comparison, the published CSV, artifacts, and the command that predicts from an artifact."""

import os
import shutil
import time
from pathlib import Path

import dagster as dg
import numpy as np
import pandas as pd
import pytest

from racedayai_bayes.definitions import defs
from racedayai_bayes.defs.models import posterior_key
from racedayai_bayes.defs.resources import PipelinePaths
from racedayai_bayes.lib.models.base import MODEL_NAMES
from racedayai_bayes.lib.outputs.artifacts import LATEST, latest_artifact, load_artifact, side_path
from racedayai_bayes.lib.outputs.io import write_csv_atomic
from racedayai_bayes.lib.outputs.tables import APPENDED_COLUMNS, INTERVAL_COLUMNS, PREDICTION_COLUMNS

from .conftest import (
    FAST_FIT,
    MODEL_ASSETS,
    REFIT_ASSETS,
    SHORT_FORECAST_FIT,
    SHORT_SEED_FIT,
    pipeline_assets,
    pipeline_resources,
    refit_config,
)

ALL_ASSETS = list(defs.assets)
PIPELINE = pipeline_assets()
HARNESS_CHECKS = {"predictive_coverage", "coverage_by_decile", "prediction_drift"}
MODEL_CHECKS = {
    "seed_profile": {"rhat_max", "ess_bulk_min", "divergences", "proposal_khat"} | HARNESS_CHECKS,
    "seed_asof": {"rhat_max", "ess_bulk_min", "divergences", "proposal_khat"} | HARNESS_CHECKS,
    "forecast": {"rhat_max", "ess_bulk_min", "proposal_khat"} | HARNESS_CHECKS,
}
PUBLISH_CHECKS = {"publishable", "published_coverage", "published_coverage_by_decile", "published_model_change"}
REFIT = list(REFIT_ASSETS)


def _materialize(distance, resources, instance, selection=None, raise_on_error=True, **config):
    return dg.materialize(
        PIPELINE, selection=selection, partition_key=distance, resources=resources,
        run_config=refit_config(**config, selection=selection), instance=instance, raise_on_error=raise_on_error,
    )


@pytest.fixture(scope="module")
def graph_run(small_inputs, tmp_path_factory):
    """Both distances materialised once: the first run builds everything, the second refits."""
    out = tmp_path_factory.mktemp("outputs")
    resources = pipeline_resources(small_inputs, out, tmp_path_factory.mktemp("storage"))
    instance = dg.DagsterInstance.ephemeral()
    results = {
        "70.3": _materialize("70.3", resources, instance),
        "140.6": _materialize("140.6", resources, instance, selection=REFIT),
    }
    return results, out, resources


def _frame(results):
    return results["70.3"].output_for_node("model_frame", "model_frame")


def _meta(result, node):
    return result.asset_materializations_for_node(node)[0].metadata


def test_whole_graph_writes_both_prediction_csvs_and_means(graph_run):
    results, out, _ = graph_run
    assert all(r.success for r in results.values())
    frame = _frame(results)
    for distance, result in results.items():
        table = pd.read_csv(out / f"bayesian_predictions_{distance}.csv", dtype={"event_distance": str})
        # the contract's columns unchanged and first; quantiles, model, course and held_out appended
        assert tuple(table.columns) == PREDICTION_COLUMNS + INTERVAL_COLUMNS + APPENDED_COLUMNS
        assert (table["bayes_p05"] < table["bayes_p50"]).all() and (table["bayes_p50"] < table["bayes_p95"]).all()
        published = _meta(result, "published_model")["published"].value
        assert published in ("seed_asof", "forecast")  # never the leaking seed_profile on its own
        assert (table["model"] == published).all()
        expected = frame[frame["event_distance"] == distance]
        assert len(table) == len(expected)
        assert table["total_sec"].tolist() == expected["total_sec"].tolist()
        assert table["event_name"].fillna("").tolist() == expected["event_name"].fillna("").tolist()
        latest = int(expected["event_year"].max())
        assert table["held_out"].tolist() == (expected["event_year"] == latest).tolist()
        held = table[table["held_out"]]
        inside = held["total_sec"].between(held["bayes_p05"], held["bayes_p95"]).mean()
        assert 0.8 <= inside <= 0.98, inside
        assert table["bayes_std"].gt(0).all()
        mae = (held["bayes_p50"] - held["total_sec"]).abs().mean()
        assert mae < (held["total_sec"] - held["total_sec"].mean()).abs().mean()
    means = pd.read_csv(out / "bayesian_posterior_means.csv", dtype={"distance": str})
    assert means["distance"].tolist() == ["70.3", "140.6"] and means.columns[0] == "distance"
    assert {"mu_global", "sigma", "sigma_age", "mu_gender_0", "mu_gender_1", "mu_age_0", "mu_cluster_0"} <= set(means.columns)
    forecast = pd.read_csv(out / "forecast_posterior_means.csv", dtype={"distance": str})
    assert forecast["distance"].tolist() == ["70.3", "140.6"]
    assert {"sigma_first", "sigma_returning", "tau", "sigma_course", "sigma_cell", "tau_other", "day_sd"} <= set(forecast.columns)


def test_every_model_is_judged_by_its_own_checks_per_distance(graph_run):
    results, _, _ = graph_run
    for distance, result in results.items():
        evals = result.get_asset_check_evaluations()
        by_asset = {}
        for e in evals:
            by_asset.setdefault(e.asset_key.to_user_string(), []).append(e.check_name)
            assert e.metadata["distance"].value == distance
            assert {"value", "threshold", "worst", "model"} <= set(e.metadata)
        for name, checks in MODEL_CHECKS.items():
            assert sorted(by_asset[posterior_key(name)]) == sorted(checks), name  # each once
        assert sorted(by_asset["published_model"]) == sorted(PUBLISH_CHECKS)
        for e in evals:
            if e.check_name in ("rhat_max", "ess_bulk_min", "predictive_coverage", "publishable", "published_coverage"):
                assert e.passed, (distance, e.asset_key.to_user_string(), e.check_name, e.description)


def test_the_comparison_shows_every_model_and_why_one_was_published(graph_run):
    results, _, _ = graph_run
    meta = _meta(results["70.3"], "published_model")
    comparison = meta["comparison"].value
    for name in MODEL_NAMES:
        assert name in comparison
    assert "leaks the outcome" in comparison  # seed_profile's features
    assert "ELPD" in meta["reason"].value and meta["published"].value in meta["reason"].value
    assert "first race" in meta["differences"].value and "new course" in meta["differences"].value
    assert meta["plot_elpd_differences"].value.startswith("![")
    decision = results["70.3"].output_for_node("published_model")
    assert set(decision.table["model"]) == set(MODEL_NAMES)
    assert decision.table.loc[decision.table["published"], "model"].item() == decision.published
    # every model was judged on the same held-out rows
    positions = {n: j.judged.positions.tolist() for n, j in decision.judged.items()}
    assert len({tuple(p) for p in positions.values()}) == 1


def test_posterior_metadata_reports_summary_evaluation_and_plots(graph_run):
    results, _, _ = graph_run
    frame = _frame(results)
    rows = frame[frame["event_distance"] == "70.3"]
    latest = int(rows["event_year"].max())
    for name in MODEL_NAMES:
        meta = _meta(results["70.3"], posterior_key(name))
        assert "| parameter | mean | sd | p5 | p95 | ess_bulk | r_hat |" in meta["summary"].value
        assert meta["model"].value == name
        assert meta["rows_held_out"].value == int((rows["event_year"] == latest).sum()) > 0
        assert str(latest) in meta["holdout"].value
        evaluation = meta["evaluation"].value
        assert "in-sample (the notebook's)" in evaluation and "held-out" in evaluation and "ELPD" in evaluation
        for key in ("elpd", "mae_p50_min", "coverage_90"):
            assert np.isfinite(meta[key].value)
            assert len(f"{abs(meta[key].value):.12g}".replace(".", "").lstrip("0")) <= 5  # the UI shows 5 digits, not 16
        for plot in ("plot_scale_ranks", "plot_predicted_vs_observed", "plot_coverage_by_decile"):
            assert meta[plot].value.startswith("![") and "data:image/png;base64," in meta[plot].value, (name, plot)
    assert "Male" in _meta(results["70.3"], posterior_key("seed_profile"))["analysis"].value
    assert _meta(results["70.3"], posterior_key("forecast"))["plot_course_effects"].value.startswith("![")


def test_each_model_saves_an_artifact_and_the_csv_moves_latest_to_the_published_one(graph_run):
    results, out, _ = graph_run
    for distance, result in results.items():
        published = _meta(result, "published_model")["published"].value
        for name in MODEL_NAMES:
            path = Path(_meta(result, posterior_key(name))["artifact"].value)
            assert path.parent == out / "posterior" / name / distance and path.exists()
        assert latest_artifact(out, distance) == Path(_meta(result, posterior_key(published))["artifact"].value)
        assert _meta(result, "bayesian_predictions")["posterior_artifact"].value == str(latest_artifact(out, distance))
        art = load_artifact(out / "posterior" / distance)  # a folder resolves through `latest`
        stored = result.output_for_node(posterior_key(published)).model
        assert art.model.name == published and art.distance == distance
        if published == "forecast":
            np.testing.assert_array_equal(art.model.b, stored.b)
            assert (path := side_path(art.path, "athletes")).exists(), path


def test_the_forecast_athlete_table_is_written_plain_and_reads_back_exact(graph_run):
    import pyarrow.parquet as pq

    results, _, _ = graph_run
    seasons = results["70.3"].output_for_node("model_frame", "athlete_seasons")
    for distance, result in results.items():
        # the forecast model's own artifact, whether or not it was published
        path = Path(_meta(result, posterior_key("forecast"))["artifact"].value)
        table_path = side_path(path, "athletes")
        meta = pq.ParquetFile(table_path).metadata
        chunks = [meta.row_group(g).column(c) for g in range(meta.num_row_groups) for c in range(meta.num_columns)]
        assert chunks and not any(chunk.has_dictionary_page for chunk in chunks)  # artifacts.SIDE_TABLE_DICTIONARY
        stored = result.output_for_node(posterior_key("forecast")).model
        pd.testing.assert_frame_equal(load_artifact(path).model.athletes,
                                      stored.athlete_table(result.output_for_node("holdout_split"), seasons),
                                      check_exact=True)


def test_predict_command_reproduces_the_held_out_forecasts_from_the_artifact_alone(graph_run, tmp_path):
    from racedayai_bayes.cli import main

    results, out, _ = graph_run
    csv = pd.read_csv(out / "bayesian_predictions_70.3.csv", dtype={"event_distance": str, "athlete_hash": str})
    decision = results["70.3"].output_for_node("published_model")
    rows = results["70.3"].output_for_node("holdout_split").holdout
    columns = ["athlete_hash", "gender", "age_group", "event_name", "event_year", "event_distance", "total_sec",
               "pb_total_sec", "total_races", "cluster_id", "hist_best_sec", "hist_results"]
    rows_csv = write_csv_atomic(rows[columns], tmp_path / "rows.csv")
    code = main(["predict", "--posterior", str(out / "posterior" / "70.3"), "--input", str(rows_csv),
                 "--output", str(tmp_path / "p.csv")])
    assert code == 0
    got = pd.read_csv(tmp_path / "p.csv", dtype={"event_distance": str, "athlete_hash": str})
    want = csv[csv["held_out"]].reset_index(drop=True)
    assert (got["model"] == decision.published).all() and got["held_out"].all()
    pd.testing.assert_frame_equal(got, want, check_exact=True)
    # a later season than the held-out one was never fitted either: held out too
    later = write_csv_atomic(rows[columns].head(20).assign(event_year=rows["event_year"].max() + 1), tmp_path / "later.csv")
    assert main(["predict", "--posterior", str(out / "posterior" / "70.3"), "--input", str(later),
                 "--output", str(tmp_path / "later_p.csv")]) == 0
    assert pd.read_csv(tmp_path / "later_p.csv")["held_out"].all()


def test_predict_command_refuses_rows_of_the_other_distance(graph_run, tmp_path, capsys):
    from racedayai_bayes.cli import main

    results, out, _ = graph_run
    frame = _frame(results)
    rows_csv = write_csv_atomic(frame[frame["event_distance"] == "140.6"].head(50), tmp_path / "rows.csv")
    code = main(["predict", "--posterior", str(out / "posterior" / "70.3"), "--input", str(rows_csv), "--output", str(tmp_path / "p.csv")])
    assert code == 1 and not (tmp_path / "p.csv").exists()
    err = capsys.readouterr().err
    assert "rows.csv" in err and "event_distance" in err and "140.6" in err


def _copy_of_outputs(graph_run, tmp_path):
    """A copy of the module's output folder and resources writing to it: tests that refit
    again and change the outputs leave the shared ones alone."""
    _, out, resources = graph_run
    copy = tmp_path / "out"
    shutil.copytree(out, copy)
    return copy, {**resources, "paths": PipelinePaths(input_dir=resources["paths"].input_dir, output_dir=str(copy))}


def test_publish_seed_profile_gives_the_notebooks_csv_and_warns_of_the_change(graph_run, tmp_path):
    """`publish: seed_profile` forces the notebook's model; the change of model is a WARN, and the
    predict command reproduces that CSV byte for byte from the artifact alone."""
    from racedayai_bayes.cli import main

    results, _, _ = graph_run
    copy, resources = _copy_of_outputs(graph_run, tmp_path)
    before = _meta(results["70.3"], "published_model")["published"].value
    result = _materialize("70.3", resources, dg.DagsterInstance.ephemeral(), selection=REFIT, publish="seed_profile")
    assert result.success  # a WARN never blocks
    table = pd.read_csv(copy / "bayesian_predictions_70.3.csv")
    assert (table["model"] == "seed_profile").all()
    change = next(e for e in result.get_asset_check_evaluations() if e.check_name == "published_model_change")
    assert not change.passed and change.severity == dg.AssetCheckSeverity.WARN
    assert before in change.description and "seed_profile" in change.description
    frame = result.output_for_node("holdout_split").rows
    rows_csv = write_csv_atomic(frame, tmp_path / "rows.csv")
    code = main(["predict", "--posterior", str(copy / "posterior" / "70.3"), "--input", str(rows_csv), "--output", str(tmp_path / "p.csv")])
    assert code == 0
    assert (tmp_path / "p.csv").read_bytes() == (copy / "bayesian_predictions_70.3.csv").read_bytes()


def test_drift_check_warns_above_the_threshold_without_blocking(graph_run, tmp_path):
    """A refit compared with the model's previous one: a 0.01 s threshold makes any shift a WARN."""
    copy, resources = _copy_of_outputs(graph_run, tmp_path)
    result = _materialize(
        "70.3", resources, dg.DagsterInstance.ephemeral(), selection=[posterior_key("seed_profile")],
        seed_fit={**FAST_FIT, "seed": 5, "drift_threshold_sec": 0.01},
    )
    assert result.success  # WARN never blocks
    drift = next(e for e in result.get_asset_check_evaluations() if e.check_name == "prediction_drift")
    assert not drift.passed and drift.severity == dg.AssetCheckSeverity.WARN
    # another seed moves the posterior means by Monte Carlo error only: seconds, not minutes
    assert 0.01 < drift.metadata["value"].value < 120
    assert "previous refit" in drift.description


def test_the_split_step_stores_the_row_groups_that_every_judge_reads(graph_run):
    """holdout_split makes its rows' groups (first race, known course, ...) before the IO
    manager stores the split: each model's judge and the comparison read them from the stored
    file, where they are the groups of the split's own rows."""
    from racedayai_bayes.lib.data.split import GROUPS, row_groups
    from racedayai_bayes.lib.outputs import stored as stored_values

    _, _, resources = graph_run
    storage = Path(resources["io_manager"].base_dir)
    for distance in ("70.3", "140.6"):
        split = stored_values.load(storage / "holdout_split" / f"{distance}.pkl")
        made = vars(split).get("groups")  # stored with the split, not made on reading it
        assert made is not None and tuple(made) == GROUPS
        expected = row_groups(split.rows, split.train_columns("event_name", "event_year"))
        for name, mask in expected.items():
            np.testing.assert_array_equal(made[name], mask)
        assert made["first race"].any() and made["returning"].any() and made["known course"].any()


def test_the_drift_checks_previous_forecast_reads_no_side_table(graph_run):
    """The drift check loads the previous refit without its side tables (the forecast model's
    athlete table, most of the load at full scale): its forecasts of a split's rows, which
    read their history from the rows, are the fully loaded artifact's to the last bit."""
    results, out, _ = graph_run
    split = results["70.3"].output_for_node("holdout_split")
    path = max((out / "posterior" / "forecast" / "70.3").glob("*.nc"))
    whole = load_artifact(path).model
    bare = load_artifact(path, side_tables=False).model
    assert whole.athletes is not None and len(whole.athletes) and bare.athletes is None
    for positions in (split.holdout_positions, split.train_positions[:500]):
        a, b = whole.predict(split.rows, positions), bare.predict(split.rows, positions)
        for field in ("pred", "std", "p05", "p50", "p95"):
            np.testing.assert_array_equal(getattr(a, field), getattr(b, field))
    with pytest.raises(ValueError, match="no athlete table"):
        bare.table_season  # a race-day forecast from it says what is missing


def test_a_model_that_fails_its_checks_does_not_stop_the_others(graph_run, tmp_path):
    """Seed chains far too short fail their ESS checks: the run still compares and publishes."""
    copy, resources = _copy_of_outputs(graph_run, tmp_path)
    result = _materialize("70.3", resources, dg.DagsterInstance.ephemeral(), selection=REFIT, seed_fit=SHORT_SEED_FIT)
    assert result.success
    failed = {(e.asset_key.to_user_string(), e.check_name) for e in result.get_asset_check_evaluations() if not e.passed}
    assert (posterior_key("seed_asof"), "ess_bulk_min") in failed
    assert _meta(result, "published_model")["published"].value == "forecast"
    assert (pd.read_csv(copy / "bayesian_predictions_70.3.csv")["model"] == "forecast").all()


def test_when_no_model_passes_nothing_is_published_and_the_csv_stays(graph_run, tmp_path):
    copy, resources = _copy_of_outputs(graph_run, tmp_path)
    csv = copy / "bayesian_predictions_70.3.csv"
    before, latest = csv.read_bytes(), (copy / "posterior" / "70.3" / LATEST).read_text()
    result = _materialize("70.3", resources, dg.DagsterInstance.ephemeral(), selection=REFIT, raise_on_error=False,
                          seed_fit=SHORT_SEED_FIT, forecast=SHORT_FORECAST_FIT)
    assert not result.success  # the blocking gate on published_model
    publishable = next(e for e in result.get_asset_check_evaluations() if e.check_name == "publishable")
    assert not publishable.passed and "nothing published" in publishable.description
    assert result.asset_materializations_for_node("bayesian_predictions") == []
    assert csv.read_bytes() == before
    assert (copy / "posterior" / "70.3" / LATEST).read_text() == latest


def test_a_backtest_holds_out_an_earlier_season_and_drops_later_ones(graph_run, tmp_path):
    """A backtest writes everything under backtests/<season>/ and leaves what the weekly
    refit published alone: its CSVs, its means files, its artifacts and its `latest`."""
    results, _, _ = graph_run
    copy, resources = _copy_of_outputs(graph_run, tmp_path)
    frame = _frame(results)
    rows = frame[frame["event_distance"] == "140.6"]
    season = int(rows["event_year"].max()) - 1
    published = {p.relative_to(copy): p.read_bytes() for p in copy.rglob("*") if p.is_file()}
    result = _materialize("140.6", resources, dg.DagsterInstance.ephemeral(), selection=REFIT,
                          split={"holdout_season": season})
    assert result.success
    meta = _meta(result, "holdout_split")
    assert meta["season"].value == season
    assert meta["rows_dropped_later_seasons"].value == int((rows["event_year"] > season).sum()) > 0
    backtest = copy / "backtests" / str(season)
    table = pd.read_csv(backtest / "bayesian_predictions_140.6.csv")
    assert table["event_year"].max() == season
    assert table["held_out"].tolist() == (table["event_year"] == season).tolist()
    assert _meta(result, "bayesian_predictions")["backtest"].value is True
    assert _meta(result, "holdout_split")["backtest_season"].value == season
    # last week's published model is read from the backtest's folder, where there is none yet
    assert _meta(result, "published_model")["previous"].value == "nothing"
    # the backtest's posterior is published in its own folder, with the usual layout
    latest = (backtest / "posterior" / "140.6" / LATEST).read_text().strip()
    assert (backtest / "posterior" / latest).exists()
    means = pd.read_csv(backtest / "forecast_posterior_means.csv", dtype={"distance": str})
    assert means["distance"].tolist() == ["140.6"]
    # nothing the weekly refit wrote changed, and nothing new appeared beside it
    after = {p.relative_to(copy): p.read_bytes() for p in copy.rglob("*") if p.is_file()
             and backtest not in p.parents}
    assert after == published

    # a weekly refit of the other distance next: the means steps write the weekly files only,
    # and say so, though 140.6's stored posterior is now the backtest's (they rewrote the
    # backtest's means files, and named them as their output, before 2026-12-06)
    backtest_files = {p: p.read_bytes() for p in backtest.rglob("*means.csv")}
    assert backtest_files
    weekly = _materialize("70.3", resources, dg.DagsterInstance.ephemeral(), selection=REFIT)
    assert weekly.success
    for name in ("bayesian_posterior_means", "forecast_posterior_means"):
        meta = _meta(weekly, name)
        assert meta["path"].value == str(copy / f"{name}.csv") and "other_paths" not in meta, name
    assert {p: p.read_bytes() for p in backtest.rglob("*means.csv")} == backtest_files
    means = pd.read_csv(copy / "forecast_posterior_means.csv", dtype={"distance": str})
    assert means["distance"].tolist() == ["70.3", "140.6"]  # 140.6 keeps its weekly row


def test_bad_input_fails_with_file_and_column(small_inputs, tmp_path):
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    for f in small_inputs.iterdir():
        (inputs / f.name).write_bytes(f.read_bytes())
    races = pd.read_csv(inputs / "athlete_race.csv", dtype=str).drop(columns=["event_name"])
    races.to_csv(inputs / "athlete_race.csv", index=False)
    result = dg.materialize(
        [a for a in ALL_ASSETS if dg.AssetKey("athlete_race") in a.keys],
        resources=pipeline_resources(inputs, tmp_path / "out", tmp_path / "storage"),
        raise_on_error=False,
    )
    assert not result.success
    failure = result.get_step_failure_events()[0].step_failure_data.error
    assert "athlete_race.csv" in failure.message and "event_name" in failure.message


def test_unreadable_previous_artifact_skips_drift_and_the_refit_goes_on(graph_run, tmp_path):
    copy, resources = _copy_of_outputs(graph_run, tmp_path)
    folder = copy / "posterior" / "seed_profile" / "70.3"
    for nc in folder.glob("*.nc"):
        nc.write_bytes(b"truncated")
    instance = dg.DagsterInstance.ephemeral()
    result = _materialize("70.3", resources, instance, selection=[posterior_key("seed_profile")])
    assert result.success
    drift = next(e for e in result.get_asset_check_evaluations() if e.check_name == "prediction_drift")
    assert drift.passed and drift.description == "no previous refit to compare with"
    logs = [e.user_message for e in instance.all_logs(result.run_id)]
    assert any("drift check of seed_profile skipped" in m and "not a readable NetCDF" in m for m in logs)


def test_artifact_that_cannot_be_written_fails_the_model_and_keeps_the_csv(graph_run, tmp_path):
    copy, resources = _copy_of_outputs(graph_run, tmp_path)
    target = copy / "posterior" / "forecast" / "140.6"
    shutil.rmtree(target)
    target.write_text("a file where the artifact folder should be")
    before = (copy / "bayesian_predictions_140.6.csv").read_bytes()
    result = _materialize("140.6", resources, dg.DagsterInstance.ephemeral(), selection=REFIT, raise_on_error=False)
    assert not result.success
    error = result.get_step_failure_events()[0].step_failure_data.error
    assert "posterior/forecast/140.6" in error.message and "nothing was written there" in error.message
    assert (copy / "bayesian_predictions_140.6.csv").read_bytes() == before


def test_a_posterior_materialised_alone_does_not_move_latest(graph_run, tmp_path):
    """`latest` names the posterior of the CSV on disk: a refit whose CSV is not written leaves it."""
    copy, resources = _copy_of_outputs(graph_run, tmp_path)
    before = (copy / "posterior" / "140.6" / LATEST).read_text()
    result = _materialize("140.6", resources, dg.DagsterInstance.ephemeral(), selection=[posterior_key("forecast")],
                          forecast={"seed": 8})
    assert result.success
    new = Path(_meta(result, posterior_key("forecast"))["artifact"].value)
    assert new.exists() and new.name not in before
    assert (copy / "posterior" / "140.6" / LATEST).read_text() == before


# --- race-day forecasts -------------------------------------------------------------------------


def _held_out_race(results, distance="70.3"):
    """The biggest race of the held-out season: its rows in the split, in CSV order."""
    split = results[distance].output_for_node("holdout_split")
    held = split.holdout
    race = held["event_name"].value_counts().index[0]
    return held[held["event_name"] == race], race, int(held["event_year"].iloc[0])


def test_forecast_command_equals_the_csv_for_a_race_of_the_held_out_season(graph_run, tmp_path):
    """A held-out race's start list, forecast with --year its season: the same numbers as that
    race's rows of the prediction CSV (same model, same draws)."""
    from racedayai_bayes.cli import main

    results, out, _ = graph_run
    if results["70.3"].output_for_node("published_model").published != "forecast":
        pytest.skip("the published model is not the forecast model on this world")
    rows, race, season = _held_out_race(results)
    start = rows[["athlete_hash", "gender", "age_group"]].assign(bib=np.arange(len(rows)) + 1)
    start_csv = write_csv_atomic(start, tmp_path / "start.csv")
    code = main(["forecast", "--posterior", str(out / "posterior" / "70.3"), "--event", race, "--start-list",
                 str(start_csv), "--year", str(season), "--output", str(tmp_path / "f.csv")])
    assert code == 0
    got = pd.read_csv(tmp_path / "f.csv", dtype={"athlete_hash": str})
    assert list(got.columns) == ["athlete_hash", "gender", "age_group", "bib", "event_name", "event_year",
                                 "event_distance", "model", "history_races", "new_course", "bayes_pred", "bayes_std",
                                 "bayes_p05", "bayes_p50", "bayes_p95"]
    assert got["bib"].tolist() == list(range(1, len(rows) + 1))  # the start list's order and columns kept
    csv = pd.read_csv(out / "bayesian_predictions_70.3.csv", dtype={"athlete_hash": str})
    want = csv[csv["held_out"] & (csv["event_name"] == race)].reset_index(drop=True)
    for col in ("bayes_pred", "bayes_std", "bayes_p05", "bayes_p50", "bayes_p95"):
        np.testing.assert_array_equal(got[col].to_numpy(), want[col].to_numpy(), err_msg=col)
    assert (got["history_races"] == rows["hist_starts"].to_numpy()).all()
    # a season after the artifact's reads the held-out season too: an athlete who raced it moves
    later = main(["forecast", "--posterior", str(out / "posterior" / "70.3"), "--event", race, "--start-list",
                  str(start_csv), "--output", str(tmp_path / "next.csv")])
    assert later == 0
    nxt = pd.read_csv(tmp_path / "next.csv", dtype={"athlete_hash": str})
    assert (nxt["event_year"] == season + 1).all()
    assert (nxt["history_races"] >= got["history_races"]).all() and (nxt["history_races"] > got["history_races"]).any()


@pytest.mark.parametrize("case, text, message", [
    ("no columns", "athlete_hash,gender\na,M\n", "column 'age_group'"),
    ("empty", "", "file is empty"),
    ("header only", "athlete_hash,gender,age_group\n", "no athletes"),
    ("other distance", "athlete_hash,gender,age_group,event_distance\na,M,30-34,140.6\n", "is a 140.6 race"),
    ("no distance of the models", "athlete_hash,gender,age_group,event_distance\na,M,30-34,100\n",
     "event_distance '100' is not a distance the models forecast; write 70.3 or 140.6"),
])
def test_forecast_command_bad_start_lists_are_one_line_errors(graph_run, tmp_path, capsys, case, text, message):
    from racedayai_bayes.cli import main

    _, out, _ = graph_run
    path = tmp_path / "start.csv"
    path.write_text(text)
    code = main(["forecast", "--posterior", str(out / "posterior" / "70.3"), "--event", "X", "--start-list", str(path),
                 "--output", str(tmp_path / "f.csv")])
    err = capsys.readouterr().err
    assert code == 1 and not (tmp_path / "f.csv").exists(), case
    assert message in err and "start.csv" in err and "Traceback" not in err, err
    assert len([line for line in err.splitlines() if line.startswith("error:")]) == 1


def test_opening_a_forecast_artifact_for_a_start_list_reads_only_its_athletes_and_no_sampler(graph_run):
    """The forecast command's start-up: no JAX, NumPyro or ArviZ import, and the athlete table
    read for the listed athletes only; the forecasts equal those of the whole table."""
    import subprocess
    import sys

    _, out, _ = graph_run
    folder = out / "posterior" / "70.3"
    whole = load_artifact(folder)
    if whole.model.name != "forecast":
        pytest.skip("the published model is not the forecast model on this world")
    known = whole.model.athletes["athlete_hash"].iloc[:5].tolist()
    listed = [*known, "not-in-the-table"]
    part = load_artifact(folder, athletes=listed)
    assert sorted(part.model.athletes["athlete_hash"]) == sorted(known)
    assert part.model.table_season == whole.model.table_season
    rows = pd.DataFrame({"athlete_hash": listed, "gender": "M", "age_group": "35-39",
                         "event_name": "IRONMAN 70.3 Nowhere", "event_year": whole.model.table_season + 1})
    a, extra_a = whole.model.forecast_rows(rows)
    b, extra_b = part.model.forecast_rows(rows)
    np.testing.assert_array_equal(a.pred, b.pred)
    np.testing.assert_array_equal(a.p95, b.p95)
    np.testing.assert_array_equal(extra_a["history_races"], extra_b["history_races"])
    code = ("import sys; from racedayai_bayes.lib.outputs.artifacts import load_artifact; "
            f"load_artifact({str(folder)!r}, athletes=['x']); "
            "print(sorted(m for m in ('jax', 'numpyro', 'arviz', 'matplotlib') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]", done.stdout + done.stderr


def test_forecast_command_refuses_a_seed_model_artifact(graph_run, tmp_path, capsys):
    """A seed model keeps no history per athlete: it cannot forecast a start list, and says which artifact can."""
    from racedayai_bayes.cli import main

    _, out, _ = graph_run
    (seed,) = sorted((out / "posterior" / "seed_asof" / "70.3").glob("*.nc"))[-1:]
    path = tmp_path / "start.csv"
    path.write_text("athlete_hash,gender,age_group\na,M,30-34\n")
    code = main(["forecast", "--posterior", str(seed), "--event", "X", "--start-list", str(path),
                 "--output", str(tmp_path / "f.csv")])
    err = capsys.readouterr().err
    assert code == 1 and not (tmp_path / "f.csv").exists()
    assert "seed_asof, which cannot forecast a start list" in err, err
    # the forecast posterior to use instead, by its full path (it said "posterior/forecast/<distance>/<refit>.nc")
    newest = sorted((out / "posterior" / "forecast" / "70.3").glob("*.nc"))[-1]
    assert f"the newest forecast posterior of 70.3 that passed its checks is {newest}: " in err, err
    assert "Traceback" not in err and len([line for line in err.splitlines() if line.startswith("error:")]) == 1


def test_forecast_command_refuses_a_season_the_posterior_knows(graph_run, tmp_path, capsys):
    from racedayai_bayes.cli import main

    results, out, _ = graph_run
    if results["70.3"].output_for_node("published_model").published != "forecast":
        pytest.skip("the published model is not the forecast model on this world")
    _, race, season = _held_out_race(results)
    path = tmp_path / "start.csv"
    path.write_text("athlete_hash,gender,age_group\na,M,30-34\na,M,30-34\n")  # listed twice: forecast twice
    code = main(["forecast", "--posterior", str(out / "posterior" / "70.3"), "--event", race, "--start-list",
                 str(path), "--year", str(season - 1), "--output", str(tmp_path / "f.csv")])
    err = capsys.readouterr().err
    assert code == 1 and f"season {season - 1} is before {season}" in err and "Traceback" not in err
    code = main(["forecast", "--posterior", str(out / "posterior" / "70.3"), "--event", race, "--start-list",
                 str(path), "--output", str(tmp_path / "f.csv")])
    assert code == 0
    twice = pd.read_csv(tmp_path / "f.csv")
    assert len(twice) == 2 and twice["bayes_pred"].nunique() == 1
    assert "listed more than once" in capsys.readouterr().err


def test_forecast_command_reads_a_course_in_another_case_and_refuses_seasons_far_ahead(graph_run, tmp_path, capsys):
    """A known course written in another case, with extra spaces, is that course (with a note),
    not silently a new one; a season more than two ahead (a typo such as 20270) is an error."""
    from racedayai_bayes.cli import main
    from racedayai_bayes.lib.models.forecast.fit import last_forecast_season

    results, out, _ = graph_run
    if results["70.3"].output_for_node("published_model").published != "forecast":
        pytest.skip("the published model is not the forecast model on this world")
    rows, race, season = _held_out_race(results)
    path = tmp_path / "start.csv"
    rows[["athlete_hash", "gender", "age_group"]].head(20).to_csv(path, index=False)
    posterior = str(out / "posterior" / "70.3")

    def forecast(event, *more):
        code = main(["forecast", "--posterior", posterior, "--event", event, "--start-list", str(path),
                     "--output", str(tmp_path / "f.csv"), *more])
        return code, capsys.readouterr().err, (pd.read_csv(tmp_path / "f.csv") if code == 0 else None)

    code, _, exact = forecast(race)
    assert code == 0 and not exact["new_course"].any()
    spelled = "  " + "  ".join(race.upper().split()) + " "
    code, err, loose = forecast(spelled)
    assert code == 0 and f"read as {race!r}, the posterior's spelling of that course" in err
    assert not loose["new_course"].any() and (loose["event_name"] == race).all()
    pd.testing.assert_series_equal(loose["bayes_pred"], exact["bayes_pred"])
    code, err, new = forecast(race + " Two")
    assert code == 0 and new["new_course"].all() and f"known courses with a similar name: {race!r}" in err
    for year in (last_forecast_season() + 1, 20270):
        code, err, _ = forecast(race, "--year", str(year))
        assert code == 1 and f"season {year} is after {last_forecast_season()}" in err and "Traceback" not in err


def test_race_forecasts_asset_forecasts_a_start_list_file(graph_run, tmp_path):
    results, out, resources = graph_run
    if results["70.3"].output_for_node("published_model").published != "forecast":
        pytest.skip("the published model is not the forecast model on this world")
    rows, race, season = _held_out_race(results)
    folder = tmp_path / "start_lists"
    folder.mkdir()
    name = "im703-test-next"
    start = rows[["athlete_hash", "gender", "age_group"]].assign(event_name=race, event_year=season + 1, event_distance="70.3")
    write_csv_atomic(start, folder / f"{name}.csv")
    copy, res = _copy_of_outputs(graph_run, tmp_path)
    res = {**res, "paths": PipelinePaths(input_dir=res["paths"].input_dir, output_dir=str(copy), start_lists_dir=str(folder))}
    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions("start_lists", [name])
        result = dg.materialize([a for a in ALL_ASSETS if dg.AssetKey("race_forecasts") in a.keys], partition_key=name,
                                resources=res, instance=instance)
    assert result.success
    meta = _meta(result, "race_forecasts")
    table = pd.read_csv(copy / "forecasts" / f"{name}.csv")
    assert len(table) == len(rows) == meta["athletes"].value
    assert (table["event_year"] == season + 1).all() and (table["model"] == "forecast").all()
    assert meta["without_history"].value == int((table["history_races"] == 0).sum())
    assert meta["new_course"].value is False and meta["plot_field"].value.startswith("![")
    assert meta["model"].value == "forecast" and "posterior/forecast/70.3" in meta["artifact"].value


def test_a_csv_is_never_written_from_a_posterior_of_another_split(graph_run, tmp_path):
    """The published posterior was fitted for a backtest, then holdout_split was materialised
    again alone for the weekly refit: the CSV step refuses, and writes nothing anywhere.
    (Last in this module: it leaves a backtest's posteriors and a weekly split stored.)"""
    results, _, _ = graph_run
    copy, resources = _copy_of_outputs(graph_run, tmp_path)
    frame = _frame(results)
    season = int(frame.loc[frame["event_distance"] == "140.6", "event_year"].max()) - 1
    instance = dg.DagsterInstance.ephemeral()
    fitted = _materialize("140.6", resources, instance, selection=["holdout_split", *MODEL_ASSETS, "published_model"],
                          split={"holdout_season": season})
    assert fitted.success
    assert _materialize("140.6", resources, instance, selection=["holdout_split"]).success  # the weekly split
    before = {p.relative_to(copy): p.read_bytes() for p in copy.rglob("*") if p.is_file()}
    result = _materialize("140.6", resources, instance, selection=["bayesian_predictions"], raise_on_error=False)
    assert not result.success
    message = result.get_step_failure_events()[0].step_failure_data.error.message
    assert f"fitted for {copy / 'backtests' / str(season)}, but holdout_split is now a split for {copy}" in message
    assert "bayesian_predictions_140.6.csv is unchanged" in message
    assert {p.relative_to(copy): p.read_bytes() for p in copy.rglob("*") if p.is_file()} == before

    # the same output folder, other held-out rows: posteriors fitted on every row (holdout none),
    # then the weekly split alone. A CSV would call the latest season held out, though it was fitted
    fitted = _materialize("140.6", resources, instance, selection=["holdout_split", *MODEL_ASSETS, "published_model"],
                          split={"holdout": "none"})
    assert fitted.success
    assert _materialize("140.6", resources, instance, selection=["holdout_split"]).success
    before = {p.relative_to(copy): p.read_bytes() for p in copy.rglob("*") if p.is_file()}
    result = _materialize("140.6", resources, instance, selection=["bayesian_predictions"], raise_on_error=False)
    assert not result.success
    message = result.get_step_failure_events()[0].step_failure_data.error.message
    assert "fitted on another split than holdout_split's (rule 'none' there, 'latest_year' here)" in message
    assert {p.relative_to(copy): p.read_bytes() for p in copy.rglob("*") if p.is_file()} == before


@pytest.mark.slow
def test_a_backtest_does_not_move_when_later_seasons_change(small_inputs, tmp_path):
    """The honesty test through the whole graph: every finish time of the backtest's season
    and of later seasons changed by 5% changes nothing the backtest fits or forecasts with
    seed_asof or forecast: the same posterior draws, the same held-out forecasts (which so never
    see their own outcome), the same predictions in the CSV (its observed total_sec differs
    for the held-out season, as it should). seed_profile reads the upstream profiles and is not
    compared: its leak is documented. The profiles are left as they are: neither model reads them."""
    distance = "140.6"
    slower = tmp_path / "slower"
    slower.mkdir()
    for f in small_inputs.iterdir():
        shutil.copy(f, slower / f.name)
    races = pd.read_csv(small_inputs / "athlete_race.csv", dtype=str, keep_default_na=False)
    years = pd.to_numeric(races["event_year"], errors="coerce")
    season = int(years[races["event_distance"] == distance].max()) - 1
    later = (years >= season) & (races["total_sec"] != "")
    # 5% slower, or 5% faster near the 17 h cut-off: every time changes and no row leaves the frame
    t = pd.to_numeric(races.loc[later, "total_sec"])
    races.loc[later, "total_sec"] = (t * np.where(t * 1.05 < 61_000, 1.05, 0.95)).round(1).astype(str)
    races.to_csv(slower / "athlete_race.csv", index=False)
    assert later.sum() > 100

    outcomes = {}
    for name, inputs in (("as read", small_inputs), ("later seasons slower", slower)):
        resources = pipeline_resources(inputs, tmp_path / f"out {name}", tmp_path / f"storage {name}")
        result = _materialize(distance, resources, dg.DagsterInstance.ephemeral(), split={"holdout_season": season})
        assert result.success
        csv = pd.read_csv(tmp_path / f"out {name}" / "backtests" / str(season) / f"bayesian_predictions_{distance}.csv")
        outcomes[name] = (result, csv)
    (a, csv_a), (b, csv_b) = outcomes.values()
    assert _meta(a, "published_model")["published"].value == "forecast"
    forecasts = [c for c in csv_a.columns if c != "total_sec"]
    pd.testing.assert_frame_equal(csv_a[forecasts], csv_b[forecasts])
    held = csv_a["held_out"].to_numpy()
    assert (csv_a["event_year"] <= season).all() and held.sum() > 0
    assert not np.allclose(csv_a["total_sec"][held], csv_b["total_sec"][held])  # the outcomes did change
    np.testing.assert_array_equal(csv_a["total_sec"][~held], csv_b["total_sec"][~held])
    for model in ("seed_asof", "forecast"):
        ja, jb = (r.output_for_node(f"posterior_{model}") for r in (a, b))
        draws_a, draws_b = ((j.model.draws if model == "seed_asof" else j.model._draws()) for j in (ja, jb))
        assert draws_a.samples.keys() == draws_b.samples.keys()
        for site, values in draws_a.samples.items():
            np.testing.assert_array_equal(values, draws_b.samples[site], err_msg=f"{model} {site}")
        if model == "forecast":
            np.testing.assert_array_equal(ja.model.b, jb.model.b)  # every coefficient, courses and cells too
        np.testing.assert_array_equal(ja.holdout.prediction.pred, jb.holdout.prediction.pred)
        np.testing.assert_array_equal(ja.holdout.prediction.p95, jb.holdout.prediction.p95)


def test_a_refit_run_without_a_distance_fails_at_its_first_distance_step_saying_how_to_launch_one(graph_run, tmp_path):
    """`dagster job launch -j refit` has no partition option: such a run reached holdout_split
    with none, and failed there on Dagster's 'Cannot access partition_key for a non-partitioned
    run'. It now says what a refit run needs, and how to launch one."""
    from racedayai_bayes.defs.split import NO_DISTANCE

    _, resources = _copy_of_outputs(graph_run, tmp_path)
    result = dg.materialize(PIPELINE, selection=["holdout_split"], resources=resources,
                            run_config=refit_config(selection=["holdout_split"]),
                            instance=dg.DagsterInstance.ephemeral(), raise_on_error=False)
    assert not result.success
    (failure,) = result.get_step_failure_events()
    assert failure.step_failure_data.user_failure_data.description == NO_DISTANCE


def _model_frame_step(small_inputs, tmp_path, **kwargs):
    inputs = {dg.AssetKey(k) for k in ("athlete_race", "athlete_profile", "cluster_assignments", "model_frame", "athlete_seasons")}
    return dg.materialize(
        [a for a in ALL_ASSETS if set(a.keys) & inputs],
        resources=pipeline_resources(small_inputs, tmp_path / "out", tmp_path / "storage"), **kwargs)


def test_the_model_frame_step_stores_the_season_table_first_and_both_as_the_library_makes_them(small_inputs, tmp_path):
    """The season table is stored while the rows' as-of history is still being added (the step's
    work runs in a thread of its own); both values are those of model_frame_and_seasons."""
    from racedayai_bayes.lib.data.contracts import CLUSTER_FILE, PROFILE_FILE, RACE_FILE, read_clusters, read_profiles, read_races
    from racedayai_bayes.lib.data.frame import model_frame_and_seasons

    result = _model_frame_step(small_inputs, tmp_path)
    stored = [e.asset_key.path[-1] for e in result.get_asset_materialization_events()
              if e.asset_key.path[-1] in ("model_frame", "athlete_seasons")]
    assert stored == ["athlete_seasons", "model_frame"]
    frame, counts, seasons = model_frame_and_seasons(read_races(small_inputs / RACE_FILE).frame,
                                                     read_profiles(small_inputs / PROFILE_FILE).frame,
                                                     read_clusters(small_inputs / CLUSTER_FILE).frame)
    pd.testing.assert_frame_equal(result.output_for_node("model_frame", "model_frame"), frame)
    pd.testing.assert_frame_equal(result.output_for_node("model_frame", "athlete_seasons"), seasons)
    meta = result.asset_materializations_for_node("model_frame")
    by_key = {m.asset_key.path[-1]: m.metadata for m in meta}
    assert by_key["model_frame"]["rows"].value == counts["rows_out"] == len(frame)
    assert by_key["athlete_seasons"]["rows"].value == len(seasons)


def test_a_failure_after_the_season_table_is_stored_fails_the_step_with_its_error(small_inputs, tmp_path, monkeypatch):
    """Should the as-of history fail after the season table was handed over, the step fails with
    that error (not a hang, not a success), and model_frame is not stored."""
    from racedayai_bayes.lib.data import frame as fr

    def broken(*args, **kwargs):
        raise RuntimeError("an injected bug in the as-of history")

    monkeypatch.setattr(fr, "add_history", broken)
    result = _model_frame_step(small_inputs, tmp_path, raise_on_error=False)
    assert not result.success
    failure = next(e for e in result.get_step_failure_events() if e.step_key == "model_frame")
    assert "an injected bug in the as-of history" in str(failure.step_failure_data.error)
    stored = {e.asset_key.path[-1] for e in result.get_asset_materialization_events()}
    assert "athlete_seasons" in stored and "model_frame" not in stored


def _frame_reuse(small_inputs, tmp_path, monkeypatch):
    """Input files of their own, an instance, and two calls: build the inputs' assets and the
    model frame, and ask whether the stored frame is current."""
    from upath import UPath

    from racedayai_bayes.defs import inputs as defs_inputs

    monkeypatch.setattr(defs_inputs.sources, "RECENT_S", 0.0)  # the copied files are seconds old
    folder = tmp_path / "inputs"
    shutil.copytree(small_inputs, folder)
    storage = tmp_path / "storage"
    instance = dg.DagsterInstance.ephemeral()
    paths = PipelinePaths(input_dir=str(folder), output_dir=str(tmp_path / "out"))
    frame_assets = [a for a in ALL_ASSETS if set(a.keys) & {dg.AssetKey(k) for k in (
        "athlete_race", "athlete_profile", "cluster_assignments", "model_frame", "athlete_seasons")}]

    def build(**kwargs):
        return dg.materialize(frame_assets, resources=pipeline_resources(folder, tmp_path / "out", storage),
                              instance=instance, **kwargs)

    def current(where=None):
        return defs_inputs.stored_frame_if_current(instance, paths, UPath(where or storage))

    return folder, storage, instance, build, current


def test_a_stored_model_frame_is_reused_only_while_its_inputs_code_and_files_are_the_same(small_inputs, tmp_path, monkeypatch):
    """stored_frame_if_current names the run whose stored frame a refit may reuse, and nothing
    once the code changes, or a stored value is missing, another file, in another folder or
    in an object store, or the frame and season table are of two runs."""
    from racedayai_bayes.defs import inputs as defs_inputs
    from racedayai_bayes.defs.resources import STORED_FILE
    from racedayai_bayes.lib.outputs import stored as stored_values

    folder, storage, instance, build, current = _frame_reuse(small_inputs, tmp_path, monkeypatch)
    assert current() is None  # nothing stored yet
    first = build()
    found = current()
    assert found is not None and found.run_id == first.run_id
    for key in defs_inputs.FRAME_ASSETS:
        mat = instance.get_latest_materialization_event(dg.AssetKey(key)).asset_materialization
        assert mat.tags["dagster/code_version"] == defs_inputs.CODE_VERSION
        # the versions of the files the values were read from, as they are now
        assert mat.metadata[defs_inputs.INPUT_VERSIONS].value == {
            asset: defs_inputs.sources.file_version(folder / name) for asset, name in defs_inputs.INPUT_FILES.items()}
        assert mat.metadata[STORED_FILE].value.startswith(f"{storage / key}.pkl inode ")
        # the input's version is not left on the frames downstream steps read
        assert defs_inputs.SOURCE_VERSION not in stored_values.load(storage / f"{key}.pkl").attrs
    # no other stored value is identified: only these two are ever reused
    for key in defs_inputs.INPUT_FILES:
        assert STORED_FILE not in instance.get_latest_materialization_event(dg.AssetKey(key)).asset_materialization.metadata

    with monkeypatch.context() as m:  # another version of the code
        m.setattr(defs_inputs, "CODE_VERSION", "another")
        assert current() is None
    assert current("memory://storage") is None  # an object store
    other = tmp_path / "other-storage"
    shutil.copytree(storage, other)  # the same files' copies, in another folder
    assert current(other) is None

    for key in defs_inputs.FRAME_ASSETS:
        value = storage / f"{key}.pkl"
        value.rename(tmp_path / "aside.pkl")
        assert current() is None, key  # missing
        (tmp_path / "aside.pkl").rename(value)
        assert current() == found, key  # moved back: the same file
    runs = {first.run_id}
    for key in defs_inputs.FRAME_ASSETS:
        value = storage / f"{key}.pkl"
        shutil.copyfile(value, tmp_path / "copy.pkl")
        os.replace(tmp_path / "copy.pkl", value)  # the same bytes in another file, as another run's write
        assert current() is None, key
        again = build()
        assert current().run_id == again.run_id not in runs
        runs.add(again.run_id)

    build(selection=["model_frame"])  # the season table of one run and the frame of another: not a pair
    assert current() is None


@pytest.mark.parametrize("name", ["athlete_race.csv", "athlete_profile.csv", "cluster_assignments.csv"])
def test_a_stored_model_frame_is_not_reused_once_an_input_file_is_written_again(small_inputs, tmp_path, monkeypatch, name):
    folder, storage, instance, build, current = _frame_reuse(small_inputs, tmp_path, monkeypatch)
    build()
    assert current() is not None
    time.sleep(0.03)  # a tick of the clock that stamps the file
    path = folder / name
    path.write_bytes(path.read_bytes())  # the same bytes, written again
    assert current() is None
    build()  # read again: then current
    assert current() is not None


def test_the_frame_records_the_versions_of_the_values_it_read_not_of_the_latest_materialisations(
        small_inputs, tmp_path, monkeypatch):
    """Dagster's provenance tags name each input's latest materialisation when the step starts,
    whichever run stored the value the step then loads (two refits at once): the frame records
    the version each loaded value carries instead, and is not reused when that is not the file's."""
    from racedayai_bayes.defs import inputs as defs_inputs
    from racedayai_bayes.lib.outputs import stored as stored_values

    folder, storage, instance, build, current = _frame_reuse(small_inputs, tmp_path, monkeypatch)
    build()
    races = stored_values.load(storage / "athlete_race.pkl")
    races.attrs[defs_inputs.SOURCE_VERSION] = "the version of a file another refit read"
    stored_values.dump_file(races, tmp_path / "races.pkl")  # not over the file its arrays are mapped from
    os.replace(tmp_path / "races.pkl", storage / "athlete_race.pkl")  # as a concurrent run would have stored it
    build(selection=["model_frame", "athlete_seasons"])
    tags = instance.get_latest_materialization_event(dg.AssetKey("model_frame")).asset_materialization.tags
    assert tags["dagster/input_data_version/athlete_race"] == defs_inputs.sources.file_version(folder / "athlete_race.csv")
    assert current() is None
