"""The asset graph materialised in process on a small simulated world."""

import shutil
from pathlib import Path

import dagster as dg
import numpy as np
import pandas as pd
import pytest

from racedayai_bayes.definitions import defs
from racedayai_bayes.defs.resources import PipelinePaths
from racedayai_bayes.lib.outputs.artifacts import LATEST, load_artifact
from racedayai_bayes.lib.outputs.io import write_csv_atomic
from racedayai_bayes.lib.models.seed.predict import PREDICTION_COLUMNS, PREDICTION_INTERVAL_COLUMNS

from .conftest import FAST_FIT, pipeline_resources

ALL_ASSETS = [a for a in defs.assets]
CHECK_NAMES = {"rhat_max", "ess_bulk_min", "divergences", "predictive_coverage", "prediction_drift"}

def _materialize(distance, resources, fit, instance, selection=None, raise_on_error=True):
    return dg.materialize(
        ALL_ASSETS,
        selection=selection,
        partition_key=distance,
        resources=resources,
        run_config={"ops": {"posterior": {"config": fit}}},
        instance=instance,
        raise_on_error=raise_on_error,
    )


@pytest.fixture(scope="module")
def graph_run(small_inputs, tmp_path_factory):
    """Both distances materialised once: the first run builds everything, the second refits."""
    out = tmp_path_factory.mktemp("outputs")
    resources = pipeline_resources(small_inputs, out, tmp_path_factory.mktemp("storage"))
    instance = dg.DagsterInstance.ephemeral()
    results = {
        "70.3": _materialize("70.3", resources, FAST_FIT, instance),
        "140.6": _materialize(
            "140.6", resources, FAST_FIT, instance,
            selection=["posterior", "bayesian_predictions", "bayesian_posterior_means"],
        ),
    }
    return results, out, resources


def test_whole_graph_writes_both_prediction_csvs_and_means(graph_run):
    results, out, _ = graph_run
    assert all(r.success for r in results.values())
    frame = results["70.3"].output_for_node("model_frame")
    for distance in ("70.3", "140.6"):
        table = pd.read_csv(out / f"bayesian_predictions_{distance}.csv", dtype={"event_distance": str})
        # the contract's columns unchanged and first, the predictive quantiles appended
        assert tuple(table.columns) == PREDICTION_COLUMNS + PREDICTION_INTERVAL_COLUMNS
        assert (table["bayes_p05"] < table["bayes_p50"]).all() and (table["bayes_p50"] < table["bayes_p95"]).all()
        inside = table["total_sec"].between(table["bayes_p05"], table["bayes_p95"]).mean()
        assert 0.85 <= inside <= 0.95, inside
        expected = frame[frame["event_distance"] == distance]
        assert len(table) == len(expected)
        assert (table["event_distance"] == distance).all()
        assert table["total_sec"].tolist() == expected["total_sec"].tolist()
        assert table["bayes_std"].gt(0).all()
        # posterior-mean predictions track the truth far better than the distance mean does
        mae = (table["bayes_pred"] - table["total_sec"]).abs().mean()
        assert mae < (table["total_sec"] - table["total_sec"].mean()).abs().mean()
    means = pd.read_csv(out / "bayesian_posterior_means.csv", dtype={"distance": str})
    assert means["distance"].tolist() == ["70.3", "140.6"]
    assert means.columns[0] == "distance"
    assert {"mu_global", "sigma", "sigma_age", "mu_gender_0", "mu_gender_1", "mu_age_0"} <= set(means.columns)


def test_each_distance_judged_by_five_passing_checks(graph_run):
    results, _, _ = graph_run
    assert len(CHECK_NAMES) == 5
    for distance, result in results.items():
        evals = result.get_asset_check_evaluations()
        # each of the five checks evaluated exactly once, on this distance's posterior
        assert sorted(e.check_name for e in evals) == sorted(CHECK_NAMES)
        assert {e.asset_key.to_user_string() for e in evals} == {"posterior"}
        for e in evals:
            assert e.passed, (distance, e.check_name, e.description)
            assert e.metadata["distance"].value == distance
            assert {"value", "threshold", "worst"} <= set(e.metadata)
        rhat = next(e for e in evals if e.check_name == "rhat_max")
        assert rhat.metadata["value"].value <= 1.01


