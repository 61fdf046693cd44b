"""Concurrency on a real instance: two refits of one distance never run at the same time.

The project's dagster.yaml sets up Dagster's run queue (QueuedRunCoordinator) with a tag
concurrency limit of one run per value of `racedayai/distance`. The first test starts the
Dagster daemon on a temporary DAGSTER_HOME holding that dagster.yaml, launches refits the
way a user would (`dagster job launch`, with the tags the weekly schedule sets) and reads
the runs' event logs: the second refit of a distance is dequeued only after the first has
finished, while a refit of the other distance may run beside them.

Runs that bypass the queue (`racedayai-bayes refit` executes in process) are stopped by
the posterior step instead, before they write anything, when an earlier refit of their
distance is still running (defs/concurrency.py); the last tests cover that.
"""

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import dagster as dg
import pandas as pd
import pytest

from racedayai_bayes.defs.concurrency import PARTITION_TAG, earlier_active_refit
from racedayai_bayes.defs.schedules import DISTANCE_TAG, REFIT_JOB
from racedayai_bayes.lib.outputs.artifacts import latest_artifact
from racedayai_bayes.lib.outputs.tables import APPENDED_COLUMNS, INTERVAL_COLUMNS, PREDICTION_COLUMNS

from .conftest import FAST_FIT, REFIT_ASSETS, REPO, refit_config

WORKSPACE = REPO / "workspace.yaml"
# Check results do not matter here, but the runs must succeed: FAST_FIT passes the blocking
# checks on `small_inputs` (200 warmup / 500 draws fails r_hat for some seeds). A run takes
# ~40 s alone on 2 cores, mostly process start-up, so shorter chains would save little.
RUN_FIT = {"engine": "exact", **FAST_FIT}
SHORT_CLI_ARGS = ["--engine", "exact", "--warmup", "200", "--samples", "500"]
RUNS_TIMEOUT_S = 480  # 131 s on a quiet machine, 289 s once under heavy load
LAUNCH_TIMEOUT_S = 120


def _bin(name: str) -> str:
    """A console script of this virtualenv (falls back to PATH)."""
    local = Path(sys.executable).parent / name
    return str(local) if local.exists() else shutil.which(name) or name


def both(distance: str) -> dict[str, str]:
    """The tags a refit gets from the weekly schedule and from the CLI."""
    return {PARTITION_TAG: distance, DISTANCE_TAG: distance}


def _env(home: Path, inputs: Path, outputs: Path) -> dict[str, str]:
    return {
        **os.environ,
        "DAGSTER_HOME": str(home),
        "RACEDAYAI_INPUT_DIR": str(inputs),
        "RACEDAYAI_OUTPUT_DIR": str(outputs),
        "JAX_PLATFORMS": "cpu",
    }


def _stop(proc: subprocess.Popen, grace_s: float = 30) -> None:
    """Stop a process started in its own session, and everything it started."""
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        try:
            proc.wait(grace_s)
        except subprocess.TimeoutExpired:
            pass
    try:  # the daemon's code server and run workers share its process group
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait(10)


def _tail(path: Path, chars: int = 4000) -> str:
    return path.read_text(errors="replace")[-chars:] if path.exists() else ""


@pytest.fixture
def instance_env(dagster_home, small_inputs, tmp_path) -> dict[str, str]:
    return _env(dagster_home, small_inputs, tmp_path / "outputs")


@contextlib.contextmanager
def running_daemon(dagster_home: Path, env: dict[str, str], log_path: Path):
    """`dagster-daemon run` on the instance in dagster_home; yields the process, stops its group."""
    # Create the SQLite storages first: processes that all find a fresh DAGSTER_HOME race
    # to create them (alembic's revision check fails in the loser).
    with dg.DagsterInstance.from_config(str(dagster_home)) as instance:
        instance.get_runs(limit=1)
        instance.all_instigator_state()
    with open(log_path, "w") as log:
        proc = subprocess.Popen(
            [_bin("dagster-daemon"), "run", "-w", str(WORKSPACE)],
            cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )
        try:
            yield proc
        finally:
            _stop(proc)


