"""Command line: `racedayai-bayes demo-data | refit | predict | forecast`.

A data or configuration error (an input file that breaks the data contract, a distance that
cannot be fitted, an output that cannot be written, invalid settings) ends with one
``error:`` message, naming the file, the column, the problem, the count and what to do, and
exit code 1, without a traceback. Any other exception is a bug and keeps its traceback.
Usage errors (an unknown option) exit 2.

`refit` prints one line per step as it finishes, live progress of the long steps (a
progress bar on a terminal; otherwise at most one line per step and quarter of its work),
then one line per posterior with its checks. Dagster's own event stream, DEBUG included, goes
to ``$DAGSTER_HOME/refit_logs/refit-<time>.log`` (``--verbose`` also streams it to stderr).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import io
import logging
import os
import re
import shutil
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import racedayai_bayes  # noqa: F401  (pins JAX to the CPU)

from racedayai_bayes.lib.data import MODEL_DISTANCES  # not .frame: pandas, 0.3 s before the step server starts
from racedayai_bayes.lib.runreport import CLI_LOG_TAG, CheckResult, PosteriorChecks, QuarterGate, bar, parse_progress, seconds
from racedayai_bayes.lib.processes import exit_now, imports_frozen
from racedayai_bayes.stop_watchdog import StopWatchdog, enable_stack_dumps

# The run tag naming the CLI log a run's Dagster events were streamed to; the CLI also
# finds its runs by it while they execute.
LOG_TAG = CLI_LOG_TAG  # the refit's log file; the alerts name it (defs/sensors.py)
RUN_TAG = "racedayai/run"  # the last run of a refit, which writes the posterior-means CSVs
POLL_S = 0.25
# a run's watcher reads the run's events only when its SQLite files have changed since its last
# read, and at least this often (a change within one tick of the file clock can go unseen); it
# looks for its run at every poll for LOOKUP_EAGER_S, then as often as it reads
WATCH_READ_S = 1.0
LOOKUP_EAGER_S = 2.0
MAX_NOTES_PER_STEP = 3
# Plain output (not a terminal): progress lines of the whole refit, at most. Each step still
# gets its own line when it finishes, and the log file keeps every progress message.
PLAIN_PROGRESS_BUDGET = 20


class UserError(Exception):
    """A data or configuration error: its message is the whole story, no traceback needed."""


def _data_errors() -> tuple[type[BaseException], ...]:
    """Exceptions that mean bad data or settings, not a bug (imported late: they pull in pandas and the models)."""
    from racedayai_bayes.lib.data.contracts import InputError
    from racedayai_bayes.lib.errors import FitError
    from racedayai_bayes.lib.outputs.artifacts import ArtifactError
    from racedayai_bayes.lib.outputs.forecasts import ForecastError
    from racedayai_bayes.lib.outputs.io import OutputWriteError

    return (InputError, FitError, ArtifactError, OutputWriteError, ForecastError)


# Exceptions raised inside a Dagster step that are data or configuration errors; by class
# name, as Dagster stores a step's error (dg.Failure is how the assets report them; pydantic's
# ValidationError is a run config that Dagster's own schema let through, e.g. a bound).
_DATA_ERROR_NAMES = {"Failure", "InputError", "FitError", "ArtifactError", "OutputWriteError", "ValidationError"}


# --------------------------------------------------------------------------- demo-data


def _demo_data(args: argparse.Namespace) -> int:
    from racedayai_bayes.demo.simulate import write_demo_data
    from racedayai_bayes.lib.outputs.io import OutputWriteError

    try:
        paths = write_demo_data(args.out, size=args.size, seed=args.seed)
    except OutputWriteError as exc:
        raise UserError(f"{exc}; choose another --out folder") from None
    for name, path in paths.items():
        print(f"{name}: {path}")
    return 0


# --------------------------------------------------------------------------- refit


# each model setting that a refit flag sets: the setting, and its flag
_SEED_FLAGS = {"engine": "--engine", "num_warmup": "--warmup", "num_samples": "--samples", "num_chains": "--chains",
               "seed": "--seed", "predictive_draws": "--predictive-draws"}
_FORECAST_FLAGS = {"seed": "--seed", "num_samples": "--forecast-samples"}


def _settings(args: argparse.Namespace, flags: dict[str, str]) -> dict:
    values = {name: getattr(args, flag[2:].replace("-", "_")) for name, flag in flags.items()}
    return {k: v for k, v in values.items() if v is not None}


def _seed_config(args: argparse.Namespace) -> dict:
    """The seed models' sampler flags (both seed variants take the same)."""
    return _settings(args, _SEED_FLAGS)


def _forecast_config(args: argparse.Namespace) -> dict:
    return _settings(args, _FORECAST_FLAGS)


def _run_config_ops(args: argparse.Namespace) -> dict:
    """Run config of every configurable step: the models' samplers, the split, what to publish."""
    from racedayai_bayes.defs.models import posterior_key

    split = {k: v for k, v in {"holdout": args.holdout, "holdout_season": args.holdout_season}.items() if v is not None}
    return {
        posterior_key("seed_profile"): {"config": _seed_config(args)},
        posterior_key("seed_asof"): {"config": _seed_config(args)},
        posterior_key("forecast"): {"config": _forecast_config(args)},
        "holdout_split": {"config": split},
        "published_model": {"config": {"publish": args.publish}},
    }


def _config_problems(exc) -> str:
    """The messages of a DagsterInvalidConfigError, one clause each, on one line (a YAML
    parser's message spans several: its lines become clauses)."""
    problems = [getattr(e, "message", str(e)) for e in getattr(exc, "errors", [])] or [str(exc)]
    clauses = [" ".join(line.split()) for p in problems for line in str(p).splitlines()]
    return "; ".join(c for c in clauses if c)


# The refit logs' folder in $DAGSTER_HOME. Not ``logs/``: that one is Dagster's telemetry
# cache, which the webserver moves to ``.logs_queue/`` and empties as it starts (dagster's
# telemetry_upload), whatever the instance's ``telemetry: enabled`` says.
LOG_FOLDER = "refit_logs"


def _log_path(home: Path) -> Path:
    folder = home / LOG_FOLDER
    folder.mkdir(parents=True, exist_ok=True)
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    path = folder / f"refit-{stamp}.log"
    n = 1
    while path.exists():
        n += 1
        path = folder / f"refit-{stamp}-{n}.log"
    return path


def _instance(home: str):
    """The Dagster instance of ``home``, or a UserError that says what is wrong with its configuration."""
    import dagster as dg
    import yaml
    from dagster_shared.check import CheckError

    from racedayai_bayes.step_warmup import share_alembic_revision_maps

    # Alembic's revision scripts are read once for every database check of this command and its later processes
    share_alembic_revision_maps()
    try:
        return dg.DagsterInstance.get()
    except (dg.DagsterError, CheckError, yaml.YAMLError) as exc:
        # a configuration problem (a storage class that cannot be imported is a CheckError,
        # a file that is not YAML a YAMLError): one message, no traceback
        config = Path(home) / "dagster.yaml"
        fix = (f"; fix {config} (the repository's dagster.yaml is one that works)"
               if os.path.isabs(home) and config.exists() else "")  # not for a relative DAGSTER_HOME, say
        raise UserError(f"DAGSTER_HOME={home}: {_config_problems(exc)}{fix}") from None


def _refit(args: argparse.Namespace) -> int:
    home = os.environ.get("DAGSTER_HOME")
    if not home:
        raise UserError(
            "DAGSTER_HOME is not set: run `make run`, or export DAGSTER_HOME=<a folder with dagster.yaml> "
            "(the repository root)"
        )
    if args.frame_from and not args.after:  # set by refit itself, for its later distance's process
        raise UserError("--frame-from is refit's own, for the process of its later distance; a refit reuses a stored "
                        "model frame by itself when the inputs and the code are unchanged")
    _stop_grace_s()  # a bad setting is said before anything starts
    _environment_settings()  # read as the code location loads and as each step starts
    if args.after:  # a later distance's run of another refit command (see _Later)
        from racedayai_bayes.step_server import join_step_server

        enable_stack_dumps()  # kill -USR1: this process's stacks to its stderr, the refit's log
        return _later_process(args, join_step_server)

    log_path = _log_path(Path(home))
    with _stderr_to(log_path, echo=args.verbose):
        enable_stack_dumps()  # kill -USR1: this process's stacks to the refit's log
        from racedayai_bayes.step_server import start_step_server, stop_step_server

        # first: the server's imports (the first step waits for them) overlap with this
        # process's own, Dagster's included
        start_step_server()
        if not (Path(home) / "dagster.yaml").exists():
            # Dagster's defaults then apply: none of the repository's run queue limits
            print(f"note: DAGSTER_HOME={home} has no dagster.yaml, so Dagster's defaults apply (no run queue "
                  "limits); copy the repository's dagster.yaml there, or use DAGSTER_HOME=<the repository root>")
        # Dagster's imports and the code location's, kept for the command's life: not walked by
        # the garbage collector as it imports, nor by its later collections (lib/processes.py)
        with imports_frozen():
            try:
                instance = _instance(home)
                _check_settings(args)  # settings that cannot work end here, before any run
            except UserError:
                stop_step_server()  # it would import for seconds after this command has ended
                log_path.unlink(missing_ok=True)  # nothing ran: no log of this command
                raise
            # imported here: the code location's import-time warnings belong in the log
            from racedayai_bayes.definitions import defs, refit_job_def

        report, config_error = _refit_runs(args, instance, defs, refit_job_def, log_path)
    for line in report.summary_lines():
        report.line(line)
    report.line(f"full event log, every Dagster event at every level: {log_path}")
    errors = report.error_messages() + ([config_error] if config_error else [])
    for message in errors:
        print(f"error: {message}", file=sys.stderr)
    return 1 if (errors or report.failed) else 0


