"""The alert sensors, evaluated on real runs of a test instance."""

import os
import re
import subprocess
import sys
import time

import dagster as dg
import pytest

from racedayai_bayes.definitions import defs
from racedayai_bayes.defs.sensors import WEBHOOK_ENV, alerts_for_run

from .conftest import REFIT_ASSETS, SHORT_FORECAST_FIT, SHORT_SEED_FIT, pipeline_assets, pipeline_resources, refit_config
from .webhook import WebhookReceiver


@pytest.fixture(scope="module")
def failed_run(small_inputs, tmp_path_factory):
    """A real run of the 70.3 refit stopped by the blocking gate: every model's chains are far
    too short, so no model may be published."""
    tmp = tmp_path_factory.mktemp("sensor")
    with dg.instance_for_test() as instance:
        result = dg.materialize(
            pipeline_assets(),
            partition_key="70.3",
            resources=pipeline_resources(small_inputs, tmp / "out", tmp / "storage"),
            run_config=refit_config(seed_fit=SHORT_SEED_FIT, forecast=SHORT_FORECAST_FIT),
            instance=instance,
            raise_on_error=False,
        )
        assert not result.success
        yield instance, instance.get_run_by_id(result.run_id)


@pytest.mark.slow  # a refit of 70.3, ~10-20 s
def test_a_models_failed_checks_do_not_hide_why_the_run_failed(small_inputs, tmp_path):
    """The seed models fail their ERROR checks (never blocking: they are only not published);
    the forecast model is published; then the prediction CSV cannot be written (a folder stands
    at its path). The run failed because of the write, and the alerts say so beside the
    models' failed checks: only a failed *blocking* check explains a failed run."""
    out = tmp_path / "out"
    (out / "bayesian_predictions_70.3.csv").mkdir(parents=True)
    with dg.instance_for_test() as instance:
        result = dg.materialize(
            pipeline_assets(), partition_key="70.3", instance=instance, raise_on_error=False,
            resources=pipeline_resources(small_inputs, out, tmp_path / "storage"),
            run_config=refit_config(seed_fit=SHORT_SEED_FIT),
        )
        assert not result.success
        alerts = alerts_for_run(instance, instance.get_run_by_id(result.run_id), "run failed")
    assert {"ess_bulk_min"} <= {a.check for a in alerts if a.asset == "posterior_seed_asof"}
    (run_alert,) = [a for a in alerts if a.check is None]
    assert run_alert.message.startswith("step bayesian_predictions: ") and "bayesian_predictions_70.3.csv" in run_alert.message


def _failure_context(instance, run):
    failure = next(iter(instance.all_logs(run.run_id, of_type=dg.DagsterEventType.RUN_FAILURE)))
    return dg.build_run_status_sensor_context(
        sensor_name="refit_failure_alert",
        dagster_instance=instance,
        dagster_run=run,
        dagster_event=failure.dagster_event,
    ).for_run_failure()


def test_alerts_name_distance_check_value_threshold_and_run(failed_run):
    instance, run = failed_run
    alerts = alerts_for_run(instance, run, "run failed")
    assert alerts, "a run stopped by blocking checks must produce alerts"
    checks = {a.check for a in alerts}
    assert {"ess_bulk_min", "publishable"} <= checks  # the models' failures, and the gate they closed
    for a in alerts:
        assert a.distance == "70.3" and a.run_id == run.run_id
        assert a.value is not None and a.threshold
    assert {a.severity for a in alerts if a.check in ("ess_bulk_min", "publishable")} == {"ERROR"}
    # whose check: each model has checks of the same names
    assert {a.asset for a in alerts if a.check == "ess_bulk_min"} <= {"posterior_seed_profile", "posterior_seed_asof",
                                                                      "posterior_forecast"}
    assert next(a for a in alerts if a.check == "publishable").asset == "published_model"
    assert {a.job for a in alerts} == {"refit"}
    gate = next(a for a in alerts if a.check == "publishable")
    assert "nothing published" in gate.message


def test_failure_sensor_logs_error_and_posts_webhook_once(failed_run, monkeypatch, capfd):
    instance, run = failed_run
    sensor = defs.resolve_sensor_def("refit_failure_alert")
    assert sensor.default_status == dg.DefaultSensorStatus.RUNNING
    with WebhookReceiver() as hook:
        monkeypatch.setenv(WEBHOOK_ENV, hook.url)
        sensor(_failure_context(instance, run))
    assert len(hook.bodies) == 1
    body = hook.bodies[0]
    assert "70.3" in body["text"] and "ess_bulk_min" in body["text"] and run.run_id in body["text"]
    assert {a["check"] for a in body["alerts"]} >= {"ess_bulk_min"}
    # Dagster's sensor logger writes to stderr and does not propagate to the root logger
    err = capfd.readouterr().err
    assert any("ERROR" in line and "ess_bulk_min" in line for line in err.splitlines())


