"""Convergence diagnostics (ArviZ) and posterior predictive checks, with their thresholds.

Thresholds follow Vehtari et al. (2021): rank-normalised split r_hat <= 1.01 and bulk ESS
>= 400. A check returns a :class:`CheckOutcome`; the Dagster layer only translates it.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from racedayai_bayes.lib.inference.draws import Draws
from racedayai_bayes.lib.runreport import NO_PREVIOUS_REFIT  # the report shows it as 'none'

RHAT_MAX = 1.01
ESS_BULK_MIN = 400.0
DIVERGENCE_ERROR_SHARE = 0.01
COVERAGE_RANGE = (0.85, 0.95)
COVERAGE_Z = 2.576  # the coverage check allows for binomial noise at 99% (see check_coverage)
# Mean absolute shift of the posterior-mean predictions from the previous refit above which
# the drift check warns. Refits on the same data move them by well under a second (Monte
# Carlo error); a week of new races by seconds; two minutes means the model itself moved.
DRIFT_THRESHOLD_SEC = 120.0

PASS, WARN, ERROR = "pass", "warn", "error"


@dataclass(frozen=True)
class CheckOutcome:
    """A judged diagnostic: ``level`` is pass, warn or error."""

    name: str
    level: str
    value: float
    threshold: str
    worst: str | None = None
    description: str = ""
    extra: dict = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        return self.level == PASS


def to_inference_data(draws: Draws):
    """An ArviZ InferenceData with the draws and the divergences."""
    import arviz as az

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        return az.from_dict(posterior=draws.samples, sample_stats={"diverging": draws.diverging})


def parameter_names(draws: Draws) -> list[str]:
    """Flat parameter names, 'mu_age[3]' style, in sorted site order."""
    names = []
    for site in sorted(draws.samples):
        shape = draws.samples[site].shape[2:]
        names += [site] if not shape else [f"{site}[{i}]" for i in range(shape[0])]
    return names


def summary_table(draws: Draws) -> pd.DataFrame:
    """mean, sd, 5%, 95%, bulk ESS and rank-normalised r_hat per scalar parameter."""
    import arviz as az

    idata = to_inference_data(draws)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        rhat = az.rhat(idata, method="rank")
        ess = az.ess(idata, method="bulk")
    rows = []
    for site in sorted(draws.samples):
        flat = draws.flat(site)
        flat = flat[:, None] if flat.ndim == 1 else flat
        r = np.atleast_1d(rhat[site].values)
        e = np.atleast_1d(ess[site].values)
        for i in range(flat.shape[1]):
            name = site if draws.samples[site].ndim == 2 else f"{site}[{i}]"
            col = flat[:, i]
            rows.append(
                {
                    "parameter": name,
                    "mean": float(col.mean()),
                    "sd": float(col.std(ddof=1)),
                    "p5": float(np.percentile(col, 5)),
                    "p95": float(np.percentile(col, 95)),
                    "ess_bulk": float(e[i]),
                    "r_hat": float(r[i]),
                }
            )
    return pd.DataFrame(rows).set_index("parameter")


def _named(summary: pd.DataFrame, parameter) -> str:
    """A parameter with its level when the summary names one (``mu_age[17] (40-44)``)."""
    level = summary["level"].get(parameter, "") if "level" in summary else ""
    return f"{parameter} ({level})" if level else str(parameter)


def check_rhat(summary: pd.DataFrame, threshold: float = RHAT_MAX) -> CheckOutcome:
    worst = _named(summary, summary["r_hat"].fillna(np.inf).idxmax())  # NaN (one chain, constant draws) is a failure
    value = float(summary["r_hat"].max(skipna=False))
    ok = np.isfinite(value) and value <= threshold
    return CheckOutcome(
        "rhat", PASS if ok else ERROR, value, f"<= {threshold}", worst,
        f"max rank-normalised r_hat {value:.4f} ({worst})",
    )


def check_ess(summary: pd.DataFrame, threshold: float = ESS_BULK_MIN) -> CheckOutcome:
    worst = _named(summary, summary["ess_bulk"].fillna(-np.inf).idxmin())
    value = float(summary["ess_bulk"].min(skipna=False))
    ok = np.isfinite(value) and value >= threshold
    return CheckOutcome(
        "ess", PASS if ok else ERROR, value, f">= {threshold:g}", worst,
        f"min bulk ESS {value:.0f} ({worst})",
    )


def check_divergences(diverging: np.ndarray, error_share: float = DIVERGENCE_ERROR_SHARE) -> CheckOutcome:
    count = int(diverging.sum())
    share = count / diverging.size
    level = PASS if count == 0 else (ERROR if share > error_share else WARN)
    per_chain = [int(c) for c in diverging.sum(axis=1)]
    return CheckOutcome(
        "divergences", level, float(count), f"0 passes; > {error_share:.0%} of draws is an error",
        f"chain {int(np.argmax(per_chain)) + 1}" if count else None,
        f"{count} divergent transitions of {diverging.size} draws ({share:.2%})",
        {"share": share, "per_chain": per_chain},
    )


def coverage_interval(coverage: float, se: float, z: float = COVERAGE_Z) -> tuple[float, float]:
    """The 99% interval of a coverage share measured with standard error ``se``."""
    if not np.isfinite(se):
        return float(coverage), float(coverage)
    return float(coverage - z * se), float(coverage + z * se)


def check_coverage(
    coverage: float,
    se: float,
    *,
    rows: int,
    editions: int,
    label: str = "held-out",
    bounds: tuple[float, float] = COVERAGE_RANGE,
) -> CheckOutcome:
    """Pass when the 90% interval's coverage is consistent with ``bounds``.

    A coverage share measured on a season has sampling noise, and the rows of one edition
    share their race day, so they miss together. ``se`` is the clustered standard error
    from per-edition sums (lib/evaluation/scores.py). The check fails only when the whole
    99% interval, coverage +- 2.576 se, lies outside ``bounds``: on a full season with
    hundreds of editions that is nearly the band itself, and a small holdout does not fail
    by chance.
    """
    lo, hi = bounds
    ci = coverage_interval(coverage, se)
    ok = bool(np.isfinite(coverage)) and ci[1] >= lo and ci[0] <= hi
    return CheckOutcome(
        "coverage", PASS if ok else ERROR, float(coverage), f"within [{lo}, {hi}] up to sampling noise", None,
        f"90% predictive interval covers {coverage:.3f} of {rows:,} {label} rows in {editions:,} editions "
        f"(99% interval {ci[0]:.3f}-{ci[1]:.3f}, clustered by edition)",
        {"rows": rows, "editions": editions, "judged_on": label, "se": float(se), "ci_low": ci[0], "ci_high": ci[1]},
    )


def deciles_outside(deciles: pd.DataFrame, bounds: tuple[float, float] = COVERAGE_RANGE) -> np.ndarray:
    """True for each decile whose coverage is inconsistent with ``bounds``: its 99% interval
    (clustered SE, column ``se``; none without the column) misses the band. An empty decile
    (NaN) is not."""
    lo, hi = bounds
    cov = deciles["coverage"].to_numpy(dtype="float64")
    half = decile_half_widths(deciles)
    return (cov + half < lo) | (cov - half > hi)


def decile_half_widths(deciles: pd.DataFrame) -> np.ndarray:
    """Half the width of each decile's 99% interval of coverage (clustered SE, column ``se``;
    0 without the column or for an empty decile): the allowance of :func:`deciles_outside`."""
    if "se" not in deciles:
        return np.zeros(len(deciles))
    return COVERAGE_Z * deciles["se"].fillna(0.0).to_numpy(dtype="float64")


def check_coverage_by_decile(deciles: pd.DataFrame, bounds: tuple[float, float] = COVERAGE_RANGE) -> CheckOutcome:
    """Warn when some decile of the predicted time has coverage inconsistent with ``bounds``.

    The same clustered allowance as :func:`check_coverage`, decile by decile: each decile's
    99% interval must meet the band.
    """
    lo, hi = bounds
    if deciles.empty:
        return CheckOutcome("coverage_by_decile", PASS, float("nan"), f"every decile within [{lo}, {hi}]", None,
                            "no rows to judge")
    bad = deciles[deciles_outside(deciles, bounds)]
    worst_i = (deciles["coverage"] - 0.9).abs().idxmax()
    worst = deciles.loc[worst_i]
    text = ", ".join(f"{r.coverage:.3f} (decile {int(r.decile)})" for r in bad.itertuples()) or "none"
    return CheckOutcome(
        "coverage_by_decile", PASS if bad.empty else WARN, float(worst["coverage"]),
        f"every decile within [{lo}, {hi}] up to sampling noise", f"decile {int(worst['decile'])}",
        f"90% coverage by decile of the predicted time: {deciles['coverage'].min():.3f} to "
        f"{deciles['coverage'].max():.3f}; outside the band: {text}",
        {"deciles_outside": int(len(bad)), "min_coverage": float(deciles["coverage"].min()),
         "max_coverage": float(deciles["coverage"].max())},
    )


PROPOSAL_KHAT_MAX = 0.7


def check_proposal(khat: float, acceptance: float, threshold: float = PROPOSAL_KHAT_MAX) -> CheckOutcome:
    """An independence sampler's proposal: PSIS k-hat of its importance weights <= 0.7.

    Above 0.7 the proposal's tails are too light for the posterior: the sampler stays exact
    but can stick for long stretches, which r_hat and ESS then show. A warning, not an error.
    """
    ok = np.isfinite(khat) and khat <= threshold
    return CheckOutcome(
        "proposal", PASS if ok else WARN, float(khat), f"<= {threshold}", None,
        f"PSIS k-hat of the proposal's importance weights {khat:.2f}; acceptance {acceptance:.2f}",
        {"acceptance": float(acceptance)},
    )


def check_drift(shift: dict | None, threshold_sec: float = DRIFT_THRESHOLD_SEC) -> CheckOutcome:
    """Warn when the posterior-mean predictions moved more than ``threshold_sec`` on average.

    ``shift`` is :func:`racedayai_bayes.lib.models.seed.fit.prediction_shift` against the last
    published refit, or None for the first refit (which passes). Never an error: a real
    change in the data is a reason to look, not to block.
    """
    if not shift:
        return CheckOutcome("drift", PASS, 0.0, f"<= {threshold_sec:g} s", None, NO_PREVIOUS_REFIT)
    value = shift["mean_abs_shift_sec"]
    level = PASS if value <= threshold_sec else WARN
    return CheckOutcome(
        "drift", level, value, f"<= {threshold_sec:g} s", None,
        f"posterior-mean predictions moved {value:.1f} s on average from the previous refit "
        f"(99th percentile {shift['p99_abs_shift_sec']:.1f} s, mean signed {shift['mean_shift_sec']:+.1f} s, "
        f"{shift['rows']:,} rows)",
        dict(shift),
    )


def point_metrics(y_true: np.ndarray, pred: np.ndarray) -> dict[str, float]:
    """MAE (seconds) and R² of point predictions, as the seed computes them: scikit-learn's
    ``mean_absolute_error`` and ``r2_score`` (defaults), written out with the same numpy
    operations on the same column arrays, so that the numbers are scikit-learn's to the last
    bit (test_lib_diagnostics compares them). Importing ``sklearn.metrics`` took 0.3 s of
    the step server's start, which the first step of every refit waits for (2026-12-04).

    As there: inputs that are not finite are refused (ValueError), R² of fewer than two rows
    is NaN, and R² of constant observations is 1.0 if predicted exactly, else 0.0.
    """
    y = np.asarray(y_true, dtype=np.float64).reshape(-1, 1)
    p = np.asarray(pred, dtype=np.float64).reshape(-1, 1)
    if y.shape != p.shape:
        raise ValueError(f"{len(y)} observations against {len(p)} predictions")
    if not (np.isfinite(y).all() and np.isfinite(p).all()):
        raise ValueError("Input contains NaN or infinity")
    mae = float(np.average(np.average(np.abs(p - y), axis=0)))
    if len(y) < 2:
        return {"mae_sec": mae, "r2": float("nan")}
    numerator = np.sum((y - p) ** 2, axis=0)
    denominator = np.sum((y - np.average(y, axis=0)) ** 2, axis=0)
    if denominator[0] != 0:
        r2 = 1.0 - numerator[0] / denominator[0]
    else:
        r2 = 1.0 if numerator[0] == 0 else 0.0
    return {"mae_sec": mae, "r2": float(np.average([r2]))}


def predictive_metrics(y_true: np.ndarray, pred_mean: np.ndarray, p05: np.ndarray, p95: np.ndarray, pred_sd: np.ndarray) -> dict[str, float]:
    """The seed's section 5: MAE, R², 90% interval coverage and mean predictive sd (seconds)."""
    return {
        **point_metrics(y_true, pred_mean),
        "coverage_90": float(np.mean((y_true >= p05) & (y_true <= p95))),
        "mean_pred_sd_sec": float(np.mean(pred_sd)),
        "rows": int(len(y_true)),
    }