@dataclass(frozen=True)
class _RefitKeys:
    """What a refit materialises, split by run."""

    partitioned: set  # the per-distance assets
    shared: set  # built once, by the first run (unless reused): the inputs and the model frame
    per_distance: list  # every distance's run
    means: list  # the last run: the posterior-means CSVs of every distance
    means_inputs: set  # the posteriors the means are made of
    checked: list  # assets with checks


def _refit_keys(defs) -> _RefitKeys:
    import dagster as dg

    from racedayai_bayes.defs.partitions import distance_partitions
    from racedayai_bayes.defs.schedules import REFIT_JOB

    graph = defs.resolve_asset_graph()
    in_job = set(defs.resolve_job_def(REFIT_JOB).asset_layer.executable_asset_keys)
    partitioned = {k for k in in_job if graph.get(k).partitions_def == distance_partitions}
    # a later run of the same invocation refits what depends on the distance partitions, and
    # reuses the unpartitioned inputs and model frame that the first run built (assets of
    # other jobs, such as the race-day forecasts, are not part of a refit)
    downstream = dg.AssetSelection.assets(*partitioned).downstream().resolve(graph)
    refit_keys = sorted((k for k in downstream if k in in_job), key=_key_order)
    # the CSVs of every distance's posterior means: written once, by a last run, after every
    # distance's run has stored its posteriors (runs at once would race to write them)
    means = [k for k in refit_keys if k not in partitioned and graph.get(k).partitions_def is None]
    return _RefitKeys(
        partitioned=partitioned,
        shared=in_job - set(refit_keys),
        per_distance=[k for k in refit_keys if k not in means],
        means=means,
        means_inputs={p for k in means for p in graph.get(k).parent_keys},
        checked=sorted({key.asset_key for key in graph.asset_check_keys}, key=_key_order),
    )


def _run_config(args: argparse.Namespace) -> dict:
    from racedayai_bayes.defs.resources import PipelinePaths

    paths = PipelinePaths.from_env()
    return {
        "ops": _run_config_ops(args),
        # the folders this command reads and writes, as the run records them
        "resources": {"paths": {"config": {"input_dir": paths.input_dir, "output_dir": paths.output_dir}}},
    }


