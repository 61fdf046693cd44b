"""End to end: `racedayai-bayes refit` on the project's instance configuration.

Runs go through the real dagster.yaml in a temporary DAGSTER_HOME, with the multiprocess
executor spawning step processes, so the runs are visible to the UI afterwards.
"""

import contextlib
import os
import re
import subprocess
import sys

import dagster as dg
import pandas as pd
import pytest

from racedayai_bayes.cli import LOG_FOLDER

from .conftest import MODEL_ASSETS

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


# `make run` echoes the command line: one more line than the command prints
MAX_LINES = 60 - 1


def test_refit_both_distances_on_the_instance(dagster_home, small_inputs, tmp_path):
    out = tmp_path / "outputs"
    proc = _refit(["--warmup", "300", "--samples", "1000"], dagster_home, small_inputs, out)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    for name in ("bayesian_predictions_70.3.csv", "bayesian_predictions_140.6.csv", "bayesian_posterior_means.csv"):
        assert (out / name).stat().st_size > 0
    assert len(pd.read_csv(out / "bayesian_posterior_means.csv")) == 2

    shared = ("athlete_race", "athlete_profile", "cluster_assignments", "model_frame")
    first_lines = proc.stdout.splitlines()
    for step in shared:
        assert sum(bool(re.match(rf"  {step} +\d+\.\d s", line)) for line in first_lines) == 1, step
    assert not any(line.startswith("inputs unchanged") for line in first_lines)

    # the second refit, as a second `make run` (stdout is a pipe here, not a terminal)
    second = _refit(["--warmup", "300", "--samples", "1000"], dagster_home, small_inputs, out)
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    lines = second.stdout.splitlines()
    assert len(lines) <= MAX_LINES, second.stdout
    assert second.stderr == "" and "DEBUG" not in second.stdout
    # the inputs and the code are unchanged: the model frame the first refit stored is reused,
    # and both distances' runs (the later one in its own process) go straight to their steps
    (reuse,) = [line for line in lines if line.startswith("inputs unchanged since run")]
    assert "its model frame is reused (--rebuild-inputs reads them again)" in reuse
    for step in shared:
        assert not any(re.match(rf"  {step} ", line) for line in lines), step
    # one line per step as it finishes, with the partition and the seconds it took; the
    # posterior-means CSVs once, by a last run (its timing is checked below)
    for step in ("bayesian_posterior_means", "forecast_posterior_means"):
        assert sum(bool(re.match(rf"  {step} +\d+\.\d s", line)) for line in lines) == 1, step
    finished = [line.split(":")[0] for line in lines if re.match(r"refit (70\.3|140\.6|means): succeeded in", line)]
    assert sorted(finished) == ["refit 140.6", "refit 70.3", "refit means"]
    partitioned = ("holdout_split", *MODEL_ASSETS, "published_model", "bayesian_predictions")
    for distance in ("70.3", "140.6"):
        for step in partitioned:
            assert sum(bool(re.match(rf"  {step} \[{re.escape(distance)}\] +\d+\.\d s", line)) for line in lines) == 1, step
    # one check line per posterior (each model and the published one) and distance, the
    # drift against the first refit included; the sampler and coverage checks passed
    checks = [line for line in lines if re.match(r"  (posterior_\w+|published_model) (70\.3|140\.6): ", line)]
    assert sorted(c.split(":")[0].strip() for c in checks) == sorted(
        f"{a} {d}" for a in (*MODEL_ASSETS, "published_model") for d in ("70.3", "140.6"))
    for c in checks:
        assert "prediction_drift" in c or c.lstrip().startswith("published_model"), c
        assert "(ERROR)" not in c, c
    # the full event stream went to the log file it names
    (log_line,) = [line for line in lines if line.startswith("full event log")]
    log = (dagster_home / LOG_FOLDER).joinpath(log_line.rsplit("/", 1)[1])
    assert str(log) in log_line and " - DEBUG - " in log.read_text()

    instance = dg.DagsterInstance.from_config(str(dagster_home))
    runs = instance.get_runs()
    assert sorted(r.tags.get("dagster/partition", r.tags.get("racedayai/run")) for r in runs) == [
        "140.6", "140.6", "70.3", "70.3", "posterior means", "posterior means"]
    assert all(r.status == dg.DagsterRunStatus.SUCCESS for r in runs)
    # the second distance's run started before the first had finished: they ran side by side
    by_partition = {}
    for record in instance.get_run_records(dg.RunsFilter(tags={"dagster/partition": "70.3"}), limit=1):
        by_partition["70.3"] = record
    for record in instance.get_run_records(dg.RunsFilter(tags={"dagster/partition": "140.6"}), limit=1):
        by_partition["140.6"] = record
    assert by_partition["140.6"].start_time < by_partition["70.3"].end_time
    # the model frame is the first refit's: the second one's runs read it, and stored none
    frame_run = instance.get_latest_materialization_event(dg.AssetKey("model_frame")).run_id
    assert frame_run not in (by_partition["70.3"].dagster_run.run_id, by_partition["140.6"].dagster_run.run_id)
    # the means run of the second refit started once both distances' runs had stored the
    # posteriors it reads (it may run beside the later run's last steps, which it does not read)
    (means,) = instance.get_run_records(dg.RunsFilter(tags={"racedayai/run": "posterior means"}), limit=1)
    stored_at = [e.timestamp for d in ("70.3", "140.6")
                 for e in instance.all_logs(by_partition[d].dagster_run.run_id, of_type=dg.DagsterEventType.ASSET_MATERIALIZATION)
                 if e.dagster_event.asset_key in (dg.AssetKey("posterior_seed_profile"), dg.AssetKey("posterior_forecast"))]
    assert len(stored_at) == 4 and means.start_time >= max(stored_at)
    for run in runs:
        for entry in instance.all_logs(run.run_id, of_type=dg.DagsterEventType.ASSET_MATERIALIZATION):
            mat = entry.dagster_event.event_specific_data.materialization
            if mat.asset_key in (dg.AssetKey("posterior_seed_profile"), dg.AssetKey("posterior_seed_asof")):
                # the default engine samples in numpy: the step never started JAX (a NUTS
                # engine records the backend it ran on; test_definitions pins it to the CPU)
                assert "jax_backend" not in mat.metadata
    logs = [e.user_message for e in instance.all_logs(by_partition["70.3"].dagster_run.run_id)]
    # the UI keeps everything, the samplers' progress included
    assert any("independence sampler" in m and "steps per chain" in m for m in logs)


