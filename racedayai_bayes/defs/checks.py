"""Asset checks on each model's posterior and on the published model, judged per distance.

Each model's posterior carries its own checks (sampler, held-out coverage, calibration per
decile, drift). They are **not blocking**: a model that fails them is simply not eligible
for publishing, and the other models are still compared and published. The blocking gate
sits on ``published_model``: if no model can be published, or the published one's
held-out coverage fails, ``bayesian_predictions`` is skipped and last week's CSV stays.
lib/evaluation/ does the judging; this module only translates.
"""

import warnings

import dagster as dg
import numpy as np

from racedayai_bayes.lib.evaluation import diagnostics as dx

from .partitions import distance_partitions

# lib check name -> (Dagster check name, description)
MODEL_CHECKS = {
    "rhat": ("rhat_max", f"Max rank-normalised r_hat <= {dx.RHAT_MAX} (Vehtari et al. 2021)"),
    "ess": ("ess_bulk_min", f"Min bulk ESS >= {dx.ESS_BULK_MIN:g}"),
    "divergences": (
        "divergences",
        f"No divergent transitions; a few warn, more than {dx.DIVERGENCE_ERROR_SHARE:.0%} of draws is an error",
    ),
    "proposal": (
        "proposal_khat",
        f"The independence sampler's proposal covers the posterior: PSIS k-hat <= {dx.PROPOSAL_KHAT_MAX} (else WARN)",
    ),
    "coverage": (
        "predictive_coverage",
        f"90% posterior predictive interval covers between {dx.COVERAGE_RANGE[0]} and {dx.COVERAGE_RANGE[1]} "
        "of the held-out rows, up to sampling noise clustered by edition",
    ),
    "coverage_by_decile": (
        "coverage_by_decile",
        "Every decile of the predicted time has 90% coverage consistent with the same band (WARN)",
    ),
    "drift": (
        "prediction_drift",
        "Predictions of the judged rows moved no more than drift_threshold_sec on average from the "
        "model's previous refit; above it the check warns",
    ),
}
PUBLISH_CHECKS = {
    "publishable": ("publishable", "Some model passed its checks and may be published (blocking)"),
    "published_coverage": (
        "published_coverage",
        "The published model's held-out 90% coverage is within the band up to clustered noise (blocking)",
    ),
    "published_coverage_by_decile": (
        "published_coverage_by_decile",
        "Every decile of the published model's predicted time is calibrated (WARN)",
    ),
    "published_model_change": (
        "published_model_change",
        "The published model is last week's; a change warns, with the reason",
    ),
}
_SEVERITY = {dx.WARN: dg.AssetCheckSeverity.WARN, dx.ERROR: dg.AssetCheckSeverity.ERROR}


def model_check_specs(asset: str, names: tuple[str, ...]) -> list[dg.AssetCheckSpec]:
    """Non-blocking checks of one model's posterior, partitioned by distance like the asset.

    Partitioned so the UI keeps a status per distance: unpartitioned, a check shows only its
    newest evaluation, and the weekly schedule refits both distances at once.
    """
    return [_per_distance(MODEL_CHECKS[n][0], asset=asset, description=MODEL_CHECKS[n][1], blocking=False)
            for n in names]


def _per_distance(name: str, **spec) -> dg.AssetCheckSpec:
    """A check spec partitioned by distance. Dagster 1.13 calls a check's ``partitions_def`` a
    preview (a patch release may change it) and warns at every import of the code location: four
    lines at each start of ``dagster dev``, which the operator can do nothing about. The
    warning is silenced here only; dagster is pinned to 1.13.* (pyproject.toml), and a test
    checks that every check spec is partitioned (README, known limits)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Specifying a partitions_def on an AssetCheckSpec",
                                category=dg.PreviewWarning)
        return dg.AssetCheckSpec(name, partitions_def=distance_partitions, **spec)


# the checks that gate publishing: failed at ERROR, they fail the run (the model's own never do)
BLOCKING_CHECKS = ("publishable", "published_coverage")


def publish_check_specs(asset: str) -> list[dg.AssetCheckSpec]:
    return [_per_distance(name, asset=asset, description=desc, blocking=key in BLOCKING_CHECKS)
            for key, (name, desc) in PUBLISH_CHECKS.items()]


SHOWN_DIGITS = 5  # significant digits of a number shown in the UI


def shown(value: float) -> float:
    """``value`` to :data:`SHOWN_DIGITS` significant digits: the UI shows metadata numbers in
    full (0.9240787801778907); the artifacts and CSVs keep full precision."""
    value = float(value)
    return float(f"{value:.{SHOWN_DIGITS}g}") if np.isfinite(value) else value


def number(value: float) -> dg.MetadataValue:
    """A float metadata value as the UI should show it (:func:`shown`)."""
    return dg.MetadataValue.float(shown(value))


def check_result(outcome: dx.CheckOutcome, distance: str, model: str, names: dict = MODEL_CHECKS) -> dg.AssetCheckResult:
    name, _ = names[outcome.name]
    metadata = {
        # in full: a value rounded for show could land on the passing side of its threshold
        "value": dg.MetadataValue.float(float(outcome.value)),
        "threshold": dg.MetadataValue.text(outcome.threshold),
        "worst": dg.MetadataValue.text(outcome.worst or "-"),
        "distance": dg.MetadataValue.text(distance),
        "model": dg.MetadataValue.text(model),
    }
    metadata.update({k: shown(v) if isinstance(v, float) else v for k, v in outcome.extra.items()
                     if isinstance(v, (int, float, str))})
    return dg.AssetCheckResult(
        check_name=name,
        passed=outcome.passed,
        severity=_SEVERITY.get(outcome.level, dg.AssetCheckSeverity.ERROR),
        description=outcome.description,
        metadata=metadata,
    )