def _refit_runs(args, instance, defs, refit_job_def, log_path: Path) -> tuple[RefitReport, str | None]:
    """One run per distance, reported live; returns the report and a configuration error, if any."""
    import dagster as dg

    keys = _refit_keys(defs)
    shared_keys, per_distance, means_keys, means_inputs = keys.shared, keys.per_distance, keys.means, keys.means_inputs
    checked_assets = keys.checked
    run_config = _run_config(args)
    report = RefitReport(sys.stdout, tty=sys.stdout.isatty(), partitioned_steps={k.to_python_identifier() for k in keys.partitioned})
    job = dg.reconstructable(refit_job_def)
    distances = [args.distance] if args.distance else list(MODEL_DISTANCES)
    # Ctrl-C ends the command within a bounded time, even if a step process does not stop
    grace_s = _stop_grace_s()
    dog = StopWatchdog(grace_s=grace_s, on_kill=lambda pids: report.killed_after_interrupt(distances[0], pids, grace_s))
    report.watchdog = dog
    errors: list[str] = []
    run_ids: list[str] = []

    def refit(distance: str, selection, tags: dict) -> str | None:
        """One run in this process, reported live; its run id (None if its config was refused)."""
        report.run_starting(distance)
        watcher = _RunWatcher(tags, report)
        watcher.start()
        try:
            result = dg.execute_job(job, instance=instance, run_config=run_config, tags=tags,
                                    asset_selection=selection, raise_on_error=False)
        except dg.DagsterInvalidConfigError as exc:
            errors.append(f"invalid refit settings: {_config_problems(exc)}")
            return None
        finally:
            watcher.finish()
        report.run_finished(distance, result.success, _expected_posteriors(result, checked_assets, distance))
        run_ids.append(result.run_id)
        return result.run_id

    # The first run builds the inputs and the model frame (unless a stored one is reused,
    # below), then fits its distance. Each other distance's run executes in a process of its
    # own (forked from this one now: _ForkedLater), at a lower CPU priority: it waits for the
    # model frame (for none when it is reused), then runs beside the first run.
    # The machine-wide CPU slots
    # (defs/resources.py CpuSlots) keep the heavy steps of all runs to one per core. Ctrl-C
    # reaches every run, as each executes in its own process's main thread (see _Later).
    # The inputs' assets and the model frame: reused, not built again, when the frame a
    # previous refit stored is of today's input files and code (defs/inputs.py)
    reused = _reusable_frame(args, instance, defs)
    # read by the later distances' processes (forked, or --frame-from; _refit refuses one typed on
    # this command's line)
    args.frame_from = reused.run_id if reused is not None else None
    if reused is not None:
        when = dt.datetime.fromtimestamp(reused.timestamp, dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
        report.line(f"inputs unchanged since run {reused.run_id[:8]} ({when}): its model frame is reused "
                    "(--rebuild-inputs reads them again)")
    first_tags = _run_tags(distances[0], log_path)
    later = [_Later.start(args, d, distances[0], log_path, report) for d in distances[1:]]
    for child in later:  # once every later process is forked (_ForkedLater: no thread may run then)
        child.watcher.start()
        report.when_a_step_starts(child.release)
    try:
        dog.__enter__()
        built_here = [] if reused is not None else sorted(shared_keys, key=_key_order)
        first_id = refit(distances[0], built_here + per_distance, first_tags)
        interrupted = bool(first_id) and _interrupted(instance, first_id)
        first_keys = _materialized_keys(instance, first_id) if first_id else set()  # the run has ended: read once
        built = bool(first_id) and set(built_here) <= first_keys
        if not built:
            for child in later:
                child.cancel()  # still waiting for the model frame: no run of theirs exists
            if first_id and later:
                report.line(f"not refitting {', '.join(distances[1:])}: the first run did not build the model frame")
        elif interrupted:
            for child in later:
                if not child.released:  # never let go (the first run stopped before its first step): no run of theirs exists
                    child.cancel()

        def write_means() -> str | None:
            return refit("means", means_keys, tags={RUN_TAG: "posterior means", LOG_TAG: str(log_path)})

        # Once every distance has stored the posteriors the means are made of, the means run
        # starts beside the later run's last steps (its gate and its CSV), which it does not
        # read: at the demo's scale that run took 0.9 s after both distances' runs had ended
        # (2026-12-04). With more than one later distance, or any doubt, it waits for every
        # run to end, as below. An interrupt that reaches this process alone while the means
        # run executes is passed on to the later distance's process, as while waiting for it.
        means_id = None
        if (means_keys and built and not interrupted and len(later) == 1
                and set(means_inputs) <= first_keys
                and later[0].stored(set(means_inputs)) and not (later[0].interrupted or dog.interrupted)):
            means_id = write_means()
            if means_id and (dog.interrupted or _interrupted(instance, means_id)):
                later[0].interrupt()
        for child in later:
            run_id = child.wait(instance, checked_assets)
            interrupted |= child.interrupted or (bool(run_id) and _interrupted(instance, run_id))
            if run_id:
                run_ids.append(run_id)
        interrupted |= dog.interrupted
        # only when a run stored a posterior the means are made of (not when every distance
        # was refused, say because another refit of it is running), and never after a Ctrl-C:
        # a run may have stored its posterior before it was stopped, but nothing new starts
        stored = any((first_keys if r == first_id else _materialized_keys(instance, r)) & set(means_inputs) for r in run_ids)
        if means_keys and stored and not means_id:
            if interrupted:
                report.line("not writing the posterior means: the refit was interrupted")
            else:
                write_means()
    finally:
        dog.__exit__(None, None, None)
        for child in later:
            child.stop()
    return report, (errors[0] if errors else None)


def _reusable_frame(args, instance, defs):
    """The stored model frame this refit may reuse (defs/inputs.StoredFrame), or None: with
    ``--rebuild-inputs``, or when the inputs or the code changed since it was stored."""
    if args.rebuild_inputs:
        return None
    from racedayai_bayes.defs.inputs import stored_frame_if_current
    from racedayai_bayes.defs.resources import PipelinePaths, storage_base

    io_manager = defs.resources.get("io_manager")
    storage = storage_base(instance, getattr(io_manager, "base_dir", None))
    return stored_frame_if_current(instance, PipelinePaths.from_env(), storage)


# A later distance's own process (its imports, then the run's orchestration) runs below the
# first run's, so that it yields the cores while the first run reads its inputs. Its steps
# fork from the first process's step server and run at that server's priority, as the first
# run's steps do: the CPU slots (defs/resources.py CpuSlots) share the cores between the two
# runs' heavy steps. (Only if it cannot join that server does it start its own, at this
# priority.)
LATER_NICE = 5
WAITING = 3  # exit code of a later distance's process that never started its run
COMMAND_PID_ENV = "RACEDAYAI_REFIT_COMMAND_PID"  # the command's pid, for its later distance's process
# A later distance's process waits, before it imports anything, until the first process says
# go: once the first run's first step has started, that is, once the step server has
# imported everything. At the start of a refit three processes imported at once on a 2-core
# machine (this command and the later process each about 1.3 s of CPU for Dagster and the code
# location, the step server 3.4 s for its whole preload; 2026-12-04), and the first step
# waits for the server's. The later process's imports then run beside
# the first run's input steps instead; it needs them only once the model frame is built.
# (A later process forked from the command, as it is by default since 2026-12-04, has Dagster
# and the code location already: it waits for go all the same, before it opens the instance
# and starts polling.)
# The first process says go by closing a pipe, which also happens if it dies; after
# GO_TIMEOUT_S the later process goes on regardless.
GO_ENV = "RACEDAYAI_LATER_GO_FD"
GO_TIMEOUT_S = 30.0


def _wait_for_go(timeout_s: float = GO_TIMEOUT_S) -> bool:
    """Block until the pipe named by ``$RACEDAYAI_LATER_GO_FD`` is closed by its writer (see
    :data:`GO_ENV`), at most ``timeout_s``. True if it was; False without one, or on timeout."""
    import select

    value = os.environ.pop(GO_ENV, "")
    if not value.isdigit():
        return False
    fd = int(value)
    try:
        readable, _, _ = select.select([fd], [], [], timeout_s)
        return bool(readable)
    except OSError:  # not an open descriptor: nothing to wait for
        return False
    finally:
        with contextlib.suppress(OSError):
            os.close(fd)


class _Later:
    """A later distance's run, executed by a child process of this command (forked from it,
    :class:`_ForkedLater`; or, if it cannot fork, a new interpreter running ``refit
    --distance D --after FIRST=LOG``) and reported here from the instance's event log.

    The run executes in the child's main thread, as Dagster's executors expect: a Ctrl-C on
    the terminal reaches every process of the command and each run stops as Dagster stops
    one; an interrupt sent to this process alone is passed on to the child.
    """

    def __init__(self, distance: str, proc, watcher, report, go_fd: int | None = None):
        self.distance, self.proc, self.watcher, self.report = distance, proc, watcher, report
        self.interrupted = False  # a Ctrl-C reached this process while it waited for the child
        self._go_fd, self._go_lock = go_fd, threading.Lock()

    @classmethod
    def start(cls, args, distance: str, first: str, log_path: Path, report) -> _Later:
        try:
            proc, go_write = _ForkedLater.start(args, distance, first, log_path)
        except OSError:  # no fork here (a process or memory limit): a new interpreter instead
            proc, go_write = cls._spawn(args, distance, first, log_path)
        # not started here: every later process is forked before any thread of this one runs
        return cls(distance, proc, _RunWatcher(_run_tags(distance, log_path), report), report, go_write)

    @staticmethod
    def _spawn(args, distance: str, first: str, log_path: Path):
        """The later process as a new interpreter (``refit ... --after``): (its Popen, the go pipe)."""
        import subprocess

        from racedayai_bayes.step_server import share_step_server

        argv = [a for a in args.argv if a != "--verbose"]
        cmd = [sys.executable, "-m", "racedayai_bayes.cli", *argv, "--distance", distance, "--after", f"{first}={log_path}"]
        if args.frame_from:  # the first run builds no model frame: the later run need not wait for one
            cmd += ["--frame-from", args.frame_from]
        # its steps fork from this process's step server: one server imports the steps' modules
        # (so they write to what the server was started with: this command's stdout, and fd 2,
        # the refit's log pipe)
        env, server_fd = share_step_server()
        go_read, go_write = os.pipe()  # closed by release(): the child's imports may begin
        env[GO_ENV] = str(go_read)
        env[COMMAND_PID_ENV] = str(os.getpid())
        try:
            # the child's own stdout: this command reports its run; stderr (the log pipe) is inherited
            proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                    env={**os.environ, **env}, pass_fds=(server_fd, go_read))
        except BaseException:
            os.close(go_write)
            raise
        finally:
            os.close(go_read)
        return proc, go_write

    @property
    def released(self) -> bool:
        """Whether :meth:`release` has let the child go on."""
        return self._go_fd is None

    def release(self) -> None:
        """Let the child go on (see :data:`GO_ENV`); once is enough, more is harmless."""
        with self._go_lock:
            fd, self._go_fd = self._go_fd, None
        if fd is not None:
            os.close(fd)

    def cancel(self) -> None:
        # ended before it is let go: a child that needs no model frame (--frame-from) would
        # otherwise start its run as soon as it is
        if self.proc.poll() is None:
            self.proc.terminate()
        self.release()

    def stored(self, keys: set) -> bool:
        """Wait until the child's run has materialised ``keys`` (True), or the child has ended
        (False). A Ctrl-C is passed on to the child, as in :meth:`wait`, and gives False."""
        self.release()
        try:
            return self.watcher.wait_for(keys, lambda: self.proc.poll() is None)
        except KeyboardInterrupt:
            self.interrupt()
            return False

    def interrupt(self) -> None:
        """Stop the child's run the way Dagster stops a run (an interrupt), if it still runs."""
        import signal

        self.interrupted = True
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)

    def wait(self, instance, checked_assets) -> str | None:
        """Wait for the child; report its run's end. The run's id, or None if it never started."""
        import dagster as dg

        self.release()
        while True:
            try:
                code = self.proc.wait()
                break
            except KeyboardInterrupt:
                self.interrupt()
        self.watcher.finish()
        records = instance.get_run_records(dg.RunsFilter(tags=self.watcher.tags), limit=1)
        if not records:
            if code not in (0, WAITING, -15):
                self.report.line(f"refit {self.distance}: its process ended with exit code {code} before its run started; "
                                 "see the log")
                self.report.failed = True
            return None
        run = records[0].dagster_run
        selection = run.asset_selection
        expected = [(k.to_user_string(), self.distance) for k in checked_assets if selection is None or k in selection]
        self.report.run_finished(self.distance, run.status == dg.DagsterRunStatus.SUCCESS, expected)
        return run.run_id

    def stop(self) -> None:
        """Leave no child behind (an exception in this process): interrupt it, then end it."""
        import signal
        import subprocess

        self.release()
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        self.watcher.close()


class _ForkedLater:
    """A later distance's process forked from this one (``os.fork``), with the same
    interface as the ``subprocess.Popen`` of a new interpreter (poll, wait, send_signal,
    terminate, kill, returncode).

    A new interpreter imported Dagster and the code location again: about 1.3 s of CPU
    (2026-12-04), while the first run's steps needed the cores. The fork has them already,
    and the step server's address and alive pipe as well (step_server.adopt_step_server).
    It is forked before this process starts any run or thread of its own (the stderr pipe's
    copying thread aside, whose lock and file the child never uses), so it holds no lock
    that another thread took; it then does what ``refit --after`` does (:func:`_later_main`)
    and ends with :func:`exit_now`, never returning into this process's code.
    """

    def __init__(self, pid: int):
        self.pid = pid
        self.returncode: int | None = None

    @classmethod
    def start(cls, args, distance: str, first: str, log_path: Path) -> tuple[_ForkedLater, int]:
        import copy
        import signal

        later_args = copy.copy(args)
        later_args.distance, later_args.after = distance, f"{first}={log_path}"
        for stream in (sys.stdout, sys.stderr):
            stream.flush()  # or the child would write what is buffered here once more
        go_read, go_write = os.pipe()  # closed by release(): the child's run may begin
        command = os.getpid()
        # no Ctrl-C between the fork and the child's own handling: an interrupt there would
        # unwind the child through this process's stack (its stderr redirection, its exit)
        stop_signals = {signal.SIGINT, signal.SIGTERM}
        blocked = signal.pthread_sigmask(signal.SIG_BLOCK, stop_signals)
        try:
            pid = os.fork()
        except OSError:
            signal.pthread_sigmask(signal.SIG_SETMASK, blocked)
            os.close(go_read)
            os.close(go_write)
            raise
        if pid == 0:  # the child: never returns
            code = 1
            try:
                os.close(go_write)
                os.environ[COMMAND_PID_ENV] = str(command)
                _as_a_new_process()
                signal.pthread_sigmask(signal.SIG_SETMASK, blocked)
                code = int(_handled(_later_main, later_args, go_read) or 0)
            except SystemExit as exc:  # as a new interpreter would end
                code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
            except BaseException:  # noqa: BLE001 - said in the log, as an uncaught exception would be
                import traceback

                traceback.print_exc()
            finally:
                try:
                    exit_now(code)
                finally:
                    os._exit(code)  # a second interrupt while flushing
        signal.pthread_sigmask(signal.SIG_SETMASK, blocked)
        os.close(go_read)
        return cls(pid), go_write

    def _reap(self, flags: int) -> int | None:
        if self.returncode is None:
            try:
                pid, status = os.waitpid(self.pid, flags)
            except ChildProcessError:  # reaped elsewhere: its code is unknown
                self.returncode = 0
            else:
                if pid:
                    self.returncode = os.waitstatus_to_exitcode(status)
        return self.returncode

    def poll(self) -> int | None:
        return self._reap(os.WNOHANG)

    def wait(self, timeout: float | None = None) -> int:
        import subprocess

        if timeout is None:
            return self._reap(0)
        deadline = time.monotonic() + timeout
        while self.poll() is None:
            if time.monotonic() >= deadline:
                raise subprocess.TimeoutExpired(f"pid {self.pid}", timeout)
            time.sleep(0.02)
        return self.returncode

    def send_signal(self, sig: int) -> None:
        if self.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, sig)

    def terminate(self) -> None:
        import signal

        self.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        import signal

        self.send_signal(signal.SIGKILL)


