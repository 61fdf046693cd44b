"""The alert sensors on a real instance: the Dagster daemon evaluates them tick after tick.

A real `dagster-daemon run` (temporary DAGSTER_HOME holding the project's dagster.yaml, as in
test_defs_concurrency.py) runs the refits launched with `dagster job launch`, tagged as the
weekly schedule tags them, and ticks `refit_failure_alert` and `check_warning_alert`; a real
HTTP server (WebhookReceiver) stands in for Slack. Four refits go through the run queue:

* a: 70.3, every model's chains far too short: their checks fail (ess_bulk_min, ...), no
  model may be published, the blocking gate stops the run;
* b: 140.6 with an unknown holdout rule: the holdout_split step raises dg.Failure;
* c1: 70.3, a clean refit that publishes its artifact: no alert;
* c2: 70.3, the seed models on another seed with drift_threshold_sec=0.01: the run
  succeeds, each seed model's prediction_drift warns;
* d: `racedayai-bayes refit` of 70.3 without its input files, executed by the command itself
  (its run has no code location's origin): it fails at once.

After all of them have finished and the fourth alert has arrived, the daemon keeps ticking
both sensors at least twice more; the receiver must then hold exactly four POSTs, one per
problem, none for the clean run and none repeated.
"""

import json
import re
import subprocess
import time
import uuid
from pathlib import Path

import dagster as dg
import pytest
# the tick history has no public API in Dagster 1.13; the UI reads it through GraphQL
from dagster._core.scheduler.instigation import InstigatorType, TickStatus

from racedayai_bayes.defs.schedules import REFIT_JOB
from racedayai_bayes.defs.sensors import WEBHOOK_ENV
from racedayai_bayes.lib.outputs.alerts import ALERT_INTERVAL_ENV

from .conftest import FAST_FIT, REPO, SHORT_FORECAST_FIT, SHORT_SEED_FIT, refit_config
from .test_defs_concurrency import WORKSPACE, _bin, _env, _stop, _tail, both, running_daemon
from .webhook import WebhookReceiver

pytestmark = pytest.mark.slow

ALERT_SENSORS = ("refit_failure_alert", "check_warning_alert")
SCHEDULE_TAGS = {"dagster/schedule_name": "weekly_refit"}
PRIORITY_TAG = "dagster/priority"  # the run queue dequeues higher values first

# a: ESS far below 400 everywhere; b: FitError -> dg.Failure; c1: clean; c2: drift above 0.01 s warns
FAILING = refit_config(seed_fit=SHORT_SEED_FIT, forecast=SHORT_FORECAST_FIT)
BROKEN = refit_config(split={"holdout": "bogus_rule"})
CLEAN = refit_config(seed_fit={"engine": "exact", **FAST_FIT})
DRIFTING = refit_config(seed_fit={"engine": "exact", **FAST_FIT, "seed": 5, "drift_threshold_sec": 0.01})

LAUNCH_TIMEOUT_S = 180
FIRST_TICK_TIMEOUT_S = 120
RUNS_TIMEOUT_S = 480
# the alert sensors may tick every 2 s here (RACEDAYAI_ALERT_INTERVAL_S; 10 s by default): in
# practice every ~5 s, the daemon's sensor loop
INTERVAL_S = 2
ALERT_TIMEOUT_S = 60
LATER_TICKS = 2
LATER_TICKS_TIMEOUT_S = 60


@pytest.fixture
def receiver():
    with WebhookReceiver() as hook:
        yield hook


@pytest.fixture
def alert_env(dagster_home, small_inputs, tmp_path, receiver) -> dict[str, str]:
    return {**_env(dagster_home, small_inputs, tmp_path / "outputs"), WEBHOOK_ENV: receiver.url,
            ALERT_INTERVAL_ENV: str(INTERVAL_S)}


@pytest.fixture
def daemon(alert_env, dagster_home, tmp_path):
    """`dagster-daemon run` with the webhook set; yields the process and its log file."""
    log_path = tmp_path / "daemon.log"
    with running_daemon(dagster_home, alert_env, log_path) as proc:
        yield proc, log_path