def test_refit_exits_non_zero_and_keeps_outputs_when_a_check_fails(dagster_home, small_inputs, tmp_path):
    out = tmp_path / "outputs"
    out.mkdir()
    previous = out / "bayesian_predictions_70.3.csv"
    previous.write_text("athlete_hash,event_distance,event_year,total_sec,bayes_pred,bayes_std\n")
    # every model's chains far too short: no model may be published
    proc = _refit(
        ["--distance", "70.3", "--engine", "rowwise", "--warmup", "20", "--samples", "20", "--forecast-samples", "20"],
        dagster_home, small_inputs, out,
    )
    assert proc.returncode == 1
    (check_line,) = [line for line in proc.stdout.splitlines() if line.startswith("  posterior_seed_asof 70.3: ")]
    assert "checks FAILED" in check_line and "ess_bulk_min FAIL (ERROR): min bulk ESS" in check_line
    (gate,) = [line for line in proc.stdout.splitlines() if line.startswith("  published_model 70.3: ")]
    assert "publishable FAIL (ERROR)" in gate and "nothing published" in gate
    # one line for the step that could not write: the gate. The posterior-means files keep
    # what they had (every posterior of their model failed its checks), which the failed
    # checks above say, and is no failure of its own
    assert proc.stderr.strip().splitlines() == [
        "error: published_model [70.3]: blocking checks failed (see the checks above); its outputs were not written",
    ]
    assert previous.read_text().count("\n") == 1
    # the means steps read every distance's posterior; 140.6 was never refitted here: a note in
    # the project's words (Dagster's said "... allow_missing_partitions=True")
    assert "allow_missing_partitions" not in proc.stdout
    notes = [line for line in proc.stdout.splitlines() if "no stored value of distance 140.6 yet" in line]
    assert notes and all(" note: " in line for line in notes), proc.stdout