def _as_a_new_process() -> None:
    """In the forked later process, before anything else: what a new interpreter started
    with ``Popen(stdin=DEVNULL, stdout=DEVNULL)`` would have, and nothing of the command's.

    - SIGINT and SIGTERM as a new interpreter handles them (an ignored one stays ignored);
    - stdin and stdout /dev/null: the first process reports the run; stderr stays the log pipe;
    - none of the command's own descriptors of its stderr: the pipe's read end (a reader
      in this process would keep its writers from ever failing if the command were killed,
      so they would block once the pipe is full), the terminal's stderr and the log file.
    """
    import signal

    if signal.getsignal(signal.SIGINT) is not signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    if signal.getsignal(signal.SIGTERM) is not signal.SIG_IGN:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
    null = os.open(os.devnull, os.O_RDWR)
    os.dup2(null, 0)
    os.dup2(null, 1)
    os.close(null)
    pipe = _StderrPipe._instance
    if pipe is not None:
        for fd in (pipe.read_fd, pipe.saved_fd, pipe.file.fileno() if pipe.file is not None else None):
            if fd is not None:
                with contextlib.suppress(OSError):
                    os.close(fd)


def _later_main(args, go_fd: int) -> int:
    """The forked later process (:class:`_ForkedLater`), once :func:`_as_a_new_process` has
    run: what ``refit --after`` does, with the step server the fork inherited."""
    from racedayai_bayes.step_server import adopt_step_server

    os.environ[GO_ENV] = str(go_fd)
    return _later_process(args, adopt_step_server)


def _command_pid() -> int:
    """The pid of the command that started this later process: the one it said
    (:data:`COMMAND_PID_ENV`, set before the fork or the new interpreter), else this process's
    parent now. The entry is removed either way."""
    value = os.environ.pop(COMMAND_PID_ENV, "")
    return int(value) if value.isdigit() else os.getppid()


def _later_process(args, use_server) -> int:
    """A later distance's process, forked or a new interpreter: wait for go (for a new
    interpreter, before its imports), open the instance, lower its priority, fork its steps
    from the first process's server (``use_server()``; else a server of its own), run.

    The command's pid comes from the command itself (:func:`_command_pid`), not from this
    process's parent after its imports: a command that died during them (seconds on a busy
    machine) left a process that took its new parent for the command and waited for ever.
    Orphaned already, it exits 3 at once."""
    parent = _command_pid()
    if os.getppid() != parent:
        return WAITING
    _wait_for_go()
    with imports_frozen():  # as the first process's (_refit)
        instance = _instance(os.environ["DAGSTER_HOME"])
        os.nice(LATER_NICE)
        from racedayai_bayes.step_server import start_step_server

        if not use_server():
            start_step_server()
        from racedayai_bayes.definitions import defs, refit_job_def

    return _later_run(args, instance, defs, refit_job_def, parent=parent)


def _run_tags(distance: str, log_path) -> dict[str, str]:
    from racedayai_bayes.defs.schedules import DISTANCE_TAG

    return {"dagster/partition": distance, DISTANCE_TAG: distance, LOG_TAG: str(log_path)}


def _later_run(args, instance, defs, refit_job_def, parent: int) -> int:
    """A later distance's run (in the process the command forked, or ``refit --after
    FIRST=LOG``): wait until the first run of the command that started this process has
    stored the shared assets (with ``--frame-from``, a stored model frame that the refit
    reuses, for nothing), then execute this distance's run, in this process's main thread.
    Exit 3 if the first run ended without them, or if the command that started this
    process, ``parent``, is gone (killed before its first run began)."""
    import dagster as dg

    first, _, log = args.after.partition("=")
    keys = _refit_keys(defs)
    first_tags = {"dagster/partition": first, LOG_TAG: log}
    ended = (dg.DagsterRunStatus.SUCCESS, dg.DagsterRunStatus.FAILURE, dg.DagsterRunStatus.CANCELED)
    run_id = None
    while True:
        if os.getppid() != parent:  # orphaned: nobody would report this run, or stop it
            return WAITING
        if args.frame_from:  # a stored frame the first run reuses: nothing to wait for
            break
        if run_id is None:
            records = instance.get_run_records(dg.RunsFilter(tags=first_tags), limit=1)
            if records:
                run_id = records[0].dagster_run.run_id
        if run_id is not None:
            # one read of the first run's events a poll (it polls for the whole front of the
            # refit: 40-50 s at full scale), not one per shared asset
            if set(keys.shared) <= _materialized_keys(instance, run_id):
                break
            if instance.get_run_by_id(run_id).status in ended:
                return WAITING
        time.sleep(POLL_S)
    run_config = _run_config(args)

    grace_s = _stop_grace_s()

    def killed(pids: list[int]) -> None:
        # this process's stdout is not the terminal: the line goes to the log; the first
        # process reports the killed steps as interrupted, from the run's events
        print(_killed_message(args.distance, pids, grace_s), file=sys.stderr)

    with StopWatchdog(grace_s=grace_s, on_kill=killed):
        dg.execute_job(dg.reconstructable(refit_job_def), instance=instance, run_config=run_config,
                       tags=_run_tags(args.distance, log), asset_selection=keys.per_distance, raise_on_error=False)
    return 0


# how long the step processes may take to stop after a Ctrl-C before they are killed
STOP_GRACE_ENV = "RACEDAYAI_STOP_GRACE_S"


def _stop_grace_s() -> float:
    from racedayai_bayes.stop_watchdog import STOP_GRACE_S

    text = os.environ.get(STOP_GRACE_ENV, "")
    try:
        value = float(text) if text else STOP_GRACE_S
    except ValueError:
        raise UserError(f"{STOP_GRACE_ENV}={text!r} is not a number of seconds") from None
    if not 0 < value < 86_400:
        raise UserError(f"{STOP_GRACE_ENV}={text!r} must be more than 0 seconds and less than a day")
    return value


def _killed_message(distance: str, pids: list[int], grace_s: float) -> str:
    return (f"refit {distance}: {len(pids)} step process{'es' if len(pids) != 1 else ''} (pid "
            f"{', '.join(map(str, pids))}) had not stopped {grace_s:g} s after the interrupt: killed; "
            "the stacks of their threads are in the log above")


def _check_settings(args: argparse.Namespace) -> None:
    """Validate the sampler settings before any run starts (Dagster checks their bounds only in the step)."""
    import pydantic

    from racedayai_bayes.defs.models import ForecastFitConfig, SeedFitConfig
    from racedayai_bayes.lib.data.split import rule_problem

    problems = []
    for flags, config, settings in ((_SEED_FLAGS, SeedFitConfig, _seed_config(args)),
                                    (_FORECAST_FLAGS, ForecastFitConfig, _forecast_config(args))):
        try:
            config(**settings)
        except pydantic.ValidationError as exc:
            problems += [f"{_flag(flags, e['loc'])}: {e['msg']}" for e in exc.errors()]
    split_problem = rule_problem(args.holdout or "latest_year", args.holdout_season)
    if split_problem:  # the split's own check, before any run instead of in the run's first step
        problems.append(f"--holdout/--holdout-season: {split_problem}")
    if problems:
        raise UserError(f"invalid refit settings: {'; '.join(problems)}")


def _environment_settings() -> None:
    """The settings read from the environment where a bad value could not end the command
    with one line: RACEDAYAI_ALERT_INTERVAL_S, which the code location reads as it loads
    (defs/sensors.py, the step server's preload too), and RACEDAYAI_STEP_PAGES, which every
    step process reads as it starts (lib/pages.py) and would ignore. Checked before anything
    imports the code location."""
    from racedayai_bayes.lib.outputs.alerts import alert_interval_s
    from racedayai_bayes.lib.pages import setting

    for check in (alert_interval_s, setting):
        try:
            check()
        except ValueError as exc:
            raise UserError(str(exc)) from None


def _flag(flags: dict[str, str], loc) -> str:
    """The command-line flag of a setting that failed validation (``loc``: pydantic's path to it)."""
    name = ".".join(map(str, loc))
    return f"{flags[name]} ({name})" if name in flags else name


def _key_order(key) -> str:
    return key.to_user_string()


def _expected_posteriors(result, checked_assets, distance: str) -> list[tuple[str, str]]:
    """(asset, distance) of every checked asset this run was to materialise."""
    selection = result.dagster_run.asset_selection
    return [(key.to_user_string(), distance) for key in checked_assets if selection is None or key in selection]


