"""Fit one distance's posterior end to end: rows -> encoding -> draws -> diagnostics.

The :class:`Posterior` keeps everything needed to judge it and to predict with it: the
draws, the encoding and standardisation constants, the summary table, the predictive
checks and the judged diagnostics.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np
import pandas as pd

from . import diagnostics as dx
from .encoding import Encoding, FitError, encode, fit_encoding
from .holdout import DEFAULT_HOLDOUT_SHARE, split_holdout
from .inference import Draws, ProgressFn, Sampler, fit_rowwise
from .predict import mean_prediction, predictive_summary

ENGINES = ("exact", "rowwise")
# The seed's PRNG keys per distance.
DEFAULT_SEEDS = {"70.3": 42, "140.6": 99}
# NUTS target acceptance per engine. The seed's 0.85 for its own sampler. The exact engine
# samples four whitened scales; at 0.85 its adapted step size gave ~1 divergence per 3000
# draws on demo data (a weekly WARN alert for nothing). Fitted without the held-out year,
# 0.95 still left one in 2 of 6 fits (seeds x distances); 0.98 none, for ~50% more leapfrog
# steps, which cost little: a step costs the same at any row count.
DEFAULT_TARGET_ACCEPT = {"rowwise": 0.85, "exact": 0.98}
SUBSAMPLE_RANDOM_STATE = 42


@dataclass(frozen=True)
class FitSettings:
    """Sampler settings; the defaults are the seed's (with the exact engine)."""

    engine: str = "exact"
    num_warmup: int = 1500
    num_samples: int = 1500
    num_chains: int = 2
    target_accept: float | None = None  # None: the engine's default (DEFAULT_TARGET_ACCEPT)
    subsample: int = 50_000
    seed: int | None = None
    eval_rows: int = 50_000
    predictive_draws: int = 1000
    holdout: str = "latest_year"
    holdout_share: float = DEFAULT_HOLDOUT_SHARE
    holdout_seed: int = 0
    drift_threshold_sec: float = dx.DRIFT_THRESHOLD_SEC

    def target_accept_for_engine(self) -> float:
        if self.target_accept is not None:
            return self.target_accept
        return DEFAULT_TARGET_ACCEPT.get(self.engine, 0.85)

    def seed_for(self, distance: str) -> int:
        return self.seed if self.seed is not None else DEFAULT_SEEDS.get(distance, 0)

    def prediction_seed(self, distance: str) -> int:
        """Seed of the posterior predictive simulations (intervals of the CSV and the checks)."""
        return self.seed_for(distance) + 1


@dataclass
class Evaluation:
    """Posterior predictive summaries of a set of rows against their observed finish times."""

    label: str
    observed: np.ndarray
    mean: np.ndarray
    p05: np.ndarray
    p50: np.ndarray
    p95: np.ndarray
    metrics: dict


@dataclass
class Posterior:
    distance: str
    encoding: Encoding
    draws: Draws
    summary: pd.DataFrame
    analysis: dict
    checks: list[dx.CheckOutcome]
    settings: dict
    rows_available: int
    rows_fitted: int
    split: dict = field(default_factory=dict)
    # the notebook's in-sample evaluation and the held-out one (None without a holdout)
    in_sample: Evaluation | None = None
    holdout: Evaluation | None = None
    # held-out rows evaluated (at most eval_rows): for the artifact's posterior predictive
    holdout_rows: pd.DataFrame | None = None
    fit_observed: np.ndarray | None = None  # total_sec of the fitted rows (float32)
    drift: dict = field(default_factory=dict)
    artifact: str | None = None  # where the refit's NetCDF artifact was saved (set by the caller)
    info: dict = field(default_factory=dict)
    # documented handling of unusual data (all rows fitted, a single group), for metadata
    notes: list[str] = field(default_factory=list)

    def check(self, name: str) -> dx.CheckOutcome:
        return next(c for c in self.checks if c.name == name)

    @property
    def prediction_seed(self) -> int:
        """Seed of the predictive simulations (the checks and the CSV's intervals); in the artifact too."""
        if "prediction_seed" in self.settings:
            return int(self.settings["prediction_seed"])
        return FitSettings(seed=int(self.settings["seed"])).prediction_seed(self.distance)  # stored before it was kept

    @property
    def interval_draws(self) -> int:
        return int(self.settings["predictive_draws"])

    @property
    def judged(self) -> Evaluation:
        """The evaluation the coverage check judges: held-out rows when there are any."""
        return self.holdout if self.holdout is not None else self.in_sample

    @property
    def failed_checks(self) -> list[str]:
        """Checks failed at ERROR level: they block this posterior from every output."""
        return [c.name for c in self.checks if c.level == dx.ERROR]


