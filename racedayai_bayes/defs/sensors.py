"""Alerts: an ERROR log line, and a JSON POST to RACEDAYAI_ALERT_WEBHOOK when it is set.

Run-status sensors see each finished run exactly once (Dagster keeps their cursor), so each
failure is alerted once: a failed run (for example one stopped by a blocking check) and a
successful run whose checks failed with WARN severity.
"""


import os
import time

import dagster as dg

from racedayai_bayes.lib.outputs.alerts import Alert, alert_interval_s, post_json, slack_payload
from racedayai_bayes.lib.runreport import CLI_LOG_TAG

from .checks import BLOCKING_CHECKS
from .concurrency import reap_dead_runs
from .forecasts import FORECAST_JOB

WEBHOOK_ENV = "RACEDAYAI_ALERT_WEBHOOK"


def alerts_for_run(instance: dg.DagsterInstance, run: dg.DagsterRun, failure_message: str | None) -> list[Alert]:
    """One alert per failed check evaluation of the run, or one for the run itself."""
    distance = run.tags.get("dagster/partition") or run.tags.get("racedayai/distance")
    trigger = _trigger(run)
    # a start list's forecast run, or a refit (the schedule's job, the command's, or assets
    # materialised from the UI)
    job = FORECAST_JOB if run.job_name == FORECAST_JOB else "refit"
    alerts, blocking = [], False
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
                asset=evaluation.asset_key.to_user_string(),
                job=job,
            )
        )
        blocking = blocking or (evaluation.check_name in BLOCKING_CHECKS and evaluation.severity == dg.AssetCheckSeverity.ERROR)
    # A failed run is always reported as such unless a failed blocking check explains it: a
    # model's own checks never block (a model that fails one is only not published), so they
    # must not hide a write error, say, any more than a WARN check may.
    if failure_message is not None and not blocking:
        message = "; ".join(_step_failures(instance, run.run_id)) or _with_process_end(instance, run.run_id, failure_message)
        alerts.append(Alert(run.run_id, distance, None, None, None, "ERROR", message, trigger, job=job))
    return alerts


def _step_failures(instance: dg.DagsterInstance, run_id: str) -> list[str]:
    """'step <key>: <error>' for each failed step: the cause, where the run's own message is generic.
    A step that raised ``dg.Failure`` (a data or output error) is said in its own words, without
    Dagster's class path ('dagster._core.definitions.events.Failure: ...'); any other error keeps
    its class, which tells a bug's kind."""
    failures = []
    for entry in instance.all_logs(run_id, of_type=dg.DagsterEventType.STEP_FAILURE):
        data = entry.dagster_event.event_specific_data
        described = getattr(getattr(data, "user_failure_data", None), "description", None)
        error = data.error
        # Dagster wraps a step's own exception (its compute, or an IO manager's handle_output or
        # load_input): say that one ("ZeroDivisionError: ...", "OutputWriteError: ...")
        while error is not None and error.cause is not None and _is_dagster_wrapper(error.cls_name):
            error = error.cause
        text = (described or (error.message if error else entry.dagster_event.message) or "").strip()
        failures.append(f"step {entry.step_key}: {text.splitlines()[0] if text else 'failed'}")
    return failures


def _is_dagster_wrapper(cls_name: str) -> bool:
    """Dagster's errors that only wrap user code's: DagsterExecutionStepExecutionError,
    DagsterExecutionHandleOutputError, DagsterExecutionLoadInputError, ... and their base."""
    return cls_name.startswith("DagsterExecution") or cls_name == "DagsterUserCodeExecutionError"


# What Dagster logs when a run's process ended without reporting (killed, out of memory), e.g.
# "Run execution process for <id> was terminated by signal 9 (SIGKILL)."
_PROCESS_END = ("terminated by signal", "unexpectedly exited", "exited with code")


def _with_process_end(instance: dg.DagsterInstance, run_id: str, message: str) -> str:
    """The run's failure message with the last engine event that says how its process ended,
    where there is one: a run marked failed from outside (killed) says only that it was."""
    # the run's own events only: a step's ("child process for step X unexpectedly exited")
    # says how a step ended, not the run
    ended = [entry.dagster_event.message or entry.user_message or ""
             for entry in instance.all_logs(run_id, of_type=dg.DagsterEventType.ENGINE_EVENT) if entry.step_key is None]
    ended = [m.strip() for m in ended if any(p in m for p in _PROCESS_END)]
    if not ended or ended[-1] in message:
        return message
    # Dagster's first sentence says how; the rest of its text is advice on memory
    how = ended[-1].split(". ")[0].rstrip(".")
    memory = " (often the operating system ending it for want of memory)" if "out of memory" in ended[-1] else ""
    return f"{message} ({how}{memory})"


