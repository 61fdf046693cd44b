"""The three cleaned inputs, validated against the data contract, and the merged model frame."""

import threading
from concurrent.futures import FIRST_COMPLETED, Future, wait
from dataclasses import dataclass
from pathlib import Path

import dagster as dg
import pandas as pd
from upath import UPath

from racedayai_bayes.lib.data import contracts, sources
from racedayai_bayes.lib.data.frame import model_frame_and_seasons
from racedayai_bayes.lib.data.history import athlete_runs
from racedayai_bayes.lib.outputs import stored
from racedayai_bayes.lib.outputs.io import as_path

from .resources import FRAME_ASSETS, SLOT_TAGS, STORED_FILE, CpuSlots, PipelinePaths

GROUP = "inputs"
# The version of the code that reads the inputs and builds the model frame (lib/data/sources.py),
# the assets' code version. Each input asset's value carries the version of the file it was
# read from (SOURCE_VERSION in its attrs; its DataVersion too), and the model frame step
# records the versions of the very values it read with its outputs (INPUT_VERSIONS): not
# Dagster's provenance tags, which name the inputs' latest materialisations when the step
# started, whichever run stored the values it then loaded.
CODE_VERSION = sources.code_version()
INPUT_FILES = {"athlete_race": contracts.RACE_FILE, "athlete_profile": contracts.PROFILE_FILE,
               "cluster_assignments": contracts.CLUSTER_FILE}
SOURCE_VERSION = "racedayai_source_version"
INPUT_VERSIONS = "input_versions"
# the tag Dagster gives a materialisation of an asset with a code version (shown in the UI;
# dagster._core.definitions.data_version.CODE_VERSION_TAG, a private module)
CODE_VERSION_TAG = "dagster/code_version"


def _input_output(result: contracts.ReadResult, context: dg.AssetExecutionContext, version: str) -> dg.Output:
    for note in result.notes:
        context.log.warning(f"{result.path.name}: {note}")
    frame = result.frame
    return dg.Output(
        frame,
        data_version=dg.DataVersion(version),
        metadata={
            "path": dg.MetadataValue.path(str(result.path)),
            "rows": dg.MetadataValue.int(len(frame)),
            "columns": dg.MetadataValue.text(", ".join(frame.columns)),
            "notes": dg.MetadataValue.md("\n".join(f"- {n}" for n in result.notes) or "none"),
        },
    )


def _read(context: dg.AssetExecutionContext, reader, path) -> dg.Output:
    try:
        result, version = sources.read_with_version(path, reader)
    except contracts.InputError as exc:
        # the message already names the file, column and rows; no traceback is needed
        raise dg.Failure(description=str(exc), metadata={"path": str(path)}, allow_retries=False) from None
    result.frame.attrs[SOURCE_VERSION] = version  # stored with the value: the model frame reads it
    return _input_output(result, context, version)


@dg.asset(group_name=GROUP, op_tags=SLOT_TAGS, code_version=CODE_VERSION)
def athlete_race(context: dg.AssetExecutionContext, paths: PipelinePaths, cpu: CpuSlots) -> dg.Output[pd.DataFrame]:
    """Race results (athlete_race.csv): the eight columns the models need, typed and validated."""
    # its columns checked on two cores if the other slot is free once the CSV is parsed (the
    # profile step, which starts beside this one, has usually given it back by then)
    return _read(context, lambda path: contracts.read_races(path, second_core=cpu.second_core),
                 paths.input_file(contracts.RACE_FILE))


@dg.asset(group_name=GROUP, op_tags=SLOT_TAGS, code_version=CODE_VERSION)
def athlete_profile(context: dg.AssetExecutionContext, paths: PipelinePaths, cpu: CpuSlots) -> dg.Output[pd.DataFrame]:
    """Athlete profiles (athlete_profile.csv): one row per athlete_hash."""
    return _read(context, contracts.read_profiles, paths.input_file(contracts.PROFILE_FILE))


@dg.asset(group_name=GROUP, code_version=CODE_VERSION)
def cluster_assignments(context: dg.AssetExecutionContext, paths: PipelinePaths) -> dg.Output[pd.DataFrame]:
    """Athlete clusters (cluster_assignments.csv): athletes with 3+ races; others are cluster -1."""
    return _read(context, contracts.read_clusters, paths.input_file(contracts.CLUSTER_FILE))


