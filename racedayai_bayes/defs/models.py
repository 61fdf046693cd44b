"""One posterior asset per model and distance, built by one factory, each with its own checks."""


import dagster as dg
import pandas as pd
from pydantic import Field

from racedayai_bayes.lib.data.split import Split
from racedayai_bayes.lib.errors import FitError
from racedayai_bayes.lib.evaluation.judge import JudgeSettings, Judged, judge
from racedayai_bayes.lib.evaluation.report import analysis_markdown, evaluation_markdown, judged_plots, markdown_table
from racedayai_bayes.lib.models.base import MODEL_NAMES, registry
from racedayai_bayes.lib.models.forecast.fit import ForecastSettings
from racedayai_bayes.lib.models.seed.fit import ENGINES, SeedSettings
from racedayai_bayes.lib.outputs.artifacts import ArtifactError, load_artifact, previous_artifact, write_artifact
from racedayai_bayes.lib.outputs.io import OutputWriteError

from .checks import check_result, model_check_specs, number
from .partitions import distance_partitions
from .resources import SLOT_TAGS, CpuSlots, PipelinePaths

_SEED = SeedSettings()
_FORECAST = ForecastSettings()
_JUDGE = JudgeSettings()
HARNESS_CHECKS = ("coverage", "coverage_by_decile", "drift")


class JudgeConfig(dg.Config):
    eval_rows: int = Field(default=_JUDGE.eval_rows, ge=1, description="In-sample rows (random_state 42) evaluated beside the held-out ones, as the notebook does")
    drift_threshold_sec: float = Field(default=_JUDGE.drift_threshold_sec, ge=0, description="The prediction_drift check warns when predictions moved more than this many seconds on average from the model's previous refit")

    def judge_settings(self) -> JudgeSettings:
        return JudgeSettings(eval_rows=self.eval_rows, drift_threshold_sec=self.drift_threshold_sec)


class SeedFitConfig(JudgeConfig):
    """Sampler settings of a seed model. The defaults are the seed's, with the exact engine."""

    engine: str = Field(default=_SEED.engine, description=f"Sampler engine, one of {ENGINES}: 'exact' fits every row (independence MH on the four scales, exact coefficient draws); 'exact_nuts' the same posterior by NUTS; 'rowwise' is the seed's NUTS on a subsample")
    num_warmup: int = Field(default=_SEED.num_warmup, ge=1, description="Steps per chain before draws are kept: NUTS warmup (adaptation) for the NUTS engines, discarded independence-sampler steps for exact")
    num_samples: int = Field(default=_SEED.num_samples, ge=1, description="Posterior draws kept per chain")
    num_chains: int = Field(default=_SEED.num_chains, ge=2, description="Number of chains, run one after another; at least 2, as r_hat compares chains")
    target_accept: float | None = Field(default=None, description="NUTS target acceptance probability; NUTS engines only; default 0.85 rowwise (the seed's), 0.98 exact_nuts")
    subsample: int = Field(default=_SEED.subsample, description="Rows sampled (random_state 42) for the rowwise engine; 0 = all rows")
    seed: int | None = Field(default=None, description="PRNG seed; default is the seed notebook's: 42 for 70.3, 99 for 140.6")
    predictive_draws: int = Field(default=_SEED.predictive_draws, ge=1, description="Posterior draws behind the predictive intervals (bayes_p05/p50/p95)")

    def model_settings(self) -> dict:
        fields = set(SeedSettings.__dataclass_fields__)
        return {k: v for k, v in self.model_dump().items() if k in fields}


class ForecastFitConfig(JudgeConfig):
    """Sampler settings of the forecast model (Laplace fit, then independence Metropolis-Hastings)."""

    num_chains: int = Field(default=_FORECAST.num_chains, ge=2, description="Independence-sampler chains (each starts over-dispersed); at least 2, as r_hat compares chains")
    num_samples: int = Field(default=_FORECAST.num_samples, ge=1, description="Draws kept per chain")
    num_warmup: int = Field(default=_FORECAST.num_warmup, ge=0, description="Steps per chain before draws are kept")
    seed: int | None = Field(default=None, description="PRNG seed; default 42 for 70.3, 99 for 140.6")
    predictive_draws: int = Field(default=_FORECAST.predictive_draws, ge=1, description="Population draws (thinned) behind each forecast")

    def model_settings(self) -> dict:
        fields = set(ForecastSettings.__dataclass_fields__)
        return {k: v for k, v in self.model_dump().items() if k in fields}


CONFIGS = {"seed_profile": SeedFitConfig, "seed_asof": SeedFitConfig, "forecast": ForecastFitConfig}


def posterior_key(name: str) -> str:
    return f"posterior_{name}"


