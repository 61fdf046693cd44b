"""The racedayai-bayes code location: assets, checks, job, schedule, sensors, resources."""

import racedayai_bayes  # noqa: F401  (pins JAX to the CPU before anything imports jax)

import dagster as dg

from racedayai_bayes.defs.forecasts import race_forecasts, race_forecasts_job, republished_forecasts, start_list_sensor
from racedayai_bayes.defs.inputs import athlete_profile, athlete_race, cluster_assignments, model_frame
from racedayai_bayes.defs.models import POSTERIOR_ASSETS
from racedayai_bayes.defs.predictions import bayesian_posterior_means, bayesian_predictions, forecast_posterior_means
from racedayai_bayes.defs.publish import published_model
from racedayai_bayes.defs.split import holdout_split
from racedayai_bayes.defs.resources import SLOT_TAGS, AtomicPickleIOManagerFactory, CpuSlots, PipelinePaths
from racedayai_bayes.defs.schedules import REFIT_JOB, refit_job, weekly_refit
from racedayai_bayes.defs.sensors import check_warning_alert, dead_run_reaper, refit_failure_alert
from racedayai_bayes.step_server import STEP_PRELOAD

# Steps fork from a server that has preloaded the code location (racedayai_bayes/step_server.py).
# Three step processes per run at once, but at most two of the steps that take a CPU slot
# (defs/resources.py SLOT_TAGS), as before: the third is a step that takes none (the cluster
# file, read beside the two larger inputs instead of after them: the model frame starts
# ~0.2 s sooner at the demo's scale; the split, defs/split.py). The comparison that publishes
# (defs/publish.py) takes no slot either, but it follows every posterior of its run.
executor = dg.multiprocess_executor.configured(
    {
        "max_concurrent": 3,
        "tag_concurrency_limits": [{"key": next(iter(SLOT_TAGS)), "limit": 2}],
        "start_method": {"forkserver": {"preload_modules": STEP_PRELOAD}},
    }
)

defs = dg.Definitions(
    assets=[
        athlete_race,
        athlete_profile,
        cluster_assignments,
        model_frame,
        holdout_split,
        *POSTERIOR_ASSETS,
        published_model,
        bayesian_predictions,
        bayesian_posterior_means,
        forecast_posterior_means,
        race_forecasts,
    ],
    jobs=[refit_job, race_forecasts_job],
    schedules=[weekly_refit],
    sensors=[refit_failure_alert, check_warning_alert, dead_run_reaper, start_list_sensor, republished_forecasts],
    resources={"paths": PipelinePaths.from_env(), "io_manager": AtomicPickleIOManagerFactory(), "cpu": CpuSlots()},
    executor=executor,
)


def refit_job_def() -> dg.JobDefinition:
    """The refit job, for dg.reconstructable (the CLI runs it on the local instance)."""
    return defs.resolve_job_def(REFIT_JOB)
