"""The comparison of every model of a distance, and the one published: the blocking gate."""


import dagster as dg
from pydantic import Field

from racedayai_bayes.lib.data.split import Split
from racedayai_bayes.lib.evaluation import diagnostics as dx
from racedayai_bayes.lib.evaluation.compare import PUBLISH_CHOICES, Decision, decide
from racedayai_bayes.lib.evaluation.judge import Judged
from racedayai_bayes.lib.evaluation.report import comparison_markdown, differences_markdown
from racedayai_bayes.lib.models.base import MODEL_NAMES
from racedayai_bayes.lib.outputs.artifacts import ArtifactError, published_model as last_published

from .checks import PUBLISH_CHECKS, check_result, publish_check_specs
from .models import posterior_key
from .partitions import distance_partitions
from .resources import PipelinePaths


class PublishConfig(dg.Config):
    publish: str = Field(default="auto", description=f"Which model's forecasts to publish, one of {PUBLISH_CHOICES}: auto picks the eligible model with the best held-out ELPD (seed_profile is never eligible: its profile features leak the outcome); a model name forces it, e.g. seed_profile for the notebook's exact behaviour")


def publish_outcomes(decision: Decision) -> list[dx.CheckOutcome]:
    """The published model's checks: the blocking gate and the warnings."""
    chosen = decision.chosen
    out = [dx.CheckOutcome(
        "publishable", dx.PASS if chosen else dx.ERROR, 1.0 if chosen else 0.0, "a model passed its checks",
        decision.published, decision.reason)]
    if chosen is None:
        out += [dx.CheckOutcome("published_coverage", dx.ERROR, float("nan"), "-", None, "nothing published"),
                dx.CheckOutcome("published_coverage_by_decile", dx.WARN, float("nan"), "-", None, "nothing published")]
    else:
        cov, dec = chosen.check("coverage"), chosen.check("coverage_by_decile")
        out += [dx.CheckOutcome("published_coverage", cov.level, cov.value, cov.threshold, chosen.name, cov.description, cov.extra),
                dx.CheckOutcome("published_coverage_by_decile", dec.level, dec.value, dec.threshold, dec.worst, dec.description, dec.extra)]
    if decision.changed:
        out.append(dx.CheckOutcome("published_model_change", dx.WARN, 1.0, "the same model as last week", decision.published,
                                   f"the published model changed from {decision.previous} to {decision.published}: {decision.reason}"))
    else:
        out.append(dx.CheckOutcome("published_model_change", dx.PASS, 0.0, "the same model as last week", decision.published,
                                   f"published {decision.published or 'nothing'}; last week {decision.previous or 'nothing'}"))
    return out


# No CPU slot, as the split takes none (defs/split.py): the comparison takes about a second of
# light CPU work, and it is what the distance's CSV waits for. Holding a slot, it waited for
# one behind the other distance's seed posterior that had queued first (1.4 s at full scale,
# 2026-12-07), and the refit's last CSV started that much later. (Within its own run it starts
# only once every posterior of its distance has ended.)
@dg.asset(
    partitions_def=distance_partitions,
    ins={"holdout_split": dg.AssetIn(), **{posterior_key(n): dg.AssetIn() for n in MODEL_NAMES}},
    check_specs=publish_check_specs("published_model"),
    group_name="model",
)
def published_model(context: dg.AssetExecutionContext, config: PublishConfig, paths: PipelinePaths,
                    holdout_split: Split, **posteriors: Judged):
    """Every model's held-out scores side by side, and which one is published, and why."""
    distance = context.partition_key
    judged = {n: posteriors[posterior_key(n)] for n in MODEL_NAMES}
    try:
        previous = last_published(paths.refit_dir(holdout_split), distance)
    except (ArtifactError, OSError) as exc:
        context.log.warning(f"could not read last week's published model: {exc}")
        previous = None
    if config.publish not in PUBLISH_CHOICES:
        raise dg.Failure(description=f"publish must be one of {', '.join(PUBLISH_CHOICES)}, not {config.publish!r}",
                         allow_retries=False)
    decision = decide(judged, holdout_split.groups, publish=config.publish, previous=previous)
    context.log.info(f"{distance}: published {decision.published or 'nothing'}: {decision.reason}")
    metadata = {
        "published": dg.MetadataValue.text(decision.published or "nothing"),
        "reason": dg.MetadataValue.text(decision.reason),
        "previous": dg.MetadataValue.text(decision.previous or "nothing"),
        "publish_setting": dg.MetadataValue.text(config.publish),
        "comparison": dg.MetadataValue.md(comparison_markdown(decision)),
        "differences": dg.MetadataValue.md(differences_markdown(decision)),
    }
    if not decision.differences.empty:
        from racedayai_bayes.lib.evaluation import plots  # Matplotlib: only a step that plots imports it

        leaky = {n for n, j in decision.judged.items() if not j.model.asof}
        metadata["plot_elpd_differences"] = dg.MetadataValue.md(plots.png_markdown(
            plots.elpd_difference_plot(decision.differences, not_eligible=leaky),
            f"ELPD differences against the published model, {distance}"))
    if decision.chosen is not None:
        metadata["artifact"] = dg.MetadataValue.path(str(decision.chosen.artifact))
    yield dg.Output(decision, metadata=metadata)
    for outcome in publish_outcomes(decision):
        if not outcome.passed:
            context.log.warning(f"check {outcome.name} ({outcome.level}) on {distance}: {outcome.description}")
        yield check_result(outcome, distance, decision.published or "-", PUBLISH_CHECKS)