def _metadata(judged: Judged) -> dict:
    model = judged.model
    s = judged.judged.scores
    meta = {
        "model": dg.MetadataValue.text(model.name),
        "features_as_of_race": dg.MetadataValue.bool(bool(model.asof)),
        "rows_fitted": dg.MetadataValue.int(int(model.info.get("rows_fitted", model.info.get("rows", 0)))),
        "holdout": dg.MetadataValue.text(str(judged.split.get("description", "none"))),
        "rows_held_out": dg.MetadataValue.int(int(judged.split.get("rows_held_out", 0))),
        "evaluation": dg.MetadataValue.md(evaluation_markdown(judged)),
        "summary": dg.MetadataValue.md(markdown_table(model.summary()) + (
            f"\n\nValues on the scale of {model.summary_scale}." if model.summary_scale else "")),
        "settings": dg.MetadataValue.json(model.settings),
        "fit_wall_s": number(float(model.info.get("wall_s", float("nan")))),
        "elpd": number(s.elpd),
        "elpd_se": number(s.elpd_se),
        "mae_p50_min": number(s.mae_p50_sec / 60),
        "mae_pred_min": number(s.mae_pred_sec / 60),
        "r2": number(s.r2),
        "coverage_90": number(s.coverage_90),
        "notes": dg.MetadataValue.md("\n".join(f"- {n}" for n in model.notes) or "none"),
    }
    if "jax_backend" in model.info:  # a NUTS engine ran: in a step process, JAX must be on the CPU
        meta["jax_backend"] = dg.MetadataValue.text(str(model.info["jax_backend"]))
    if hasattr(model, "analysis"):
        meta["analysis"] = dg.MetadataValue.md(analysis_markdown(model.analysis()))
    if judged.drift:
        meta["drift_mean_abs_shift_sec"] = number(judged.drift["mean_abs_shift_sec"])
    meta.update({name: dg.MetadataValue.md(image) for name, image in judged_plots(judged).items()})
    return meta


def _previous(context, paths: PipelinePaths, name: str, distance: str, split: Split):
    """The model's previous refit, for the drift check (None if none or unreadable): of the
    same folder, so a backtest is compared with the previous backtest of its season only."""
    try:
        path = previous_artifact(paths.refit_dir(split), name, distance)
        # its forecasts of this split's rows read their history from the rows, not from its
        # side tables (the forecast model's athlete table): those stay unread
        return None if path is None else load_artifact(path, side_tables=False).model
    except (ArtifactError, OSError) as exc:  # unreadable, or the object store unreachable
        context.log.warning(f"drift check of {name} skipped: {exc}")
        return None


# Of the ready steps the multiprocess executor starts those of highest dagster/priority
# first. The forecast model's fit is the longest step of a distance (38 s of the 70.3 run
# at full scale, the seed models' 9-12 s each), so it starts at once and the two seed fits
# share the other core meanwhile, instead of the forecast starting last and running alone.
STEP_PRIORITY = {"forecast": 1}


def build_posterior_asset(name: str) -> dg.AssetsDefinition:
    """The posterior asset of model ``name``: fit on the split's training rows, judge, save."""
    entry = registry()[name]
    config_cls = CONFIGS[name]
    checks = (*entry.sampler_checks, *HARNESS_CHECKS)
    _posterior = _posterior_body(name)  # the step's work; the two wrappers differ in their inputs only

    spec = dict(
        name=posterior_key(name),
        partitions_def=distance_partitions,
        check_specs=model_check_specs(posterior_key(name), checks),
        group_name="model",
        op_tags={"dagster/priority": str(STEP_PRIORITY.get(name, 0)), **SLOT_TAGS},
        description=f"Posterior of {name} for one distance: {entry.description}. Judged on the held-out rows.",
    )
    if entry.needs_seasons:
        @dg.asset(**spec)
        def _with_seasons(context: dg.AssetExecutionContext, config: config_cls, paths: PipelinePaths,
                          cpu: CpuSlots, holdout_split: Split, athlete_seasons: pd.DataFrame):
            yield from _posterior(context, config, paths, holdout_split, athlete_seasons)

        return _with_seasons

    @dg.asset(**spec)
    def _without_seasons(context: dg.AssetExecutionContext, config: config_cls, paths: PipelinePaths, cpu: CpuSlots,
                         holdout_split: Split):
        yield from _posterior(context, config, paths, holdout_split, None)

    return _without_seasons


def _posterior_body(name: str):
    entry = registry()[name]

    def _posterior(context, config, paths: PipelinePaths, holdout_split: Split, athlete_seasons: pd.DataFrame | None):
        distance = context.partition_key
        previous = _previous(context, paths, name, distance, holdout_split)
        try:
            fitted = entry.build(**config.model_settings()).fit(holdout_split.train, distance, progress=context.log.info)
        except FitError as exc:
            # a data problem, not a bug: the message says what is wrong; no traceback is needed
            raise dg.Failure(description=f"{name}: {exc}", metadata={"distance": distance}, allow_retries=False) from None
        for note in fitted.notes:  # data the fit handled in a documented but unusual way: `refit` prints these
            context.log.warning(f"{name} {distance}: {note}")
        judged = judge(fitted, holdout_split, config.judge_settings(), previous)
        if fitted.predicts_every_row_when_judged:
            # now, while judging's preparation of the rows is at hand (the artifact's athlete
            # table drops part of it); the prediction CSV's step writes these
            judged.keep_every_row(holdout_split.rows)
        s = judged.judged.scores
        context.log.info(f"{name} {distance} {judged.judged.label}: ELPD {s.elpd:.4f} ± {s.elpd_se:.4f}, "
                         f"MAE {s.mae_p50_sec / 60:.1f} min, 90% coverage {s.coverage_90:.3f} on {s.rows:,} rows")
        try:
            artifact = write_artifact(judged, holdout_split, paths.refit_dir(holdout_split), athlete_seasons)
        except OutputWriteError as exc:
            raise dg.Failure(description=str(exc), metadata={"distance": distance}) from None
        judged.artifact = str(artifact)
        context.log.info(f"saved the posterior artifact {artifact}")
        metadata = _metadata(judged)
        metadata["artifact"] = dg.MetadataValue.path(str(artifact))
        yield dg.Output(judged, metadata=metadata)
        for outcome in judged.checks:
            if not outcome.passed:
                context.log.warning(f"check {outcome.name} ({outcome.level}) on {name} {distance}: {outcome.description}")
            yield check_result(outcome, distance, name)

    return _posterior


POSTERIOR_ASSETS = [build_posterior_asset(name) for name in MODEL_NAMES]