def test_failure_sensor_without_webhook_only_logs(failed_run, monkeypatch, capfd):
    instance, run = failed_run
    monkeypatch.delenv(WEBHOOK_ENV, raising=False)
    defs.resolve_sensor_def("refit_failure_alert")(_failure_context(instance, run))
    err = capfd.readouterr().err
    assert any("ERROR" in line and "distance 70.3" in line for line in err.splitlines())
    assert "webhook" not in err


def test_a_webhook_that_fails_once_gets_the_alert_on_the_retry(failed_run, monkeypatch):
    from racedayai_bayes.defs import sensors

    instance, run = failed_run
    monkeypatch.setattr(sensors, "POST_BACKOFF_S", 0.0)
    with WebhookReceiver(fail_first=1) as hook:
        monkeypatch.setenv(WEBHOOK_ENV, hook.url)
        defs.resolve_sensor_def("refit_failure_alert")(_failure_context(instance, run))
    assert hook.attempts == 2 and len(hook.bodies) == 1


def test_an_unreachable_webhook_fails_the_tick_with_the_alert_text(failed_run, monkeypatch):
    from racedayai_bayes.defs import sensors

    instance, run = failed_run
    monkeypatch.setattr(sensors, "POST_BACKOFF_S", 0.0)
    with WebhookReceiver(fail_first=99) as hook:
        monkeypatch.setenv(WEBHOOK_ENV, hook.url)
        with pytest.raises(RuntimeError, match=r"(?s)not delivered.*ess_bulk_min"):
            defs.resolve_sensor_def("refit_failure_alert")(_failure_context(instance, run))
    assert hook.attempts == sensors.POST_ATTEMPTS and hook.bodies == []


@pytest.mark.slow
def test_a_warn_check_never_hides_the_error_that_failed_the_run(small_inputs, tmp_path):
    """Drift warns, then the CSV cannot be written: the alerts name both."""
    from .conftest import FAST_FIT

    out = tmp_path / "out"
    resources = pipeline_resources(small_inputs, out, tmp_path / "storage")
    with dg.instance_for_test() as instance:
        first = dg.materialize(pipeline_assets(), partition_key="70.3", resources=resources,
                               run_config=refit_config(), instance=instance)
        assert first.success
        csv = out / "bayesian_predictions_70.3.csv"
        csv.unlink()
        csv.mkdir()  # a folder where the CSV goes: its write fails
        second = dg.materialize(
            pipeline_assets(), partition_key="70.3", resources=resources, instance=instance,
            selection=list(REFIT_ASSETS), raise_on_error=False,
            run_config=refit_config(seed_fit={**FAST_FIT, "seed": 5, "drift_threshold_sec": 0.01}, selection=REFIT_ASSETS),
        )
        assert not second.success
        alerts = alerts_for_run(instance, instance.get_run_by_id(second.run_id), "run failed")
    by_kind = {(a.severity, a.check) for a in alerts}
    assert ("WARN", "prediction_drift") in by_kind and ("ERROR", None) in by_kind
    error = next(a for a in alerts if a.check is None)
    assert "step bayesian_predictions" in error.message and "bayesian_predictions_70.3.csv" in error.message


@pytest.mark.slow
def test_a_change_of_published_model_is_alerted_with_its_reason(small_inputs, tmp_path, monkeypatch):
    """Last week's published model replaced (here by asking for seed_asof): the run succeeds,
    and the WARN alert says which model replaced which, and why."""
    out = tmp_path / "out"
    resources = pipeline_resources(small_inputs, out, tmp_path / "storage")
    with dg.instance_for_test() as instance:
        first = dg.materialize(pipeline_assets(), partition_key="70.3", resources=resources,
                               run_config=refit_config(), instance=instance)
        before = first.output_for_node("published_model").published
        forced = "seed_asof" if before != "seed_asof" else "forecast"
        second = dg.materialize(pipeline_assets(), partition_key="70.3", resources=resources, instance=instance,
                                selection=list(REFIT_ASSETS),
                                run_config=refit_config(publish=forced, selection=REFIT_ASSETS))
        assert second.success
        run = instance.get_run_by_id(second.run_id)
        success = next(iter(instance.all_logs(run.run_id, of_type=dg.DagsterEventType.RUN_SUCCESS)))
        context = dg.build_run_status_sensor_context(
            sensor_name="check_warning_alert", dagster_instance=instance, dagster_run=run,
            dagster_event=success.dagster_event,
        )
        with WebhookReceiver() as hook:
            monkeypatch.setenv(WEBHOOK_ENV, hook.url)
            defs.resolve_sensor_def("check_warning_alert")(context)
    change = [a for a in hook.bodies[0]["alerts"] if a["check"] == "published_model_change"]
    assert len(change) == 1 and change[0]["severity"] == "WARN" and change[0]["distance"] == "70.3"
    assert before in change[0]["message"] and forced in change[0]["message"] and "asked for" in change[0]["message"]


