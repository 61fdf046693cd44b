"""Alerts: an ERROR log line, and a JSON POST to RACEDAYAI_ALERT_WEBHOOK when it is set.

Run-status sensors see each finished run exactly once (Dagster keeps their cursor), so each
failure is alerted once: a failed run (for example one stopped by a blocking check) and a
successful run whose checks failed with WARN severity.
"""


import os
import time

import dagster as dg

from racedayai_bayes.lib.outputs.alerts import Alert, post_json, slack_payload

from .concurrency import reap_dead_runs

WEBHOOK_ENV = "RACEDAYAI_ALERT_WEBHOOK"


def alerts_for_run(instance: dg.DagsterInstance, run: dg.DagsterRun, failure_message: str | None) -> list[Alert]:
    """One alert per failed check evaluation of the run, or one for the run itself."""
    distance = run.tags.get("dagster/partition") or run.tags.get("racedayai/distance")
    trigger = _trigger(run)
    alerts = []
    for entry in instance.all_logs(run.run_id, of_type=dg.DagsterEventType.ASSET_CHECK_EVALUATION):
        evaluation = entry.dagster_event.event_specific_data
        if evaluation.passed:
            continue
        meta = evaluation.metadata
        value = meta.get("value")
        threshold = meta.get("threshold")
        alerts.append(
            Alert(
                run_id=run.run_id,
                distance=(meta["distance"].value if "distance" in meta else evaluation.partition or distance),
                check=evaluation.check_name,
                value=None if value is None else value.value,
                threshold=None if threshold is None else threshold.value,
                severity=evaluation.severity.value,
                message=evaluation.description or "",
                trigger=trigger,
            )
        )
    # A failed run is always reported as such unless a blocking (ERROR) check explains it:
    # a WARN check (drift, a few divergences) must not hide a later write error.
    if failure_message is not None and not any(a.severity == "ERROR" for a in alerts):
        message = "; ".join(_step_failures(instance, run.run_id)) or failure_message
        alerts.append(Alert(run.run_id, distance, None, None, None, "ERROR", message, trigger))
    return alerts


def _step_failures(instance: dg.DagsterInstance, run_id: str) -> list[str]:
    """'step <key>: <error>' for each failed step: the cause, where the run's own message is generic."""
    failures = []
    for entry in instance.all_logs(run_id, of_type=dg.DagsterEventType.STEP_FAILURE):
        error = entry.dagster_event.event_specific_data.error
        text = (error.message if error else entry.dagster_event.message or "").strip()
        failures.append(f"step {entry.step_key}: {text.splitlines()[0] if text else 'failed'}")
    return failures


def _trigger(run: dg.DagsterRun) -> str | None:
    if "dagster/schedule_name" in run.tags:
        return f"schedule {run.tags['dagster/schedule_name']}"
    if "dagster/sensor_name" in run.tags:
        return f"sensor {run.tags['dagster/sensor_name']}"
    return None


POST_ATTEMPTS = 3
POST_BACKOFF_S = 2.0


def send_alerts(context, alerts: list[Alert]) -> None:
    """Log each alert at ERROR and POST them to the webhook, retrying a failed POST.

    If every attempt fails the sensor raises: its tick is recorded as failed (visible in the
    UI, kept 30 days) with the alert text. Dagster still moves the sensor's cursor past the
    run, so a later tick never repeats the alert.
    """
    if not alerts:
        return
    for alert in alerts:
        context.log.error(alert.line())
    url = os.environ.get(WEBHOOK_ENV)
    if not url:
        return
    payload = slack_payload(alerts)
    for attempt in range(1, POST_ATTEMPTS + 1):
        try:
            status = post_json(url, payload)
            context.log.info(f"alert posted to webhook (HTTP {status})")
            return
        except OSError as exc:
            context.log.error(f"could not post alert to {WEBHOOK_ENV} (attempt {attempt}/{POST_ATTEMPTS}): {exc}")
            if attempt < POST_ATTEMPTS:
                time.sleep(POST_BACKOFF_S * attempt)
    raise RuntimeError(f"alert not delivered to {WEBHOOK_ENV} after {POST_ATTEMPTS} attempts: {payload['text']}")


# Run-status sensors keep a cursor over finished runs: a shorter interval only makes alerts
# arrive sooner (within ~10 s of the run's end), never twice.
ALERT_INTERVAL_S = 10


@dg.run_failure_sensor(
    name="refit_failure_alert", default_status=dg.DefaultSensorStatus.RUNNING, minimum_interval_seconds=ALERT_INTERVAL_S
)
def refit_failure_alert(context: dg.RunFailureSensorContext):
    """Alert when a refit run fails, naming the failed checks if a blocking check stopped it."""
    message = context.failure_event.message or "run failed"
    send_alerts(context, alerts_for_run(context.instance, context.dagster_run, message))


@dg.run_status_sensor(
    name="check_warning_alert",
    run_status=dg.DagsterRunStatus.SUCCESS,
    default_status=dg.DefaultSensorStatus.RUNNING,
    minimum_interval_seconds=ALERT_INTERVAL_S,
)
def check_warning_alert(context: dg.RunStatusSensorContext):
    """Alert when a run succeeded but some of its checks failed (non-blocking, WARN)."""
    send_alerts(context, alerts_for_run(context.instance, context.dagster_run, None))


@dg.sensor(name="dead_run_reaper", minimum_interval_seconds=60, default_status=dg.DefaultSensorStatus.RUNNING)
def dead_run_reaper(context: dg.SensorEvaluationContext):
    """Mark runs whose process was killed as failed, so they stop holding their distance's queue slot."""
    if context.instance.run_launcher.supports_check_run_worker_health:
        # e.g. one pod per run on Kubernetes: Dagster's run monitoring checks those workers,
        # and a process id seen from this pod says nothing about a run in another pod
        return dg.SkipReason("the run launcher's workers are checked by Dagster's run monitoring")
    reaped = reap_dead_runs(context.instance)
    for run_id in reaped:
        context.log.warning(f"run {run_id} was STARTED but its process is gone; marked it failed")
    return dg.SkipReason(f"marked {len(reaped)} dead run(s) failed" if reaped else "no dead runs")