# the reason Dagster records on a run that an interrupt (Ctrl-C, SIGINT) stopped
_FAILURE_REASON_TAG = "dagster/failure_reason"
_INTERRUPTED_REASON = "UNEXPECTED_TERMINATION"


def _interrupted(instance, run_id: str) -> bool:
    """Whether an interrupt stopped the run: Dagster ends such a run as failed, with an
    unexpected termination as its reason."""
    run = instance.get_run_by_id(run_id)
    return run is not None and run.tags.get(_FAILURE_REASON_TAG) == _INTERRUPTED_REASON


def _materialized_keys(instance, run_id: str) -> set:
    """The asset keys run ``run_id`` has materialised so far: one read of its event log."""
    import dagster as dg

    return {e.dagster_event.asset_key for e in instance.all_logs(run_id, of_type=dg.DagsterEventType.ASSET_MATERIALIZATION)}


# --------------------------------------------------------------------------- stderr to the log


# what _StderrPipe.drain() writes into the pipe, then the drain's number in 8 digits and a NUL
DRAIN_MARKER = b"\0racedayai-stderr-drained-"
DRAIN_MARKER_SIZE = len(DRAIN_MARKER) + 9


class _StderrPipe:
    """One pipe for this process's stderr while a refit runs, copied to the refit's log file.

    Step processes fork from a server that the first run starts, and they keep the stderr
    that server was started with for as long as this process lives: the pipe therefore
    lives as long as the process, and a thread copies whatever arrives to the log file of
    the refit in progress (and, with --verbose, to the terminal).
    """

    _instance: _StderrPipe | None = None

    def __init__(self):
        self.read_fd, self.write_fd = os.pipe()
        self.lock = threading.Lock()
        self.file = None
        self.echo_fd: int | None = None
        self.saved_fd: int | None = None  # the stderr this pipe replaces while a refit runs
        self._pending: dict[int, threading.Event] = {}  # drain() markers not yet copied, by number
        self._drains = 0
        self.thread = threading.Thread(target=self._copy, name="racedayai-stderr", daemon=True)
        self.thread.start()

    @classmethod
    def get(cls) -> _StderrPipe:
        if cls._instance is None:
            cls._instance = cls()
        return cls._instance

    def _copy(self) -> None:
        held = b""  # the start of a drain() marker, at the end of the last read
        while True:
            chunk = os.read(self.read_fd, 65536)
            if not chunk:
                return
            with self.lock:
                data, held, reached = self._take_markers(held + chunk)
                self._write(data)
                for number in reached:
                    done = self._pending.pop(number, None)
                    if done is not None:
                        done.set()

    def _take_markers(self, data: bytes) -> tuple[bytes, bytes, list[int]]:
        """``data`` without the markers of pending drains, the end of it held back while it
        may be the start of one, and the numbers of the markers it held. Any other text
        (one that only looks like a marker, a NUL) goes through as it came."""
        if not self._pending:
            return data, b"", []
        out, reached, pos = [], [], 0
        while (at := data.find(DRAIN_MARKER, pos)) >= 0:
            end = at + DRAIN_MARKER_SIZE
            if end > len(data):  # a marker's start, the rest in the next read
                return b"".join(out) + data[pos:at], data[at:], reached
            number = data[at + len(DRAIN_MARKER):end - 1]
            if (data[end - 1:end] == b"\0" and number.isdigit() and int(number) in self._pending
                    and int(number) not in reached):
                out.append(data[pos:at])
                reached.append(int(number))
                pos = end
            else:
                out.append(data[pos:at + 1])
                pos = at + 1
        rest = data[pos:]
        for k in range(min(len(DRAIN_MARKER), len(rest)), 0, -1):
            if rest.endswith(DRAIN_MARKER[:k]):
                return b"".join(out) + rest[:-k], rest[-k:], reached
        return b"".join(out) + rest, b"", reached

    def _write(self, data: bytes) -> None:
        if not data:
            return
        if self.file is not None:
            try:
                self.file.write(data)
                self.file.flush()
            except (OSError, ValueError):  # a full disk, a closed file: the runs' event logs still have it
                pass
        if self.echo_fd is not None:
            with contextlib.suppress(OSError):
                os.write(self.echo_fd, data)

    def drain(self, limit_s: float = 10.0) -> bool:
        """Wait until everything written to the pipe before this call has been copied: a
        marker written now comes out of the pipe after it. Called once the runs have ended,
        so that their step processes' last lines reach the log and the terminal before they
        are let go (a busy machine may not have run the copying thread since those lines
        came). False if the copy did not get there within ``limit_s``; a marker that comes
        later is still taken out."""
        import select

        deadline = time.monotonic() + limit_s
        if not self.lock.acquire(timeout=limit_s):  # the copy is stuck writing (a paused terminal)
            return False
        try:
            self._drains += 1
            number = self._drains
            done = self._pending[number] = threading.Event()
        finally:
            self.lock.release()
        # a full pipe that nobody empties must not hold the command: the marker (shorter than
        # PIPE_BUF: written whole or not at all) goes through a non-blocking descriptor of its
        # own (the pipe's own descriptor is every step process's fd 2: its flags stay as they are)
        marker = DRAIN_MARKER + b"%08d\0" % number
        written = False
        try:
            fd = os.open(f"/proc/self/fd/{self.write_fd}", os.O_WRONLY | os.O_NONBLOCK)
        except OSError:  # no /proc: wait until the pipe has room, then write
            _, writable, _ = select.select([], [self.write_fd], [], limit_s)
            if writable:
                os.write(self.write_fd, marker)
                written = True
        else:
            try:
                while not written and time.monotonic() < deadline:
                    try:
                        os.write(fd, marker)
                        written = True
                    except BlockingIOError:
                        select.select([], [fd], [], min(0.1, max(0.0, deadline - time.monotonic())))
            finally:
                os.close(fd)
        if not written:
            with self.lock:
                self._pending.pop(number, None)
            return False
        return done.wait(max(0.0, deadline - time.monotonic()))


@contextlib.contextmanager
def _stderr_to(path: Path, echo: bool):
    """Send stderr, this process's and its children's, to ``path`` (and the terminal with ``echo``)."""
    pipe = _StderrPipe.get()
    sys.stderr.flush()
    saved_fd, saved_stream = os.dup(2), sys.stderr
    with open(path, "ab") as fh:
        with pipe.lock:
            pipe.file, pipe.echo_fd, pipe.saved_fd = fh, (saved_fd if echo else None), saved_fd
        os.dup2(pipe.write_fd, 2)
        # Dagster's console logger and the warnings module write to sys.stderr, which a
        # caller (a test's capture) may have replaced: point it at fd 2 as well
        sys.stderr = io.TextIOWrapper(io.FileIO(2, "w", closefd=False), line_buffering=True, errors="backslashreplace")
        try:
            yield
        finally:
            sys.stderr.flush()
            sys.stderr = saved_stream
            os.dup2(saved_fd, 2)
            drained = False
            try:
                drained = pipe.drain()
            finally:
                with pipe.lock:
                    if not drained:
                        with contextlib.suppress(OSError):
                            fh.write(b"racedayai-bayes: the step processes' last lines may be missing from this log: "
                                     b"its copying thread had not reached the end of their output 10 s after the runs ended\n")
                    pipe.file, pipe.echo_fd, pipe.saved_fd = None, None, None
                os.close(saved_fd)


# --------------------------------------------------------------------------- the live report


def _events_stamp(instance, run_id: str) -> tuple | None:
    """The modification time and size of the SQLite files that hold run ``run_id``'s events
    (its database and write-ahead log), or None where the instance keeps its events elsewhere
    (Postgres, say), or the files cannot be found: then every poll reads the events.

    A run's watcher polls four times a second for the whole refit, and a read of a run with no
    new event cost 1.3 ms of CPU (a look-up of a run not yet created 3-6 ms), a stat 3 µs: the two watchers of
    a full-scale refit took 1.26 CPU s of the command (2026-12-06), most of it in reads that
    found nothing new.
    """
    path_for = getattr(instance.event_log_storage, "path_for_shard", None)
    if path_for is None:
        return None
    try:
        path = str(path_for(run_id))
    except Exception:  # noqa: BLE001 - a storage of another kind: read every time
        return None
    stamp = []
    for name in (path, path + "-wal"):
        try:
            st = os.stat(name)
        except OSError:  # no write-ahead log while no connection is open: the database has it all
            stamp.append(None)
            continue
        stamp.append((st.st_mtime_ns, st.st_size))
    return tuple(stamp) if stamp[0] is not None else None


