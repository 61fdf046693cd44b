"""End to end: `racedayai-bayes refit` on the project's instance configuration.

Runs go through the real dagster.yaml in a temporary DAGSTER_HOME, with the multiprocess
executor spawning step processes, so the runs are visible to the UI afterwards.
"""

import os
import subprocess
import sys

import dagster as dg
import pandas as pd
import pytest

pytestmark = pytest.mark.slow


def _refit(args, home, inputs, outputs):
    env = {
        **os.environ,
        "DAGSTER_HOME": str(home),
        "RACEDAYAI_INPUT_DIR": str(inputs),
        "RACEDAYAI_OUTPUT_DIR": str(outputs),
    }
    env.pop("JAX_PLATFORMS", None)  # the package itself must pin JAX to the CPU
    return subprocess.run(
        [sys.executable, "-m", "racedayai_bayes.cli", "refit", *args],
        capture_output=True, text=True, env=env, timeout=900,
    )


def test_refit_both_distances_on_the_instance(dagster_home, small_inputs, tmp_path):
    out = tmp_path / "outputs"
    proc = _refit(["--warmup", "300", "--samples", "1000"], dagster_home, small_inputs, out)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    for name in ("bayesian_predictions_70.3.csv", "bayesian_predictions_140.6.csv", "bayesian_posterior_means.csv"):
        assert (out / name).stat().st_size > 0
    assert len(pd.read_csv(out / "bayesian_posterior_means.csv")) == 2
    assert "check rhat_max" in proc.stdout and "FAIL" not in proc.stdout

    instance = dg.DagsterInstance.from_config(str(dagster_home))
    runs = instance.get_runs()
    assert sorted(r.tags["dagster/partition"] for r in runs) == ["140.6", "70.3"]
    assert all(r.status == dg.DagsterRunStatus.SUCCESS for r in runs)
    for run in runs:
        for entry in instance.all_logs(run.run_id, of_type=dg.DagsterEventType.ASSET_MATERIALIZATION):
            mat = entry.dagster_event.event_specific_data.materialization
            if mat.asset_key == dg.AssetKey("posterior"):
                # fitted in a spawned step process, which must also run JAX on the CPU
                assert mat.metadata["jax_backend"].value == "cpu"
    logs = [e.user_message for e in instance.all_logs(runs[0].run_id)]
    assert any("warmup" in m for m in logs) and any("sampling" in m for m in logs)


def test_refit_exits_non_zero_and_keeps_outputs_when_a_check_fails(dagster_home, small_inputs, tmp_path):
    out = tmp_path / "outputs"
    out.mkdir()
    previous = out / "bayesian_predictions_70.3.csv"
    previous.write_text("athlete_hash,event_distance,event_year,total_sec,bayes_pred,bayes_std\n")
    proc = _refit(
        ["--distance", "70.3", "--engine", "rowwise", "--warmup", "20", "--samples", "20"],
        dagster_home, small_inputs, out,
    )
    assert proc.returncode == 1
    assert "FAIL (ERROR)" in proc.stdout and "ess_bulk_min" in proc.stdout
    assert previous.read_text().count("\n") == 1
