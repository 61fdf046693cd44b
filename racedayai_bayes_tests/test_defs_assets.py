"""The asset graph materialised in process on a small simulated world."""

import dagster as dg
import pandas as pd
import pytest

from racedayai_bayes.definitions import defs
from racedayai_bayes.defs.resources import AtomicPickleIOManagerFactory, PipelinePaths
from racedayai_bayes.lib.predict import PREDICTION_COLUMNS

from .conftest import FAST_FIT

ALL_ASSETS = [a for a in defs.assets]
CHECK_NAMES = {"rhat_max", "ess_bulk_min", "divergences", "predictive_coverage"}


def _resources(inputs, outputs, storage):
    return {
        "paths": PipelinePaths(input_dir=str(inputs), output_dir=str(outputs)),
        "io_manager": AtomicPickleIOManagerFactory(base_dir=str(storage)),
    }


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
    resources = _resources(small_inputs, out, tmp_path_factory.mktemp("storage"))
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
        assert tuple(table.columns) == PREDICTION_COLUMNS
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


def test_each_distance_judged_by_four_passing_checks(graph_run):
    results, _, _ = graph_run
    for distance, result in results.items():
        evals = result.get_asset_check_evaluations()
        assert {e.check_name for e in evals} == CHECK_NAMES
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
    assert meta["rows_fitted"].value == meta["rows_available"].value


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


def test_bad_input_fails_with_file_and_column(small_inputs, tmp_path):
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    for f in small_inputs.iterdir():
        (inputs / f.name).write_bytes(f.read_bytes())
    races = pd.read_csv(inputs / "athlete_race.csv", dtype=str).drop(columns=["total_sec"])
    races.to_csv(inputs / "athlete_race.csv", index=False)
    result = dg.materialize(
        [a for a in ALL_ASSETS if a.key == dg.AssetKey("athlete_race")],
        resources=_resources(inputs, tmp_path / "out", tmp_path / "storage"),
        raise_on_error=False,
    )
    assert not result.success
    failure = result.get_step_failure_events()[0].step_failure_data.error
    assert "athlete_race.csv" in failure.message and "total_sec" in failure.message
