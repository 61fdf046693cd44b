"""One refit per distance at a time, also for runs that bypass the run queue.

The run queue (dagster.yaml, tag_concurrency_limits on racedayai/distance) holds a second
refit of a distance until the first has finished. Runs that do not go through the queue,
such as `racedayai-bayes refit` (execute_job in process) or `dagster job execute`, start
at once; so the posterior step checks the instance itself: if another refit of its
distance started earlier and is still running, this run stops before writing anything
for that distance. Of two overlapping runs the later one always sees the earlier one, so
at most one of them goes on.
"""


import datetime as dt

import dagster as dg

from racedayai_bayes.lib.processes import alive

from .schedules import DISTANCE_TAG

PARTITION_TAG = "dagster/partition"
# Runs holding a worker: the statuses the run queue counts against its limits.
_ACTIVE = [dg.DagsterRunStatus.STARTING, dg.DagsterRunStatus.STARTED, dg.DagsterRunStatus.CANCELING]


def orchestrator_pid(instance: dg.DagsterInstance, run_id: str) -> int | None:
    """The pid of the process that started the run (its RUN_START event), if recorded."""
    for entry in instance.all_logs(run_id, of_type=dg.DagsterEventType.RUN_START):
        return entry.dagster_event.pid if entry.dagster_event is not None else None
    return None


def reap_dead_runs(instance: dg.DagsterInstance) -> list[str]:
    """Mark as failed every STARTED run whose orchestrating process is gone, and as canceled
    every CANCELING one (it was being stopped when it died); return their ids. (A STARTING
    run has recorded no process yet.)

    A run whose process was killed (SIGKILL, OOM, a reboot) stays STARTED for ever: the
    default run launcher cannot check a worker's health. Such a run would hold its distance
    in the run queue and in :func:`ensure_sole_refit` until someone terminated it by hand.
    Runs and steps of this deployment execute on one host, so a pid that no longer exists
    here means the run is dead. With a launcher whose workers Dagster's run monitoring checks
    (deploy/: one Kubernetes pod per run) nothing is reaped: a pid seen from this pod says
    nothing about a run in another pod, which would be marked failed while it runs.
    """
    if instance.run_launcher.supports_check_run_worker_health:
        return []
    reaped = []
    statuses = [dg.DagsterRunStatus.STARTED, dg.DagsterRunStatus.CANCELING]
    for record in instance.get_run_records(dg.RunsFilter(statuses=statuses)):
        run = record.dagster_run
        pid = orchestrator_pid(instance, run.run_id)
        if pid is None or alive(pid):
            continue
        if run.status == dg.DagsterRunStatus.CANCELING:
            instance.report_run_canceled(run, message=f"the run's process (pid {pid}) died while it was being canceled")
        else:
            instance.report_run_failed(
                run, message=f"the run's process (pid {pid}) is gone; it was killed or crashed, so the run is marked failed"
            )
        reaped.append(run.run_id)
    return reaped


def earlier_active_refit(instance: dg.DagsterInstance, run_id: str, distance: str) -> dg.RunRecord | None:
    """Another unfinished run of `distance` that started before run `run_id`, if any.

    A run counts as a refit of `distance` if either its partition or its distance tag is
    `distance` (a run launched from the UI carries only the partition tag). A run still
    STARTING has no start time yet: it starts after this one, and will see this one.
    """
    own = instance.get_run_record_by_id(run_id)
    own_start = own.start_time if own is not None and own.start_time is not None else float("inf")
    others: dict[str, dg.RunRecord] = {}
    for tag in (PARTITION_TAG, DISTANCE_TAG):
        for record in instance.get_run_records(dg.RunsFilter(statuses=_ACTIVE, tags={tag: distance})):
            if record.dagster_run.run_id != run_id and record.start_time is not None:
                others[record.dagster_run.run_id] = record
    earlier = [r for r in others.values() if (r.start_time, r.dagster_run.run_id) < (own_start, run_id)]
    return min(earlier, key=lambda r: r.start_time, default=None)


def ensure_sole_refit(context: dg.AssetExecutionContext, distance: str) -> None:
    """Fail this step, before it writes anything, if an earlier refit of `distance` is running."""
    for run_id in reap_dead_runs(context.instance):
        context.log.warning(f"run {run_id} had been killed while STARTED; marked it failed")
    other = earlier_active_refit(context.instance, context.run.run_id, distance)
    if other is None:
        return
    started = dt.datetime.fromtimestamp(other.start_time, dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
    raise dg.Failure(
        description=(
            f"another refit of {distance} is running: run {other.dagster_run.run_id}, started {started}. "
            f"Two refits of one distance never run at once, so this run stops before writing anything "
            f"for {distance}. Wait for that run to finish, or submit refits through the run queue "
            f"(the UI, the schedule, or `dagster job launch -w workspace.yaml -j refit --tags "
            f"'{{\"dagster/partition\": \"{distance}\"}}'`), where they wait their turn."
        ),
        allow_retries=False,
    )