def _trigger(run: dg.DagsterRun) -> str | None:
    """What started the run, for the alert: the schedule, a sensor, a backfill, the command
    line (with its log file); None for a launch from the UI or ``dagster job launch``."""
    if "dagster/schedule_name" in run.tags:
        return f"schedule {run.tags['dagster/schedule_name']}"
    if "dagster/sensor_name" in run.tags:
        return f"sensor {run.tags['dagster/sensor_name']}"
    if "dagster/backfill" in run.tags:
        return f"backfill {run.tags['dagster/backfill']}"
    if CLI_LOG_TAG in run.tags:
        return f"racedayai-bayes refit (log {run.tags[CLI_LOG_TAG]})"
    return None


POST_ATTEMPTS = 3
POST_BACKOFF_S = 2.0
# All attempts for one run's alerts fit in this many seconds (a webhook that hangs gets
# shorter timeouts): Dagster gives a sensor's whole tick 60 s, and a tick may alert a few runs.
POST_BUDGET_S = 12.0


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
    deadline = time.monotonic() + POST_BUDGET_S
    attempts = 0
    for attempt in range(1, POST_ATTEMPTS + 1):
        left = deadline - time.monotonic()
        if left <= 0.5:
            break
        attempts = attempt
        try:
            status = post_json(url, payload, timeout=min(10.0, left))
            context.log.info(f"alert posted to webhook (HTTP {status})")
            return
        except OSError as exc:
            context.log.error(f"could not post alert to {WEBHOOK_ENV} (attempt {attempt}/{POST_ATTEMPTS}): {exc}")
            if attempt < POST_ATTEMPTS:
                time.sleep(min(POST_BACKOFF_S * attempt, max(deadline - time.monotonic() - 0.5, 0.0)))
    raise RuntimeError(f"alert not delivered to {WEBHOOK_ENV} after {attempts} attempts in {POST_BUDGET_S:.0f} s: "
                       f"{payload['text']}")


# Run-status sensors keep a cursor over finished runs: a shorter interval only makes alerts
# arrive sooner (within about one interval of the run's end, or the daemon's sensor loop of
# about 5 s if that is longer), never twice. A bad value stops the code location from loading
# with the message of alert_interval_s (`racedayai-bayes refit` checks it first).
ALERT_INTERVAL_S = alert_interval_s()


# Every run of the instance, whatever launched it: Dagster matches a run-status sensor to
# the runs of its own code location by the run's origin, and a run of `racedayai-bayes
# refit` (executed by the command, not launched through a code location) has none, so
# without this its failure was never alerted.
@dg.run_failure_sensor(
    name="refit_failure_alert", default_status=dg.DefaultSensorStatus.RUNNING, minimum_interval_seconds=ALERT_INTERVAL_S,
    monitor_all_code_locations=True,
    description="Logs an alert, and posts it to RACEDAYAI_ALERT_WEBHOOK when set, when a run fails: the failed step's error, "
                "or the failed blocking checks that stopped it.",
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
    monitor_all_code_locations=True,
    description="Logs an alert, and posts it to RACEDAYAI_ALERT_WEBHOOK when set, when a run succeeded but some of its checks "
                "failed: a WARN check, or a model's own ERROR check that kept it from being published.",
)
def check_warning_alert(context: dg.RunStatusSensorContext):
    """Alert when a run succeeded but some of its checks failed (non-blocking, WARN)."""
    send_alerts(context, alerts_for_run(context.instance, context.dagster_run, None))


@dg.sensor(name="dead_run_reaper", minimum_interval_seconds=60, default_status=dg.DefaultSensorStatus.RUNNING,
           description="Every minute: marks failed each started run whose process is gone from this host (killed), "
                       "so that it stops holding its distance's place in the run queue; the failure is alerted.")
def dead_run_reaper(context: dg.SensorEvaluationContext):
    """Mark runs whose process was killed as failed, so they stop holding their distance's queue slot."""
    if context.instance.run_launcher.supports_check_run_worker_health:
        # e.g. one pod per run on Kubernetes (reap_dead_runs reaps nothing there)
        return dg.SkipReason("the run launcher's workers are checked by Dagster's run monitoring")
    reaped = reap_dead_runs(context.instance)
    for run_id in reaped:
        context.log.warning(f"run {run_id} was STARTED but its process is gone; marked it failed")
    return dg.SkipReason(f"marked {len(reaped)} dead run(s) failed" if reaped else "no dead runs")
