import datetime as dt

import dagster as dg

from racedayai_bayes.definitions import defs


def test_weekly_refit_yields_one_run_per_distance():
    schedule = defs.resolve_schedule_def("weekly_refit")
    assert schedule.cron_schedule == "0 3 * * 1"
    assert schedule.execution_timezone == "UTC"
    assert schedule.default_status == dg.DefaultScheduleStatus.RUNNING
    assert schedule.job_name == "refit"
    monday = dt.datetime(2026, 11, 23, 3, 0, tzinfo=dt.timezone.utc)
    with dg.instance_for_test() as instance:
        context = dg.build_schedule_context(instance=instance, scheduled_execution_time=monday)
        requests = list(schedule(context))
    assert [r.partition_key for r in requests] == ["70.3", "140.6"]
    assert [r.tags["racedayai/distance"] for r in requests] == ["70.3", "140.6"]
    # run keys are unique per tick, so a tick evaluated twice never launches twice
    assert len({r.run_key for r in requests}) == 2
    assert all("2026-11-23T03:00" in r.run_key for r in requests)
    job = defs.resolve_job_def(schedule.job_name)
    assert {r.partition_key for r in requests} == set(job.partitions_def.get_partition_keys())
