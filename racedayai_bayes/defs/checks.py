"""Asset checks on `posterior`, judged per distance partition.

The checks are declared as `check_specs` on the posterior asset, so each distance is judged
on its own draws; lib/diagnostics.py does the judging and this module only translates.
"""


import dagster as dg

from racedayai_bayes.lib import diagnostics as dx
from racedayai_bayes.lib.posterior import Posterior

from .partitions import distance_partitions

# lib check name -> (Dagster check name, description)
CHECKS = {
    "rhat": ("rhat_max", f"Max rank-normalised r_hat <= {dx.RHAT_MAX} (Vehtari et al. 2021)"),
    "ess": ("ess_bulk_min", f"Min bulk ESS >= {dx.ESS_BULK_MIN:g}"),
    "divergences": (
        "divergences",
        f"No divergent transitions; a few warn, more than {dx.DIVERGENCE_ERROR_SHARE:.0%} of draws is an error",
    ),
    "coverage": (
        "predictive_coverage",
        f"90% posterior predictive interval covers between {dx.COVERAGE_RANGE[0]} and {dx.COVERAGE_RANGE[1]} "
        "of the held-out rows (in-sample rows when the refit has no holdout)",
    ),
    "drift": (
        "prediction_drift",
        "Posterior-mean predictions moved no more than the configured shift (drift_threshold_sec) "
        "from the last published refit; above it the check warns",
    ),
}
_SEVERITY = {dx.WARN: dg.AssetCheckSeverity.WARN, dx.ERROR: dg.AssetCheckSeverity.ERROR}


def posterior_check_specs(asset: str = "posterior") -> list[dg.AssetCheckSpec]:
    # blocking: a failure with ERROR severity stops this distance's CSV from being written.
    # Partitioned like the asset, so the UI keeps a status per distance: unpartitioned, a
    # check shows only its newest evaluation, and overlapping refits of the two distances
    # (the weekly schedule launches both at once) left it "Not Evaluated".
    return [
        dg.AssetCheckSpec(name, asset=asset, description=desc, blocking=True, partitions_def=distance_partitions)
        for name, desc in CHECKS.values()
    ]


def check_result(outcome: dx.CheckOutcome, posterior: Posterior) -> dg.AssetCheckResult:
    name, _ = CHECKS[outcome.name]
    metadata = {
        "value": dg.MetadataValue.float(float(outcome.value)),
        "threshold": dg.MetadataValue.text(outcome.threshold),
        "worst": dg.MetadataValue.text(outcome.worst or "-"),
        "distance": dg.MetadataValue.text(posterior.distance),
        "engine": dg.MetadataValue.text(posterior.draws.engine),
    }
    metadata.update({k: v for k, v in outcome.extra.items() if isinstance(v, (int, float, str))})
    return dg.AssetCheckResult(
        check_name=name,
        passed=outcome.passed,
        severity=_SEVERITY.get(outcome.level, dg.AssetCheckSeverity.ERROR),
        description=outcome.description,
        metadata=metadata,
    )
