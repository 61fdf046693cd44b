"""Race-day forecasts: one partition per start list, kept up to date by two sensors."""


import json
import os
from pathlib import Path

import dagster as dg
import numpy as np

from racedayai_bayes.lib.data.contracts import InputError, read_start_list
from racedayai_bayes.lib.data.frame import MODEL_DISTANCES
from racedayai_bayes.lib.models.base import MODEL_NAMES, entry
from racedayai_bayes.lib.outputs.artifacts import ArtifactError, artifact_dir, load_artifact
from racedayai_bayes.lib.outputs.forecasts import ForecastError, forecast_start_list
from racedayai_bayes.lib.outputs.io import OutputWriteError, write_csv_atomic

from .resources import PipelinePaths
from .checks import number

start_lists = dg.DynamicPartitionsDefinition(name="start_lists")
FORECAST_JOB = "forecast_start_list"  # not the asset's name: a job and an op may not share one
GROUP = "race_day"


def _fail(message: str) -> dg.Failure:
    return dg.Failure(description=message, allow_retries=False)


@dg.asset(
    partitions_def=start_lists,
    group_name=GROUP,
    # forecasts read the published posterior of the race's distance (posterior/<distance>/latest)
    deps=[dg.AssetDep("bayesian_predictions", partition_mapping=dg.AllPartitionMapping())],
)
def race_forecasts(context: dg.AssetExecutionContext, paths: PipelinePaths) -> dg.MaterializeResult:
    """Every athlete of one start list forecast at its race, from the published posterior."""
    from racedayai_bayes.lib.evaluation import plots  # Matplotlib: only a step that plots imports it

    name = context.partition_key
    path = paths.start_list(name)
    try:
        start = read_start_list(path, event_columns=True)
    except InputError as exc:
        raise _fail(str(exc)) from None
    distance = start.event["event_distance"]
    if distance not in MODEL_DISTANCES:
        raise _fail(f"{path}, column 'event_distance': {distance!r} is not a modelled distance ({', '.join(MODEL_DISTANCES)})")
    try:
        artifact = load_artifact(artifact_dir(paths.output_dir, distance), athletes=start.athletes["athlete_hash"].dropna())
        result = forecast_start_list(artifact, start)
    except (ArtifactError, ForecastError) as exc:
        raise _fail(str(exc)) from None
    for note in result.notes:
        context.log.warning(f"{path.name}: {note}")
    try:
        out = write_csv_atomic(result.table, paths.output_file(f"forecasts/{name}.csv"))
    except OutputWriteError as exc:
        raise _fail(str(exc)) from None
    context.log.info(f"wrote {len(result.table):,} forecasts of {result.event} {result.season} to {out}")
    p50 = result.table["bayes_p50"].to_numpy(dtype=float)
    return dg.MaterializeResult(metadata={
        "path": dg.MetadataValue.path(str(out)),
        "start_list": dg.MetadataValue.path(str(path)),
        "event": dg.MetadataValue.text(f"{result.event} {result.season} ({result.distance})"),
        "athletes": dg.MetadataValue.int(len(result.table)),
        "without_history": dg.MetadataValue.int(result.without_history),
        "listed_more_than_once": dg.MetadataValue.int(start.counts["listed_more_than_once"]),
        "listed_inconsistently": dg.MetadataValue.int(start.counts["listed_inconsistently"]),
        "new_course": dg.MetadataValue.bool(result.new_course),
        "model": dg.MetadataValue.text(result.model),
        "artifact": dg.MetadataValue.path(result.artifact),
        "median_forecast_h": number(float(np.median(p50) / 3600)),
        "plot_field": dg.MetadataValue.md(plots.png_markdown(
            plots.field_forecast_plot(result.table, f"{result.event} {result.season}"), f"forecasts of the field, {name}")),
        "notes": dg.MetadataValue.md("\n".join(f"- {n}" for n in result.notes) or "none"),
    })


race_forecasts_job = dg.define_asset_job(
    FORECAST_JOB, selection=[race_forecasts], description="Forecast one start list with the published posterior",
)


def _signature(path: Path) -> str:
    stat = path.stat()
    return f"{stat.st_mtime_ns}-{stat.st_size}"


@dg.sensor(job=race_forecasts_job, minimum_interval_seconds=30, default_status=dg.DefaultSensorStatus.RUNNING,
           description="Watches the start-list folder: a new CSV adds its partition of race_forecasts, and a new or "
                       "changed one is forecast with the published posterior of its distance.")
