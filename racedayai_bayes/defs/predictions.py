"""The prediction CSVs (from the published model) and the posterior-means CSVs, written atomically."""


from pathlib import Path, PurePath

import dagster as dg
import pandas as pd

from racedayai_bayes.lib.data.frame import MODEL_DISTANCES
from racedayai_bayes.lib.data.split import Split
from racedayai_bayes.lib.evaluation.compare import Decision
from racedayai_bayes.lib.evaluation.judge import Judged
from racedayai_bayes.lib.outputs.artifacts import publish_artifact
from racedayai_bayes.lib.outputs.io import OutputWriteError, write_csv_atomic
from racedayai_bayes.lib.outputs.tables import means_table, prediction_table

from .models import posterior_key
from .partitions import distance_partitions
from .resources import SLOT_TAGS, CpuSlots, PipelinePaths
from .checks import number

GROUP = "outputs"


def _write(table: pd.DataFrame, path: Path, second_core=None) -> Path:
    try:
        return write_csv_atomic(table, path, second_core=second_core)
    except OutputWriteError as exc:
        # names the file and the OS error (disk full, ...) and says the old file is intact
        raise dg.Failure(description=str(exc), metadata={"path": str(path)}) from None


@dg.asset(partitions_def=distance_partitions, group_name=GROUP, op_tags=SLOT_TAGS)
def bayesian_predictions(
    context: dg.AssetExecutionContext, paths: PipelinePaths, cpu: CpuSlots, published_model: Decision,
    holdout_split: Split,
) -> dg.MaterializeResult:
    """bayesian_predictions_<distance>.csv: every modelled race, forecast by the published model."""
    distance = context.partition_key
    chosen = published_model.chosen
    if chosen is None:
        # the blocking check stops the run that decided; this also stops a later run that loads it
        raise dg.Failure(
            description=f"no model of {distance} may be published ({published_model.reason}); "
            f"bayesian_predictions_{distance}.csv is unchanged",
            allow_retries=False,
        )
    folder = paths.refit_dir(holdout_split)  # a backtest's own folder (lib/outputs/artifacts.refit_output_dir)
    fitted_in = paths.refit_dir(chosen.split)
    differs = holdout_split.mismatch(chosen.split)
    if str(fitted_in) != str(folder) or differs:
        # holdout_split materialised again alone, with other holdout settings than the
        # posteriors': its held-out rows may have been fitted, and a CSV would call them held out
        why = f"fitted for {fitted_in}, but holdout_split is now a split for {folder}" if str(fitted_in) != str(folder) \
            else f"fitted on another split than holdout_split's ({differs})"
        raise dg.Failure(
            description=f"the published {chosen.name} posterior of {distance} was {why}; materialise the posteriors "
            f"and published_model again with the same holdout settings. bayesian_predictions_{distance}.csv is unchanged",
            allow_retries=False,
        )
    rows = holdout_split.rows
    context.log.info(f"forecasting {len(rows):,} races of {distance} with {chosen.name}")
    pred = chosen.predict_every_row(rows, progress=context.log.info)
    table = prediction_table(rows, pred, chosen.name, holdout_split.held_out)
    context.log.info(f"writing {len(table):,} predictions of {distance}")
    # formatted on two threads if a second core is free then (asked for a large CSV only, and
    # only while it is formatted): a refit of one distance ends with this CSV, the other core idle
    path = _write(table, folder / f"bayesian_predictions_{distance}.csv", second_core=cpu.second_core)
    context.log.info(f"wrote {len(table):,} predictions to {path}")
    try:
        publish_artifact(chosen.artifact, folder, distance)
    except OSError as exc:
        raise dg.Failure(
            description=f"wrote {path}, but could not point 'latest' at its posterior artifact {chosen.artifact}: {exc}",
            metadata={"path": str(path)},
        ) from None
    context.log.info(f"'latest' now names {chosen.artifact}, the posterior of this CSV")
    held = table["held_out"].to_numpy()
    # the latest season the published posterior knows (race_forecasts reads it)
    season = holdout_split.season if holdout_split.season is not None else int(rows["event_year"].max())
    return dg.MaterializeResult(
        metadata={
            "path": dg.MetadataValue.path(str(path)),
            "season": dg.MetadataValue.int(int(season)),
            "model": dg.MetadataValue.text(chosen.name),
            "backtest": dg.MetadataValue.bool(holdout_split.backtest_season is not None),
            "posterior_artifact": dg.MetadataValue.text(str(chosen.artifact)),
            "rows": dg.MetadataValue.int(len(table)),
            "rows_held_out": dg.MetadataValue.int(int(held.sum())),
            "mean_prediction_h": number(float(table["bayes_pred"].mean() / 3600)),
            "mean_sd_min": number(float(table["bayes_std"].mean() / 60)),
            "held_out_mae_p50_min": number(
                float((table["bayes_p50"] - table["total_sec"]).abs()[held].mean() / 60) if held.any() else float("nan")),
            "mean_interval_width_min": number(float((table["bayes_p95"] - table["bayes_p05"]).mean() / 60)),
            "columns": dg.MetadataValue.text(", ".join(table.columns)),
        }
    )