def _stored_a_posterior(instance, run_id: str) -> bool:
    """Whether the run stored a posterior that the posterior means are made of (the command's own test)."""
    from racedayai_bayes.cli import _materialized_keys, _refit_keys
    from racedayai_bayes.definitions import defs

    return bool(_materialized_keys(instance, run_id) & set(_refit_keys(defs).means_inputs))


def _stacks(proc, dagster_home) -> str:
    """The processes of a command that does not end, and their threads' stacks: every process
    of the command writes them to the refit's log on SIGUSR1 (stop_watchdog.py)."""
    import signal
    import time

    tree = subprocess.run(["ps", "-ww", "-o", "pid,ppid,stat,etime,args", "-g", str(proc.pid)], capture_output=True, text=True).stdout
    os.killpg(proc.pid, signal.SIGUSR1)
    time.sleep(2)
    logs = sorted((dagster_home / LOG_FOLDER).glob("refit-*.log"))
    tail = logs[-1].read_text(errors="replace")[-30000:] if logs else "(no refit log)"
    return f"{tree}\n{tail}"


def _ctrl_c(proc, dagster_home, timeout_s: float) -> tuple[str, str, float]:
    """Ctrl-C on the command's terminal (SIGINT to its process group); its stdout, stderr and
    how long it took to end. A command still running ``timeout_s`` later fails the test with
    its process tree and every process's stacks."""
    import signal
    import time

    os.killpg(proc.pid, signal.SIGINT)
    t0 = time.monotonic()
    try:
        out, err = proc.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        pytest.fail(f"the command still ran {timeout_s:.0f} s after its Ctrl-C; its processes' stacks:\n"
                    f"{_stacks(proc, dagster_home)}")
    return out, err, time.monotonic() - t0


