"""The weekly refit: one run per distance, Mondays 03:00 UTC."""


import dagster as dg

from racedayai_bayes.lib.data.frame import MODEL_DISTANCES

REFIT_JOB = "refit"
DISTANCE_TAG = "racedayai/distance"

refit_job = dg.define_asset_job(
    REFIT_JOB,
    # everything but the race-day forecasts, which have their own job, partitions and sensors
    selection=dg.AssetSelection.all() - dg.AssetSelection.assets("race_forecasts"),
    description="Read the inputs, rebuild the model frame, refit one distance and write its CSVs",
)


@dg.schedule(
    job=refit_job,
    cron_schedule="0 3 * * 1",
    execution_timezone="UTC",
    default_status=dg.DefaultScheduleStatus.RUNNING,
    description="Refits both distances every Monday at 03:00 UTC, one run each: every model fitted, judged on the "
                "latest season, compared, and the best published.",
)
def weekly_refit(context: dg.ScheduleEvaluationContext):
    """Refit both distances every Monday at 03:00 UTC, one run each."""
    when = context.scheduled_execution_time.strftime("%Y-%m-%dT%H:%M")
    for distance in MODEL_DISTANCES:
        yield dg.RunRequest(
            run_key=f"{distance}@{when}",
            partition_key=distance,
            tags={DISTANCE_TAG: distance},
        )