def _start_list(folder, name, season, distance="70.3", athletes=("a", "b")):
    rows = "\n".join(f"{a},M,30-34,IM 70.3 Test,{season},{distance}" for a in athletes)
    path = folder / f"{name}.csv"
    path.write_text("athlete_hash,gender,age_group,event_name,event_year,event_distance\n" + rows + "\n")
    return path


def test_start_list_sensor_adds_a_partition_and_requests_a_run_per_new_or_changed_file(tmp_path):
    from racedayai_bayes.defs.forecasts import start_list_sensor
    from racedayai_bayes.defs.resources import PipelinePaths

    folder = tmp_path / "start_lists"
    paths = PipelinePaths(input_dir=str(tmp_path), output_dir=str(tmp_path / "out"), start_lists_dir=str(folder))
    # called directly, as Dagster's docs test sensors: the daemon adds the partitions and
    # resolves the run requests together, which evaluate_tick cannot do outside it
    with dg.instance_for_test() as instance:
        missing = start_list_sensor(dg.build_sensor_context(instance=instance, resources={"paths": paths}))
        assert isinstance(missing, dg.SkipReason) and "no start-list folder" in missing.skip_message
        folder.mkdir()
        _start_list(folder, "im703-a-2027", 2027)
        _start_list(folder, "im703-b-2027", 2027)
        (folder / "notes.txt").write_text("not a start list")
        first = start_list_sensor(dg.build_sensor_context(instance=instance, resources={"paths": paths}))
        assert sorted(r.partition_key for r in first.run_requests) == ["im703-a-2027", "im703-b-2027"]
        # each run says its race's distance, under a tag of its own (racedayai/distance is the refit queue's key)
        assert all(r.tags == {"racedayai/race_distance": "70.3"} for r in first.run_requests)
        (add,) = first.dynamic_partitions_requests
        assert add.partitions_def_name == "start_lists" and sorted(add.partition_keys) == ["im703-a-2027", "im703-b-2027"]
        instance.add_dynamic_partitions("start_lists", list(add.partition_keys))

        again = start_list_sensor(
            dg.build_sensor_context(instance=instance, cursor=first.cursor, resources={"paths": paths}))
        assert isinstance(again, dg.SkipReason) and "none new or changed" in again.skip_message

        _start_list(folder, "im703-a-2027", 2027, athletes=("a", "b", "c"))  # a late entry: changed
        _start_list(folder, "im703-c-2027", 2027)  # a new race
        changed = start_list_sensor(
            dg.build_sensor_context(instance=instance, cursor=first.cursor, resources={"paths": paths}))
        assert sorted(r.partition_key for r in changed.run_requests) == ["im703-a-2027", "im703-c-2027"]
        assert len({r.run_key for r in changed.run_requests} | {r.run_key for r in first.run_requests}) == 4
        (add,) = changed.dynamic_partitions_requests
        assert list(add.partition_keys) == ["im703-c-2027"]  # the changed one already has its partition