class _RunWatcher(threading.Thread):
    """Follows the run tagged ``tags`` in the instance's event log and feeds the report.

    It looks for the run at every poll for :data:`LOOKUP_EAGER_S`, then every
    :data:`WATCH_READ_S`; once found, it reads the run's new events when the run's SQLite files
    have changed since its last read, and at least every :data:`WATCH_READ_S`
    (:func:`_events_stamp`); and both once more at the end.
    """

    def __init__(self, tags: dict[str, str], report: RefitReport):
        super().__init__(name="racedayai-run-watcher", daemon=True)
        self.tags = tags
        self.report = report
        self._done = threading.Event()
        self.error: BaseException | None = None
        self.materialized: set = set()  # asset keys the run has materialised so far
        self._seen = threading.Condition()

    def run(self) -> None:
        import dagster as dg

        try:
            with dg.DagsterInstance.get() as instance:
                run_id, cursor = None, None
                stamp, read_at, looked_at, started = None, 0.0, 0.0, time.monotonic()
                while True:
                    last_pass = self._done.is_set()
                    now = time.monotonic()
                    # the run is looked up at every poll for its first LOOKUP_EAGER_S (the first
                    # run and the means run are created just after their watcher starts), then
                    # at most every WATCH_READ_S (5.8 ms of CPU a look; a later distance's run
                    # exists only once the model frame does); its events are read from the first
                    if run_id is None and (last_pass or now - started < LOOKUP_EAGER_S or now - looked_at >= WATCH_READ_S):
                        looked_at = now
                        records = instance.get_run_records(dg.RunsFilter(tags=self.tags), limit=1)
                        if records:
                            run_id = records[0].dagster_run.run_id
                            self.report.run_started(run_id, self.tags.get("dagster/partition"),
                                                    created=records[0].create_timestamp)
                    if run_id is not None:
                        # stamped before the read: a write after the stat normally changes the
                        # stamp, and one that does not is read within WATCH_READ_S
                        now_stamp = _events_stamp(instance, run_id)
                        if last_pass or now_stamp is None or now_stamp != stamp or now - read_at >= WATCH_READ_S:
                            stamp, read_at = now_stamp, now
                            while True:
                                conn = instance.get_records_for_run(run_id, cursor=cursor, limit=1000)
                                for record in conn.records:
                                    self.report.feed(record.event_log_entry)
                                    self._note(record.event_log_entry)
                                cursor = conn.cursor
                                if not conn.has_more:
                                    break
                    self.report.tick()
                    if last_pass:
                        return
                    self._done.wait(POLL_S)
        except BaseException as exc:  # re-raised by finish(), in the main thread
            self.error = exc

    def _note(self, entry) -> None:
        event = entry.dagster_event
        if event is not None and event.is_step_materialization:
            with self._seen:
                self.materialized.add(event.asset_key)
                self._seen.notify_all()

    def wait_for(self, keys: set, alive) -> bool:
        """Block until the run has materialised every key of ``keys`` (True), or ``alive()``
        turns false or this watcher ends (False)."""
        with self._seen:
            while not keys <= self.materialized:
                if not alive() or not self.is_alive():
                    return False
                self._seen.wait(POLL_S)
            return True

    def close(self) -> None:
        """Stop after one last look, without waiting."""
        self._done.set()

    def finish(self) -> None:
        """Read the run's last events, then stop."""
        self._done.set()
        self.join()
        if self.error is not None:
            raise self.error


@dataclass
class _Step:
    key: str
    run_id: str
    partition: str | None = None
    started: float | None = None
    fraction: float | None = None
    message: str = ""
    detail: str = ""
    notes: int = 0
    finished: bool = False

    @property
    def name(self) -> str:
        return f"{self.key} [{self.partition}]" if self.partition else self.key


@dataclass
class _Failure:
    step: str
    kind: str  # "data", "checks", "bug"
    message: str
    run_id: str = ""


@dataclass
class RefitReport:
    """What `refit` prints, built from the Dagster events of its runs as they arrive."""

    out: object
    tty: bool = False
    partitioned_steps: set[str] = field(default_factory=set)
    gate: QuarterGate = field(default_factory=QuarterGate)

    def __post_init__(self):
        self.lock = threading.RLock()
        self._on_step_start: list = []  # called once, when the first step of any run starts
        self.steps: dict[tuple[str, str], _Step] = {}
        self.partition: dict[str, str] = {}  # run id -> partition
        self.posteriors: dict[tuple[str, str], PosteriorChecks] = {}
        self.failures: list[_Failure] = []
        self.failed = False
        self.watchdog: StopWatchdog | None = None  # whether a Ctrl-C reached this command
        self._status_shown = False
        self._run_started_at: dict[str, float] = {}  # distance -> when its run was submitted
        self._distance = ""  # the distance of the run submitted last
        self._progress_budget = PLAIN_PROGRESS_BUDGET

    # ---- output

    def line(self, text: str) -> None:
        with self.lock:
            self._clear_status()
            print(text, file=self.out, flush=True)
            self._draw_status()

    def _clear_status(self) -> None:
        if self._status_shown:
            self.out.write("\r\033[K")
            self._status_shown = False

    def _draw_status(self) -> None:
        if not self.tty:
            return
        running = [s for s in self.steps.values() if s.started is not None and not s.finished]
        if not running:
            return
        now = time.time()
        parts = []
        for s in running:
            elapsed = seconds(max(now - s.started, 0.0))
            if s.fraction is not None:
                parts.append(f"{s.name} {bar(s.fraction, 16)} {s.fraction:4.0%} {s.message} ({elapsed})")
            else:
                parts.append(f"{s.name} running ({elapsed})" + (f": {s.message}" if s.message else ""))
        width = shutil.get_terminal_size((120, 20)).columns - 1
        self.out.write("\r\033[K" + " | ".join(parts)[:width])
        self.out.flush()
        self._status_shown = True

    def tick(self) -> None:
        with self.lock:
            if self.tty:
                self._clear_status()
                self._draw_status()

    # ---- runs

    def run_starting(self, distance: str) -> None:
        with self.lock:
            self._run_started_at[distance] = time.monotonic()
            self._distance = distance

    def run_started(self, run_id: str, distance: str | None = None, created=None) -> None:
        """The watcher found the run of ``distance`` (default: the one submitted last), created
        at ``created`` (a datetime; default: now): its steps are named with its partition from
        now on."""
        with self.lock:
            distance = distance or self._distance
            # a later distance's run starts in another process: its time counts from its
            # creation (the watcher may find it up to a second later; at most 5 s back, should
            # the storage's clock and this one disagree)
            age = min(5.0, max(0.0, time.time() - created.timestamp())) if created is not None else 0.0
            self._run_started_at.setdefault(distance, time.monotonic() - age)
            self.partition[run_id] = distance
            self.line(f"refit {distance}: started run {run_id}")

    def run_finished(self, distance: str, success: bool, expected: list[tuple[str, str]]) -> None:
        with self.lock:
            self._run_finished(distance, success, expected)

    def _run_finished(self, distance: str, success: bool, expected: list[tuple[str, str]]) -> None:
        for asset, d in expected:
            self.posteriors.setdefault((asset, d), PosteriorChecks(asset, d))
        took = seconds(time.monotonic() - self._run_started_at.get(distance, time.monotonic()))
        self.failed |= not success
        self.line(f"refit {distance}: {'succeeded' if success else 'FAILED'} in {took}")

    # ---- events

    def _step(self, entry) -> _Step:
        key = (entry.run_id, entry.step_key)
        if key not in self.steps:
            step = _Step(entry.step_key, entry.run_id)
            if entry.step_key in self.partitioned_steps:
                step.partition = self.partition.get(entry.run_id)
            self.steps[key] = step
        return self.steps[key]

    def when_a_step_starts(self, fn) -> None:
        """Call ``fn()`` once, when the first step of any run of this report starts."""
        with self.lock:
            self._on_step_start.append(fn)

    def feed(self, entry) -> None:
        with self.lock:
            self._feed(entry)

    def _feed(self, entry) -> None:
        event = entry.dagster_event
        kind = event.event_type_value if event is not None else None
        if entry.step_key is None or kind in ("ASSET_MATERIALIZATION_PLANNED", "ASSET_CHECK_EVALUATION_PLANNED"):
            if kind in ("PIPELINE_FAILURE", "RUN_FAILURE"):
                self._run_failure(entry, event)
            return
        step = self._step(entry)
        if kind == "STEP_START":
            step.started = entry.timestamp
            hooks, self._on_step_start = self._on_step_start, []
            for hook in hooks:
                hook()
        elif kind == "STEP_SUCCESS":
            step.finished = True
            took = event.event_specific_data.duration_ms / 1000
            self.line(f"  {step.name:<34} {seconds(took):>9}" + (f"  {step.detail}" if step.detail else ""))
        elif kind == "STEP_FAILURE":
            step.finished = True
            took = f" after {seconds(entry.timestamp - step.started)}" if step.started else ""
            failure = _classify(step.name, event.event_specific_data, entry.run_id)
            if failure.kind == "bug" and self._killed_after_interrupt(event.event_specific_data):
                failure = _Failure(step.name, "interrupted", "killed after the interrupt", entry.run_id)
            self.failures.append(failure)
            self.failed = True
            self.line(f"  {step.name:<34} FAILED{took}: {_FAILURE_KINDS[failure.kind]}")
        elif kind == "ASSET_MATERIALIZATION":
            # a step of several assets (model_frame and athlete_seasons, stored in that step in
            # the other order) is shown by the asset of its own name, else by its first
            key = getattr(event, "asset_key", None)
            own = key is not None and key.path[-1] == step.key
            if own or not step.detail:
                step.detail = _materialization_detail(event)
        elif kind == "ASSET_CHECK_EVALUATION":
            self._check(entry, event)
        elif kind is None:
            self._message(step, entry)

    def _message(self, step: _Step, entry) -> None:
        text = entry.user_message or ""
        parsed = parse_progress(text)
        if parsed is not None:
            step.message, step.fraction = parsed
            elapsed = entry.timestamp - step.started if step.started else 0.0
            if not self.tty and self._progress_budget > 0:
                quarter = self.gate.allow((step.run_id, step.key), step.fraction, elapsed)
                if quarter is not None:
                    self._progress_budget -= 1
                    self.line(f"  {step.name:<34} {step.fraction:>8.0%}  {step.message}")
            return
        if entry.level >= logging.WARNING:
            skipped = _NOT_EXECUTING.match(text)
            if skipped and (skipped.group("failed") or skipped.group("skipped")):
                step.finished = True
                self.line(f"  {step.name:<34} not run: needs {_needed(skipped)}")
                return
            if text.startswith("check "):
                return  # a failed check, which the check summary spells out
            step.notes += 1
            if step.notes <= MAX_NOTES_PER_STEP:
                self.line(f"  {step.name:<34} note: {_shorten(text, 200)}")
            elif step.notes == MAX_NOTES_PER_STEP + 1:
                self.line(f"  {step.name:<34} note: more notes in the full event log")
            return
        if entry.level >= logging.INFO:
            step.message = _shorten(text, 80)

    def _check(self, entry, event) -> None:
        ev = event.event_specific_data
        meta = ev.metadata
        distance = meta["distance"].value if "distance" in meta else (ev.partition or self.partition.get(entry.run_id, "-"))
        asset = ev.asset_key.to_user_string()
        value = meta.get("value")
        threshold = meta.get("threshold")
        post = self.posteriors.setdefault((asset, distance), PosteriorChecks(asset, distance))
        post.results.append(
            CheckResult(
                name=ev.check_name,
                passed=ev.passed,
                severity=ev.severity.value,
                description=ev.description or "",
                value=None if value is None else float(value.value),
                threshold=None if threshold is None else str(threshold.value),
            )
        )
        if post.blocking_failure:
            self.failed = True

    def _run_failure(self, entry, event) -> None:
        """A run that failed with no failed step (it could not start one): its own error."""
        data = event.event_specific_data
        if getattr(data, "error", None) is not None and not any(f.run_id == entry.run_id for f in self.failures):
            self.failures.append(_classify(f"run {entry.run_id}", data, entry.run_id))

    def _killed_after_interrupt(self, data) -> bool:
        """A step whose process ended without a word after a Ctrl-C: the stop watchdog killed it."""
        error = getattr(data, "error", None)
        return (self.watchdog is not None and self.watchdog.interrupted and error is not None
                and error.cls_name == "ChildProcessCrashException")

    def killed_after_interrupt(self, distance: str, pids: list[int], grace_s: float) -> None:
        """The stop watchdog of this process killed ``pids``, step processes of the run of
        ``distance``, ``grace_s`` after the interrupt: say so, here and in the log."""
        message = _killed_message(distance, pids, grace_s)
        self.line(message)
        print(message, file=sys.stderr)

    # ---- the end

    def summary_lines(self) -> list[str]:
        if not self.posteriors:
            return []
        n = len(self.posteriors)  # each model's posterior and published_model, per distance
        lines = [f"checks ({n} asset{'s' if n != 1 else ''}):"]
        for post in self.posteriors.values():
            lines.append("  " + post.line())
        return lines

    def error_messages(self) -> list[str]:
        messages = []
        stopped = [f.step for f in self.failures if f.kind == "interrupted"]
        if stopped:
            messages.append(f"interrupted: {', '.join(stopped)} stopped before finishing; their outputs were not written")
        for f in self.failures:
            if f.kind == "interrupted":
                continue
            if f.kind == "data":
                messages.append(f.message.strip())
            elif f.kind == "checks":
                messages.append(f"{f.step}: blocking checks failed (see the checks above); its outputs were not written")
            else:
                messages.append(f"{f.step} raised an unexpected error (a bug); its traceback:\n{f.message.rstrip()}")
        return messages


