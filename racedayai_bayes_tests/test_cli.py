"""The command line (cli.py): the refit report, configuration errors, bugs, --verbose.

The report is fed Dagster's event records as the watcher reads them from the instance; here
it is fed stand-ins with the same attributes, for runs that would take minutes (three models
per distance, long steps). The data-error cases of docs/failure-modes.md run the real
command in test_failure_modes.py.
"""

import argparse
import io
import logging
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from racedayai_bayes import cli
from racedayai_bayes.cli import RefitReport, main

from .conftest import REPO

MAX_LINES = 60


# --- stand-ins for Dagster's event records ---------------------------------------------------


class Clock:
    def __init__(self):
        self.now = 1_000_000.0

    def tick(self, seconds: float) -> float:
        self.now += seconds
        return self.now


def _entry(run_id, step, t, kind=None, data=None, message="", level=logging.DEBUG):
    event = None if kind is None else SimpleNamespace(event_type_value=kind, event_specific_data=data, partition=None)
    return SimpleNamespace(run_id=run_id, step_key=step, timestamp=t, dagster_event=event, user_message=message, level=level)


def _value(v):
    return SimpleNamespace(value=v)


def _check(asset, name, distance, passed=True, severity="ERROR", value=1.0):
    return SimpleNamespace(
        asset_key=SimpleNamespace(to_user_string=lambda: asset), check_name=name, passed=passed,
        severity=SimpleNamespace(value=severity), description=f"{name} said so", partition=None,
        metadata={"value": _value(value), "threshold": _value("<= 1"), "distance": _value(distance)},
    )


CHECKS = ("rhat_max", "ess_bulk_min", "divergences", "predictive_coverage", "prediction_drift")


def _feed_step(report, clock, run_id, step, *, progress_messages=0, seconds=1.0, checks=(), rows=None):
    """One step as its records arrive: start, progress messages spread over its time, checks, success."""
    report.feed(_entry(run_id, step, clock.tick(0.1), "STEP_START"))
    for i in range(1, progress_messages + 1):
        text = f"chain {1 + 2 * i // (progress_messages + 1)}/2: sampling {i}/{progress_messages} [progress {i}/{progress_messages}]"
        report.feed(_entry(run_id, step, clock.tick(seconds / progress_messages), message=text, level=logging.INFO))
    meta = {"rows": _value(rows)} if rows else {}
    report.feed(_entry(run_id, step, clock.tick(0.01), "ASSET_MATERIALIZATION",
                       SimpleNamespace(materialization=SimpleNamespace(metadata=meta))))
    for check in checks:
        report.feed(_entry(run_id, step, clock.tick(0.01), "ASSET_CHECK_EVALUATION", check))
    report.feed(_entry(run_id, step, clock.tick(0.01), "STEP_SUCCESS", SimpleNamespace(duration_ms=seconds * 1000)))


MODELS = ("seed_profile", "seed_asof", "forecast")


def _three_models_refit(report: RefitReport, models: tuple[str, ...] = MODELS) -> None:
    """`refit` of both distances with three models a distance, each long, with its checks and predictions."""
    clock = Clock()
    for i, distance in enumerate(("70.3", "140.6")):
        run_id = f"run-{distance}"
        report.run_starting(distance)
        report.run_started(run_id)
        if i == 0:
            for step in ("athlete_race", "athlete_profile", "cluster_assignments", "model_frame"):
                _feed_step(report, clock, run_id, step, rows=1000)
        for model in models:
            checks = [_check(model, name, distance) for name in CHECKS]
            _feed_step(report, clock, run_id, model, progress_messages=100, seconds=40.0, checks=checks)
            _feed_step(report, clock, run_id, f"{model}_predictions", progress_messages=10, seconds=8.0, rows=2_000_000)
        _feed_step(report, clock, run_id, "model_comparison")
        _feed_step(report, clock, run_id, "bayesian_posterior_means")
        report.run_finished(distance, True, [(m, distance) for m in models])
    for line in report.summary_lines():
        report.line(line)
    report.line("full event log, every Dagster event at every level: logs/refit.log")


def _report(tty=False) -> tuple[RefitReport, io.StringIO]:
    out = io.StringIO()
    partitioned = {*MODELS, *(f"{m}_predictions" for m in MODELS), "posterior", "bayesian_predictions"}
    return RefitReport(out, tty=tty, partitioned_steps=partitioned), out


def test_the_plain_report_of_three_models_a_distance_stays_within_60_lines():
    report, out = _report()
    _three_models_refit(report)
    lines = out.getvalue().splitlines()
    assert len(lines) + 1 <= MAX_LINES, "\n".join(lines)  # + make's echo of the command
    assert not any("DEBUG" in line for line in lines)
    # one line per finished step, with its partition where it has one
    assert sum(bool(re.match(r"  seed_asof \[70\.3\] +\d+\.\d s", line)) for line in lines) == 1
    assert sum(bool(re.match(r"  athlete_race +\d+\.\d s  1,000 rows", line)) for line in lines) == 1
    # at most one progress line per step and quarter
    progress = [line for line in lines if re.match(r"  \S+( \[[\d.]+\])? +\d+%  ", line)]
    per_step = {}
    for line in progress:
        per_step.setdefault(line.split("%")[0].rsplit(" ", 1)[0].strip(), []).append(line)
    assert per_step and all(len(v) <= 3 for v in per_step.values()), per_step
    # one check line per posterior: each model at each distance
    check_lines = [line for line in lines if re.match(r"  \w+ (70\.3|140\.6): all 5 checks pass", line)]
    assert len(check_lines) == len(MODELS) * 2


def test_the_check_summary_grows_by_one_line_a_posterior_and_nothing_else_a_model():
    def count(models):
        report, out = _report()
        _three_models_refit(report, models)
        return out.getvalue().splitlines()

    one, three = count(("seed_profile",)), count(("seed_profile", "seed_asof", "forecast"))
    # two more models at two distances: four more check lines; the rest are steps and their progress
    assert sum(": all 5 checks pass" in line for line in three) - sum(": all 5 checks pass" in line for line in one) == 4


def test_the_report_on_a_terminal_draws_a_bar_and_clears_it_before_each_line():
    report, out = _report(tty=True)
    clock = Clock()
    report.run_starting("70.3")
    report.run_started("r")
    report.feed(_entry("r", "seed_asof", clock.tick(1), "STEP_START"))
    report.feed(_entry("r", "seed_asof", clock.tick(1), message="chain 1/2: warmup 750/1500 [progress 750/6000]", level=logging.INFO))
    report.tick()
    text = out.getvalue()
    assert "\r\x1b[K" in text and "[##" in text and "chain 1/2: warmup 750/1500" in text
    assert "\n  seed_asof" not in text  # on a terminal progress is the bar, not lines
    report.feed(_entry("r", "seed_asof", clock.tick(1), "STEP_SUCCESS", SimpleNamespace(duration_ms=3000.0)))
    tail = out.getvalue()[len(text):]
    assert tail.startswith("\r\x1b[K")  # the bar is cleared before the finished line
    assert "seed_asof [70.3]" in tail and "3.0 s" in tail


