"""The three cleaned inputs, validated against the data contract, and the merged model frame."""


import dagster as dg
import pandas as pd

from racedayai_bayes.lib.data import contracts
from racedayai_bayes.lib.data.frame import build_model_frame, join_counts

from .resources import PipelinePaths

GROUP = "inputs"


def _input_output(result: contracts.ReadResult, context: dg.AssetExecutionContext) -> dg.Output:
    for note in result.notes:
        context.log.warning(f"{result.path.name}: {note}")
    frame = result.frame
    return dg.Output(
        frame,
        metadata={
            "path": dg.MetadataValue.path(str(result.path)),
            "rows": dg.MetadataValue.int(len(frame)),
            "columns": dg.MetadataValue.text(", ".join(frame.columns)),
            "notes": dg.MetadataValue.md("\n".join(f"- {n}" for n in result.notes) or "none"),
        },
    )


def _read(context: dg.AssetExecutionContext, reader, path) -> dg.Output:
    try:
        result = reader(path)
    except contracts.InputError as exc:
        # the message already names the file, column and rows; no traceback is needed
        raise dg.Failure(description=str(exc), metadata={"path": str(path)}, allow_retries=False) from None
    return _input_output(result, context)


@dg.asset(group_name=GROUP)
def athlete_race(context: dg.AssetExecutionContext, paths: PipelinePaths) -> dg.Output[pd.DataFrame]:
    """Race results (athlete_race.csv): the seven columns the model needs, typed and validated."""
    return _read(context, contracts.read_races, paths.input_file(contracts.RACE_FILE))


@dg.asset(group_name=GROUP)
def athlete_profile(context: dg.AssetExecutionContext, paths: PipelinePaths) -> dg.Output[pd.DataFrame]:
    """Athlete profiles (athlete_profile.csv): one row per athlete_hash."""
    return _read(context, contracts.read_profiles, paths.input_file(contracts.PROFILE_FILE))


@dg.asset(group_name=GROUP)
def cluster_assignments(context: dg.AssetExecutionContext, paths: PipelinePaths) -> dg.Output[pd.DataFrame]:
    """Athlete clusters (cluster_assignments.csv): athletes with 3+ races; others are cluster -1."""
    return _read(context, contracts.read_clusters, paths.input_file(contracts.CLUSTER_FILE))


@dg.asset(group_name=GROUP)
def model_frame(
    athlete_race: pd.DataFrame, athlete_profile: pd.DataFrame, cluster_assignments: pd.DataFrame
) -> dg.Output[pd.DataFrame]:
    """Age-group 70.3 and 140.6 finishers with profile and cluster columns (the seed's section 1)."""
    frame, counts = build_model_frame(athlete_race, athlete_profile, cluster_assignments)
    counts.update(join_counts(frame, athlete_profile, cluster_assignments))
    return dg.Output(frame, metadata={k: dg.MetadataValue.int(v) for k, v in counts.items()})
