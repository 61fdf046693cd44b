"""The held-out split of each distance, made once and shared by every model."""


import dagster as dg
import pandas as pd
from pydantic import Field

from racedayai_bayes.lib.data.frame import distance_rows
from racedayai_bayes.lib.data.split import DEFAULT_HOLDOUT_SHARE, HOLDOUT_RULES, Split, split_holdout
from racedayai_bayes.lib.errors import FitError

from .concurrency import ensure_sole_refit
from .partitions import distance_partitions


class HoldoutConfig(dg.Config):
    """Which races every model is judged on and never fitted to."""

    holdout: str = Field(default="latest_year", description=f"One of {HOLDOUT_RULES}: every race of one season (the latest, or holdout_season), every race of a random share of athletes, or none (judge in-sample)")
    holdout_season: int | None = Field(default=None, description="Hold out this season (YYYY) and drop every later season from fitting and scoring, to backtest it; default: the latest season present")
    holdout_share: float = Field(default=DEFAULT_HOLDOUT_SHARE, gt=0, lt=1, description="Share of athletes held out by the random_athletes rule")
    holdout_seed: int = Field(default=0, description="Seed of the random_athletes rule")


# A run of the refit job without a partition reaches the first per-distance step with none
# (Dagster's own error there is "Cannot access partition_key for a non-partitioned run").
NO_DISTANCE = (
    "this run has no distance: a refit run is of one partition, 70.3 or 140.6. Launch it with one: the "
    "UI's launchpad, the schedule, `racedayai-bayes refit`, or `dagster job launch -w workspace.yaml -j refit "
    "--tags '{\"dagster/partition\": \"70.3\"}'`"
)


# No CPU slot: the split takes about a second (0.5-0.7 s at full scale with its rows' groups,
# 2026-12-08), and the later distance's run reaches it just
# after the first run's posteriors have taken both slots (the model frame they wait for is
# stored by the first run). Holding a slot, it waited for a seed posterior to end, and the
# later distance's forecast posterior, the second-longest step, started about 6 s later
# than it could (full scale, 2026-12-06). It runs in the third step process of its run.
@dg.asset(partitions_def=distance_partitions, group_name="model")
def holdout_split(context: dg.AssetExecutionContext, config: HoldoutConfig,
                  model_frame: pd.DataFrame) -> dg.Output[Split]:
    """The distance's rows, split into fitted and held-out rows once for every model."""
    if not context.has_partition_key:  # e.g. `dagster job launch -j refit` without a partition
        raise dg.Failure(description=NO_DISTANCE, allow_retries=False)
    distance = context.partition_key
    ensure_sole_refit(context, distance)  # also runs that bypass the run queue, such as the CLI's
    rows = distance_rows(model_frame, distance)
    if rows.empty:  # one message here, instead of one "no rows to fit" from each model
        raise dg.Failure(description=(
            f"distance {distance}: no race of {distance} is left to model (the model frame holds "
            f"{len(model_frame):,} rows, none of this distance; model_frame's metadata counts what each rule removed); "
            "refit only the distances the data holds (`racedayai-bayes refit --distance <distance>`)"
        ), allow_retries=False)
    try:
        split = split_holdout(rows, config.holdout, config.holdout_share, config.holdout_seed, config.holdout_season)
    except FitError as exc:
        raise dg.Failure(description=f"distance {distance}: {exc}", allow_retries=False) from None
    for note in split.notes:
        context.log.warning(f"{distance}: {note}")
    # the rows' groups (first race, known course, ...), made once here and stored with the split:
    # each model's judge and the comparison that publishes read them (Split.groups)
    split.groups  # noqa: B018
    d = split.as_dict()
    context.log.info(f"{distance}: {split.description}: {d['rows_held_out']:,} rows held out, {d['rows_to_fit']:,} to fit")
    return dg.Output(split, metadata={
        "holdout": dg.MetadataValue.text(split.description),
        "season": dg.MetadataValue.int(split.season) if split.season is not None else dg.MetadataValue.text("-"),
        "rows": dg.MetadataValue.int(len(split.rows)),
        "rows_to_fit": dg.MetadataValue.int(d["rows_to_fit"]),
        "rows_held_out": dg.MetadataValue.int(d["rows_held_out"]),
        "rows_dropped_later_seasons": dg.MetadataValue.int(d["rows_dropped_later_seasons"]),
        # a backtest writes under <output>/backtests/<season>/ (lib/outputs/artifacts.refit_output_dir)
        "backtest_season": dg.MetadataValue.int(split.backtest_season) if split.backtest_season is not None else dg.MetadataValue.text("-"),
        "notes": dg.MetadataValue.md("\n".join(f"- {n}" for n in split.notes) or "none"),
    })
