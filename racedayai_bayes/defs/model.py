"""The per-distance posterior, with its diagnostics as blocking asset checks."""


import dagster as dg
import pandas as pd
from pydantic import Field

from racedayai_bayes.lib.encoding import FitError
from racedayai_bayes.lib.frame import distance_rows
from racedayai_bayes.lib.posterior import ENGINES, FitSettings, Posterior, fit_posterior
from racedayai_bayes.lib.report import analysis_markdown, markdown_table

from .checks import check_result, posterior_check_specs
from .concurrency import ensure_sole_refit
from .partitions import distance_partitions

_DEFAULTS = FitSettings()


class FitConfig(dg.Config):
    """Sampler settings of a refit. The defaults are the seed's, with the exact engine."""

    engine: str = Field(default=_DEFAULTS.engine, description=f"Sampler engine, one of {ENGINES}: 'exact' fits every row; 'rowwise' is the seed's NUTS on a subsample")
    num_warmup: int = Field(default=_DEFAULTS.num_warmup, description="NUTS warmup iterations per chain")
    num_samples: int = Field(default=_DEFAULTS.num_samples, description="Posterior draws kept per chain")
    num_chains: int = Field(default=_DEFAULTS.num_chains, description="Number of chains, run one after another")
    target_accept: float | None = Field(default=None, description="NUTS target acceptance probability; default per engine: 0.85 rowwise (the seed's), 0.95 exact")
    subsample: int = Field(default=_DEFAULTS.subsample, description="Rows sampled (random_state 42) for the rowwise engine; 0 = all rows")
    seed: int | None = Field(default=None, description="PRNG seed; default is the seed notebook's: 42 for 70.3, 99 for 140.6")
    eval_rows: int = Field(default=_DEFAULTS.eval_rows, description="Rows (random_state 42) for the posterior predictive checks")
    predictive_draws: int = Field(default=_DEFAULTS.predictive_draws, description="Posterior draws used for predictive intervals")

    def settings(self) -> FitSettings:
        return FitSettings(**self.model_dump())


def _posterior_metadata(post: Posterior) -> dict:
    info = post.info
    meta = {
        "engine": dg.MetadataValue.text(post.draws.engine),
        "rows_fitted": dg.MetadataValue.int(post.rows_fitted),
        "rows_available": dg.MetadataValue.int(post.rows_available),
        "groups": dg.MetadataValue.text(
            f"{post.encoding.n_gender} genders, {post.encoding.n_age} age groups, {post.encoding.n_cluster} clusters"
        ),
        "target_mean_sec": dg.MetadataValue.float(post.encoding.y_mean),
        "target_sd_sec": dg.MetadataValue.float(post.encoding.y_std),
        "sampling_wall_s": dg.MetadataValue.float(float(info.get("wall_s", float("nan")))),
        "jax_backend": dg.MetadataValue.text(str(info.get("jax_backend", "unknown"))),
        "summary": dg.MetadataValue.md(markdown_table(post.summary)),
        "analysis": dg.MetadataValue.md(analysis_markdown(post.analysis)),
        "settings": dg.MetadataValue.json(post.settings),
        "notes": dg.MetadataValue.md("\n".join(f"- {n}" for n in post.notes) or "none"),
    }
    pred = post.predictive
    meta.update(
        {
            "mae_min": dg.MetadataValue.float(pred["mae_sec"] / 60),
            "r2": dg.MetadataValue.float(pred["r2"]),
            "coverage_90": dg.MetadataValue.float(pred["coverage_90"]),
            "mean_pred_sd_min": dg.MetadataValue.float(pred["mean_pred_sd_sec"] / 60),
        }
    )
    return meta


@dg.asset(
    partitions_def=distance_partitions,
    check_specs=posterior_check_specs(),
    group_name="model",
)
def posterior(context: dg.AssetExecutionContext, config: FitConfig, model_frame: pd.DataFrame):
    """Posterior of the hierarchical finish-time model for one distance: draws, encodings, diagnostics."""
    distance = context.partition_key
    ensure_sole_refit(context, distance)  # also runs that bypass the run queue, such as the CLI's
    rows = distance_rows(model_frame, distance)
    try:
        post = fit_posterior(rows, distance, config.settings(), progress=context.log.info)
    except FitError as exc:
        # a data problem, not a bug: the message says what is wrong; no traceback is needed
        raise dg.Failure(
            description=f"{exc}; the model frame holds {len(model_frame):,} rows in all "
            "(its metadata counts the rows each filter rule dropped)",
            metadata={"distance": distance, "rows": len(rows), "model_frame_rows": len(model_frame)},
            allow_retries=False,
        ) from None
    pred = post.predictive
    context.log.info(
        f"{distance}: MAE {pred['mae_sec'] / 60:.1f} min, R2 {pred['r2']:.4f}, "
        f"90% coverage {pred['coverage_90']:.3f}, mean predictive sd {pred['mean_pred_sd_sec'] / 60:.1f} min"
    )
    yield dg.Output(post, metadata=_posterior_metadata(post))
    for outcome in post.checks:
        if not outcome.passed:
            context.log.warning(f"check {outcome.name} ({outcome.level}) on {distance}: {outcome.description}")
        yield check_result(outcome, post)
