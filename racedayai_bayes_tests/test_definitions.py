import os
import subprocess
import sys
from pathlib import Path

import dagster as dg

from racedayai_bayes.definitions import defs

from .conftest import REPO


def test_definitions_hold_the_designed_graph():
    graph = defs.resolve_asset_graph()
    keys = {k.to_user_string() for k in graph.get_all_asset_keys()}
    assert keys == {
        "athlete_race", "athlete_profile", "cluster_assignments", "model_frame", "athlete_seasons",
        "holdout_split", "posterior_seed_profile", "posterior_seed_asof", "posterior_forecast",
        "published_model", "bayesian_predictions", "bayesian_posterior_means", "forecast_posterior_means",
        "race_forecasts",
    }
    job = defs.resolve_job_def("refit")
    assert job.partitions_def.get_partition_keys() == ["70.3", "140.6"]
    # the refit is everything but the race-day forecasts, which have their own job and partitions
    assert {k.to_user_string() for k in job.asset_layer.executable_asset_keys} == keys - {"race_forecasts"}
    assert set(defs.resolve_job_def("forecast_start_list").asset_layer.executable_asset_keys) == {dg.AssetKey("race_forecasts")}
    # only the forecast model reads the per-(athlete, season) table (for its artifact's side table)
    for name, parents in (("posterior_seed_profile", {"holdout_split"}), ("posterior_seed_asof", {"holdout_split"}),
                          ("posterior_forecast", {"holdout_split", "athlete_seasons"})):
        assert {k.to_user_string() for k in graph.get(dg.AssetKey(name)).parent_keys} == parents, name
    checks = {(k.asset_key.to_user_string(), k.name) for k in graph.asset_check_keys}
    harness = {"predictive_coverage", "coverage_by_decile", "prediction_drift", "rhat_max", "ess_bulk_min"}
    assert checks == {
        *(("posterior_seed_profile", c) for c in harness | {"divergences", "proposal_khat"}),
        *(("posterior_seed_asof", c) for c in harness | {"divergences", "proposal_khat"}),
        *(("posterior_forecast", c) for c in harness | {"proposal_khat"}),
        *(("published_model", c) for c in ("publishable", "published_coverage", "published_coverage_by_decile",
                                           "published_model_change")),
    }
    # the blocking gate sits on what is published, not on each model
    blocking = {(s.asset_key.to_user_string(), s.name) for a in defs.assets for s in getattr(a, "check_specs", []) if s.blocking}
    assert blocking == {("published_model", "publishable"), ("published_model", "published_coverage")}
    # every check keeps a status per distance, as its asset does (a Dagster 1.13 preview: README)
    from racedayai_bayes.defs.partitions import distance_partitions

    specs = [s for a in defs.assets for s in getattr(a, "check_specs", [])]
    assert specs and all(s.partitions_def == distance_partitions for s in specs)
    # every model's posterior feeds the comparison, and the CSV is downstream of it only
    parents = {k.to_user_string() for k in graph.get(dg.AssetKey("published_model")).parent_keys}
    assert parents == {"holdout_split", "posterior_seed_profile", "posterior_seed_asof", "posterior_forecast"}
    assert {k.to_user_string() for k in graph.get(dg.AssetKey("bayesian_predictions")).parent_keys} == {"published_model", "holdout_split"}
    assert {s.name for s in defs.sensors} == {"refit_failure_alert", "check_warning_alert", "dead_run_reaper",
                                              "start_list_sensor", "republished_forecasts"}
    # the UI shows what each sensor and the schedule do (Dagster does not read their docstrings)
    for item in (*defs.sensors, *defs.schedules):
        assert item.description and len(item.description) > 40, item.name


def test_executor_runs_at_most_three_step_processes_per_run():
    job = defs.resolve_job_def("refit")
    assert job.executor_def.name == "multiprocess"
    # the configured executor's effective config, as a run gets it without run config
    resolved = job.executor_def.config_schema.resolve_config({})
    assert resolved.success, resolved.errors
    config = resolved.value["config"]
    # three processes, but at most two steps that take a CPU slot (as many as the slots of a
    # 2-core machine): the third process is for a step that takes none
    assert config["max_concurrent"] == 3
    assert config["tag_concurrency_limits"] == [{"key": "racedayai/cpu_slot", "limit": 2}]
    for name, node in job.graph.node_dict.items():
        takes_slot = "cpu" in node.definition.required_resource_keys
        assert (node.definition.tags.get("racedayai/cpu_slot") == "held") == takes_slot, name
    preload = config["start_method"]["forkserver"]["preload_modules"]
    # the garbage collector off first (step_gc), the steps' page choice (step_pages), then
    # Dagster's executor (in the list, so that Dagster does not put it first), the code
    # location, ..., and the freeze last (step_warmup)
    assert preload[:4] == ["racedayai_bayes.step_gc", "racedayai_bayes.step_pages", "dagster._core.executor.multiprocess",
                           "racedayai_bayes.definitions"]
    assert preload[-1] == "racedayai_bayes.step_warmup" and {"arviz", "scipy.stats"} <= set(preload)
    # of the ready posterior steps the longest, the forecast model's, starts first
    plan = {n.name: int(n.tags.get("dagster/priority", 0)) for n in job.graph.node_dict.values()}
    assert plan["posterior_forecast"] > max(plan["posterior_seed_asof"], plan["posterior_seed_profile"])
    script = "import racedayai_bayes.definitions, jax; print(jax.default_backend())"
    env = {k: v for k, v in os.environ.items() if k != "JAX_PLATFORMS"}
    out = subprocess.run([sys.executable, "-c", script],
                         capture_output=True, text=True, env=env, check=True)
    assert out.stdout.strip() == "cpu"


