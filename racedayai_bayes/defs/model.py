"""The per-distance posterior, with its diagnostics as blocking asset checks."""


import dagster as dg
import pandas as pd
from pydantic import Field

from racedayai_bayes.lib.artifacts import ArtifactError, latest_artifact, load_artifact, write_artifact
from racedayai_bayes.lib.encoding import FitError
from racedayai_bayes.lib.frame import distance_rows
from racedayai_bayes.lib.holdout import HOLDOUT_RULES
from racedayai_bayes.lib.io import OutputWriteError
from racedayai_bayes.lib.posterior import ENGINES, FitSettings, Posterior, fit_posterior
from racedayai_bayes.lib.report import analysis_markdown, evaluation_markdown, markdown_table, posterior_plots

from .checks import check_result, posterior_check_specs
from .concurrency import ensure_sole_refit
from .partitions import distance_partitions
from .resources import PipelinePaths

_DEFAULTS = FitSettings()


class FitConfig(dg.Config):
    """Sampler settings of a refit. The defaults are the seed's, with the exact engine."""

    engine: str = Field(default=_DEFAULTS.engine, description=f"Sampler engine, one of {ENGINES}: 'exact' fits every row; 'rowwise' is the seed's NUTS on a subsample")
    num_warmup: int = Field(default=_DEFAULTS.num_warmup, ge=1, description="NUTS warmup iterations per chain")
    num_samples: int = Field(default=_DEFAULTS.num_samples, ge=1, description="Posterior draws kept per chain")
    num_chains: int = Field(default=_DEFAULTS.num_chains, ge=1, description="Number of chains, run one after another")
    target_accept: float | None = Field(default=None, description="NUTS target acceptance probability; default per engine: 0.85 rowwise (the seed's), 0.98 exact")
    subsample: int = Field(default=_DEFAULTS.subsample, description="Rows sampled (random_state 42) for the rowwise engine; 0 = all rows")
    seed: int | None = Field(default=None, description="PRNG seed; default is the seed notebook's: 42 for 70.3, 99 for 140.6")
    eval_rows: int = Field(default=_DEFAULTS.eval_rows, ge=1, description="Rows (random_state 42) for the posterior predictive checks")
    predictive_draws: int = Field(default=_DEFAULTS.predictive_draws, ge=1, description="Posterior draws used for predictive intervals (checks and the CSV's bayes_p05/p50/p95)")
    holdout: str = Field(default=_DEFAULTS.holdout, description=f"Rows never fitted, to judge the posterior on, one of {HOLDOUT_RULES}: every race of the latest event year, every race of a random share of athletes, or none (judge in-sample)")
    holdout_share: float = Field(default=_DEFAULTS.holdout_share, gt=0, lt=1, description="Share of athletes held out by the random_athletes rule")
    holdout_seed: int = Field(default=_DEFAULTS.holdout_seed, description="Seed of the random_athletes rule")
    drift_threshold_sec: float = Field(default=_DEFAULTS.drift_threshold_sec, ge=0, description="The prediction_drift check warns when posterior-mean predictions moved more than this many seconds on average from the last published refit")

    def settings(self) -> FitSettings:
        return FitSettings(**self.model_dump())