def _sample(rows: pd.DataFrame, n: int) -> pd.DataFrame:
    """The seed's subsample: ``DataFrame.sample(n, random_state=42)`` (all rows if fewer)."""
    if n <= 0 or n >= len(rows):
        return rows
    return rows.sample(n, random_state=SUBSAMPLE_RANDOM_STATE)


def _interval(values: np.ndarray, scale: float = 1.0) -> dict[str, float]:
    v = np.asarray(values) * scale
    return {
        "mean": float(v.mean()),
        "sd": float(v.std()),
        "p2.5": float(np.percentile(v, 2.5)),
        "p97.5": float(np.percentile(v, 97.5)),
    }


def posterior_analysis(draws: Draws, enc: Encoding) -> dict:
    """The seed's section 4: gender effects in seconds and coefficient intervals (95%)."""
    gender = draws.flat("mu_gender")
    return {
        "gender_effect_sec": {
            label: _interval(gender[:, i], enc.y_std) for label, i in (("Male", 0), ("Female", 1))
        },
        "coefficients": {
            name: _interval(draws.flat(name)) for name in ("beta_fitness", "beta_experience", "sigma")
        },
    }


def run_engine(design, settings: FitSettings, seed: int, progress: ProgressFn = None) -> Draws:
    sampler = Sampler(
        num_warmup=settings.num_warmup,
        num_samples=settings.num_samples,
        num_chains=settings.num_chains,
        target_accept=settings.target_accept_for_engine(),
        seed=seed,
    )
    if settings.engine == "rowwise":
        return fit_rowwise(design, sampler, progress)
    if settings.engine == "exact":
        from .exact import fit_exact

        return fit_exact(design, sampler, progress)
    raise ValueError(f"unknown engine {settings.engine!r}; expected one of {ENGINES}")


def evaluate(draws: Draws, enc: Encoding, rows: pd.DataFrame, label: str, settings: FitSettings, seed: int) -> Evaluation:
    """Posterior predictive mean and 90% interval of ``rows``, and the seed's section-5 metrics."""
    pp = predictive_summary(draws, enc, encode(rows, enc), max_draws=settings.predictive_draws, seed=seed)
    observed = rows["total_sec"].to_numpy(dtype=float)
    metrics = dx.predictive_metrics(observed, pp["mean"], pp["p05"], pp["p95"], pp["sd"])
    hashes = rows["athlete_hash"]
    metrics["athletes"] = int(hashes.nunique(dropna=True) + hashes.isna().sum())  # anonymous rows count one each
    return Evaluation(label, observed, pp["mean"], pp["p05"], pp["p50"], pp["p95"], metrics)