def _report_of_a_run() -> tuple[RefitReport, io.StringIO, Clock]:
    """A report of one 70.3 run, "r", as the watcher has found it."""
    report, out = _report()
    report.run_starting("70.3")
    report.run_started("r")
    return report, out, Clock()


def test_a_failed_step_is_classified_data_error_check_failure_or_bug():
    report, _, clock = _report_of_a_run()
    error = SimpleNamespace(cls_name="Failure", message="Failure: x", cause=None, to_string=lambda: "tb")
    report.feed(_entry("r", "athlete_race", clock.tick(1), "STEP_START"))
    report.feed(_entry("r", "athlete_race", clock.tick(1), "STEP_FAILURE",
                       SimpleNamespace(user_failure_data=SimpleNamespace(description="a.csv: file not found"), error=error)))
    wrapped = SimpleNamespace(cls_name="DagsterExecutionHandleOutputError", message="oops", to_string=lambda: "tb",
                              cause=SimpleNamespace(cls_name="OutputWriteError", message="x.OutputWriteError: could not write s", cause=None))
    report.feed(_entry("r", "model_frame", clock.tick(1), "STEP_FAILURE", SimpleNamespace(user_failure_data=None, error=wrapped)))
    checks = SimpleNamespace(cls_name="DagsterAssetCheckFailedError", message="1 blocking check failed", cause=None, to_string=lambda: "tb")
    report.feed(_entry("r", "posterior", clock.tick(1), "STEP_FAILURE", SimpleNamespace(user_failure_data=None, error=checks)))
    bug = SimpleNamespace(cls_name="KeyError", message="KeyError: 'x'", cause=None,
                          to_string=lambda: "KeyError: 'x'\n\nStack Trace:\n  File \"a.py\", line 1")
    report.feed(_entry("r", "bayesian_predictions", clock.tick(1), "STEP_FAILURE", SimpleNamespace(user_failure_data=None, error=bug)))
    messages = report.error_messages()
    assert messages[0] == "a.csv: file not found"
    assert messages[1] == "could not write s"  # the data error behind Dagster's wrapper
    assert messages[2].startswith("posterior [70.3]: blocking checks failed")
    assert messages[3].startswith("bayesian_predictions [70.3] raised an unexpected error (a bug)")
    assert 'File "a.py", line 1' in messages[3]  # a bug keeps its traceback


def test_interrupted_steps_are_said_once_and_not_called_a_data_error():
    report, out, clock = _report_of_a_run()
    stop = SimpleNamespace(cls_name="DagsterExecutionInterruptedError", message="", cause=None, to_string=lambda: "tb")
    for step in ("posterior", "bayesian_predictions"):
        report.feed(_entry("r", step, clock.tick(1), "STEP_START"))
        report.feed(_entry("r", step, clock.tick(1), "STEP_FAILURE", SimpleNamespace(user_failure_data=None, error=stop)))
    assert report.error_messages() == [
        "interrupted: posterior [70.3], bayesian_predictions [70.3] stopped before finishing; their outputs were not written"]
    assert "FAILED after 1.0 s: interrupted (Ctrl-C)" in out.getvalue()


def _error_info(raise_it):
    """Dagster's record of the exception ``raise_it()`` raises, as a step process sends it."""
    from dagster._utils.error import serializable_error_info_from_exc_info

    try:
        raise_it()
    except BaseException:  # noqa: BLE001 - KeyboardInterrupt too
        return serializable_error_info_from_exc_info(sys.exc_info())


def test_a_run_whose_step_processes_were_all_interrupted_before_their_steps_is_said_interrupted():
    """A Ctrl-C that reaches step processes while they wait for a CPU slot, before their steps
    have started, can fail the run with Dagster's DagsterSubprocessError, which gives each
    process's error: an interruption if each is one, a bug otherwise (as before)."""
    from dagster._core.errors import DagsterExecutionInterruptedError, DagsterSubprocessError

    def stopped():
        raise DagsterExecutionInterruptedError()

    def ctrl_c():
        raise KeyboardInterrupt()

    def key_error():
        raise KeyError("x")

    def syntax_error():  # its text starts with its file and line, not its name
        compile("def (", "m.py", "exec")

    def run_failure(*children):
        # the message as Dagster's multiprocess executor writes it (dagster/_core/executor/multiprocess.py)
        infos = {pid: _error_info(child) for pid, child in enumerate(children, 11)}
        text = "During multiprocess execution errors occurred in child processes:\n" + "\n".join(
            f"In process {pid}: {info.to_string()}" for pid, info in infos.items())

        def fail_the_run():
            raise DagsterSubprocessError(text, subprocess_error_infos=list(infos.values()))

        error = _error_info(fail_the_run)
        assert error.cls_name == "DagsterSubprocessError"
        report, out, clock = _report_of_a_run()
        report.feed(_entry("r", None, clock.tick(1), "RUN_FAILURE", SimpleNamespace(error=error)))
        return report.error_messages()

    assert run_failure(stopped, ctrl_c) == ["interrupted: run r stopped before finishing; their outputs were not written"]
    for bug in (key_error, syntax_error):
        messages = run_failure(stopped, bug)
        assert len(messages) == 1 and messages[0].startswith("run r raised an unexpected error (a bug)"), messages


# --- the real command: settings, DAGSTER_HOME, --verbose, a bug -------------------------------


def _run_cli(argv, capfd):
    capfd.readouterr()
    code = main(argv)
    captured = capfd.readouterr()
    return code, captured.out, captured.err


@pytest.mark.parametrize("flags, says", [
    (["--warmup", "0"], "--warmup (num_warmup): Input should be greater than or equal to 1"),
    (["--forecast-samples", "0"], "--forecast-samples (num_samples): Input should be greater than or equal to 1"),
    (["--chains", "1"], "--chains (num_chains): Input should be greater than or equal to 2"),
    (["--holdout", "none", "--holdout-season", "2025"],
     "--holdout/--holdout-season: holdout_season 2025 needs the holdout rule latest_year, not none"),
])
def test_invalid_settings_end_with_one_message_and_exit_1(dagster_home, small_inputs, monkeypatch, tmp_path, capfd,
                                                          flags, says):
    """Settings that cannot work end before any run starts, with one line naming the flag."""
    monkeypatch.setenv("RACEDAYAI_INPUT_DIR", str(small_inputs))
    monkeypatch.setenv("RACEDAYAI_OUTPUT_DIR", str(tmp_path / "out"))
    code, out, err = _run_cli(["refit", *flags], capfd)
    assert code == 1
    assert err.strip().splitlines() == [err.strip()] and err.startswith("error: invalid refit settings: ")
    assert says in err and "Traceback" not in out + err
    assert "run " not in out  # no run was made
    assert not list((dagster_home / cli.LOG_FOLDER).glob("refit-*.log"))  # and no log of one is left