# Dagster's message for a step whose upstream steps failed, or did not run, or both:
# "Dependencies for step <key>[ failed: [...]][ were not executed: [...]]. Not executing."
_NOT_EXECUTING = re.compile(
    r"Dependencies for step \S+(?: failed: \[(?P<failed>[^\]]*)\])?(?: were not executed: \[(?P<skipped>[^\]]*)\])?"
    r"\. Not executing\.")


def _needed(skipped: re.Match) -> str:
    """The upstream steps a skipped step needed, from Dagster's message: each once, unquoted."""
    names = [n.strip().strip("'\"") for part in skipped.group("failed", "skipped") if part for n in part.split(",")]
    return ", ".join(dict.fromkeys(n for n in names if n))

_FAILURE_KINDS = {
    "data": "a data or configuration error (below)",
    "checks": "blocking checks failed (see the checks below)",
    "bug": "an unexpected error, a bug (traceback below)",
    "interrupted": "interrupted (Ctrl-C)",
}


# Dagster's message for a multiprocess run whose step processes failed outside any step (a
# Ctrl-C that reached them while they waited for a CPU slot, before their steps had started):
# one "In process <pid>: <the process's error>" line per process, the error's text starting
# with its exception's name (a SyntaxError's starts with its file and line instead)
_CHILD_ERROR = re.compile(r"^In process \d+: (.*)$", re.MULTILINE)
# as Dagster's executor counts them
_INTERRUPTION = re.compile(r"(?:[\w.]+\.)?(?:DagsterExecutionInterruptedError|KeyboardInterrupt)\b")


def _only_interruptions(message: str) -> bool:
    """Whether every step process named in a DagsterSubprocessError's ``message`` was
    interrupted. (Dagster's executor raises an interruption itself in that case once it has
    seen the interrupt too; the subprocess error comes when the step processes saw it first.)"""
    errors = _CHILD_ERROR.findall(message or "")
    return bool(errors) and all(_INTERRUPTION.match(e) for e in errors)


def _classify(step: str, data, run_id: str) -> _Failure:
    """A step's failure: a data or configuration error, failed blocking checks, or a bug."""
    user = getattr(data, "user_failure_data", None)
    error = getattr(data, "error", None)
    if user is not None and user.description:
        return _Failure(step, "data", user.description, run_id)
    name = error.cls_name if error is not None else ""
    if name == "DagsterAssetCheckFailedError":
        return _Failure(step, "checks", error.message, run_id)
    if name == "DagsterExecutionInterruptedError" or (name == "DagsterSubprocessError" and _only_interruptions(error.message)):
        return _Failure(step, "interrupted", "interrupted", run_id)
    # Dagster wraps an IO manager's or an input loader's exception in one of its own: look
    # through the causes for a data error (an unwritable storage folder, say)
    cause = error
    while cause is not None:
        if cause.cls_name in _DATA_ERROR_NAMES:
            # the exception's own message: Dagster stores "<module.Class>: <message>"
            return _Failure(step, "data", cause.message.split(": ", 1)[-1].strip(), run_id)
        cause = cause.cause
    return _Failure(step, "bug", error.to_string() if error is not None else "no error was recorded", run_id)


def _materialization_detail(event) -> str:
    meta = event.event_specific_data.materialization.metadata
    parts = []
    rows = meta.get("rows")
    if rows is not None:
        parts.append(f"{int(rows.value):,} rows")
    # a posterior's artifact, or an output CSV ("path" of an input asset is where the IO
    # manager stored its value, which says nothing to a reader)
    written = meta.get("artifact") or meta.get("path")
    if written is not None and str(written.value).endswith((".nc", ".csv")):
        parts.append(_relative(str(written.value)))
    return "  ".join(parts)


def _relative(path: str) -> str:
    with contextlib.suppress(ValueError):
        return str(Path(path).relative_to(Path.cwd()))
    return path


def _shorten(text: str, width: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 1] + "…"


# --------------------------------------------------------------------------- predict


def _predict(args: argparse.Namespace) -> int:
    """Predictions from a posterior artifact alone, as the pipeline's prediction CSVs."""
    from racedayai_bayes.lib.data.contracts import InputError, read_model_rows
    from racedayai_bayes.lib.outputs.artifacts import ArtifactError, load_artifact
    from racedayai_bayes.lib.outputs.io import OutputWriteError, write_csv_atomic
    from racedayai_bayes.lib.outputs.tables import prediction_table

    try:
        artifact = load_artifact(args.posterior)
        model = artifact.model
        rows = read_model_rows(args.input, model.predict_columns)
    except (ArtifactError, InputError) as exc:
        raise UserError(str(exc)) from None
    frame = rows.frame
    distances = frame["event_distance"].dropna()
    other = distances[distances != artifact.distance]
    if len(other):
        raise UserError(
            f"{rows.path}, column 'event_distance': {len(other):,} rows are not {artifact.distance} "
            f"(e.g. {other.iloc[0]!r}), but {artifact.path} is a posterior of {artifact.distance}; "
            f"predict each distance with its own posterior (--posterior <output dir>/posterior/<distance>)"
        )
    for note in rows.notes:
        print(f"note: {rows.path}: {note}", file=sys.stderr)
    try:
        pred = model.predict_rows(frame, draws=args.draws, seed=args.seed)
    except ValueError as exc:
        raise UserError(f"{rows.path}: {exc}") from None
    held = frame["held_out"].fillna(False).to_numpy(dtype=bool) if "held_out" in frame else _held_out(artifact, frame)
    table = prediction_table(frame, pred, model.name, held)
    try:
        path = write_csv_atomic(table, args.output)
    except OutputWriteError as exc:
        raise UserError(str(exc)) from None
    print(f"wrote {len(table):,} predictions of {artifact.distance} by {model.name} to {path} (posterior {artifact.path})")
    return 0


