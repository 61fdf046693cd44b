"""The prediction CSVs and the posterior means CSV, written atomically."""


from pathlib import Path

import dagster as dg
import pandas as pd

from racedayai_bayes.lib.artifacts import publish_artifact
from racedayai_bayes.lib.frame import MODEL_DISTANCES, distance_rows
from racedayai_bayes.lib.io import OutputWriteError, write_csv_atomic
from racedayai_bayes.lib.posterior import Posterior
from racedayai_bayes.lib.predict import means_table, posterior_means_row, predict_frame

from .partitions import distance_partitions
from .resources import PipelinePaths

GROUP = "outputs"


def _write(table: pd.DataFrame, path: Path) -> Path:
    try:
        return write_csv_atomic(table, path)
    except OutputWriteError as exc:
        # names the file and the OS error (disk full, ...) and says the old file is intact
        raise dg.Failure(description=str(exc), metadata={"path": str(path)}) from None


@dg.asset(partitions_def=distance_partitions, group_name=GROUP)
def bayesian_predictions(
    context: dg.AssetExecutionContext, paths: PipelinePaths, posterior: Posterior, model_frame: pd.DataFrame
) -> dg.MaterializeResult:
    """bayesian_predictions_<distance>.csv: posterior-mean prediction and sd for every modelled race."""
    distance = context.partition_key
    if posterior.failed_checks:
        # blocking checks stop the run that fitted it; this also stops a later run that loads it
        raise dg.Failure(
            description=f"the stored posterior of {distance} failed its blocking checks "
            f"({', '.join(posterior.failed_checks)}); bayesian_predictions_{distance}.csv is unchanged",
            allow_retries=False,
        )
    table = predict_frame(
        posterior.draws,
        posterior.encoding,
        distance_rows(model_frame, distance),
        interval_draws=posterior.interval_draws,
        seed=posterior.prediction_seed,
        progress=context.log.info,
    )
    context.log.info(f"writing {len(table):,} predictions of {distance}")
    path = _write(table, paths.output_file(f"bayesian_predictions_{distance}.csv"))
    context.log.info(f"wrote {len(table):,} predictions to {path}")
    artifact = getattr(posterior, "artifact", None)  # None in posteriors stored before artifacts existed
    if artifact:
        try:
            publish_artifact(artifact)
        except OSError as exc:
            raise dg.Failure(
                description=f"wrote {path}, but could not point 'latest' at its posterior artifact {artifact}: {exc}",
                metadata={"path": str(path)},
            ) from None
        context.log.info(f"'latest' now names {artifact}, the posterior of this CSV")
    return dg.MaterializeResult(
        metadata={
            "path": dg.MetadataValue.path(str(path)),
            "posterior_artifact": dg.MetadataValue.text(artifact or "none (a posterior stored before artifacts)"),
            "rows": dg.MetadataValue.int(len(table)),
            "mean_prediction_h": dg.MetadataValue.float(float(table["bayes_pred"].mean() / 3600)),
            "mean_sd_min": dg.MetadataValue.float(float(table["bayes_std"].mean() / 60)),
            "mae_min": dg.MetadataValue.float(float((table["bayes_pred"] - table["total_sec"]).abs().mean() / 60)),
            "mean_interval_width_min": dg.MetadataValue.float(float((table["bayes_p95"] - table["bayes_p05"]).mean() / 60)),
            "columns": dg.MetadataValue.text(", ".join(table.columns)),
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
    path = paths.output_file("bayesian_posterior_means.csv")
    # a stored posterior that failed its blocking checks never reaches the file: its
    # distance keeps the row it had (the stored value may come from an earlier run)
    blocked = {d: p.failed_checks for d, p in posterior.items() if p.failed_checks}
    fresh = {d: posterior_means_row(p.draws, d) for d, p in posterior.items() if d not in blocked}
    previous = None
    if blocked and path.exists():
        previous = pd.read_csv(str(path), dtype={"distance": str})  # a URL for object stores; floats round-trip
    table = means_table(fresh, previous, keep=tuple(blocked))
    kept = [d for d in blocked if d in set(table.get("distance", []))]
    for d, checks in blocked.items():
        outcome = "kept its previous row" if d in kept else "left out (no previous row)"
        context.log.warning(f"posterior {d} failed blocking checks ({', '.join(checks)}): {outcome}")
    if not fresh:
        raise dg.Failure(
            description=f"every stored posterior failed its blocking checks ({', '.join(blocked)}); "
            f"{path.name} is unchanged",
            allow_retries=False,
        )
    path = _write(table, path)
    written = [d for d in MODEL_DISTANCES if d in fresh]
    context.log.info(f"wrote posterior means of {', '.join(written)} to {path}")
    return dg.MaterializeResult(
        metadata={
            "path": dg.MetadataValue.path(str(path)),
            "distances": dg.MetadataValue.text(", ".join(written)),
            "kept_previous": dg.MetadataValue.text(", ".join(kept) or "none"),
            "blocked": dg.MetadataValue.text(
                "; ".join(f"{d}: {', '.join(c)}" for d, c in blocked.items()) or "none"
            ),
            "columns": dg.MetadataValue.int(table.shape[1]),
        }
    )
