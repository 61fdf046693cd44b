r"""Held-out scores of a model's forecasts, with standard errors that respect shared race days.

Rows of one edition (a course on one day) share that day: when the day ran fast, every
forecast of it was too slow together. Rows are therefore not independent, and a standard
error computed as if they were is too small. Every standard error here is computed from
**per-edition sums** (a cluster-robust, ratio-estimator SE): for a per-row quantity
:math:`v_i` and its mean :math:`\bar v = \sum_e V_e / \sum_e n_e` over editions e with sums
:math:`V_e` and counts :math:`n_e`,

.. math::

    \mathrm{SE}(\bar v) = \frac{1}{N}\sqrt{\frac{E}{E-1}\sum_e (V_e - \bar v\, n_e)^2},

N rows, E editions. The same formula gives the SE of a coverage share (v an indicator),
of the ELPD (v the log predictive density) and of an ELPD difference between two models
on the same rows (v the per-row difference).

ELPD is the mean log predictive density per row of ``total_sec`` in seconds (each model's
density includes the Jacobian of its own transform), so models on different scales
compare on one footing.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from racedayai_bayes.lib.models.base import Prediction

NOMINAL = 0.9
DECILES = 10


def clustered_mean(values: np.ndarray, clusters: np.ndarray) -> tuple[float, float]:
    """Mean of ``values`` and its standard error from per-cluster sums (module docstring)."""
    values = np.asarray(values, dtype=np.float64)
    ok = np.isfinite(values)
    values, clusters = values[ok], np.asarray(clusters)[ok]
    n = len(values)
    if n == 0:
        return float("nan"), float("nan")
    codes, _ = pd.factorize(clusters, sort=False)
    sums = np.bincount(codes, weights=values)
    counts = np.bincount(codes).astype(np.float64)
    mean = float(sums.sum() / n)
    e = len(sums)
    if e < 2:
        return mean, float("nan")
    se = float(np.sqrt(e / (e - 1) * np.sum((sums - mean * counts) ** 2)) / n)
    return mean, se


def coverage_se(inside: np.ndarray, clusters: np.ndarray) -> tuple[float, float]:
    """A coverage share and its SE: clustered by edition, and never below the binomial SE at
    the nominal 90% (a share of 0 or 1 on a few rows has a clustered SE of 0, which would
    claim certainty that a few rows cannot give)."""
    cov, se = clustered_mean(inside, clusters)
    n = int(np.isfinite(np.asarray(inside, dtype=np.float64)).sum())
    floor = np.sqrt(NOMINAL * (1 - NOMINAL) / n) if n else np.nan
    return cov, float(np.fmax(se, floor))


def edition_labels(rows: pd.DataFrame, positions: np.ndarray | None = None) -> np.ndarray:
    """One label per edition (course and season) of each row (of the rows at ``positions``);
    a row without a course is its own cluster, named by its position in ``rows``."""
    positions = np.arange(len(rows)) if positions is None else np.asarray(positions)
    sub = rows[["event_name", "event_year"]].iloc[positions]
    course = sub["event_name"].astype("string")
    label = course + "|" + sub["event_year"].astype("string")
    lone = course.isna().to_numpy()
    out = label.to_numpy(dtype=object)
    out[lone] = [f"(no event_name) row {i}" for i in positions[lone]]
    return out


@dataclass
class Scores:
    """One model's scores on one set of rows (module docstring)."""

    rows: int
    editions: int
    mae_p50_sec: float
    mae_pred_sec: float
    r2: float
    coverage_90: float
    coverage_se: float
    elpd: float
    elpd_se: float
    deciles: pd.DataFrame  # decile, rows, predicted_h (mean), coverage, se
    groups: dict = field(default_factory=dict)  # group name -> {"rows", "mae_p50_sec", "coverage_90", "elpd"}

    def as_dict(self) -> dict:
        return {
            "rows": self.rows, "editions": self.editions, "mae_p50_min": self.mae_p50_sec / 60,
            "mae_pred_min": self.mae_pred_sec / 60, "r2": self.r2, "coverage_90": self.coverage_90,
            "coverage_se": self.coverage_se, "elpd": self.elpd, "elpd_se": self.elpd_se,
        }


def decile_table(observed: np.ndarray, pred: Prediction, clusters: np.ndarray) -> pd.DataFrame:
    """90% coverage per decile of the *predicted* finish time (lib/evaluation/plots.py's
    table), each with its clustered SE (column ``se``).

    Binning by the prediction, not the observation: binning by the observed time selects on
    the noise, and a calibrated model then looks under-covered in the outer deciles.
    """
    from racedayai_bayes.lib.evaluation.plots import coverage_by_decile

    if len(observed) < DECILES:
        return pd.DataFrame(columns=["decile", "lower_h", "upper_h", "rows", "coverage", "below", "above", "se"])
    table = coverage_by_decile(observed, pred.p05, pred.p95, predicted_sec=pred.pred)
    codes = pd.qcut(np.asarray(pred.pred, dtype="float64"), DECILES, labels=False, duplicates="drop")
    inside = ((observed >= pred.p05) & (observed <= pred.p95)).astype(np.float64)
    table["se"] = [coverage_se(inside[codes == k], clusters[codes == k])[1] for k in range(len(table))]
    return table


def score(observed: np.ndarray, pred: Prediction, clusters: np.ndarray, groups: dict[str, np.ndarray] | None = None) -> Scores:
    """MAE of bayes_p50 and bayes_pred, R², 90% coverage and ELPD, with clustered SEs."""
    from racedayai_bayes.lib.evaluation.diagnostics import point_metrics

    observed = np.asarray(observed, dtype=np.float64)
    inside = ((observed >= pred.p05) & (observed <= pred.p95)).astype(np.float64)
    cov, cov_se = coverage_se(inside, clusters)
    lpd = pred.log_density if pred.log_density is not None else np.full(len(observed), np.nan)
    elpd, elpd_se = clustered_mean(lpd, clusters)
    metrics = point_metrics(observed, pred.pred) if len(observed) > 1 else {"mae_sec": float("nan"), "r2": float("nan")}
    out = Scores(
        rows=len(observed), editions=int(len(pd.unique(clusters))),
        mae_p50_sec=float(np.mean(np.abs(pred.p50 - observed))) if len(observed) else float("nan"),
        mae_pred_sec=metrics["mae_sec"], r2=metrics["r2"], coverage_90=cov, coverage_se=cov_se,
        elpd=elpd, elpd_se=elpd_se, deciles=decile_table(observed, pred, clusters),
    )
    for name, mask in (groups or {}).items():
        mask = np.asarray(mask, dtype=bool)
        if not mask.any():
            out.groups[name] = {"rows": 0}
            continue
        out.groups[name] = {
            "rows": int(mask.sum()),
            "mae_p50_sec": float(np.mean(np.abs(pred.p50[mask] - observed[mask]))),
            "coverage_90": float(inside[mask].mean()),
            "elpd": float(np.nanmean(lpd[mask])),
        }
    return out


def elpd_difference(lpd_a: np.ndarray, lpd_b: np.ndarray, clusters: np.ndarray, mask: np.ndarray | None = None) -> tuple[float, float, int]:
    """Mean per-row ELPD of a minus b on the same rows, its clustered SE, and the row count."""
    diff = np.asarray(lpd_a, dtype=np.float64) - np.asarray(lpd_b, dtype=np.float64)
    if mask is not None:
        diff, clusters = diff[mask], np.asarray(clusters)[mask]
    mean, se = clustered_mean(diff, clusters)
    return mean, se, int(np.isfinite(diff).sum())