def _held_out(artifact, frame):
    """True for rows the artifact's fit never saw, when its split held out a season: rows of
    that season or later (a backtest drops the later ones from its fit too)."""
    import json

    import numpy as np

    years = frame["event_year"].astype("Float64").to_numpy(dtype=float, na_value=np.nan)
    first = getattr(artifact.model, "first_forecast_season", None)  # the forecast model's own rule
    if first is not None:
        return years >= first
    season = json.loads(artifact.attrs.get("racedayai_split", "{}")).get("season")
    return years >= season if season is not None else np.zeros(len(frame), dtype=bool)


def _forecast(args: argparse.Namespace) -> int:
    """A start list in, every athlete's forecast out, from a posterior artifact alone."""
    from racedayai_bayes.lib.data.contracts import InputError, read_start_list
    from racedayai_bayes.lib.outputs.artifacts import ArtifactError, load_artifact
    from racedayai_bayes.lib.outputs.forecasts import ForecastError, forecast_start_list
    from racedayai_bayes.lib.outputs.io import OutputWriteError, write_csv_atomic

    try:
        given = tuple(c for c, v in (("event_name", args.event), ("event_year", args.year)) if v is not None)
        start = read_start_list(args.start_list, given=given)
        artifact = load_artifact(args.posterior, athletes=start.athletes["athlete_hash"].dropna())
        result = forecast_start_list(artifact, start, args.event, args.year, args.draws)
    except (ArtifactError, InputError, ForecastError) as exc:
        raise UserError(str(exc)) from None
    for note in result.notes:
        print(f"note: {note}", file=sys.stderr)
    try:
        path = write_csv_atomic(result.table, args.output)
    except OutputWriteError as exc:
        raise UserError(str(exc)) from None
    print(f"wrote {len(result.table):,} forecasts of {result.event} {result.season} ({result.distance}) by "
          f"{result.model} to {path}: {result.without_history:,} athletes without history"
          + (", a new course" if result.new_course else "") + f" (posterior {result.artifact})")
    return 0


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="racedayai-bayes", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)

    demo = sub.add_parser("demo-data", help="write synthetic input CSVs calibrated to real results")
    demo.add_argument("--size", choices=["demo", "full"], default="demo", help="demo: ~100k rows; full: ~3.7M rows")
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--out", type=Path, default=Path("data/cleaned"))
    demo.set_defaults(func=_demo_data)

    refit = sub.add_parser("refit", help="materialise the whole asset graph on the instance in DAGSTER_HOME")
    refit.add_argument("--distance", choices=list(MODEL_DISTANCES), help="one distance (default: both)")
    refit.add_argument("--engine", choices=["exact", "rowwise"], help="sampler engine (default: exact)")
    refit.add_argument("--warmup", type=int, help="warmup iterations per chain (default 1500)")
    refit.add_argument("--samples", type=int, help="draws per chain (default 1500)")
    refit.add_argument("--chains", type=int, help="chains (default 2)")
    refit.add_argument("--seed", type=int, help="PRNG seed (default: 42 for 70.3, 99 for 140.6)")
    refit.add_argument("--predictive-draws", type=int, help="posterior draws for the seed models' predictive intervals (default 1000)")
    refit.add_argument("--forecast-samples", type=int, help="draws per chain of the forecast model (default 600)")
    refit.add_argument("--holdout", choices=["latest_year", "random_athletes", "none"], help="held-out rows (default latest_year)")
    refit.add_argument("--holdout-season", type=int, help="hold out this season and drop later ones, to backtest it (default: the latest)")
    refit.add_argument("--publish", choices=["auto", "seed_profile", "seed_asof", "forecast"], default="auto",
                       help="which model's forecasts to publish (default auto: the eligible model with the best held-out ELPD)")
    refit.add_argument(
        "--rebuild-inputs", action="store_true",
        help="read the input CSVs and build the model frame again even if neither they nor the code changed "
        "since the stored frame was built (by default it is then reused)",
    )
    refit.add_argument(
        "--verbose", action="store_true",
        help="also stream Dagster's full event log (DEBUG included) to stderr; it is always written to "
        "$DAGSTER_HOME/refit_logs/refit-<time>.log",
    )
    # internal: this process runs one later distance of the refit whose first run is FIRST and
    # whose log is LOG (the refit command starts it; see _Later)
    refit.add_argument("--after", metavar="FIRST=LOG", help=argparse.SUPPRESS)
    # internal: the refit reuses the model frame that run stored (its later distances wait for none)
    refit.add_argument("--frame-from", metavar="RUN", help=argparse.SUPPRESS)
    refit.set_defaults(func=_refit)

    predict = sub.add_parser(
        "predict",
        help="predict finish times from a posterior artifact alone",
        description="Write the pipeline's prediction columns for the rows of --input, from a posterior "
        "artifact (a .nc file, or a folder posterior/<distance> whose 'latest' names one). With the "
        "artifact's own seed and draws the output equals the pipeline's CSV for the same rows.",
    )
    predict.add_argument("--posterior", required=True, help="artifact .nc file, or <output dir>/posterior/<distance>")
    predict.add_argument(
        "--input", required=True, type=Path,
        help=PREDICT_INPUT_HELP,
    )
    predict.add_argument("--output", required=True, help="CSV to write (atomically): a path, or an object-store URL")
    predict.add_argument("--draws", type=_positive_int, help="posterior draws for the intervals (default: the artifact's)")
    predict.add_argument("--seed", type=int, help="seed of the interval simulations (default: the artifact's)")
    predict.set_defaults(func=_predict)

    forecast = sub.add_parser(
        "forecast",
        help="forecast every athlete of a start list at an upcoming race, from a posterior artifact alone",
        description="Forecast the finish time of every athlete of --start-list at --event in --year, from the "
        "forecast model's artifact (a .nc file, or a folder posterior/<distance> whose 'latest' names one). "
        "The output has the start list's columns, then event_name, event_year, event_distance, model, "
        "history_races, new_course, bayes_pred, bayes_std (the predictive sd), bayes_p05, bayes_p50, bayes_p95.",
    )
    forecast.add_argument("--posterior", required=True, help="artifact .nc file, or <output dir>/posterior/<distance>")
    forecast.add_argument("--event", help="the race's event_name (default: the start list's event_name column)")
    forecast.add_argument("--start-list", required=True, type=Path, help="CSV with athlete_hash, gender, age_group (cells may be blank); other columns are kept")
    forecast.add_argument("--output", required=True, help="CSV to write (atomically): a path, or an object-store URL")
    forecast.add_argument("--year", type=int, help="the race's season: the artifact's held-out season (history before it) or later (everything it knew); default: the season after its latest")
    forecast.add_argument("--draws", type=_positive_int, help="posterior draws behind each forecast (default: the artifact's)")
    forecast.add_argument("--seed", type=int, help="accepted for symmetry with predict; the forecast model's forecasts draw no random numbers")
    forecast.set_defaults(func=_forecast)
    return parser


# The columns --input needs are those of the artifact's model (its ``predict_columns``; a test
# checks this text against them): every model's, as the artifact is known only when it runs.
PREDICT_INPUT_HELP = (
    "CSV of rows to predict, with the columns the artifact's model reads (cells may be blank): "
    "seed_profile gender, age_group, pb_total_sec, total_races, cluster_id; seed_asof gender, age_group, "
    "hist_best_sec, hist_results; forecast athlete_hash, gender, age_group, event_name, event_year. "
    "Copied to the output when present: athlete_hash, event_distance, event_year, total_sec, event_name, held_out"
)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    return _handled(args.func, args)


def _handled(func, *args) -> int:
    """``func(*args)``'s exit code, with a user's or a data error said in one line, no traceback."""
    try:
        return func(*args)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except _data_errors() as exc:  # a data error that no command translated: still no traceback
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:  # Ctrl-C before a command's own handling began (e.g. during its imports)
        print("error: interrupted before anything ran", file=sys.stderr)
        return 130


def entry() -> None:
    """The command as a program (the console script and ``python -m``): :func:`main`, then an
    exit that skips the interpreter's teardown.

    Freeing every module and object of a process that has imported Dagster, ArviZ and the
    code location took 0.6-0.8 s after a refit's last line (strace, 2026-12-04), a few
    percent of a demo refit. Everything an ordinary exit does that matters still happens
    here: other non-daemon threads are joined, the atexit handlers run (multiprocessing's
    among them: it stops the step server's children and removes its temporary folder,
    logging's: it flushes the handlers), and stdout and stderr are flushed. A caller that
    runs :func:`main` in its own process (the tests) gets the ordinary return instead.
    """
    import atexit

    code = main()
    for thread in threading.enumerate():
        if thread is not threading.current_thread() and not thread.daemon:
            thread.join()
    atexit._run_exitfuncs()
    exit_now(0 if code is None else int(code))


if __name__ == "__main__":
    entry()