@pytest.fixture
def instance(dagster_home):
    with dg.DagsterInstance.from_config(str(dagster_home)) as inst:
        yield inst


class Scene:
    """What the test saw, for failure messages: the daemon log's tail, bodies, runs, ticks."""

    def __init__(self, instance, daemon_proc, daemon_log: Path, hook: WebhookReceiver, names: dict[str, str]):
        self.instance, self.proc, self.log, self.hook, self.names = instance, daemon_proc, daemon_log, hook, names
        self.t0 = time.time()  # taken just after the daemon started

    def ticks(self, sensor: str) -> list:
        for state in self.instance.all_instigator_state(instigator_type=InstigatorType.SENSOR):
            if state.instigator_name == sensor:
                return list(self.instance.get_ticks(state.instigator_origin_id, state.selector_id))
        return []

    def done_ticks(self, sensor: str, after: float = 0.0) -> list:
        return [t for t in self.ticks(sensor) if t.status != TickStatus.STARTED and t.timestamp > after]

    def __str__(self) -> str:
        runs = []
        for run_id, name in self.names.items():
            record = self.instance.get_run_record_by_id(run_id)
            status = record.dagster_run.status.value if record else "missing"
            span = " ".join(
                f"{label} {at - self.t0:.0f}s" for label, at in (("started", record and record.start_time),
                                                                 ("ended", record and record.end_time)) if at
            )
            runs.append(f"  {name} {run_id}: {status} {span}")
        ticks = []
        for sensor in ALERT_SENSORS:
            summary = [
                f"{t.timestamp - self.t0:.0f}s:{t.status.value}" + (f"({t.error.message[:200]})" if t.error else "")
                for t in sorted(self.ticks(sensor), key=lambda t: t.timestamp)
            ]
            ticks.append(f"  {sensor}: {' '.join(summary) or 'no ticks'}")
        bodies = json.dumps(self.hook.bodies, indent=1)[-6000:]
        return (
            "runs (seconds since the daemon started):\n" + "\n".join(runs)
            + "\nsensor ticks (seconds since the daemon started):\n" + "\n".join(ticks)
            + f"\nPOSTed bodies ({len(self.hook.bodies)}):\n{bodies}\n--- daemon log (tail) ---\n{_tail(self.log)}"
        )

    def wait(self, what: str, timeout_s: float, ready) -> None:
        deadline = time.monotonic() + timeout_s
        while not ready():
            assert self.proc.poll() is None, f"the daemon exited while waiting for {what}\n{self}"
            assert time.monotonic() < deadline, f"timed out after {timeout_s:.0f} s waiting for {what}\n{self}"
            time.sleep(1)


def _launch(env: dict[str, str], requests: list[tuple[str, str, dict, int]], tmp_path: Path) -> None:
    """`dagster job launch` each (run id, distance, run config, priority), all at once; wait."""
    procs = []
    try:
        for run_id, distance, config, priority in requests:
            tags = {**both(distance), **SCHEDULE_TAGS, PRIORITY_TAG: str(priority)}
            log = tmp_path / f"launch-{run_id}.log"
            with open(log, "w") as out:
                proc = subprocess.Popen(
                    [
                        _bin("dagster"), "job", "launch", "-w", str(WORKSPACE), "-j", REFIT_JOB,
                        "--run-id", run_id, "--tags", json.dumps(tags), "--config-json", json.dumps(config),
                    ],
                    cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
                )
            procs.append((proc, log))
        for proc, log in procs:
            proc.wait(LAUNCH_TIMEOUT_S)
            assert proc.returncode == 0, f"`dagster job launch` failed:\n{_tail(log)}"
    finally:
        for proc, _ in procs:
            _stop(proc, grace_s=5)