def test_ctrl_c_stops_both_distances_runs_and_leaves_no_process(dagster_home, small_inputs, tmp_path):
    """Ctrl-C on the terminal (SIGINT to the command's process group) while both distances'
    runs execute, each in its own process: both runs end, none stays in progress, and every
    process of the command has exited."""
    import signal
    import time

    env = {**os.environ, "DAGSTER_HOME": str(dagster_home), "RACEDAYAI_INPUT_DIR": str(small_inputs),
           "RACEDAYAI_OUTPUT_DIR": str(tmp_path / "outputs")}
    # the instance's storage made before the command starts: both creating the same fresh SQLite
    # database at once can fail in either ("table alembic_version already exists", seen in CI)
    instance = dg.DagsterInstance.from_config(str(dagster_home))
    proc = subprocess.Popen([sys.executable, "-m", "racedayai_bayes.cli", "refit"], env=env, start_new_session=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    in_progress = (dg.DagsterRunStatus.STARTED, dg.DagsterRunStatus.STARTING, dg.DagsterRunStatus.NOT_STARTED)
    deadline = time.monotonic() + 300
    try:
        # until the second distance's run executes and the first has stored a posterior that
        # the posterior means are made of (a refit that was interrupted starts no means run)
        while time.monotonic() < deadline:
            runs = {r.tags.get("dagster/partition"): r for r in instance.get_runs()}
            if ("140.6" in runs and runs["140.6"].status == dg.DagsterRunStatus.STARTED
                    and _stored_a_posterior(instance, runs["70.3"].run_id)):
                break
            assert proc.poll() is None, proc.communicate()
            time.sleep(0.2)
        else:
            pytest.fail("the 140.6 run never started")
        assert runs["70.3"].status == dg.DagsterRunStatus.STARTED
        out, err, _ = _ctrl_c(proc, dagster_home, 120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 1, out + err
    assert "error: interrupted: " in err and "stopped before finishing" in err
    assert "not writing the posterior means: the refit was interrupted" in out
    runs = instance.get_runs()
    assert {r.tags.get("dagster/partition") for r in runs} == {"70.3", "140.6"}  # no means run
    assert all(r.status == dg.DagsterRunStatus.FAILURE for r in runs), [(r.tags, r.status) for r in runs]
    assert not any(r.status in in_progress for r in runs)
    # nothing of the command is left (its forkservers exit once their parent has: give them time)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            os.killpg(proc.pid, 0)
        except ProcessLookupError:
            break
        time.sleep(0.2)
    else:
        left = subprocess.run(["ps", "-ww", "-o", "pid,stat,args", "-g", str(proc.pid)], capture_output=True, text=True).stdout
        pytest.fail(f"processes of the command still running 30 s after it exited:\n{left}")


def test_a_later_distance_process_whose_command_is_gone_exits(dagster_home, small_inputs, tmp_path):
    """The process that runs a later distance waits for the first run; if the command that
    started it dies before that run begins, it exits instead of waiting for ever."""
    import time

    env = {**os.environ, "DAGSTER_HOME": str(dagster_home), "RACEDAYAI_INPUT_DIR": str(small_inputs),
           "RACEDAYAI_OUTPUT_DIR": str(tmp_path / "outputs")}
    later = f"{sys.executable} -m racedayai_bayes.cli refit --distance 140.6 --after '70.3={tmp_path}/refit.log'"
    # a stand-in for the refit command: it starts the later process, then dies without a run
    shell = subprocess.run(["sh", "-c", f"{later} >/dev/null 2>&1 & echo $!; sleep 8"], env=env,
                           capture_output=True, text=True, timeout=60)
    pid = int(shell.stdout.split()[0])
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            state = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[0]
        except FileNotFoundError:
            break
        if state == "Z":  # exited, not yet reaped by its new parent
            break
        time.sleep(0.2)
    else:
        os.kill(pid, 9)
        pytest.fail("the orphaned later-distance process kept waiting")
    assert dg.DagsterInstance.from_config(str(dagster_home)).get_runs() == []


def test_ctrl_c_stops_a_step_that_waits_for_a_cpu_slot(dagster_home, small_inputs, tmp_path):
    """A step that waits for a CPU slot (both held here, as by another run's steps that go on)
    stops waiting on Ctrl-C: the command ends at once, its run interrupted, not when a slot frees."""
    import signal
    import time

    from racedayai_bayes.lib import cpu_slots

    instance = dg.DagsterInstance.from_config(str(dagster_home))
    folder = os.path.join(instance.storage_directory(), "cpu_slots")
    held = [cpu_slots.acquire(folder, 2), cpu_slots.acquire(folder, 2)]
    env = {**os.environ, "DAGSTER_HOME": str(dagster_home), "RACEDAYAI_INPUT_DIR": str(small_inputs),
           "RACEDAYAI_OUTPUT_DIR": str(tmp_path / "outputs"), "RACEDAYAI_CPU_SLOTS": "2"}
    proc = subprocess.Popen([sys.executable, "-m", "racedayai_bayes.cli", "refit", "--distance", "70.3"], env=env,
                            start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        waiting = False
        while not waiting and time.monotonic() < deadline:
            assert proc.poll() is None, proc.communicate()
            for run in instance.get_runs():
                waiting |= any("waiting for one of 2 CPU slots" in (e.user_message or "") for e in instance.all_logs(run.run_id))
            time.sleep(0.2)
        assert waiting, "no step waited for a CPU slot"
        out, err, stopped_s = _ctrl_c(proc, dagster_home, 60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        for slot in held:
            slot.release()
    assert proc.returncode == 1, out + err
    assert "error: interrupted: " in err, out + err
    assert stopped_s < 25, f"the command took {stopped_s:.1f} s to stop (the stop watchdog's grace is 30 s)"
    (run,) = instance.get_runs()
    assert run.status == dg.DagsterRunStatus.FAILURE


def _step_processes_of(command_pid: int) -> list[int]:
    """The step processes of a refit command: the children of its step server (the forkserver
    the command started). Read from /proc: ``ps`` cuts its lines at 80 columns when its output
    is not a terminal, which can cut "forkserver" off a long interpreter path."""
    from pathlib import Path

    parents, commands = {}, {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            commands[int(entry.name)] = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:  # gone meanwhile
            continue
        parents[int(entry.name)] = int(stat.rsplit(")", 1)[1].split()[1])
    servers = {pid for pid, ppid in parents.items() if ppid == command_pid and "forkserver" in commands.get(pid, "")}
    return [pid for pid, ppid in parents.items() if ppid in servers]


def _a_step_started(instance) -> bool:
    """Whether the newest run of ``instance`` has started a step."""
    runs = instance.get_runs(limit=1)
    return bool(runs) and bool(instance.all_logs(runs[0].run_id, of_type=dg.DagsterEventType.STEP_START))


def test_ctrl_c_kills_a_step_that_does_not_stop(dagster_home, small_inputs, tmp_path):
    """A step process that cannot obey the interrupt (stopped here with SIGSTOP) does not keep
    the command waiting: after the grace period the watchdog continues it, has it write its
    stacks and kills it if it has not ended by then; the command ends, saying so, and the run
    is failed and counted as interrupted. (Killed while still stopped, the process left the
    executor waiting for ever: Dagster's stop request, a multiprocessing Event, waits for each
    process that waits on it to wake, and a stopped one never did; this test hung in about one
    run of two before the watchdog continued stopped processes, 2026-12-04.)"""
    import signal
    import time

    instance = dg.DagsterInstance.from_config(str(dagster_home))
    env = {**os.environ, "DAGSTER_HOME": str(dagster_home), "RACEDAYAI_INPUT_DIR": str(small_inputs),
           "RACEDAYAI_OUTPUT_DIR": str(tmp_path / "outputs"), "RACEDAYAI_STOP_GRACE_S": "3"}
    proc = subprocess.Popen([sys.executable, "-m", "racedayai_bayes.cli", "refit", "--distance", "70.3"], env=env,
                            start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    stopped = None
    try:
        deadline = time.monotonic() + 120
        while stopped is None and time.monotonic() < deadline:
            assert proc.poll() is None, proc.communicate()
            # a step of the run, not a helper the server may start while it preloads: look
            # only once a step has started. The run exists before that (its planned events are
            # written first), and a Ctrl-C then ends the command before anything ran (exit 130):
            # CI saw that once, 2026-12-06, when this waited for the run alone
            steps = _step_processes_of(proc.pid) if _a_step_started(instance) else []
            if steps:
                stopped = steps[0]
                os.kill(stopped, signal.SIGSTOP)
            time.sleep(0.1)
        assert stopped is not None, "no step process started"
        out, err, took = _ctrl_c(proc, dagster_home, 90)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        if stopped is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(stopped, signal.SIGKILL)
    assert proc.returncode == 1, out + err
    # the stopped step, continued after the grace period: killed, and said so, if it had not
    # ended a second after writing its stacks; or ended by the interrupt it then received
    # (before or after its step began: it may have been stopped as soon as it was forked)
    killed = re.search(r"refit 70\.3: \d+ step process(?:es)? \(pid ([\d, ]+)\) had not stopped 3 s after the interrupt: killed", out)
    assert not killed or str(stopped) in killed.group(1).split(", "), out
    assert "error: interrupted: " in err, out + err
    assert "bug" not in err, err
    assert 3 <= took < 60, took
    (run,) = instance.get_runs()
    assert run.status == dg.DagsterRunStatus.FAILURE