def _posterior_metadata(post: Posterior) -> dict:
    info = post.info
    meta = {
        "engine": dg.MetadataValue.text(post.draws.engine),
        "rows_fitted": dg.MetadataValue.int(post.rows_fitted),
        "rows_available": dg.MetadataValue.int(post.rows_available),
        "rows_held_out": dg.MetadataValue.int(int(post.split.get("rows_held_out", 0))),
        "holdout": dg.MetadataValue.text(str(post.split.get("description", "none"))),
        "groups": dg.MetadataValue.text(
            f"{post.encoding.n_gender} genders, {post.encoding.n_age} age groups, {post.encoding.n_cluster} clusters"
        ),
        "target_mean_sec": dg.MetadataValue.float(post.encoding.y_mean),
        "target_sd_sec": dg.MetadataValue.float(post.encoding.y_std),
        "sampling_wall_s": dg.MetadataValue.float(float(info.get("wall_s", float("nan")))),
        "jax_backend": dg.MetadataValue.text(str(info.get("jax_backend", "unknown"))),
        "evaluation": dg.MetadataValue.md(evaluation_markdown(post)),
        "summary": dg.MetadataValue.md(markdown_table(post.summary)),
        "analysis": dg.MetadataValue.md(analysis_markdown(post.analysis)),
        "settings": dg.MetadataValue.json(post.settings),
        "notes": dg.MetadataValue.md("\n".join(f"- {n}" for n in post.notes) or "none"),
    }
    for prefix, ev in (("", post.in_sample), ("holdout_", post.holdout)):
        if ev is None:
            continue
        m = ev.metrics
        meta.update(
            {
                f"{prefix}mae_min": dg.MetadataValue.float(m["mae_sec"] / 60),
                f"{prefix}r2": dg.MetadataValue.float(m["r2"]),
                f"{prefix}coverage_90": dg.MetadataValue.float(m["coverage_90"]),
                f"{prefix}mean_pred_sd_min": dg.MetadataValue.float(m["mean_pred_sd_sec"] / 60),
            }
        )
    if post.drift:
        meta["drift_mean_abs_shift_sec"] = dg.MetadataValue.float(post.drift["mean_abs_shift_sec"])
    meta.update({name: dg.MetadataValue.md(image) for name, image in posterior_plots(post).items()})
    return meta


def _previous_refit(context: dg.AssetExecutionContext, paths: PipelinePaths, distance: str):
    """Draws and encoding of the last published refit, for the drift check (None if none)."""
    try:
        path = latest_artifact(paths.output_dir, distance)
        if path is None:
            return None
        previous = load_artifact(path)
    except (ArtifactError, OSError) as exc:  # unreadable, or the object store unreachable
        context.log.warning(f"drift check skipped: {exc}")
        return None
    context.log.info(f"drift check compares with the last published refit {path}")
    return previous.draws, previous.encoding


@dg.asset(
    partitions_def=distance_partitions,
    check_specs=posterior_check_specs(),
    group_name="model",
)
def posterior(context: dg.AssetExecutionContext, config: FitConfig, paths: PipelinePaths, model_frame: pd.DataFrame):
    """Posterior of the hierarchical finish-time model for one distance: draws, encodings, diagnostics."""
    distance = context.partition_key
    ensure_sole_refit(context, distance)  # also runs that bypass the run queue, such as the CLI's
    rows = distance_rows(model_frame, distance)
    previous = _previous_refit(context, paths, distance)
    try:
        post = fit_posterior(rows, distance, config.settings(), progress=context.log.info, previous=previous)
    except FitError as exc:
        # a data problem, not a bug: the message says what is wrong; no traceback is needed
        raise dg.Failure(
            description=f"{exc}; the model frame holds {len(model_frame):,} rows in all "
            "(its metadata counts the rows each filter rule dropped)",
            metadata={"distance": distance, "rows": len(rows), "model_frame_rows": len(model_frame)},
            allow_retries=False,
        ) from None
    for ev in (post.in_sample, post.holdout):
        if ev is not None:
            m = ev.metrics
            context.log.info(
                f"{distance} {ev.label}: MAE {m['mae_sec'] / 60:.1f} min, R2 {m['r2']:.4f}, "
                f"90% coverage {m['coverage_90']:.3f} on {m['rows']:,} rows"
            )
    try:
        artifact = write_artifact(post, paths.output_dir)
    except OutputWriteError as exc:
        raise dg.Failure(description=str(exc), metadata={"distance": distance}) from None
    post.artifact = str(artifact)
    context.log.info(f"saved the posterior artifact {artifact}; 'latest' moves once its CSV is written")
    metadata = _posterior_metadata(post)
    metadata["artifact"] = dg.MetadataValue.path(str(artifact))
    yield dg.Output(post, metadata=metadata)
    for outcome in post.checks:
        if not outcome.passed:
            context.log.warning(f"check {outcome.name} ({outcome.level}) on {distance}: {outcome.description}")
        yield check_result(outcome, post)
