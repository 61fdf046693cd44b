import subprocess
import sys

from racedayai_bayes.definitions import defs

from .conftest import REPO


def test_definitions_hold_the_designed_graph():
    keys = {k.to_user_string() for k in defs.resolve_asset_graph().get_all_asset_keys()}
    assert keys == {
        "athlete_race", "athlete_profile", "cluster_assignments", "model_frame",
        "posterior", "bayesian_predictions", "bayesian_posterior_means",
    }
    job = defs.resolve_job_def("refit")
    assert job.partitions_def.get_partition_keys() == ["70.3", "140.6"]
    checks = {k.name for k in defs.resolve_asset_graph().asset_check_keys}
    assert checks == {"rhat_max", "ess_bulk_min", "divergences", "predictive_coverage", "prediction_drift"}
    assert {s.name for s in defs.sensors} == {"refit_failure_alert", "check_warning_alert", "dead_run_reaper"}


def test_executor_runs_at_most_two_steps_on_the_cpu():
    job = defs.resolve_job_def("refit")
    assert job.executor_def.name == "multiprocess"
    assert defs.executor.config_schema is not None
    script = "import racedayai_bayes.definitions, jax; print(jax.default_backend())"
    env = {k: v for k, v in __import__("os").environ.items() if k != "JAX_PLATFORMS"}
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, check=True)
    assert out.stdout.strip() == "cpu"


def test_dagster_definitions_validate():
    out = subprocess.run(
        [sys.executable, "-m", "dagster", "definitions", "validate", "-m", "racedayai_bayes.definitions"],
        capture_output=True, text=True, cwd=REPO,
    )
    assert out.returncode == 0, out.stderr[-2000:]