def fit_posterior(
    rows: pd.DataFrame,
    distance: str,
    settings: FitSettings = FitSettings(),
    progress: ProgressFn = None,
    previous: tuple[Draws, Encoding] | None = None,
) -> Posterior:
    """Fit the seed's model to one distance's model-frame rows and judge the result.

    The held-out rows (``settings.holdout``) are set aside first: the encoding, the fit and
    the in-sample checks never see them. The rowwise engine fits the seed's subsample of the
    remaining rows; the exact engine fits them all. The in-sample evaluation uses the seed's
    evaluation rows (a sample of ``eval_rows`` drawn with random_state 42); the held-out one
    a sample of the same size of the held-out rows. The coverage check judges the held-out
    rows. With ``previous`` (the draws and encoding of the last published refit), a drift
    check compares the posterior-mean predictions of both on every row.
    """
    if rows.empty:
        raise FitError(f"distance {distance}: no rows left after the model-frame filter (0 rows)")
    say = progress or (lambda _m: None)
    split = split_holdout(rows, settings.holdout, settings.holdout_share, settings.holdout_seed)
    say(f"distance {distance}: holdout {split.description}: {len(split.holdout):,} rows held out, {len(split.train):,} to fit")
    train = split.train
    fit_rows = _sample(train, settings.subsample) if settings.engine == "rowwise" else train
    enc = fit_encoding(fit_rows, distance)
    notes = list(split.notes) + _fit_notes(train, enc, settings)
    for note in notes:
        say(f"distance {distance}: {note}")
    design = encode(fit_rows, enc, fitting=True)
    seed = settings.seed_for(distance)
    say(
        f"distance {distance}: {settings.engine} engine on {len(fit_rows):,} of {len(rows):,} rows; "
        f"groups: {enc.n_gender} genders, {enc.n_age} age groups, {enc.n_cluster} clusters"
    )
    draws = run_engine(design, settings, seed, progress)
    import jax

    draws.info["jax_backend"] = jax.default_backend()

    summary = dx.summary_table(draws)
    pred_seed = settings.prediction_seed(distance)
    in_sample = evaluate(draws, enc, _sample(fit_rows, settings.eval_rows), "in-sample", settings, pred_seed)
    holdout_rows = _sample(split.holdout, settings.eval_rows) if len(split.holdout) else None
    holdout = None
    if holdout_rows is not None:
        holdout = evaluate(draws, enc, holdout_rows, "held-out", settings, pred_seed)
    judged = holdout or in_sample
    checks = [
        dx.check_rhat(summary),
        dx.check_ess(summary),
        dx.check_divergences(draws.diverging),
        dx.check_coverage(
            judged.metrics["coverage_90"], rows=judged.metrics["rows"], label=judged.label,
            units=judged.metrics["athletes"],
        ),
    ]
    drift = {}
    if previous is not None:
        drift = prediction_shift(previous, (draws, enc), rows)
    checks.append(dx.check_drift(drift or None, settings.drift_threshold_sec))
    return Posterior(
        distance=distance,
        encoding=enc,
        draws=draws,
        summary=summary,
        analysis=posterior_analysis(draws, enc),
        checks=checks,
        settings={
            **asdict(settings),
            "seed": seed,
            "prediction_seed": pred_seed,
            "target_accept": settings.target_accept_for_engine(),
        },
        rows_available=len(rows),
        rows_fitted=len(fit_rows),
        split=split.as_dict(),
        in_sample=in_sample,
        holdout=holdout,
        holdout_rows=holdout_rows,
        fit_observed=fit_rows["total_sec"].to_numpy(dtype=np.float32),
        drift=drift,
        info=draws.info,
        notes=notes,
    )


def prediction_shift(previous: tuple[Draws, Encoding], current: tuple[Draws, Encoding], rows: pd.DataFrame) -> dict:
    """How far this refit's posterior-mean predictions moved from the previous refit's, in seconds.

    Both posteriors predict the same rows (each with its own encoding; a group one of them
    never saw gets its population mean). Returns the mean and the 99th percentile of the
    absolute shift, and the mean signed shift.
    """
    preds = []
    for draws, enc in (previous, current):
        mu, _ = mean_prediction(draws, encode(rows, enc))
        preds.append(mu * enc.y_std + enc.y_mean)
    shift = preds[1] - preds[0]
    return {
        "mean_abs_shift_sec": float(np.mean(np.abs(shift))),
        "p99_abs_shift_sec": float(np.percentile(np.abs(shift), 99)),
        "mean_shift_sec": float(np.mean(shift)),
        "rows": int(len(rows)),
    }


def _fit_notes(rows: pd.DataFrame, enc: Encoding, settings: FitSettings) -> list[str]:
    """Plain-language notes on data that the fit handles in a documented but unusual way."""
    notes = []
    # the rowwise engine fits a subsample; with fewer rows it fits them all (as the seed's .sample would fail)
    if settings.engine == "rowwise" and 0 < len(rows) <= settings.subsample:
        notes.append(
            f"{len(rows):,} rows, not more than the subsample size {settings.subsample:,}: every row fitted"
        )
    if enc.n_age == 1:
        notes.append(
            f"one age group ({enc.age_levels[0]}): its effect is confounded with mu_global "
            "and only the prior separates them; predictions use the sum and are unaffected"
        )
    if enc.n_cluster == 1:
        notes.append(
            f"one cluster ({enc.cluster_levels[0]}): its effect is confounded with mu_global "
            "and only the prior separates them; predictions use the sum and are unaffected"
        )
    return notes