def test_a_new_publication_forecasts_again_the_start_lists_of_later_seasons(tmp_path):
    from racedayai_bayes.defs.resources import PipelinePaths

    folder = tmp_path / "start_lists"
    folder.mkdir()
    _start_list(folder, "im703-next", 2027)
    _start_list(folder, "im703-past", 2026)  # a season the publication already holds
    _start_list(folder, "im-full-next", 2027, distance="140.6")  # the other distance
    _start_list(folder, "not-registered", 2027)  # no partition yet: the start-list sensor's job
    paths = PipelinePaths(input_dir=str(tmp_path), output_dir=str(tmp_path / "out"), start_lists_dir=str(folder))
    sensor = defs.resolve_sensor_def("republished_forecasts")
    assert sensor.default_status == dg.DefaultSensorStatus.RUNNING
    with dg.instance_for_test() as instance, dg.partition_loading_context(dynamic_partitions_store=instance):
        instance.add_dynamic_partitions("start_lists", ["im703-next", "im703-past", "im-full-next"])
        instance.report_runless_asset_event(dg.AssetMaterialization(
            asset_key="bayesian_predictions", partition="70.3", metadata={"season": 2026}))
        context = dg.build_sensor_context(instance=instance, resources={"paths": paths},
                                          repository_def=defs.get_repository_def())
        result = sensor.evaluate_tick(context)
        assert [r.partition_key for r in result.run_requests] == ["im703-next"]
        assert result.run_requests[0].tags["racedayai/race_distance"] == "70.3"  # beside the tags Dagster adds
        quiet = sensor.evaluate_tick(dg.build_sensor_context(
            instance=instance, cursor=result.cursor, resources={"paths": paths}, repository_def=defs.get_repository_def()))
        assert not quiet.run_requests  # the same publication is not acted on twice
        # a backtest publishes in its own folder: the start lists, which read the weekly one, stay
        instance.report_runless_asset_event(dg.AssetMaterialization(
            asset_key="bayesian_predictions", partition="70.3", metadata={"season": 2025, "backtest": True}))
        backtest = sensor.evaluate_tick(dg.build_sensor_context(
            instance=instance, cursor=quiet.cursor, resources={"paths": paths}, repository_def=defs.get_repository_def()))
        assert not backtest.run_requests and "a backtest of 70.3" in backtest.skip_message
        # the weekly refit publishes both distances within seconds: one tick acts on both
        for distance in ("70.3", "140.6"):
            instance.report_runless_asset_event(dg.AssetMaterialization(
                asset_key="bayesian_predictions", partition=distance, metadata={"season": 2026}))
        both = sensor.evaluate_tick(dg.build_sensor_context(
            instance=instance, cursor=backtest.cursor, resources={"paths": paths}, repository_def=defs.get_repository_def()))
        assert sorted(r.partition_key for r in both.run_requests) == ["im-full-next", "im703-next"]
        # a published seed model cannot forecast a start list: no run that would only fail and alert
        instance.report_runless_asset_event(dg.AssetMaterialization(
            asset_key="bayesian_predictions", partition="70.3", metadata={"season": 2026, "model": "seed_asof"}))
        seed = sensor.evaluate_tick(dg.build_sensor_context(
            instance=instance, cursor=both.cursor, resources={"paths": paths}, repository_def=defs.get_repository_def()))
        assert not seed.run_requests
        assert "70.3's published model is seed_asof, which cannot forecast a start list" in seed.skip_message
        instance.report_runless_asset_event(dg.AssetMaterialization(
            asset_key="bayesian_predictions", partition="70.3", metadata={"season": 2026, "model": "forecast"}))
        back = sensor.evaluate_tick(dg.build_sensor_context(
            instance=instance, cursor=seed.cursor, resources={"paths": paths}, repository_def=defs.get_repository_def()))
        assert [r.partition_key for r in back.run_requests] == ["im703-next"]


def test_a_webhook_that_never_answers_ends_the_alert_within_its_budget(failed_run, monkeypatch):
    """A webhook that accepts the connection and never answers: every attempt of one run's
    alerts fits in POST_BUDGET_S (Dagster gives a whole sensor tick 60 s), and the tick then
    fails with the alert text instead of timing out and alerting the same runs again."""
    import socket

    from racedayai_bayes.defs import sensors

    instance, run = failed_run
    monkeypatch.setattr(sensors, "POST_BUDGET_S", 2.0)
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(8)  # connections wait in the backlog: never accepted, never answered
        monkeypatch.setenv(WEBHOOK_ENV, f"http://127.0.0.1:{server.getsockname()[1]}/hook")
        started = time.monotonic()
        with pytest.raises(RuntimeError, match=r"alert not delivered to RACEDAYAI_ALERT_WEBHOOK after \d attempts in 2 s"):
            defs.resolve_sensor_def("refit_failure_alert")(_failure_context(instance, run))
        assert time.monotonic() - started < 4.0