def test_a_bad_alert_interval_ends_with_one_message_and_exit_1(dagster_home, small_inputs, monkeypatch, tmp_path, capfd):
    """RACEDAYAI_ALERT_INTERVAL_S is read as the code location loads; the command checks it first."""
    monkeypatch.setenv("RACEDAYAI_INPUT_DIR", str(small_inputs))
    monkeypatch.setenv("RACEDAYAI_OUTPUT_DIR", str(tmp_path / "out"))
    monkeypatch.setenv("RACEDAYAI_ALERT_INTERVAL_S", "ten")
    for flags in ([], ["--verbose"]):  # checked before the step server, which imports the code location, starts
        code, out, err = _run_cli(["refit", *flags], capfd)
        assert code == 1 and "Traceback" not in out + err and "run " not in out
        assert err.strip() == ("error: RACEDAYAI_ALERT_INTERVAL_S='ten': the alert sensors' interval must be a whole "
                               "number of seconds from 1 to 3600 (unset: 10)")
        assert not list((dagster_home / cli.LOG_FOLDER).glob("refit-*.log"))


def test_a_dagster_home_without_dagster_yaml_is_noted(tmp_path, small_inputs, monkeypatch, capfd):
    """An empty folder as DAGSTER_HOME works (Dagster's defaults), but without the repository's
    run queue limits: the command says so on its first line."""
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path))
    monkeypatch.setenv("RACEDAYAI_INPUT_DIR", str(small_inputs))
    code, out, err = _run_cli(["refit", "--warmup", "0"], capfd)
    assert code == 1 and err.startswith("error: invalid refit settings")
    assert out.startswith(f"note: DAGSTER_HOME={tmp_path} has no dagster.yaml, so Dagster's defaults apply")


def test_an_unset_dagster_home_ends_with_one_message_and_exit_1(monkeypatch, capfd):
    monkeypatch.delenv("DAGSTER_HOME", raising=False)
    code, out, err = _run_cli(["refit"], capfd)
    assert code == 1 and out == ""
    assert err.startswith("error: DAGSTER_HOME is not set: run `make run`") and err.count("\n") == 1


def test_a_frame_from_typed_on_the_command_line_ends_with_one_message_and_exit_1(dagster_home, capfd):
    """--frame-from is what refit hands its later distance's process (with --after): typed by
    hand it would let that process start at once on whatever frame is stored."""
    code, out, err = _run_cli(["refit", "--frame-from", "some-run"], capfd)
    assert code == 1 and out == ""
    assert err.startswith("error: --frame-from is refit's own, for the process of its later distance") and err.count("\n") == 1


@pytest.mark.parametrize("config", [
    "run_storage:\n  module: no.such.module\n  class: Nope\n",  # a storage class that cannot be imported
    "run_storage: {module: [\n",  # not YAML: the parser's message spans several lines
], ids=["unknown class", "not YAML"])
def test_a_broken_instance_configuration_ends_with_one_message_and_no_log(tmp_path, capfd, config):
    """The step server starts before the instance is opened; a dagster.yaml that cannot be
    loaded still ends in one line naming DAGSTER_HOME and the file to fix, and leaves no refit
    log behind."""
    (tmp_path / "dagster.yaml").write_text(config)
    env = {**os.environ, "DAGSTER_HOME": str(tmp_path)}
    proc = subprocess.run([sys.executable, "-m", "racedayai_bayes.cli", "refit"], capture_output=True, text=True,
                          env=env, timeout=300)
    assert proc.returncode == 1 and proc.stdout == ""
    assert proc.stderr.startswith(f"error: DAGSTER_HOME={tmp_path}: ") and proc.stderr.count("\n") == 1, proc.stderr
    assert f"; fix {tmp_path / 'dagster.yaml'} " in proc.stderr
    assert not list((tmp_path / cli.LOG_FOLDER).glob("refit-*.log"))


def test_a_relative_dagster_home_is_said_without_advice_about_a_dagster_yaml(tmp_path):
    """Dagster refuses a relative DAGSTER_HOME: the message says so, and does not send the
    operator to fix a dagster.yaml that is not the problem (or not there)."""
    env = {**os.environ, "DAGSTER_HOME": "relative-home"}
    proc = subprocess.run([sys.executable, "-m", "racedayai_bayes.cli", "refit"], capture_output=True, text=True,
                          env=env, timeout=300, cwd=tmp_path)
    assert proc.returncode == 1 and proc.stderr.startswith("error: DAGSTER_HOME=relative-home: "), proc.stderr
    assert "absolute path" in proc.stderr and "fix " not in proc.stderr, proc.stderr


def test_predicts_help_names_the_columns_each_model_reads():
    """predict --input's help lists each model's predict_columns, in order (the published model
    may be any of the three; before 2026-12-06 it listed seed_profile's only)."""
    import re
    from types import SimpleNamespace

    from racedayai_bayes.lib.models.forecast.fit import FittedForecast
    from racedayai_bayes.lib.models.seed.fit import FittedSeed

    columns = {
        "seed_profile": FittedSeed.predict_columns.fget(SimpleNamespace(kind="profile")),
        "seed_asof": FittedSeed.predict_columns.fget(SimpleNamespace(kind="asof")),
        "forecast": FittedForecast.predict_columns,
    }
    from racedayai_bayes.lib.models.base import registry

    assert set(columns) == set(registry())  # every model the pipeline fits
    for name, wanted in columns.items():
        listed = re.search(rf"{name} ([a-z_, ]+?)[;.]", cli.PREDICT_INPUT_HELP).group(1)
        assert tuple(listed.split(", ")) == wanted, name


def test_a_usage_error_exits_2():
    with pytest.raises(SystemExit) as info:
        main(["refit", "--distance", "sprint"])
    assert info.value.code == 2


@pytest.fixture
def step_tails_that_wait(monkeypatch):
    """Dagster's local compute-log manager copies a step's output to the step process's
    stderr (the refit's log, --verbose) with ``tail -F`` processes that it terminates as the
    step ends, copied or not (dagster-io/dagster#23336; a documented known limit, README "The
    full log"): on a loaded machine a short failing step's last lines, its STEP_FAILURE,
    can miss the stream. Here its tails get Dagster's own grace
    (DAGSTER_COMPUTE_LOG_TAIL_WAIT_AFTER_FINISH), so that what is tested is this command's
    streaming, not that race. The step processes fork from a server that took its
    environment as it started: the test's commands start a new one, and it is stopped
    after them, so that no other test's steps wait."""
    from racedayai_bayes.step_server import stop_step_server

    stop_step_server()
    monkeypatch.setenv("DAGSTER_COMPUTE_LOG_TAIL_WAIT_AFTER_FINISH", "0.5")
    yield
    stop_step_server()


def test_verbose_streams_dagster_events_and_the_log_file_keeps_them(dagster_home, monkeypatch, tmp_path, capfd,
                                                                    step_tails_that_wait):
    monkeypatch.setenv("RACEDAYAI_INPUT_DIR", str(tmp_path / "no-inputs"))
    monkeypatch.setenv("RACEDAYAI_OUTPUT_DIR", str(tmp_path / "out"))
    quiet_code, quiet_out, quiet_err = _run_cli(["refit"], capfd)
    code, out, err = _run_cli(["refit", "--verbose"], capfd)
    assert quiet_code == code == 1
    assert "DEBUG" not in quiet_out + quiet_err
    assert " - DEBUG - " in err and "STEP_FAILURE" in err  # Dagster's own stream, as before
    assert err.strip().splitlines()[-1].startswith("error: ")  # still ends with the one message
    logs = sorted((dagster_home / cli.LOG_FOLDER).glob("refit-*.log"))
    assert len(logs) == 2 and str(logs[0]) in quiet_out
    text = logs[0].read_text()
    assert " - DEBUG - " in text and "STEP_WORKER_STARTED" in text  # from the step processes too
    assert "Stack Trace:" in text  # the failure's traceback is kept in the log