@pytest.fixture
def daemon(instance_env, dagster_home, tmp_path):
    """`dagster-daemon run` on the temporary instance; yields the process and its log file."""
    log_path = tmp_path / "daemon.log"
    with running_daemon(dagster_home, instance_env, log_path) as proc:
        yield proc, log_path


def _launch_together(env: dict[str, str], requests: dict[str, tuple[str, int]], tmp_path: Path) -> None:
    """`dagster job launch` one refit per (distance, seed) in requests, all at the same moment."""
    procs = {}
    for run_id, (distance, seed) in requests.items():
        config = refit_config(seed_fit={**RUN_FIT, "seed": seed}, forecast={"seed": seed})
        tags = both(distance)  # as the weekly schedule tags
        out = open(tmp_path / f"launch-{run_id}.log", "w")
        procs[run_id] = (
            subprocess.Popen(
                [
                    _bin("dagster"), "job", "launch", "-w", str(WORKSPACE), "-j", REFIT_JOB,
                    "--run-id", run_id, "--tags", json.dumps(tags), "--config-json", json.dumps(config),
                ],
                cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
            ),
            out,
        )
    try:
        for run_id, (proc, out) in procs.items():
            proc.wait(LAUNCH_TIMEOUT_S)
            out.close()
            assert proc.returncode == 0, _tail(tmp_path / f"launch-{run_id}.log")
    finally:
        for proc, out in procs.values():
            _stop(proc, grace_s=5)
            out.close()


def _wait_finished(instance: dg.DagsterInstance, run_ids, daemon_proc, daemon_log: Path) -> dict[str, dg.DagsterRun]:
    deadline = time.monotonic() + RUNS_TIMEOUT_S
    while True:
        runs = {run_id: instance.get_run_by_id(run_id) for run_id in run_ids}
        if all(run is not None and run.is_finished for run in runs.values()):
            return runs
        assert daemon_proc.poll() is None, "the daemon exited:\n" + _tail(daemon_log)
        assert time.monotonic() < deadline, (
            f"runs not finished after {RUNS_TIMEOUT_S} s: "
            + ", ".join(f"{i[:8]} {r.status.value if r else 'missing'}" for i, r in runs.items())
            + "\n" + _tail(daemon_log)
        )
        time.sleep(2)


class Timeline:
    """When each lifecycle event of a run happened, from the instance's event log."""

    def __init__(self, instance: dg.DagsterInstance, run_id: str, distance: str):
        self.run_id = run_id
        self.distance = distance
        self.first: dict[tuple[str, str | None], float] = {}
        self.materializations: dict[str, dict] = {}
        for entry in instance.all_logs(run_id):
            event = entry.dagster_event
            if event is None:
                continue
            self.first.setdefault((event.event_type_value, entry.step_key), entry.timestamp)
            if event.event_type == dg.DagsterEventType.ASSET_MATERIALIZATION:
                mat = event.event_specific_data.materialization
                self.materializations[mat.asset_key.to_user_string()] = {k: v.value for k, v in mat.metadata.items()}

    def at(self, event_type: dg.DagsterEventType, step: str | None = None) -> float:
        key = (event_type.value, step)
        assert key in self.first, f"run {self.run_id} has no {event_type.value} event for step {step}"
        return self.first[key]

    @property
    def window(self) -> tuple[float, float]:
        return self.at(dg.DagsterEventType.RUN_START), self.at(dg.DagsterEventType.RUN_SUCCESS)

    def describe(self, t0: float) -> str:
        keys = ["PIPELINE_ENQUEUED", "PIPELINE_STARTING", "PIPELINE_START", "PIPELINE_SUCCESS", "PIPELINE_FAILURE"]
        parts = [f"{k}@{self.first[(k, None)] - t0:.1f}" for k in keys if (k, None) in self.first]
        return f"{self.run_id[:8]} {self.distance:>5}: " + " ".join(parts)


