"""The prediction CSVs and the posterior means CSV, written atomically."""


import dagster as dg
import pandas as pd

from racedayai_bayes.lib.frame import MODEL_DISTANCES, distance_rows
from racedayai_bayes.lib.io import write_csv_atomic
from racedayai_bayes.lib.posterior import Posterior
from racedayai_bayes.lib.predict import posterior_means_row, predict_frame

from .partitions import distance_partitions
from .resources import PipelinePaths

GROUP = "outputs"


@dg.asset(partitions_def=distance_partitions, group_name=GROUP)
def bayesian_predictions(
    context: dg.AssetExecutionContext, paths: PipelinePaths, posterior: Posterior, model_frame: pd.DataFrame
) -> dg.MaterializeResult:
    """bayesian_predictions_<distance>.csv: posterior-mean prediction and sd for every modelled race."""
    distance = context.partition_key
    table = predict_frame(posterior.draws, posterior.encoding, distance_rows(model_frame, distance))
    path = write_csv_atomic(table, paths.output_file(f"bayesian_predictions_{distance}.csv"))
    context.log.info(f"wrote {len(table):,} predictions to {path}")
    return dg.MaterializeResult(
        metadata={
            "path": dg.MetadataValue.path(str(path)),
            "rows": dg.MetadataValue.int(len(table)),
            "mean_prediction_h": dg.MetadataValue.float(float(table["bayes_pred"].mean() / 3600)),
            "mean_sd_min": dg.MetadataValue.float(float(table["bayes_std"].mean() / 60)),
            "mae_min": dg.MetadataValue.float(float((table["bayes_pred"] - table["total_sec"]).abs().mean() / 60)),
        }
    )


@dg.asset(
    ins={"posterior": dg.AssetIn(metadata={"allow_missing_partitions": True})},
    group_name=GROUP,
)
def bayesian_posterior_means(
    context: dg.AssetExecutionContext, paths: PipelinePaths, posterior: dict[str, Posterior]
) -> dg.MaterializeResult:
    """bayesian_posterior_means.csv: one row per fitted distance, one column per parameter."""
    if not posterior:
        raise dg.Failure("no distance has a stored posterior yet; materialise `posterior` first")
    order = [d for d in MODEL_DISTANCES if d in posterior]
    table = pd.DataFrame([posterior_means_row(posterior[d].draws, d) for d in order])
    path = write_csv_atomic(table, paths.output_file("bayesian_posterior_means.csv"))
    context.log.info(f"wrote posterior means of {', '.join(order)} to {path}")
    return dg.MaterializeResult(
        metadata={
            "path": dg.MetadataValue.path(str(path)),
            "distances": dg.MetadataValue.text(", ".join(order)),
            "columns": dg.MetadataValue.int(table.shape[1]),
        }
    )