@dg.multi_asset(
    outs={
        "model_frame": dg.AssetOut(
            group_name=GROUP,
            is_required=False,
            code_version=CODE_VERSION,
            description="Age-group 70.3 and 140.6 finishers with profile and cluster columns (the seed's section 1) "
            "and each race's as-of history from strictly earlier seasons, and each row's athlete number (athlete_id)",
        ),
        "athlete_seasons": dg.AssetOut(
            group_name=GROUP,
            description="One row per athlete and season with a start at either distance: the totals that as-of "
            "histories add up (starts, DNFs, finishes, edition-relative times)",
            is_required=False,
            code_version=CODE_VERSION,
        ),
    },
    can_subset=True,
    op_tags=SLOT_TAGS,
)
def model_frame(
    context: dg.AssetExecutionContext,
    cpu: CpuSlots,  # held while the step runs, like every heavy step's (defs/resources.py)
    paths: PipelinePaths,
    athlete_race: pd.DataFrame,
    athlete_profile: pd.DataFrame,
    cluster_assignments: pd.DataFrame,
):
    """The model frame and the season table its as-of history comes from."""
    # threads beside the work's own if a second core is free (every other step of a refit
    # waits for this one, but another run's step may hold the other slot)
    race_file = paths.input_file(contracts.RACE_FILE)
    selected = context.op_execution_context.selected_output_names
    with cpu.second_core() as two:
        # The work runs in a thread of its own, and this one stores the season table (the IO
        # manager's write, about 0.7 s at full scale) as soon as the table is complete, while
        # the as-of history is still being added to the rows: the two stores were one after
        # the other at the end of the step, on the path every later step waits on. (Should the
        # history then fail, athlete_seasons is of the new inputs and model_frame of the old
        # ones; the run has failed, and its next success makes both again.) A daemon thread:
        # an interrupt of the step ends it at once, not when the frame is done; the thread
        # only computes, and ends with the step's process.
        ready: Future = Future()
        made: Future = Future()

        def work() -> None:
            try:
                made.set_result(model_frame_and_seasons(
                    athlete_race, athlete_profile, cluster_assignments, threads=2 if two else 1,
                    source=race_file, seasons_ready=ready.set_result))
            except BaseException as exc:  # handed to this thread, which raises it
                made.set_exception(exc)

        threading.Thread(target=work, name="model-frame-main", daemon=True).start()
        # the versions of the input files the values read here came from (each value carries
        # its own: _read): what a later refit compares, with the code version Dagster records
        # (stored_frame_if_current)
        versions = dg.MetadataValue.json({asset: value.attrs.get(SOURCE_VERSION) for asset, value in zip(
            INPUT_FILES, (athlete_race, athlete_profile, cluster_assignments))})
        wait([made, ready], return_when=FIRST_COMPLETED)
        if ready.done() and "athlete_seasons" in selected:
            yield _seasons_output(ready.result(), versions)
        try:
            frame, counts, _ = made.result()
        except contracts.InputError as exc:  # no race left: the message names the file and the column
            raise dg.Failure(description=str(exc), metadata={"path": str(race_file)}, allow_retries=False) from None
    if "model_frame" in selected:
        metadata = {"rows": dg.MetadataValue.int(counts["rows_out"])}
        metadata.update({k: dg.MetadataValue.int(v) for k, v in counts.items()})
        metadata[INPUT_VERSIONS] = versions
        frame.attrs.pop(SOURCE_VERSION, None)  # the race file's, copied by pandas with its rows
        yield dg.Output(frame, output_name="model_frame", metadata=metadata)


def _seasons_output(seasons: pd.DataFrame, versions: dg.MetadataValue) -> dg.Output:
    seasons.attrs.pop(SOURCE_VERSION, None)
    return dg.Output(seasons, output_name="athlete_seasons", metadata={
        INPUT_VERSIONS: versions,
        "rows": dg.MetadataValue.int(len(seasons)),
        # the table is sorted by athlete (history.season_table): each athlete is one run of
        # rows, so a count of runs is the count of athletes, without hashing 1.3M keys again
        "athletes": dg.MetadataValue.int(int(athlete_runs(seasons["athlete_hash"]).sum())),
    })


@dataclass(frozen=True)
class StoredFrame:
    """A stored model frame and season table that a refit may reuse: the run that made them."""

    run_id: str
    timestamp: float  # when it stored them (its materialisation)


def stored_frame_if_current(instance: dg.DagsterInstance, paths: PipelinePaths, storage: UPath) -> StoredFrame | None:
    """The run whose stored model frame and season table were built from the input files in
    ``paths.input_dir`` as they are now, by this code (:data:`CODE_VERSION`); None if there is
    none, and a refit then builds them again.

    Both must be the latest materialisations of their assets, by one run, which recorded this
    code version and, for each input file, the version it has now (lib/data/sources.py). Their
    values must be the very files that run stored (resources.STORED_FILE, stored.file_identity: path, inode, size,
    modification time) in the local ``storage`` (the IO manager's folder): not a file another
    run wrote since, or another folder's, or one a crash of the machine left short.
    """
    events = [instance.get_latest_materialization_event(dg.AssetKey(key)) for key in FRAME_ASSETS]
    if any(e is None for e in events) or len({e.run_id for e in events}) != 1:
        return None
    folder = as_path(storage)
    if not isinstance(folder, Path):  # an object store: its files have no identity to compare
        return None
    try:
        versions = {asset: sources.file_version(paths.input_file(name)) for asset, name in INPUT_FILES.items()}
    except (OSError, ValueError):  # a missing input file (the input step says which), or input_dir not local
        return None
    for key, event in zip(FRAME_ASSETS, events):
        mat = event.asset_materialization
        if (mat.tags or {}).get(CODE_VERSION_TAG) != CODE_VERSION:
            return None
        recorded = mat.metadata.get(INPUT_VERSIONS)
        if recorded is None or recorded.value != versions:
            return None
        stored_file = mat.metadata.get(STORED_FILE)
        try:
            if stored_file is None or stored_file.value != stored.file_identity(folder / f"{key}.pkl"):
                return None
        except OSError:
            return None
    return StoredFrame(events[0].run_id, events[0].timestamp)