@pytest.mark.slow
def test_refits_of_one_distance_wait_for_each_other_in_the_run_queue(daemon, instance_env, dagster_home, tmp_path):
    daemon_proc, daemon_log = daemon
    first_703, second_703, other = (str(uuid.uuid4()) for _ in range(3))
    requests = {first_703: ("70.3", 1), second_703: ("70.3", 2), other: ("140.6", 3)}
    _launch_together(instance_env, requests, tmp_path)

    instance = dg.DagsterInstance.from_config(str(dagster_home))
    assert type(instance.run_coordinator).__name__ == "QueuedRunCoordinator"
    runs = _wait_finished(instance, requests, daemon_proc, daemon_log)
    timelines = {run_id: Timeline(instance, run_id, requests[run_id][0]) for run_id in requests}
    t0 = min(min(t.first.values()) for t in timelines.values())
    summary = "\n".join(t.describe(t0) for t in timelines.values())
    print(summary)
    for run_id, run in runs.items():
        assert run.status == dg.DagsterRunStatus.SUCCESS, f"{run_id}: {run.status}\n{summary}\n" + _tail(daemon_log)
        assert run.tags[DISTANCE_TAG] == requests[run_id][0]
        # every run went through the queue; the daemon dequeued and launched it (RUN_STARTING)
        assert timelines[run_id].at(dg.DagsterEventType.RUN_ENQUEUED) < timelines[run_id].at(dg.DagsterEventType.RUN_STARTING)

    # The two 70.3 refits: whichever started first ran alone; the other stayed queued until
    # it had finished, though it had been submitted while the first was still running.
    earlier, later = sorted((timelines[first_703], timelines[second_703]), key=lambda t: t.window[0])
    assert later.at(dg.DagsterEventType.RUN_ENQUEUED) < earlier.window[1], f"the runs were not concurrent:\n{summary}"
    assert later.at(dg.DagsterEventType.RUN_STARTING) >= earlier.window[1], summary
    assert later.window[0] >= earlier.window[1], summary
    step = "bayesian_predictions"
    # the later run's first step of the distance (the split, which holds the guard) waited for the whole earlier run
    assert later.at(dg.DagsterEventType.STEP_START, "holdout_split") > earlier.at(dg.DagsterEventType.STEP_SUCCESS, step)

    # The 140.6 refit is not held back by them: it ran while a 70.3 refit was running.
    start, end = timelines[other].window
    assert start < earlier.window[1] and earlier.window[0] < end, f"the 140.6 run did not overlap:\n{summary}"

    # The 70.3 predictions on disk are exactly the later run's, and a valid table.
    table = pd.read_csv(Path(instance_env["RACEDAYAI_OUTPUT_DIR"]) / "bayesian_predictions_70.3.csv")
    assert tuple(table.columns) == PREDICTION_COLUMNS + INTERVAL_COLUMNS + APPENDED_COLUMNS
    assert len(table) > 1000 and (table["event_distance"].astype(str) == "70.3").all()
    assert table[["bayes_pred", "bayes_std"]].notna().all().all() and (table["bayes_std"] > 0).all()
    wrote_earlier, wrote_later = earlier.materializations[step], later.materializations[step]
    assert len(table) == wrote_later["rows"]
    # each run published its own artifact, and `latest` (moved only after the CSV's write) names the later one's
    assert wrote_earlier["posterior_artifact"] != wrote_later["posterior_artifact"]
    out = Path(instance_env["RACEDAYAI_OUTPUT_DIR"])
    assert str(latest_artifact(out, "70.3")) == wrote_later["posterior_artifact"]
    # the metadata shows 5 significant digits
    assert table["bayes_pred"].mean() / 3600 == pytest.approx(wrote_later["mean_prediction_h"], rel=1e-4)
    assert (Path(instance_env["RACEDAYAI_OUTPUT_DIR"]) / "bayesian_predictions_140.6.csv").stat().st_size > 0