class _SlowPipe(cli._StderrPipe):
    """A refit's stderr pipe whose copying thread takes 0.3 s over each read, as on a machine
    too busy to run it."""

    def _take_markers(self, data):
        time.sleep(0.3)
        return super()._take_markers(data)


def test_the_stderr_pipe_is_drained_of_every_line_written_before_the_runs_ended(tmp_path):
    """What the step processes wrote before their runs ended (their STEP_FAILURE lines, say)
    reaches the refit's log before the command lets the log go, however far behind the
    copying thread is: nothing is left in the pipe for a later refit's log, or lost."""
    pipe = _SlowPipe()
    log_path = tmp_path / "refit.log"
    try:
        with open(log_path, "ab") as log:
            with pipe.lock:
                pipe.file = log
            for i in range(3):
                os.write(pipe.write_fd, b"step line %d\n" % i)
            os.write(pipe.write_fd, b"STEP_FAILURE, the last line\n")
            assert pipe.drain()
            with pipe.lock:
                pipe.file = None
    finally:
        os.close(pipe.write_fd)  # the copying thread reads the end of the pipe and returns
        pipe.thread.join(10)
        assert not pipe.thread.is_alive()
        os.close(pipe.read_fd)
    text = log_path.read_text()
    assert text == "step line 0\nstep line 1\nstep line 2\nSTEP_FAILURE, the last line\n", text
    assert not pipe._pending


def _marker(number: int) -> bytes:
    return cli.DRAIN_MARKER + b"%08d\0" % number


def _stream(pipe, data: bytes, cut: int) -> tuple[bytes, list[int]]:
    """``data`` read in two pieces cut at ``cut``, as the copying thread would: what it writes, and the markers it takes."""
    out, held, reached = pipe._take_markers(data[:cut])
    out2, held2, reached2 = pipe._take_markers(held + data[cut:])
    return out + out2 + held2, reached + reached2


@pytest.mark.parametrize("cut", range(1, len(_marker(7)) + 20))
def test_a_drain_marker_split_anywhere_between_two_reads_is_taken_out(cut):
    pipe = cli._StderrPipe.__new__(cli._StderrPipe)  # no thread: the marker logic alone
    pipe._pending = {7: None, 8: None}
    data = b"0123456789abcdefghij" + _marker(7) + b"later" + _marker(8) + b"end"
    assert _stream(pipe, data, cut) == (b"0123456789abcdefghijlaterend", [7, 8])


def test_only_pending_markers_are_taken_out_and_each_once():
    pipe = cli._StderrPipe.__new__(cli._StderrPipe)
    pipe._pending = {7: None}
    # the same marker twice (a line a step wrote that copies it): taken once, the copy goes through
    out, held, reached = pipe._take_markers(_marker(7) + _marker(7))
    assert (out + held, reached) == (_marker(7), [7])  # (its last NUL is held back: a marker may start there)
    # text that only looks like a marker, or a drain nobody waits for, goes through as it came
    other = cli.DRAIN_MARKER + b"abcdefgh\0"
    assert pipe._take_markers(b"a\0b" + other + _marker(9) + b"c") == (b"a\0b" + other + _marker(9) + b"c", b"", [])
    pipe._pending = {}
    assert pipe._take_markers(b"x" + _marker(7)[:3]) == (b"x" + _marker(7)[:3], b"", [])


SITECUSTOMIZE = """
import racedayai_bayes.lib.data.frame as frame

def model_frame_and_seasons(*args, **kwargs):
    raise RuntimeError("an injected bug")

frame.model_frame_and_seasons = model_frame_and_seasons
"""


def test_a_bug_in_a_step_keeps_its_traceback(dagster_home, small_inputs, tmp_path):
    """An unexpected exception is not a data error: the command shows where it came from."""
    hooks = tmp_path / "hooks"
    hooks.mkdir()
    (hooks / "sitecustomize.py").write_text(SITECUSTOMIZE)  # every process: the CLI, the forkserver, steps
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(hooks), str(REPO)]), "DAGSTER_HOME": str(dagster_home),
           "RACEDAYAI_INPUT_DIR": str(small_inputs), "RACEDAYAI_OUTPUT_DIR": str(tmp_path / "out")}
    proc = subprocess.run([sys.executable, "-m", "racedayai_bayes.cli", "refit", "--distance", "70.3"],
                          capture_output=True, text=True, env=env, timeout=600, cwd=tmp_path)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert re.search(r"^  model_frame +FAILED .*a bug", proc.stdout, re.M), proc.stdout
    assert "model_frame raised an unexpected error (a bug); its traceback:" in proc.stderr
    assert "RuntimeError: an injected bug" in proc.stderr and 'line 5, in model_frame_and_seasons' in proc.stderr
    assert "DEBUG" not in proc.stdout + proc.stderr
    assert Path(tmp_path / "out").exists() is False


# --- the program's exit, and the later distance's process waiting to import ------------------


ENTRY_PROGRAM = """
import atexit, sys, threading, time
from racedayai_bayes import cli

def fake_main():
    atexit.register(lambda: open(sys.argv[1] + ".atexit", "w").write("ran"))
    def late():
        time.sleep(0.3)
        open(sys.argv[1] + ".thread", "w").write("joined")
    threading.Thread(target=late).start()  # not a daemon: the exit waits for it
    print("no newline, still buffered", end="")
    return 7

cli.main = fake_main
cli.entry()
raise SystemExit("entry() returned")
"""