def _means_asset(name: str, model: str, file_name: str, doc: str):
    @dg.asset(
        name=name,
        ins={"posterior": dg.AssetIn(posterior_key(model), metadata={"allow_missing_partitions": True})},
        group_name=GROUP,
        description=doc,
        # no materialisation when every stored posterior of the model failed its checks: the
        # file keeps its bytes, and the failed checks have already alerted
        output_required=False,
    )
    def _means(context: dg.AssetExecutionContext, paths: PipelinePaths, posterior: dict[str, Judged]):
        if not posterior:
            raise dg.Failure(f"no distance has a stored {model} posterior yet; materialise {posterior_key(model)} first")
        # each distance's row goes to the folder its refit wrote to: the output folder, or a
        # backtest's own (lib/outputs/artifacts.refit_output_dir); a file keeps the rows of
        # the distances whose stored posterior belongs to another folder
        folders: dict[str, tuple] = {}
        for d, j in posterior.items():
            folder = paths.refit_dir(j.split)
            folders.setdefault(str(folder), (folder, []))[1].append(d)
        # only the folder of the newest stored posterior (the refit this run follows): a weekly
        # refit of one distance must not rewrite a backtest's file because the other distance's
        # stored posterior is a backtest's, nor a backtest the weekly file (both did before
        # 2026-12-06). The artifacts' names are their UTC timestamps, which sort by time.
        newest = max(posterior.values(), key=lambda j: PurePath(j.artifact or "").name)
        if newest.artifact:
            folders = {k: v for k, v in folders.items() if k == str(paths.refit_dir(newest.split))}
        # a posterior that failed its checks never reaches the file: its distance keeps the
        # row it had (the stored value may come from an earlier run)
        blocked = {d: j.failed_checks for d, j in posterior.items() if j.failed_checks}
        written, kept, paths_written, columns = [], [], [], 0
        for folder, distances in sorted(folders.values(), key=lambda f: len(str(f[0]))):
            path = folder / file_name
            fresh = {d: {"distance": d, **posterior[d].model.posterior_means()} for d in distances if d not in blocked}
            if not fresh:  # every posterior of this folder failed its checks: its file stays as it is
                if path.exists():
                    rows = set(pd.read_csv(str(path), dtype={"distance": str}, usecols=["distance"])["distance"])
                    kept += [d for d in distances if d in rows]
                continue
            keep = tuple(d for d in posterior if d not in fresh)
            previous = None
            if keep and path.exists():
                previous = pd.read_csv(str(path), dtype={"distance": str})  # a URL for object stores; floats round-trip
            table = means_table(fresh, previous, keep=keep)
            kept += [d for d in blocked if d in distances and d in set(table.get("distance", []))]
            columns = table.shape[1]
            done = [d for d in MODEL_DISTANCES if d in fresh]
            written += done
            path = _write(table, path)
            context.log.info(f"wrote {model} posterior means of {', '.join(done)} to {path}")
            paths_written.append(str(path))
        for d, checks in blocked.items():
            outcome = "kept its previous row" if d in kept else "left out (no previous row)"
            context.log.warning(f"{model} {d} failed its checks ({', '.join(checks)}): {outcome}")
        if not written:
            # not a failure of the run: the published CSV may well have been written, and the
            # failed checks have already alerted. The file keeps what it had; an observation
            # (in the asset's history in the UI) says why it was not materialised
            why = (f"every stored {model} posterior failed its checks ({', '.join(blocked)}); "
                   f"{file_name} is unchanged and this step materialises nothing")
            context.log.warning(why)
            yield dg.AssetObservation(asset_key=context.asset_key, metadata={
                "unchanged": dg.MetadataValue.text(why),
                "kept_previous": dg.MetadataValue.text(", ".join(kept) or "none"),
                "blocked": dg.MetadataValue.text("; ".join(f"{d}: {', '.join(c)}" for d, c in blocked.items())),
            })
            return
        # the most specific file first: a backtest's, when its run also wrote the weekly file
        # (with the other distance's weekly row, unchanged)
        shown = sorted(paths_written, key=len, reverse=True)
        yield dg.MaterializeResult(
            metadata={
                "path": dg.MetadataValue.path(shown[0]),
                **({"other_paths": dg.MetadataValue.text(", ".join(shown[1:]))} if len(shown) > 1 else {}),
                "model": dg.MetadataValue.text(model),
                "distances": dg.MetadataValue.text(", ".join(d for d in MODEL_DISTANCES if d in written)),
                "kept_previous": dg.MetadataValue.text(", ".join(kept) or "none"),
                "blocked": dg.MetadataValue.text("; ".join(f"{d}: {', '.join(c)}" for d, c in blocked.items()) or "none"),
                "columns": dg.MetadataValue.int(columns),
            }
        )

    return _means


bayesian_posterior_means = _means_asset(
    "bayesian_posterior_means", "seed_profile", "bayesian_posterior_means.csv",
    "bayesian_posterior_means.csv: the notebook's columns, the seed model's posterior means, one row per distance.",
)
forecast_posterior_means = _means_asset(
    "forecast_posterior_means", "forecast", "forecast_posterior_means.csv",
    "forecast_posterior_means.csv: the forecast model's scalar posterior means, one row per distance.",
)