def _fake_run(instance: dg.DagsterInstance, tags: dict[str, str], started_at: float | None) -> str:
    """A run record as a refit leaves it while it runs: STARTED at `started_at`, or STARTING."""
    status = dg.DagsterRunStatus.NOT_STARTED if started_at else dg.DagsterRunStatus.STARTING
    run = instance.add_run(dg.DagsterRun(job_name=REFIT_JOB, run_id=str(uuid.uuid4()), tags=tags, status=status))
    if started_at:
        start = dg.DagsterEvent(event_type_value=dg.DagsterEventType.RUN_START.value, job_name=REFIT_JOB)
        instance.report_dagster_event(start, run_id=run.run_id, timestamp=started_at)
    return run.run_id


def _finish(instance: dg.DagsterInstance, run_id: str, at: float) -> None:
    done = dg.DagsterEvent(event_type_value=dg.DagsterEventType.RUN_SUCCESS.value, job_name=REFIT_JOB)
    instance.report_dagster_event(done, run_id=run_id, timestamp=at)


def test_of_two_running_refits_of_a_distance_only_the_earlier_goes_on(dagster_home):
    instance = dg.DagsterInstance.get()
    now = time.time()
    other_distance = _fake_run(instance, both("140.6"), now - 400)
    first = _fake_run(instance, both("70.3"), now - 300)
    from_ui = _fake_run(instance, {PARTITION_TAG: "70.3"}, now - 200)  # the UI sets only the partition tag
    own = _fake_run(instance, both("70.3"), now - 100)
    _fake_run(instance, both("70.3"), None)  # dequeued, not started yet: it will see `own`

    assert instance.get_run_by_id(own).status == dg.DagsterRunStatus.STARTED
    assert earlier_active_refit(instance, first, "70.3") is None  # the earliest goes on
    assert earlier_active_refit(instance, other_distance, "140.6") is None
    assert earlier_active_refit(instance, from_ui, "70.3").dagster_run.run_id == first
    assert earlier_active_refit(instance, own, "70.3").dagster_run.run_id == first
    _finish(instance, first, now - 50)
    assert earlier_active_refit(instance, own, "70.3").dagster_run.run_id == from_ui
    _finish(instance, from_ui, now - 40)
    assert earlier_active_refit(instance, own, "70.3") is None


@pytest.mark.slow
def test_cli_refit_stops_before_writing_while_a_refit_of_its_distance_runs(dagster_home, small_inputs, tmp_path):
    """`racedayai-bayes refit` bypasses the run queue: the posterior step rejects it instead."""
    instance = dg.DagsterInstance.get()
    running = _fake_run(instance, both("70.3"), time.time() - 60)
    out = tmp_path / "outputs"
    out.mkdir()
    previous = out / "bayesian_predictions_70.3.csv"
    previous.write_text(",".join(PREDICTION_COLUMNS) + "\n")

    env = _env(dagster_home, small_inputs, out)
    proc = subprocess.run(
        [sys.executable, "-m", "racedayai_bayes.cli", "refit", "--distance", "70.3", *SHORT_CLI_ARGS],
        capture_output=True, text=True, env=env, cwd=REPO, timeout=600,
    )
    output = proc.stdout + proc.stderr
    assert proc.returncode == 1, output[-3000:]
    assert f"another refit of 70.3 is running: run {running}" in output, output[-3000:]
    # and how to queue one instead, with the partition a launched run needs
    assert """`dagster job launch -w workspace.yaml -j refit --tags '{"dagster/partition": "70.3"}'`""" in output
    assert previous.read_text() == ",".join(PREDICTION_COLUMNS) + "\n"

    (cli_run,) = [r for r in instance.get_runs() if r.run_id != running]
    assert cli_run.status == dg.DagsterRunStatus.FAILURE
    written = {
        e.dagster_event.event_specific_data.materialization.asset_key.to_user_string()
        for e in instance.all_logs(cli_run.run_id, of_type=dg.DagsterEventType.ASSET_MATERIALIZATION)
    }
    assert "model_frame" in written  # shared by both distances: not guarded
    assert not written & {*REFIT_ASSETS}