def test_posterior_metadata_reports_summary_analysis_and_predictive_checks(graph_run):
    results, _, _ = graph_run
    mats = results["70.3"].asset_materializations_for_node("posterior")
    meta = mats[0].metadata
    summary = meta["summary"].value
    assert "| parameter | mean | sd | p5 | p95 | ess_bulk | r_hat |" in summary
    assert "beta_fitness" in summary and "mu_age[0]" in summary
    assert "Male" in meta["analysis"].value and "beta_experience" in meta["analysis"].value
    assert 0.85 <= meta["coverage_90"].value <= 0.95
    assert meta["engine"].value == "exact"
    # the latest event year is held out, never fitted
    frame = results["70.3"].output_for_node("model_frame")
    rows = frame[frame["event_distance"] == "70.3"]
    latest = int(rows["event_year"].max())
    assert meta["rows_held_out"].value == int((rows["event_year"] == latest).sum()) > 0
    assert meta["rows_fitted"].value + meta["rows_held_out"].value == meta["rows_available"].value
    assert str(latest) in meta["holdout"].value
    # held-out metrics beside the notebook's in-sample ones
    for name in ("mae_min", "r2", "coverage_90"):
        assert np.isfinite(meta[f"holdout_{name}"].value) and np.isfinite(meta[name].value)
    evaluation = meta["evaluation"].value
    assert "in-sample (the notebook's)" in evaluation and "held-out" in evaluation and str(latest) in evaluation
    # the plots, as markdown images
    for name in ("plot_scale_ranks", "plot_group_effects", "plot_predicted_vs_observed", "plot_coverage_by_decile"):
        assert meta[name].value.startswith("![") and "data:image/png;base64," in meta[name].value, name


def test_coverage_check_judges_the_held_out_rows(graph_run):
    results, _, _ = graph_run
    for result in results.values():
        meta = result.asset_materializations_for_node("posterior")[0].metadata
        check = next(e for e in result.get_asset_check_evaluations() if e.check_name == "predictive_coverage")
        assert check.metadata["value"].value == meta["holdout_coverage_90"].value
        assert check.metadata["judged_on"].value == "held-out"
        assert "held-out rows" in check.description


def test_each_refit_saves_an_artifact_and_its_csv_moves_latest(graph_run):
    results, out, _ = graph_run
    for distance, result in results.items():
        meta = result.asset_materializations_for_node("posterior")[0].metadata
        path = out / "posterior" / distance / (out / "posterior" / distance / LATEST).read_text().strip()
        assert str(path) == meta["artifact"].value
        csv_meta = result.asset_materializations_for_node("bayesian_predictions")[0].metadata
        assert csv_meta["posterior_artifact"].value == str(path)
        stored = result.output_for_node("posterior")
        art = load_artifact(out / "posterior" / distance)  # a folder resolves through `latest`
        assert art.path == path and art.distance == distance and art.encoding == stored.encoding
        for site, values in stored.draws.samples.items():
            np.testing.assert_array_equal(art.draws.samples[site], values)
        np.testing.assert_array_equal(art.draws.diverging, stored.draws.diverging)

        import arviz as az

        idata = az.from_netcdf(str(path))
        assert {"posterior", "sample_stats", "observed_data", "posterior_predictive", "constant_data"} <= set(idata.groups())
        assert list(idata.posterior["mu_age"].coords["age_group"].values) == list(stored.encoding.age_levels)
        held = meta["rows_held_out"].value
        pp = idata.posterior_predictive["total_sec_holdout"]
        assert pp.dims == ("chain", "draw", "holdout_row") and pp.shape[2] == min(held, 10_000)
        assert idata.observed_data["total_sec"].shape == (meta["rows_fitted"].value,)
        np.testing.assert_array_equal(
            idata.observed_data["total_sec_holdout"].values, stored.holdout_rows["total_sec"].to_numpy(float)
        )
        assert int(idata.constant_data["event_year"].max()) == int(idata.constant_data["event_year"].min())
        assert "racedayai_settings" in idata.attrs and "racedayai_holdout" in idata.attrs


def test_predict_command_reproduces_the_csv_from_the_artifact_alone(graph_run, tmp_path):
    from racedayai_bayes.cli import main

    results, out, _ = graph_run
    frame = results["70.3"].output_for_node("model_frame")
    rows_csv = write_csv_atomic(frame[frame["event_distance"] == "70.3"], tmp_path / "rows.csv")
    artifact = results["70.3"].asset_materializations_for_node("posterior")[0].metadata["artifact"].value
    code = main(["predict", "--posterior", artifact, "--input", str(rows_csv), "--output", str(tmp_path / "p.csv")])
    assert code == 0
    assert (tmp_path / "p.csv").read_bytes() == (out / "bayesian_predictions_70.3.csv").read_bytes()


def test_predict_command_refuses_rows_of_the_other_distance(graph_run, tmp_path, capsys):
    from racedayai_bayes.cli import main

    results, out, _ = graph_run
    frame = results["70.3"].output_for_node("model_frame")
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