def test_the_program_exits_with_mains_code_after_threads_atexit_and_flushing(tmp_path):
    """entry() skips the interpreter's teardown, not what an ordinary exit does."""
    marker = tmp_path / "m"
    proc = subprocess.run([sys.executable, "-c", ENTRY_PROGRAM, str(marker)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 7, proc.stderr
    assert proc.stdout == "no newline, still buffered"
    assert (tmp_path / "m.atexit").read_text() == "ran"
    assert (tmp_path / "m.thread").read_text() == "joined"


def test_a_later_process_waits_for_go_until_the_pipe_closes_or_the_timeout(monkeypatch):
    import threading
    import time

    from racedayai_bayes.cli import GO_ENV, _wait_for_go

    monkeypatch.delenv(GO_ENV, raising=False)
    assert _wait_for_go(timeout_s=5) is False  # no pipe: no wait

    read_fd, write_fd = os.pipe()
    monkeypatch.setenv(GO_ENV, str(read_fd))
    threading.Timer(0.3, os.close, args=(write_fd,)).start()
    t0 = time.monotonic()
    assert _wait_for_go(timeout_s=30) is True
    assert 0.25 <= time.monotonic() - t0 < 10
    assert GO_ENV not in os.environ
    with pytest.raises(OSError):
        os.fstat(read_fd)  # closed: nothing leaks into the run

    read_fd, write_fd = os.pipe()
    monkeypatch.setenv(GO_ENV, str(read_fd))
    t0 = time.monotonic()
    assert _wait_for_go(timeout_s=0.2) is False  # the writer never closed it
    assert time.monotonic() - t0 >= 0.15
    os.close(write_fd)


def test_the_report_says_go_once_when_the_first_step_starts():
    report, _ = _report()
    calls = []
    report.when_a_step_starts(lambda: calls.append("go"))
    clock = Clock()
    report.run_started("run-70.3", "70.3")
    assert calls == []
    _feed_step(report, clock, "run-70.3", "athlete_race")
    _feed_step(report, clock, "run-70.3", "model_frame")
    assert calls == ["go"]


def test_a_later_runs_time_counts_from_its_creation_at_most_5_s_back():
    """The watcher may find a later distance's run up to a second after its creation: the run's
    time counts from the creation; a creation time far off (another clock) counts 5 s at most,
    one in the future none; without one, from when it was found. A run submitted by this
    process keeps its own start."""
    import datetime as dt
    import time

    report, _ = _report()
    now = dt.datetime.now(dt.timezone.utc)
    report.run_started("a", "140.6", created=now - dt.timedelta(seconds=0.8))
    report.run_started("b", "far", created=now - dt.timedelta(hours=3))
    report.run_started("c", "future", created=now + dt.timedelta(hours=3))
    report.run_started("d", "plain")
    report.run_starting("mine")
    mine = report._run_started_at["mine"]
    report.run_started("e", "mine", created=now - dt.timedelta(seconds=3))
    ago = {d: time.monotonic() - t for d, t in report._run_started_at.items()}
    assert 0.75 <= ago["140.6"] < 1.5
    assert 4.95 <= ago["far"] < 5.7
    assert ago["future"] < 0.5 and ago["plain"] < 0.5
    assert report._run_started_at["mine"] == mine


def test_the_installed_command_runs_entry_and_keeps_mains_exit_codes(tmp_path):
    from importlib.metadata import entry_points

    (script,) = [e for e in entry_points(group="console_scripts") if e.name == "racedayai-bayes"]
    assert script.value == "racedayai_bayes.cli:entry"
    program = Path(sys.executable).parent / "racedayai-bayes"
    env = {k: v for k, v in os.environ.items() if k != "DAGSTER_HOME"}
    proc = subprocess.run([str(program), "refit"], capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 1 and proc.stdout == ""
    assert proc.stderr.startswith("error: DAGSTER_HOME is not set") and proc.stderr.count("\n") == 1
    usage = subprocess.run([str(program), "refit", "--distance", "sprint"], capture_output=True, text=True, timeout=120)
    assert usage.returncode == 2 and "invalid choice" in usage.stderr


# --- the later distance's process: when its posteriors are stored ----------------------------


def _materialization(key: str):
    return SimpleNamespace(dagster_event=SimpleNamespace(is_step_materialization=True, asset_key=key))


def test_the_later_runs_watcher_says_when_it_has_stored_the_keys_or_that_its_process_ended():
    """The means run starts as soon as the later run has stored the posteriors the means read
    (cli._refit_runs); the wait ends without them if the later process ends first."""
    import threading
    import time

    from racedayai_bayes.cli import _RunWatcher

    watcher = _RunWatcher({"racedayai/run": "x"}, RefitReport(io.StringIO()))
    watcher.is_alive = lambda: True  # its reading thread is not started here: the events come below

    def feed():
        for key in ("posterior_seed_profile", "bayesian_predictions", "posterior_forecast"):
            time.sleep(0.05)
            watcher._note(_materialization(key))

    threading.Thread(target=feed).start()
    t0 = time.monotonic()
    assert watcher.wait_for({"posterior_seed_profile", "posterior_forecast"}, alive=lambda: True)
    assert time.monotonic() - t0 < 5
    # a step that is not a materialisation is not counted, and an ended process ends the wait
    watcher._note(SimpleNamespace(dagster_event=SimpleNamespace(is_step_materialization=False, asset_key="other")))
    watcher._note(SimpleNamespace(dagster_event=None))
    assert "other" not in watcher.materialized
    assert not watcher.wait_for({"other"}, alive=lambda: False)


def _fork_child(body) -> int:
    """A child made with os.fork that runs ``body()`` and never returns into pytest."""
    pid = os.fork()
    if pid == 0:
        code = 0
        try:
            code = body() or 0
        except BaseException:  # noqa: BLE001
            code = 99
        finally:
            os._exit(code)
    return pid


def test_a_forked_later_process_is_handled_as_a_popen_is():
    """cli._ForkedLater: poll, wait (with a timeout too), signals and exit codes as
    subprocess.Popen gives them, for a child made with os.fork."""
    import signal

    from racedayai_bayes.cli import _ForkedLater

    go_r, go_w = os.pipe()  # the first child ends with 3 once it reads from here
    hold_r, hold_w = os.pipe()  # the second child waits here until it is terminated
    # an earlier test in this process may have left a SIGTERM handler: the child must die of it
    handler = signal.signal(signal.SIGTERM, signal.SIG_DFL)
    try:
        first = _ForkedLater(_fork_child(lambda: (os.read(go_r, 1), 3)[1]))
        second = _ForkedLater(_fork_child(lambda: os.read(hold_r, 1) and 0))
    finally:
        signal.signal(signal.SIGTERM, handler)
    try:
        assert first.poll() is None and first.returncode is None
        with pytest.raises(subprocess.TimeoutExpired):
            first.wait(timeout=0.05)
        os.write(go_w, b"x")
        assert first.wait() == 3 and first.poll() == 3 and first.returncode == 3
        first.send_signal(signal.SIGTERM)  # ended: nothing is signalled
        assert second.poll() is None
        second.terminate()
        assert second.wait(timeout=30) == -signal.SIGTERM == second.returncode
    finally:
        for child in (first, second):
            if child.poll() is None:
                child.kill()
                child.wait()
        for fd in (go_r, go_w, hold_r, hold_w):
            os.close(fd)


def test_the_forked_later_process_starts_as_a_new_one_would(monkeypatch, tmp_path, capfd):
    """cli._ForkedLater.start: the child waits for nothing of the parent's, runs the later
    distance's work with the parent's settings, starts with a new interpreter's SIGINT and
    SIGTERM handling and without the command's own descriptors of its stderr, ends with the
    work's exit code, and says a user's error in one line as the command line does."""
    import json
    import signal

    from racedayai_bayes import cli

    pipe_r, pipe_w = os.pipe()
    saved = os.dup(2)
    log = open(tmp_path / "log", "ab")
    monkeypatch.setattr(cli._StderrPipe, "_instance", SimpleNamespace(read_fd=pipe_r, saved_fd=saved, file=log))
    seen = tmp_path / "seen.json"

    def work(args, go_fd):
        def closed(fd):
            try:
                os.fstat(fd)
            except OSError:
                return True
            return False

        seen.write_text(json.dumps({
            "distance": args.distance, "after": args.after, "seed": args.seed,
            "sigint": signal.getsignal(signal.SIGINT) is signal.default_int_handler,
            "sigterm": signal.getsignal(signal.SIGTERM) == signal.SIG_DFL,
            "closed": [closed(pipe_r), closed(saved), closed(log.fileno())], "go_open": not closed(go_fd),
            "stdout_null": os.path.samestat(os.fstat(1), os.stat(os.devnull)),
        }))
        if args.seed == 13:
            raise cli.UserError("a setting is wrong")
        return 7

    monkeypatch.setattr(cli, "_later_main", work)
    handler = signal.signal(signal.SIGTERM, lambda *_: None)  # the child must not keep this
    # nor this one, as Dagster's run sets it (set here, whatever this test process had: an
    # ignored SIGINT, which a new interpreter inherits too, stays ignored in the child)
    int_handler = signal.signal(signal.SIGINT, lambda *_: None)
    try:
        args = argparse.Namespace(argv=["refit"], distance=None, after=None, seed=5)
        child, go = cli._ForkedLater.start(args, "140.6", "70.3", tmp_path / "refit.log")
    finally:
        signal.signal(signal.SIGTERM, handler)
        signal.signal(signal.SIGINT, int_handler)
    try:
        assert child.wait(timeout=60) == 7
        assert json.loads(seen.read_text()) == {
            "distance": "140.6", "after": f"70.3={tmp_path / 'refit.log'}", "seed": 5, "sigint": True, "sigterm": True,
            "closed": [True, True, True], "go_open": True, "stdout_null": True}
        assert args.distance is None  # the parent's settings are its own
        os.close(go)
        args.seed = 13
        child, go = cli._ForkedLater.start(args, "140.6", "70.3", tmp_path / "refit.log")
        assert child.wait(timeout=60) == 1
        assert "error: a setting is wrong" in capfd.readouterr().err
    finally:
        os.close(go)
        for fd in (pipe_r, pipe_w, saved):
            os.close(fd)
        log.close()


def test_the_command_line_imports_no_pandas_before_it_starts_the_step_server():
    """Its distances come from lib/data/__init__, not from the frame module (pandas, 0.3 s)."""
    script = "import sys, racedayai_bayes.cli; print('pandas' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_a_later_process_is_a_new_interpreter_if_the_command_cannot_fork(monkeypatch, tmp_path):
    from racedayai_bayes.cli import _Later, _RunWatcher

    def no_fork():
        raise BlockingIOError(11, "Resource temporarily unavailable")

    spawned = []

    def spawn(args, distance, first, log_path):
        spawned.append((distance, first, log_path))
        read_fd, write_fd = os.pipe()
        os.close(read_fd)
        return "a Popen", write_fd

    open_before = set(os.listdir("/proc/self/fd"))
    monkeypatch.setattr(os, "fork", no_fork)
    monkeypatch.setattr(_Later, "_spawn", staticmethod(spawn))
    later = _Later.start(argparse.Namespace(argv=["refit"]), "140.6", "70.3", tmp_path / "refit.log",
                         RefitReport(io.StringIO()))
    assert spawned == [("140.6", "70.3", tmp_path / "refit.log")] and later.proc == "a Popen"
    assert isinstance(later.watcher, _RunWatcher) and not later.watcher.is_alive()  # started by the caller, after every fork
    later.release()  # closes the spawned child's go pipe
    assert set(os.listdir("/proc/self/fd")) <= open_before  # the failed fork's pipe is closed too


@pytest.mark.parametrize("frame_from", [None, "run-of-the-frame"])
def test_a_later_process_started_as_a_new_interpreter_is_told_of_a_reused_frame(monkeypatch, tmp_path, frame_from):
    """Its command line carries --frame-from when the first run reuses a stored model frame
    (then builds none, and the later run must not wait for one), and not otherwise."""
    import racedayai_bayes.step_server as step_server
    from racedayai_bayes.cli import _Later

    launched = []

    class Popen:
        def __init__(self, cmd, **kwargs):
            launched.append(cmd)

    monkeypatch.setattr(step_server, "share_step_server", lambda: ({}, os.open(os.devnull, os.O_RDONLY)))
    monkeypatch.setattr(subprocess, "Popen", Popen)
    args = argparse.Namespace(argv=["refit", "--verbose"], frame_from=frame_from)
    _, go_write = _Later._spawn(args, "140.6", "70.3", tmp_path / "refit.log")
    os.close(go_write)
    (cmd,) = launched
    assert cmd[cmd.index("--after") + 1] == f"70.3={tmp_path / 'refit.log'}" and "--verbose" not in cmd
    if frame_from:
        assert cmd[cmd.index("--frame-from") + 1] == frame_from
    else:
        assert "--frame-from" not in cmd
    parsed = cli.build_parser().parse_args(cmd[3:])
    assert parsed.frame_from == frame_from and parsed.distance == "140.6"


def test_a_later_run_of_a_reused_frame_starts_at_once_with_this_distances_assets(monkeypatch):
    """With --frame-from the later run does not look for the first run's model frame (it builds
    none): it executes its distance's assets straight away."""
    import dagster as dg

    from racedayai_bayes.definitions import defs, refit_job_def

    class NoRuns:
        def get_run_records(self, *a, **k):
            raise AssertionError("the later run waited for the first run's model frame")

    executed = {}
    monkeypatch.setattr(dg, "execute_job", lambda job, **kwargs: executed.update(kwargs))
    args = cli.build_parser().parse_args(["refit", "--distance", "140.6", "--after", "70.3=/tmp/refit.log",
                                          "--frame-from", "run-of-the-frame"])
    assert cli._later_run(args, NoRuns(), defs, refit_job_def, parent=os.getppid()) == 0
    keys = cli._refit_keys(defs)
    assert executed["asset_selection"] == keys.per_distance
    assert not set(keys.shared) & set(executed["asset_selection"])
    assert executed["tags"]["dagster/partition"] == "140.6"


def test_rebuild_inputs_never_reuses_a_stored_frame_and_otherwise_the_stored_one_is_asked(monkeypatch):
    import racedayai_bayes.defs.inputs as defs_inputs
    from racedayai_bayes.definitions import defs

    asked = []
    monkeypatch.setattr(defs_inputs, "stored_frame_if_current", lambda instance, paths, storage: asked.append(storage) or "a frame")
    assert cli._reusable_frame(cli.build_parser().parse_args(["refit", "--rebuild-inputs"]), "an instance", defs) is None
    assert asked == []
    monkeypatch.setenv("RACEDAYAI_STORAGE_DIR", "/srv/storage")
    assert cli._reusable_frame(cli.build_parser().parse_args(["refit"]), "an instance", defs) == "a frame"
    assert [str(s) for s in asked] == ["/srv/storage"]  # the IO manager's folder


def test_a_later_run_of_a_reused_frame_whose_command_is_gone_does_not_start(monkeypatch):
    """With --frame-from there is nothing to wait for, but an orphaned process (its command
    killed while it waited for go) still starts no run that nobody would report or stop."""
    import dagster as dg

    from racedayai_bayes.definitions import defs, refit_job_def

    monkeypatch.setattr(dg, "execute_job", lambda *a, **k: pytest.fail("an orphaned later process started its run"))
    args = cli.build_parser().parse_args(["refit", "--distance", "140.6", "--after", "70.3=/tmp/refit.log",
                                          "--frame-from", "run-of-the-frame"])
    assert cli._later_run(args, object(), defs, refit_job_def, parent=os.getppid() + 12345) == cli.WAITING


def test_a_cancelled_later_process_is_ended_before_it_is_let_go():
    """A later process that needs no model frame starts its run as soon as it is let go: a
    cancel ends it first."""
    from racedayai_bayes.cli import _Later

    calls = []
    read_fd, write_fd = os.pipe()

    class Proc:
        def poll(self):
            return None

        def terminate(self):
            calls.append(("terminate", _fd_open(write_fd)))

    def _fd_open(fd):
        try:
            os.fstat(fd)
            return True
        except OSError:
            return False

    later = _Later("140.6", Proc(), watcher=None, report=None, go_fd=write_fd)
    assert not later.released
    later.cancel()
    assert calls == [("terminate", True)] and later.released and not _fd_open(write_fd)
    os.close(read_fd)


@pytest.mark.parametrize("reused", [True, False])
@pytest.mark.parametrize("released", [False, True])
def test_a_reused_frame_and_an_interrupted_first_run_cancel_only_a_later_process_never_let_go(monkeypatch, tmp_path,
                                                                                              released, reused):
    """With a reused model frame the first run builds nothing, so a first run stopped by an
    interrupt still counts as having "built" it: a later distance's process that was never let
    go (the first run stopped before its first step) is cancelled, not released into a run of
    its own; one already let go runs on, as without reuse."""
    import dagster as dg

    from racedayai_bayes.defs.inputs import StoredFrame
    from racedayai_bayes.definitions import defs, refit_job_def

    class Child:
        interrupted = False

        def __init__(self):
            self.released, self.calls = released, []
            self.watcher = SimpleNamespace(start=lambda: None)

        def release(self):
            self.released = True
            self.calls.append("release")

        def cancel(self):
            self.calls.append("cancel")

        def stored(self, keys):
            return False

        def wait(self, instance, checked):
            self.calls.append("wait" if "cancel" in self.calls or self.released else "wait (let go)")
            return None

        def stop(self):
            pass

    child = Child()
    seen = {}
    frame = StoredFrame("run-of-the-frame", time.time()) if reused else None
    monkeypatch.setattr(cli, "_reusable_frame", lambda args, instance, defs: frame)
    monkeypatch.setattr(cli._Later, "start", classmethod(lambda cls, args, d, first, log, report: seen.update(
        frame_from=args.frame_from) or child))
    monkeypatch.setattr(cli, "_RunWatcher", lambda tags, report: SimpleNamespace(start=lambda: None, finish=lambda: None))
    result = SimpleNamespace(run_id="first", success=False, dagster_run=SimpleNamespace(asset_selection=None))
    monkeypatch.setattr(dg, "execute_job", lambda job, **kwargs: seen.update(selection=kwargs["asset_selection"]) or result)
    monkeypatch.setattr(cli, "_interrupted", lambda instance, run_id: True)
    monkeypatch.setattr(cli, "_materialized_keys", lambda instance, run_id: set())
    args = cli.build_parser().parse_args(["refit", "--frame-from", "typed-by-hand"])
    report, error = cli._refit_runs(args, "an instance", defs, refit_job_def, tmp_path / "refit.log")
    # what the command found, not what was typed (refit itself refuses a typed one: the test above)
    assert error is None and seen["frame_from"] == ("run-of-the-frame" if reused else None)
    shared = set(cli._refit_keys(defs).shared)
    if reused:
        assert not shared & set(seen["selection"])  # the first run built nothing
        assert child.calls == (["wait"] if released else ["cancel", "wait"])
    else:  # it was to build the frame and did not: every later process is cancelled
        assert shared <= set(seen["selection"]) and child.calls == ["cancel", "wait"]


def test_an_interrupt_while_waiting_for_the_later_runs_posteriors_is_passed_on_to_its_process():
    import signal

    from racedayai_bayes.cli import _Later

    class Proc:
        signals = []

        def poll(self):
            return None

        def send_signal(self, sig):
            self.signals.append(sig)

    class Watcher:
        def wait_for(self, keys, alive):
            raise KeyboardInterrupt

    proc = Proc()
    later = _Later("140.6", proc, Watcher(), RefitReport(io.StringIO()))
    assert later.stored({"posterior_forecast"}) is False
    assert later.interrupted and proc.signals == [signal.SIGINT]


def test_a_later_process_knows_its_command_whenever_it_dies(monkeypatch):
    """The later distance's process gets its command's pid from the command itself, not from
    its own parent after its slow imports: a command that dies during them leaves a process
    whose parent is another one, and the run's wait sees it (reading the parent after the
    imports, it took its new parent for the command and waited for ever; CI saw it on a busy
    machine). Orphaned already when it starts, it exits at once."""
    ppid = [111]
    monkeypatch.setattr(cli.os, "getppid", lambda: ppid[0])
    monkeypatch.setattr(cli.os, "nice", lambda inc: 0)
    monkeypatch.setenv("DAGSTER_HOME", "/nowhere")

    def instance(home):
        ppid[0] = 1  # the command dies while this process imports and opens the instance
        return "an instance"

    monkeypatch.setattr(cli, "_instance", instance)
    seen = {}

    def later_run(args, instance, defs, job, parent):
        seen.update(parent=parent, now=cli.os.getppid())
        return cli.WAITING

    monkeypatch.setattr(cli, "_later_run", later_run)
    monkeypatch.setenv(cli.COMMAND_PID_ENV, "111")
    assert cli._later_process(argparse.Namespace(), lambda: True) == cli.WAITING
    assert seen == {"parent": 111, "now": 1} and cli.COMMAND_PID_ENV not in os.environ
    # a command that died before this process started: no run is waited for at all
    seen.clear()
    monkeypatch.setenv(cli.COMMAND_PID_ENV, "111")
    assert cli._later_process(argparse.Namespace(), lambda: True) == cli.WAITING and seen == {}


@pytest.mark.parametrize("message, needs", [
    ("Dependencies for step published_model failed: ['holdout_split'] were not executed: "
     "['posterior_forecast', 'posterior_seed_asof']. Not executing.",
     "holdout_split, posterior_forecast, posterior_seed_asof"),
    ("Dependencies for step bayesian_predictions failed: ['published_model']. Not executing.", "published_model"),
    ("Dependencies for step published_model were not executed: ['posterior_forecast']. Not executing.",
     "posterior_forecast"),
])
def test_a_skipped_step_names_the_steps_it_needed_from_dagsters_message(message, needs):
    """Dagster names the failed and the skipped upstream steps in one message; the line
    `not run: needs ...` lists both, not the rest of Dagster's text."""
    skipped = cli._NOT_EXECUTING.match(message)
    assert skipped is not None and cli._needed(skipped) == needs


def test_a_step_of_several_assets_is_shown_by_the_asset_of_its_name():
    """model_frame stores athlete_seasons first (while it adds the history): its line shows the
    model frame's rows, not the season table's."""
    report, out, clock = _report_of_a_run()
    report.feed(_entry("r", "model_frame", clock.tick(0.1), "STEP_START"))
    for asset, rows in (("athlete_seasons", 500), ("model_frame", 1000)):
        event = SimpleNamespace(event_type_value="ASSET_MATERIALIZATION", partition=None,
                                asset_key=SimpleNamespace(path=[asset]),
                                event_specific_data=SimpleNamespace(materialization=SimpleNamespace(metadata={"rows": _value(rows)})))
        report.feed(SimpleNamespace(run_id="r", step_key="model_frame", timestamp=clock.tick(0.1), dagster_event=event,
                                    user_message="", level=logging.DEBUG))
    report.feed(_entry("r", "model_frame", clock.tick(0.1), "STEP_SUCCESS", SimpleNamespace(duration_ms=300.0)))
    assert re.search(r"  model_frame +0\.3 s  1,000 rows$", out.getvalue(), re.M), out.getvalue()


# --- the run watcher: it reads a run's events when its files change ---------------------------


def _tiny_run(instance, tags=None):
    import dagster as dg

    @dg.op
    def noop():
        pass

    @dg.job
    def tiny():
        noop()

    return instance.create_run_for_job(tiny, tags=tags or {})


def test_the_events_stamp_changes_with_the_runs_events_and_is_none_without_sqlite_files(dagster_home):
    """A run's SQLite event files change as events are written (the watcher then reads);
    unchanged, they give the same stamp. A storage with no such files (another kind, or a run
    not written yet) gives None, and the watcher reads at every poll."""
    import time

    import dagster as dg

    from racedayai_bayes.cli import _events_stamp

    instance = dg.DagsterInstance.get()
    run = _tiny_run(instance)
    instance.report_engine_event("first", run)
    first = _events_stamp(instance, run.run_id)
    assert first is not None and _events_stamp(instance, run.run_id) == first  # nothing new: the same
    for i in range(3):  # a file clock ticks every few ms at most: several writes, apart
        time.sleep(0.02)
        instance.report_engine_event(f"event {i}", run)
    last = _events_stamp(instance, run.run_id)
    assert last is not None and last != first
    assert _events_stamp(instance, "no-such-run") is None
    other = SimpleNamespace(event_log_storage=object())  # e.g. Postgres: no files to stamp
    assert _events_stamp(other, run.run_id) is None
    broken = SimpleNamespace(event_log_storage=SimpleNamespace(path_for_shard=lambda _r: 1 / 0))
    assert _events_stamp(broken, run.run_id) is None


def _watch(monkeypatch, tags, *, read_s: float, eager_s: float):
    """A run watcher polling every 20 ms whose stamps can be frozen (``frozen['on']``: every
    call then returns the same stamp, counted), and the messages it delivers."""
    import racedayai_bayes.cli as cli

    monkeypatch.setattr(cli, "POLL_S", 0.02)
    monkeypatch.setattr(cli, "WATCH_READ_S", read_s)
    monkeypatch.setattr(cli, "LOOKUP_EAGER_S", eager_s)
    frozen = {"on": False, "calls": 0}
    real = cli._events_stamp

    def stamp(instance, run_id):
        if not frozen["on"]:
            return real(instance, run_id)
        frozen["calls"] += 1
        return ("unchanged",)

    monkeypatch.setattr(cli, "_events_stamp", stamp)
    seen: list[str] = []
    report = RefitReport(io.StringIO())
    report.feed = lambda entry: seen.append(entry.message)
    return cli._RunWatcher(tags, report), frozen, seen


def _until(condition, timeout: float = 20.0) -> bool:
    import time

    deadline = time.monotonic() + timeout
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.01)
    return condition()


def test_the_run_watcher_delivers_every_event_even_when_the_files_look_unchanged(dagster_home, monkeypatch):
    """Events written while the watcher runs all reach the report, in order, once, also when a
    write leaves the files' stamp as it was (a write within one tick of the file clock): the
    watcher still reads at least every WATCH_READ_S, and once more when it finishes."""
    import dagster as dg

    import racedayai_bayes.cli as cli

    tags = {"racedayai/run": "watched"}
    watcher, frozen, seen = _watch(monkeypatch, tags, read_s=0.3, eager_s=60.0)
    instance = dg.DagsterInstance.get()
    run = _tiny_run(instance, tags)
    watcher.start()
    try:
        instance.report_engine_event("before", run)
        assert _until(lambda: "before" in seen)  # found the run, read on the change
        frozen["on"] = True  # from now on the files look unchanged whatever is written
        assert _until(lambda: frozen["calls"] >= 3)  # the frozen stamp seen, read once, and held
        instance.report_engine_event("unseen by the stamp", run)
        assert _until(lambda: "unseen by the stamp" in seen)  # read anyway within WATCH_READ_S
        monkeypatch.setattr(cli, "WATCH_READ_S", 3600.0)  # from here only the last pass reads
        calls = frozen["calls"]
        assert _until(lambda: frozen["calls"] >= calls + 2)
        instance.report_engine_event("last", run)
    finally:
        watcher.finish()  # one more read at the end
    assert seen.index("before") < seen.index("unseen by the stamp") < seen.index("last")
    assert len(seen) == len(set(seen))  # no event read twice


def test_a_run_the_watcher_finds_only_on_its_last_pass_is_read_from_its_first_event(dagster_home, monkeypatch):
    """Looked up once at the start (nothing there yet), then not for an hour: a run created
    afterwards is still found and read in full when the watcher finishes."""
    import dagster as dg

    tags = {"racedayai/run": "late"}
    watcher, _frozen, seen = _watch(monkeypatch, tags, read_s=3600.0, eager_s=0.0)
    instance = dg.DagsterInstance.get()
    instance.get_run_records()  # its databases made before the watcher opens them too, as in a refit
    watcher.start()
    try:
        assert _until(lambda: not watcher._done.is_set() and watcher.is_alive())
        import time

        time.sleep(0.2)  # its first look, which finds nothing
        run = _tiny_run(instance, tags)
        for message in ("one", "two"):
            instance.report_engine_event(message, run)
    finally:
        watcher.finish()
    assert [m for m in seen if m in ("one", "two")] == ["one", "two"]


def test_an_unknown_page_setting_ends_with_one_message_and_exit_1(dagster_home, small_inputs, monkeypatch, tmp_path, capfd):
    """RACEDAYAI_STEP_PAGES is read by every step process as it starts (lib/pages.py), which
    must not fail over it: the command refuses an unknown value first."""
    monkeypatch.setenv("RACEDAYAI_INPUT_DIR", str(small_inputs))
    monkeypatch.setenv("RACEDAYAI_OUTPUT_DIR", str(tmp_path / "out"))
    monkeypatch.setenv("RACEDAYAI_STEP_PAGES", "huge")
    code, out, err = _run_cli(["refit"], capfd)
    assert code == 1 and "Traceback" not in out + err and "run " not in out
    assert err.strip() == "error: RACEDAYAI_STEP_PAGES='huge': expected one of auto, 4kb, 2mb"
    assert not list((dagster_home / cli.LOG_FOLDER).glob("refit-*.log"))