def test_dead_run_reaper_fails_runs_whose_process_is_gone():
    """A STARTED run whose process no longer exists is marked failed; a live one is left alone."""
    import subprocess
    import sys

    from racedayai_bayes.defs.concurrency import reap_dead_runs
    from racedayai_bayes.definitions import defs

    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_pid = int(gone.stdout)
    with dg.instance_for_test() as instance:
        job = defs.resolve_job_def("refit")
        runs = {}
        for name, pid in (("dead", dead_pid), ("alive", os.getpid())):
            run = instance.create_run_for_job(job, tags={"dagster/partition": "70.3"})
            instance.handle_new_event(
                dg.EventLogEntry(
                    error_info=None, level="DEBUG", user_message="", run_id=run.run_id, timestamp=time.time(),
                    dagster_event=dg.DagsterEvent(dg.DagsterEventType.RUN_START.value, job_name=job.name, pid=pid),
                )
            )
            runs[name] = run.run_id
        assert instance.get_run_by_id(runs["dead"]).status == dg.DagsterRunStatus.STARTED
        assert reap_dead_runs(instance) == [runs["dead"]]
        assert instance.get_run_by_id(runs["dead"]).status == dg.DagsterRunStatus.FAILURE
        assert instance.get_run_by_id(runs["alive"]).status == dg.DagsterRunStatus.STARTED
        assert reap_dead_runs(instance) == []
        # with a launcher whose workers run monitoring checks (one pod per run), a pid seen
        # from here says nothing about another pod's run: nothing is reaped, by the sensor
        # nor by a refit's guard (ensure_sole_refit), which calls the same function
        other = instance.create_run_for_job(job, tags={"dagster/partition": "140.6"})
        instance.handle_new_event(dg.EventLogEntry(
            error_info=None, level="DEBUG", user_message="", run_id=other.run_id, timestamp=time.time(),
            dagster_event=dg.DagsterEvent(dg.DagsterEventType.RUN_START.value, job_name=job.name, pid=dead_pid)))
        launcher = type(instance.run_launcher)
        original = launcher.supports_check_run_worker_health
        try:
            launcher.supports_check_run_worker_health = property(lambda self: True)
            assert reap_dead_runs(instance) == []
            assert instance.get_run_by_id(other.run_id).status == dg.DagsterRunStatus.STARTED
        finally:
            launcher.supports_check_run_worker_health = original
        assert reap_dead_runs(instance) == [other.run_id]  # one host again: reaped
        # a run whose process died while it was being canceled ends canceled
        canceling = instance.create_run_for_job(job, tags={"dagster/partition": "70.3"})
        instance.handle_new_event(dg.EventLogEntry(
            error_info=None, level="DEBUG", user_message="", run_id=canceling.run_id, timestamp=time.time(),
            dagster_event=dg.DagsterEvent(dg.DagsterEventType.RUN_START.value, job_name=job.name, pid=dead_pid)))
        instance.report_run_canceling(instance.get_run_by_id(canceling.run_id))
        assert reap_dead_runs(instance) == [canceling.run_id]
        assert instance.get_run_by_id(canceling.run_id).status == dg.DagsterRunStatus.CANCELED
        sensor = defs.resolve_sensor_def("dead_run_reaper")
        assert sensor.default_status == dg.DefaultSensorStatus.RUNNING