def test_drift_check_warns_above_the_threshold_without_blocking(graph_run, tmp_path):
    """A refit compared with the published one: a 0.01 s threshold makes any shift a WARN."""
    copy, resources = _copy_of_outputs(graph_run, tmp_path)
    before = (copy / "posterior" / "70.3" / LATEST).read_text()
    result = _materialize(
        "70.3", resources, {**FAST_FIT, "seed": 5, "drift_threshold_sec": 0.01}, dg.DagsterInstance.ephemeral(),
        selection=["posterior", "bayesian_predictions"],
    )
    assert result.success  # WARN never blocks
    drift = next(e for e in result.get_asset_check_evaluations() if e.check_name == "prediction_drift")
    assert not drift.passed and drift.severity == dg.AssetCheckSeverity.WARN
    # another seed moves the posterior means by Monte Carlo error only: seconds, not minutes
    assert 0.01 < drift.metadata["value"].value < 120
    assert "previous refit" in drift.description
    assert (copy / "posterior" / "70.3" / LATEST).read_text() != before  # its CSV was written: published


def test_failed_blocking_check_keeps_previous_csv(graph_run, tmp_path):
    """Chains far too short fail the ESS check; the distance's CSV must stay as it was."""
    _, out, resources = graph_run
    csv = out / "bayesian_predictions_70.3.csv"
    before = csv.read_bytes()
    result = _materialize(
        "70.3", resources,
        {"engine": "rowwise", "num_warmup": 20, "num_samples": 20, "subsample": 500, "eval_rows": 500},
        dg.DagsterInstance.ephemeral(),
        selection=["posterior", "bayesian_predictions"],
        raise_on_error=False,
    )
    assert not result.success
    failed = {e.check_name for e in result.get_asset_check_evaluations() if not e.passed}
    assert "ess_bulk_min" in failed
    assert result.asset_materializations_for_node("bayesian_predictions") == []
    assert csv.read_bytes() == before
    # the failed refit is saved for inspection, but `latest` still names the published one
    meta = result.asset_materializations_for_node("posterior")[0].metadata
    assert Path(meta["artifact"].value).exists()
    assert (out / "posterior" / "70.3" / LATEST).read_text().strip() != meta["artifact"].value.rsplit("/", 1)[1]


def test_bad_input_fails_with_file_and_column(small_inputs, tmp_path):
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    for f in small_inputs.iterdir():
        (inputs / f.name).write_bytes(f.read_bytes())
    races = pd.read_csv(inputs / "athlete_race.csv", dtype=str).drop(columns=["total_sec"])
    races.to_csv(inputs / "athlete_race.csv", index=False)
    result = dg.materialize(
        [a for a in ALL_ASSETS if a.key == dg.AssetKey("athlete_race")],
        resources=pipeline_resources(inputs, tmp_path / "out", tmp_path / "storage"),
        raise_on_error=False,
    )
    assert not result.success
    failure = result.get_step_failure_events()[0].step_failure_data.error
    assert "athlete_race.csv" in failure.message and "total_sec" in failure.message


def test_unreadable_latest_artifact_skips_drift_and_the_refit_goes_on(graph_run, tmp_path):
    copy, resources = _copy_of_outputs(graph_run, tmp_path)
    folder = copy / "posterior" / "70.3"
    (folder / (folder / LATEST).read_text().strip()).write_bytes(b"truncated")
    instance = dg.DagsterInstance.ephemeral()
    result = _materialize("70.3", resources, FAST_FIT, instance, selection=["posterior"])
    assert result.success
    drift = next(e for e in result.get_asset_check_evaluations() if e.check_name == "prediction_drift")
    assert drift.passed and drift.description == "no previous refit to compare with"
    logs = [e.user_message for e in instance.all_logs(result.run_id)]
    assert any("drift check skipped" in m and "not a readable NetCDF" in m for m in logs)


def test_artifact_that_cannot_be_written_fails_the_refit_and_keeps_the_csv(graph_run, tmp_path):
    copy, resources = _copy_of_outputs(graph_run, tmp_path)
    shutil.rmtree(copy / "posterior" / "140.6")
    (copy / "posterior" / "140.6").write_text("a file where the artifact folder should be")
    before = (copy / "bayesian_predictions_140.6.csv").read_bytes()
    result = _materialize(
        "140.6", resources, FAST_FIT, dg.DagsterInstance.ephemeral(),
        selection=["posterior", "bayesian_predictions"], raise_on_error=False,
    )
    assert not result.success
    error = result.get_step_failure_events()[0].step_failure_data.error
    assert "posterior/140.6" in error.message and "previous file is unchanged" in error.message
    assert (copy / "bayesian_predictions_140.6.csv").read_bytes() == before


def test_a_posterior_materialised_alone_does_not_move_latest(graph_run, tmp_path):
    """`latest` names the posterior of the CSV on disk: a refit whose CSV is not written leaves it."""
    copy, resources = _copy_of_outputs(graph_run, tmp_path)
    before = (copy / "posterior" / "140.6" / LATEST).read_text()
    result = _materialize("140.6", resources, {**FAST_FIT, "seed": 8}, dg.DagsterInstance.ephemeral(), selection=["posterior"])
    assert result.success
    new = Path(result.asset_materializations_for_node("posterior")[0].metadata["artifact"].value)
    assert new.exists() and new.name != before.strip()
    assert (copy / "posterior" / "140.6" / LATEST).read_text() == before
