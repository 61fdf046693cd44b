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
from .inference import Draws, ProgressFn, fit_rowwise
from .predict import predictive_summary

ENGINES = ("exact", "rowwise")
# The seed's PRNG keys per distance.
DEFAULT_SEEDS = {"70.3": 42, "140.6": 99}
# NUTS target acceptance per engine. The seed's 0.85 for its own sampler. The exact engine
# samples four whitened scales; at 0.85 its adapted step size gave ~1 divergence per 3000
# draws on demo data (a weekly WARN alert for nothing), at 0.95 none, for ~5% more steps.
DEFAULT_TARGET_ACCEPT = {"rowwise": 0.85, "exact": 0.95}
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

    def target_accept_for_engine(self) -> float:
        if self.target_accept is not None:
            return self.target_accept
        return DEFAULT_TARGET_ACCEPT.get(self.engine, 0.85)

    def seed_for(self, distance: str) -> int:
        return self.seed if self.seed is not None else DEFAULT_SEEDS.get(distance, 0)


@dataclass
class Posterior:
    distance: str
    encoding: Encoding
    draws: Draws
    summary: pd.DataFrame
    predictive: dict
    analysis: dict
    checks: list[dx.CheckOutcome]
    settings: dict
    rows_available: int
    rows_fitted: int
    info: dict = field(default_factory=dict)
    # documented handling of unusual data (all rows fitted, a single group), for metadata
    notes: list[str] = field(default_factory=list)

    def check(self, name: str) -> dx.CheckOutcome:
        return next(c for c in self.checks if c.name == name)

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
    kwargs = dict(
        num_warmup=settings.num_warmup,
        num_samples=settings.num_samples,
        num_chains=settings.num_chains,
        target_accept=settings.target_accept_for_engine(),
        seed=seed,
        progress=progress,
    )
    if settings.engine == "rowwise":
        return fit_rowwise(design, **kwargs)
    if settings.engine == "exact":
        from .exact import fit_exact

        return fit_exact(design, **kwargs)
    raise ValueError(f"unknown engine {settings.engine!r}; expected one of {ENGINES}")


def fit_posterior(
    rows: pd.DataFrame, distance: str, settings: FitSettings = FitSettings(), progress: ProgressFn = None
) -> Posterior:
    """Fit the seed's model to one distance's model-frame rows and judge the result.

    The rowwise engine fits the seed's subsample; the exact engine fits every row. The
    predictive checks run on the seed's evaluation rows: a sample of ``eval_rows`` drawn
    with random_state 42, which for the rowwise engine is its fitting sample.
    """
    if rows.empty:
        raise FitError(f"distance {distance}: no rows left after the model-frame filter (0 rows)")
    say = progress or (lambda _m: None)
    fit_rows = _sample(rows, settings.subsample) if settings.engine == "rowwise" else rows
    enc = fit_encoding(fit_rows, distance)
    notes = _fit_notes(rows, enc, settings)
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
    eval_rows = _sample(fit_rows, settings.eval_rows)
    eval_design = encode(eval_rows, enc)
    pp = predictive_summary(draws, enc, eval_design, max_draws=settings.predictive_draws, seed=seed + 1)
    predictive = dx.predictive_metrics(
        eval_rows["total_sec"].to_numpy(dtype=float), pp["mean"], pp["p05"], pp["p95"], pp["sd"]
    )
    checks = [
        dx.check_rhat(summary),
        dx.check_ess(summary),
        dx.check_divergences(draws.diverging),
        dx.check_coverage(predictive["coverage_90"], rows=predictive["rows"]),
    ]
    return Posterior(
        distance=distance,
        encoding=enc,
        draws=draws,
        summary=summary,
        predictive=predictive,
        analysis=posterior_analysis(draws, enc),
        checks=checks,
        settings={**asdict(settings), "seed": seed, "target_accept": settings.target_accept_for_engine()},
        rows_available=len(rows),
        rows_fitted=len(fit_rows),
        info=draws.info,
        notes=notes,
    )


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