def _assert_slack_compatible(body: dict) -> None:
    assert isinstance(body.get("text"), str) and body["text"], body
    assert isinstance(body.get("blocks"), list) and body["blocks"], body
    for block in body["blocks"]:
        assert block["type"] == "section" and block["text"]["type"] == "mrkdwn", block
        assert isinstance(block["text"]["text"], str) and block["text"]["text"], block
    assert isinstance(body.get("alerts"), list) and body["alerts"], body
    assert len(body["blocks"]) == 1 + len(body["alerts"]), body  # a header, then one per alert
    for alert in body["alerts"]:
        assert {"run_id", "distance", "check", "value", "threshold", "severity", "message", "trigger"} <= set(alert)


def test_daemon_posts_exactly_one_alert_per_failure(daemon, instance, receiver, alert_env, tmp_path):
    daemon_proc, daemon_log = daemon
    failing, broken, clean, drifting = (str(uuid.uuid4()) for _ in range(4))
    names = {failing: "a (70.3, failing checks)", broken: "b (140.6, FitError)",
             clean: "c1 (70.3, clean)", drifting: "c2 (70.3, drift WARN)"}
    scene = Scene(instance, daemon_proc, daemon_log, receiver, names)

    # The queue runs one refit per distance at a time and dequeues by priority, then by
    # submission: a, then c1 (which publishes the artifact c2's drift check compares with), then c2.
    _launch(alert_env, [(failing, "70.3", FAILING, 3), (broken, "140.6", BROKEN, 3)], tmp_path)
    _launch(alert_env, [(clean, "70.3", CLEAN, 2), (drifting, "70.3", DRIFTING, 1)], tmp_path)

    # A run-status sensor's first tick only sets its cursor: runs that finished earlier are
    # never alerted. The runs take longer than the daemon's start-up, so the first ticks come first.
    scene.wait("the first tick of both alert sensors", FIRST_TICK_TIMEOUT_S,
               lambda: all(scene.done_ticks(s) for s in ALERT_SENSORS))
    first_tick = max(min(t.timestamp for t in scene.done_ticks(s)) for s in ALERT_SENSORS)

    # d: `racedayai-bayes refit`, whose runs the command executes itself (no code location's
    # origin on them, which Dagster's run-status sensors match runs by): its inputs are
    # missing, so its first run fails at once, and must be alerted like any other.
    cli = subprocess.run([_bin("racedayai-bayes"), "refit", "--distance", "70.3"], cwd=REPO, capture_output=True,
                         text=True, timeout=LAUNCH_TIMEOUT_S,
                         env={**alert_env, "RACEDAYAI_INPUT_DIR": str(tmp_path / "no-inputs")})
    assert cli.returncode == 1, cli.stdout[-2000:] + cli.stderr[-2000:]
    (command,) = re.findall(r"^refit 70\.3: started run (\S+)$", cli.stdout, re.M)
    names[command] = "d (70.3, the command's run: no input files)"

    def finished():
        runs = [instance.get_run_by_id(r) for r in names]
        return all(r is not None and r.is_finished for r in runs)

    scene.wait("all five runs to finish", RUNS_TIMEOUT_S, finished)
    runs = {r: instance.get_run_by_id(r) for r in names}
    expected = {failing: "FAILURE", broken: "FAILURE", clean: "SUCCESS", drifting: "SUCCESS", command: "FAILURE"}
    assert {r: run.status.value for r, run in runs.items()} == expected, f"unexpected run outcomes\n{scene}"
    ends = {r: instance.get_run_record_by_id(r).end_time for r in names}
    starts = {r: instance.get_run_record_by_id(r).start_time for r in names}
    assert min(ends.values()) > first_tick, f"a run finished before the sensors' first tick\n{scene}"
    assert starts[failing] < starts[clean] < starts[drifting], f"the 70.3 runs ran out of order\n{scene}"

    scene.wait("four alerts", ALERT_TIMEOUT_S, lambda: len(receiver.bodies) >= 4)
    # Both sensors tick at least twice more after the last alert arrived: nothing is sent again.
    settled = time.time()
    scene.wait(f"{LATER_TICKS} more ticks of both alert sensors", LATER_TICKS_TIMEOUT_S,
               lambda: all(len(scene.done_ticks(s, after=settled)) >= LATER_TICKS for s in ALERT_SENSORS))
    print(scene)

    bodies = list(receiver.bodies)
    assert len(bodies) == 4, f"expected exactly 4 POSTs\n{scene}"
    for sensor in ALERT_SENSORS:
        assert not [t for t in scene.ticks(sensor) if t.status == TickStatus.FAILURE], f"{sensor} failed a tick\n{scene}"
    for body in bodies:
        _assert_slack_compatible(body)
    by_run = {}
    for body in bodies:
        (run_id,) = {a["run_id"] for a in body["alerts"]}  # one POST names one run
        assert run_id not in by_run, f"run {run_id} was alerted twice\n{scene}"
        by_run[run_id] = body
    assert set(by_run) == {failing, broken, drifting, command}, f"alerts for the wrong runs\n{scene}"

    # d: the command's run, with its failed step's own error, the command as its trigger
    (alert,) = by_run[command]["alerts"]
    assert alert["distance"] == "70.3" and alert["check"] is None, alert
    assert re.fullmatch(r"racedayai-bayes refit \(log .+/refit_logs/refit-\S+\.log\)", alert["trigger"]), alert
    # the first of the input steps to fail names its file (which one fails first varies)
    assert re.match(r"step (athlete_race|athlete_profile|cluster_assignments): ", alert["message"]), alert
    assert "file not found" in alert["message"], alert

    # a: one alert per failed check, the models' ESS and the closed gate among them, each with
    # value and threshold
    body = by_run[failing]
    errors = {a["check"] for a in body["alerts"] if a["severity"] == "ERROR"}
    assert {"ess_bulk_min", "publishable"} <= errors, body
    for alert in body["alerts"]:
        assert alert["distance"] == "70.3" and alert["check"] and alert["severity"] in ("ERROR", "WARN"), alert
        assert isinstance(alert["value"], (int, float)) and alert["threshold"], alert
        assert alert["trigger"] == "schedule weekly_refit", alert
    ess = next(a for a in body["alerts"] if a["check"] == "ess_bulk_min")
    assert ess["value"] < 400 and ess["threshold"] == ">= 400", ess
    for fact in ("distance 70.3", "check ess_bulk_min", f"run {failing}", "(schedule weekly_refit)", ">= 400"):
        assert fact in body["text"], (fact, body["text"])

    # b: the run itself, with the cause: the failed step's own error (the FitError's "unknown
    # holdout rule 'bogus_rule'"), not the run's generic "Execution of run ... failed".
    body = by_run[broken]
    (alert,) = body["alerts"]
    assert alert["distance"] == "140.6" and alert["check"] is None and alert["severity"] == "ERROR", alert
    assert alert["trigger"] == "schedule weekly_refit", alert
    assert alert["message"], alert
    assert alert["message"].startswith("step holdout_split: ") and "bogus_rule" in alert["message"], alert
    for fact in ("distance 140.6", f"refit run {broken} (schedule weekly_refit) failed", alert["message"]):
        assert fact in body["text"], (fact, body["text"])

    # c2: only the drift warnings of the two seed models, from the successful run
    body = by_run[drifting]
    assert len(body["alerts"]) == 2, body
    for alert in body["alerts"]:
        assert alert["check"] == "prediction_drift" and alert["severity"] == "WARN", alert
        assert alert["distance"] == "70.3" and alert["threshold"] == "<= 0.01 s", alert
        assert isinstance(alert["value"], (int, float)) and alert["value"] > 0.01, alert
        assert alert["trigger"] == "schedule weekly_refit", alert
    for fact in ("[WARN] distance 70.3", "check prediction_drift", f"run {drifting}", "<= 0.01 s"):
        assert fact in body["text"], (fact, body["text"])

    # c1 published the artifact c2 compared with, and was never alerted
    assert all(clean not in json.dumps(b) for b in bodies), f"the clean run was alerted\n{scene}"
    drift_eval = [
        e.dagster_event.event_specific_data
        for e in instance.all_logs(clean, of_type=dg.DagsterEventType.ASSET_CHECK_EVALUATION)
    ]
    assert drift_eval and all(ev.passed for ev in drift_eval), f"the clean run's checks did not all pass\n{scene}"