def start_list_sensor(context: dg.SensorEvaluationContext, paths: PipelinePaths):
    """A new or changed CSV in the start-list folder adds its partition and forecasts it."""
    folder = Path(paths.start_lists_dir)
    seen = json.loads(context.cursor) if context.cursor else {}
    if not folder.is_dir():
        return dg.SkipReason(f"no start-list folder {folder}")
    current = {p.stem: _signature(p) for p in sorted(folder.glob("*.csv")) if not p.name.startswith(".")}
    changed = [name for name, sig in current.items() if seen.get(name) != sig]
    if not changed:
        return dg.SkipReason(f"{len(current)} start lists, none new or changed")
    known = set(context.instance.get_dynamic_partitions(start_lists.name))
    new = [name for name in changed if name not in known]
    return dg.SensorResult(
        run_requests=[dg.RunRequest(run_key=f"{name}@{current[name]}", partition_key=name,
                                    tags=_race_tags(_race_of(folder / f"{name}.csv")[0])) for name in changed],
        dynamic_partitions_requests=[start_lists.build_add_request(new)] if new else [],
        cursor=json.dumps(current, sort_keys=True),
    )


# the race's distance on a start list's run, to find its runs by distance in the UI. Not the
# refit's racedayai/distance: that tag is the run queue's key (one refit per distance), and a
# forecast must not wait behind a refit
RACE_DISTANCE_TAG = "racedayai/race_distance"


def _race_tags(distance: str | None) -> dict[str, str]:
    return {RACE_DISTANCE_TAG: distance} if distance else {}


def _race_of(path: Path) -> tuple[str | None, int | None]:
    """The distance and season a start list names (None where it cannot be read)."""
    try:
        start = read_start_list(path, event_columns=True)
        return start.event["event_distance"], int(start.event["event_year"])
    except (InputError, KeyError, OSError):
        return None, None


PUBLISHED = dg.AssetKey("bayesian_predictions")
PUBLICATIONS_PER_TICK = 50


@dg.sensor(job=race_forecasts_job, default_status=dg.DefaultSensorStatus.RUNNING, minimum_interval_seconds=30,
           description="When a weekly refit publishes a distance's posterior, forecasts again every start list of "
                       "that distance whose race is after the posterior's latest season (backtests excepted).")
def republished_forecasts(context: dg.SensorEvaluationContext, paths: PipelinePaths):
    """Each newly published posterior forecasts again every start list of its distance whose
    race is in a later season than the posterior's latest one. Every publication since the
    last tick is read (the weekly refit publishes both distances within seconds); the cursor
    is the last one's storage id. On its first tick the sensor starts after the newest."""
    after = int(context.cursor) if context.cursor else None
    if after is None:
        newest = context.instance.fetch_materializations(PUBLISHED, limit=1).records
        if not newest:
            return dg.SkipReason("nothing published yet")
        after = newest[0].storage_id - 1  # the newest publication is acted on, as on every tick
    result = context.instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=PUBLISHED, after_storage_id=after), limit=PUBLICATIONS_PER_TICK, ascending=True)
    if not result.records:
        return dg.SkipReason("no new publication")
    requests, skipped = [], []
    races = _start_list_races(context, paths)  # read once for every publication of the tick
    for record in result.records:
        found, reason = _forecasts_again(races, record.event_log_entry)
        requests += found
        if reason:
            skipped.append(reason)
    cursor = str(result.records[-1].storage_id)
    if not requests:
        return dg.SensorResult(skip_reason="; ".join(skipped), cursor=cursor)
    return dg.SensorResult(run_requests=requests, cursor=cursor)


def _start_list_races(context, paths: PipelinePaths) -> dict[str, tuple[str | None, int | None]]:
    """The distance and season of each known start list whose file exists."""
    folder = Path(paths.start_lists_dir)
    known = sorted(context.instance.get_dynamic_partitions(start_lists.name))
    return {name: _race_of(folder / f"{name}.csv") for name in known if (folder / f"{name}.csv").exists()}


def _forecasts_again(races: dict, asset_event: dg.EventLogEntry) -> tuple[list, str | None]:
    """The run requests one publication makes (its start lists of later seasons, of
    ``races``: :func:`_start_list_races`), or a reason why it makes none."""
    mat = asset_event.dagster_event.event_specific_data.materialization
    distance = asset_event.dagster_event.partition
    season = mat.metadata.get("season")
    if distance is None or season is None:
        return [], "the publication names no distance or season"
    backtest = mat.metadata.get("backtest")
    if backtest is not None and backtest.value:
        # a backtest publishes in its own folder; the start lists read the weekly one's
        return [], f"a backtest of {distance} (season {int(season.value)}): the start lists' forecasts stay"
    latest = int(season.value)
    model = mat.metadata.get("model")
    if model is not None and model.value in MODEL_NAMES and not entry(model.value).forecasts_start_lists:
        # each such run would fail ("... cannot forecast a start list") and alert; the failure
        # and its alert belong to whoever forces such a model, not to every start list
        return [], (f"{distance}'s published model is {model.value}, which cannot forecast a start list: "
                    "the start lists' forecasts stay as they are")
    requests = []
    for name, (race_distance, race_season) in races.items():
        if race_distance == distance and race_season is not None and race_season > latest:
            requests.append(dg.RunRequest(run_key=f"{name}@{asset_event.run_id or 'runless'}@{asset_event.timestamp}",
                                          partition_key=name, tags=_race_tags(race_distance)))
    return requests, None if requests else f"no start list of {distance} after {latest}"