def test_the_code_location_imports_no_sampler_and_no_plotting_library():
    """The command line, the code server and the daemon import the code location but never
    fit or plot: JAX, NumPyro, ArviZ and Matplotlib (seconds of imports and hundreds of MB
    per process) are imported by the steps that need them, which fork from a server that
    has preloaded ArviZ and Matplotlib (racedayai_bayes/step_server.py). JAX and NumPyro are
    preloaded by nobody: only the NUTS engines use them, and the default engines are numpy."""
    from racedayai_bayes.step_server import STEP_PRELOAD

    heavy = ("jax", "numpyro", "arviz", "matplotlib")
    script = ("import sys, racedayai_bayes.cli, racedayai_bayes.definitions; "
              f"print(','.join(m for m in {heavy!r} if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""
    # ... the step server preloads what every posterior step uses, and not JAX
    preload = "; ".join(f"import {m}" for m in STEP_PRELOAD)
    script = f"import sys; {preload}; print(','.join(m for m in {heavy!r} if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "arviz,matplotlib"


def test_processes_started_by_the_package_return_freed_large_arrays_to_the_system():
    """Step servers and steps start with glibc's mmap threshold fixed at 4 MB (see
    racedayai_bayes/__init__.py), unless the user chose a value."""
    child = "import os; print(os.environ.get('MALLOC_MMAP_THRESHOLD_'))"
    script = f"import racedayai_bayes, subprocess, sys; print(subprocess.run([sys.executable, '-c', {child!r}], capture_output=True, text=True).stdout.strip())"
    env = {k: v for k, v in os.environ.items() if k != "MALLOC_MMAP_THRESHOLD_"}
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, check=True)
    assert out.stdout.strip() == str(4 << 20)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         env={**env, "MALLOC_MMAP_THRESHOLD_": "65536"}, check=True)
    assert out.stdout.strip() == "65536"


def _dg_check_defs(cwd: Path, env: dict | None = None) -> subprocess.CompletedProcess:
    dg = Path(sys.executable).with_name("dg")
    env = {**os.environ, "VIRTUAL_ENV": str(Path(sys.executable).parents[1]), **(env or {})}
    return subprocess.run([str(dg), "check", "defs", "--log-level", "info"], capture_output=True, text=True,
                          cwd=cwd, env=env, timeout=300)


def test_dg_check_defs_validates_this_code_location(tmp_path):
    """`make test` ends with `dg check defs`: it must load the code location pyproject.toml names."""
    proc = _dg_check_defs(REPO, {"DAGSTER_HOME": str(tmp_path)})
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output[-3000:]
    assert "Validation successful for code location racedayai_bayes." in output


BROKEN_PYPROJECT = """
[project]
name = "broken-location"
version = "0"

[tool.dg]
directory_type = "project"

[tool.dg.project]
root_module = "broken_location"
code_location_target_module = "broken_location.definitions"
"""

BROKEN_DEFINITIONS = """
import dagster as dg

@dg.asset
def one():
    return 1

defs = dg.Definitions(assets=[one], jobs=[dg.define_asset_job("refit", selection=["no_such_asset"])])
"""


def test_dg_check_defs_fails_on_a_broken_definitions_module(tmp_path):
    (tmp_path / "pyproject.toml").write_text(BROKEN_PYPROJECT)
    package = tmp_path / "broken_location"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "definitions.py").write_text(BROKEN_DEFINITIONS)
    proc = _dg_check_defs(tmp_path, {"DAGSTER_HOME": str(tmp_path), "PYTHONPATH": str(tmp_path)})
    output = proc.stdout + proc.stderr
    assert proc.returncode == 1, output[-3000:]
    assert "no_such_asset" in output


def test_loading_the_code_location_warns_of_no_dagster_preview():
    """The per-distance check specs use a feature Dagster 1.13 calls a preview; its warning (four
    lines at each `dagster dev` start, nothing an operator can act on) is silenced where the
    specs are made, and only there: a fresh import with preview warnings as errors loads."""
    import os
    import subprocess
    import sys

    code = ("import warnings, dagster; warnings.simplefilter('error', dagster.PreviewWarning); "
            "import racedayai_bayes.definitions")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "JAX_PLATFORMS": "cpu"})
    assert proc.returncode == 0, proc.stderr[-2000:]