def test_a_failed_steps_alert_is_its_own_words_and_a_killed_runs_says_how_its_process_ended():
    """A step that raised dg.Failure (a data or output error) is alerted in its own words, not
    after Dagster's class path ('dagster._core.definitions.events.Failure: ...'); a bug keeps
    its own class (Dagster's wrapper, DagsterExecutionStepExecutionError, is looked through). A
    run marked failed from outside (its process killed) says how the process ended, from
    Dagster's engine event, instead of only that it was marked failed."""
    from dagster._utils import get_run_crash_explanation

    @dg.asset
    def bad_input():
        raise dg.Failure(description="athlete_race.csv, column 'gender': 23% not M or F; write M or F")

    @dg.asset
    def a_bug():
        raise ZeroDivisionError("division by zero")

    class FullDisk(dg.IOManager):
        def handle_output(self, context, obj):
            raise OSError(28, "No space left on device")

        def load_input(self, context):
            raise NotImplementedError

    @dg.asset(io_manager_key="full_disk")
    def stored():
        return 1

    with dg.instance_for_test() as instance:
        for asset, expected in ((bad_input, "step bad_input: athlete_race.csv, column 'gender': 23% not M or F; write M or F"),
                                (a_bug, "step a_bug: ZeroDivisionError: division by zero"),
                                # an IO manager's error, through Dagster's DagsterExecutionHandleOutputError
                                (stored, "step stored: OSError: [Errno 28] No space left on device")):
            result = dg.materialize([asset], instance=instance, raise_on_error=False, resources={"full_disk": FullDisk()})
            (alert,) = alerts_for_run(instance, instance.get_run_by_id(result.run_id), "run failed")
            assert alert.message == expected
        # a run whose process was killed: no step failed; Dagster's code server reports how it ended
        @dg.asset
        def fine():
            return 1

        run = instance.get_run_by_id(dg.materialize([fine], instance=instance).run_id)
        # a step's own crash is no word on how the run's process ended
        instance.report_engine_event(get_run_crash_explanation("Multiprocess executor: child process for step fine", 3),
                                     run, step_key="fine")
        assert alerts_for_run(instance, run, "run failed")[0].message == "run failed"
        instance.report_engine_event(get_run_crash_explanation(f"Run execution process for {run.run_id}", -9), run)
        outside = "This run has been marked as failed from outside the execution context."
        (alert,) = alerts_for_run(instance, run, outside)
        assert alert.message.startswith(f"{outside} (Run execution process for {run.run_id} was terminated by signal 9 (SIGKILL)")
        assert alert.message.endswith("(often the operating system ending it for want of memory))")


def test_an_alert_names_what_started_its_run():
    """The schedule, a sensor, a backfill and the command line each name themselves in a run's
    alert (a backfill's and the command's runs named nothing before 2026-12-06)."""
    from racedayai_bayes import cli
    from racedayai_bayes.defs.sensors import _trigger

    def run(**tags):
        return dg.DagsterRun(job_name="refit", run_id="r", tags=tags)

    assert _trigger(run(**{"dagster/schedule_name": "weekly_refit"})) == "schedule weekly_refit"
    assert _trigger(run(**{"dagster/sensor_name": "start_list_sensor"})) == "sensor start_list_sensor"
    assert _trigger(run(**{"dagster/backfill": "abcd"})) == "backfill abcd"
    # the tags the command puts on a distance's run
    assert _trigger(run(**cli._run_tags("70.3", "/h/refit_logs/refit-x.log"))) == "racedayai-bayes refit (log /h/refit_logs/refit-x.log)"
    assert _trigger(run()) is None  # the UI's launchpad or `dagster job launch`


def test_the_alert_interval_comes_from_the_environment_or_is_ten_seconds():
    from racedayai_bayes.lib.outputs.alerts import ALERT_INTERVAL_ENV, DEFAULT_ALERT_INTERVAL_S, alert_interval_s

    assert DEFAULT_ALERT_INTERVAL_S == 10
    assert alert_interval_s({}) == alert_interval_s({ALERT_INTERVAL_ENV: " "}) == 10
    assert alert_interval_s({ALERT_INTERVAL_ENV: "2"}) == 2
    assert alert_interval_s({ALERT_INTERVAL_ENV: " 3600 "}) == 3600
    for bad in ("0", "-5", "+5", "1_0", "2.5", "ten", "3601", "\u0663"):
        with pytest.raises(ValueError, match=rf"{ALERT_INTERVAL_ENV}='{re.escape(bad)}': .* from 1 to 3600"):
            alert_interval_s({ALERT_INTERVAL_ENV: bad})
    # read when the code location loads: both alert sensors of a new process take it
    script = ("from racedayai_bayes.definitions import defs; "
              "print(sorted(defs.resolve_sensor_def(n).minimum_interval_seconds for n in ('refit_failure_alert', 'check_warning_alert')))")
    for env, expected in (({ALERT_INTERVAL_ENV: "3"}, "[3, 3]"), ({}, "[10, 10]")):
        base = {k: v for k, v in os.environ.items() if k != ALERT_INTERVAL_ENV}
        out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env={**base, **env}, timeout=120)
        assert out.returncode == 0, out.stderr[-2000:]
        assert out.stdout.strip().splitlines()[-1] == expected
