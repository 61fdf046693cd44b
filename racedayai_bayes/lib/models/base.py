"""The small interface every model implements. The harness (split, evaluation, checks,
artifacts, CSV) calls these methods and nothing else: it knows no model's parameters.

A **model** (:class:`Model`) fits one distance's training rows and returns a **fitted
model** (:class:`FittedModel`), which can

- predict any rows of the distance (:meth:`FittedModel.predict`): point prediction, sd and
  5/50/95% quantiles in seconds, from its posterior predictive, and the log density of
  observed finish times (for ELPD);
- judge its own sampler (:meth:`FittedModel.diagnostics`: r_hat, ESS, ...);
- give a summary table, plots, its posterior means and an ArviZ ``InferenceData``;
- be rebuilt from that ``InferenceData`` (:func:`load_fitted`), which is how artifacts
  predict without the pipeline.

``frame`` arguments are always one distance's model-frame rows (lib/data/frame.py), with
the as-of history columns; a model whose forecasts depend on an athlete's earlier races
reads them from the frame's rows of earlier seasons.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pandas as pd

# The contract's prediction columns, in order, and the predictive quantiles written after them
PREDICTION_COLUMNS = ("athlete_hash", "event_distance", "event_year", "total_sec", "bayes_pred", "bayes_std")
INTERVAL_COLUMNS = ("bayes_p05", "bayes_p50", "bayes_p95")

ProgressFn = Callable[[str], None] | None


@dataclass
class Prediction:
    """Forecasts of some rows, in seconds, in the order the rows were asked for.

    ``pred`` and ``std`` are the CSV's ``bayes_pred`` and ``bayes_std``, with the meaning the
    model gives them (the seed keeps the notebook's; the forecast model's are the predictive
    mean and sd). ``log_density`` is log p(total_sec) in seconds, NaN where not asked for.
    """

    pred: np.ndarray
    std: np.ndarray
    p05: np.ndarray
    p50: np.ndarray
    p95: np.ndarray
    log_density: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.pred)

    def take(self, index) -> Prediction:
        ld = None if self.log_density is None else self.log_density[index]
        return Prediction(self.pred[index], self.std[index], self.p05[index], self.p50[index], self.p95[index], ld)


class FittedModel(ABC):
    """A fitted posterior of one model for one distance."""

    name: str  # e.g. "forecast"
    distance: str
    #: every feature is known before the race (no outcome leaks in): eligible for publishing
    asof: bool
    notes: list[str]
    info: dict
    #: the scale of :meth:`summary`'s values, said beside the table in the UI
    summary_scale: str = ""

    @abstractmethod
    def predict(self, frame: pd.DataFrame, rows: np.ndarray | None = None, *, log_density: bool = False,
                progress: ProgressFn = None) -> Prediction:
        """Forecasts of ``frame``'s rows at positions ``rows`` (all when None).

        With ``log_density`` the result's ``log_density`` holds log p(total_sec) of each
        predicted row that has a finish time. ``progress`` hears how far a long prediction
        has got (lib/runreport.py's ``[progress done/total]`` messages).
        """

    @abstractmethod
    def diagnostics(self) -> list:
        """The sampler's own checks (lib/evaluation/diagnostics.CheckOutcome): r_hat, ESS, ..."""

    @abstractmethod
    def summary(self) -> pd.DataFrame:
        """One row per scalar parameter: mean, sd, p5, p95, ess_bulk, r_hat."""

    @abstractmethod
    def plots(self) -> dict[str, tuple[bytes, str]]:
        """The model's own plots as PNG bytes with alt text, keyed by metadata name."""

    @abstractmethod
    def posterior_means(self) -> dict[str, float]:
        """Posterior means of the scalars and of each element of vector parameters (name_i)."""

    @abstractmethod
    def inference_data(self):
        """The posterior as ArviZ InferenceData, with what :func:`load_fitted` needs in its attrs."""

    def _memo(self, name: str, make):
        """``make()``, computed once per fitted posterior (its draws never change after the
        fit): the posterior step asks for the summary twice, for the sampler's checks and for
        the asset's metadata, and ArviZ's r_hat and ESS are most of its cost. Kept in the
        instance's ``__dict__``, so that it is pickled with it; a posterior pickled before
        this existed simply computes it again."""
        memo = self.__dict__.setdefault("_memo_values", {})
        if name not in memo:
            memo[name] = make()
        return memo[name]

    #: the posterior step forecasts every row of the split right after judging (while the
    #: rows' encoding and readings that judging prepared are still at hand) and hands them to
    #: the prediction CSV's step, which would otherwise prepare them again: for models whose
    #: per-row preparation is the cost (the forecast model: 5 s of 2.2M rows at full scale)
    predicts_every_row_when_judged: bool = False

    #: columns ``racedayai-bayes predict`` needs in its input CSV for this model
    predict_columns: tuple[str, ...] = ()

    def predict_rows(self, frame: pd.DataFrame, *, draws: int | None = None, seed: int | None = None) -> Prediction:
        """Forecasts of standalone rows (``racedayai-bayes predict``): by default, :meth:`predict`."""
        return self.predict(frame)

    def artifact_tables(self, split, seasons: pd.DataFrame) -> dict[str, pd.DataFrame]:
        """Side tables that the artifact needs to forecast without the pipeline (name -> table),
        written beside it as ``<artifact>.<name>.parquet``. None by default."""
        return {}

    def attach_tables(self, tables: dict[str, pd.DataFrame]) -> None:
        """Give a model rebuilt from an artifact its side tables back."""

    def log_density(self, frame: pd.DataFrame, rows: np.ndarray | None = None) -> np.ndarray:
        """log p(total_sec) in seconds of ``frame``'s rows at ``rows``."""
        return self.predict(frame, rows, log_density=True).log_density

    @property
    def settings(self) -> dict:
        return self.info.get("settings", {})


class Model(ABC):
    """A model specification: fits one distance's training rows."""

    name: str
    asof: bool

    @abstractmethod
    def fit(self, train: pd.DataFrame, distance: str, progress: ProgressFn = None) -> FittedModel:
        """Fit the distance's training rows (never any held-out row)."""


@dataclass
class ModelEntry:
    build: Callable[..., Model]  # settings dict -> Model
    load: Callable[..., FittedModel]  # (InferenceData, attrs) -> FittedModel
    description: str
    asof: bool
    sampler_checks: tuple[str, ...]  # names of the CheckOutcomes diagnostics() returns
    # True when artifact_tables() reads the per-(athlete, season) table: only then does the
    # pipeline hand it to the model's step (it is hundreds of MB at full scale)
    needs_seasons: bool = False
    # True when its fitted model forecasts a start list (``forecast_rows``: each athlete's
    # history from the artifact's own tables): race-day forecasts need this of the published model
    forecasts_start_lists: bool = False


# where each model's entry lives: imported only when that model is needed (the seed models'
# modules import JAX, which a forecast from the command line never needs)
_ENTRIES = {
    "seed_profile": ("racedayai_bayes.lib.models.seed.fit", "PROFILE_ENTRY"),
    "seed_asof": ("racedayai_bayes.lib.models.seed.fit", "ASOF_ENTRY"),
    "forecast": ("racedayai_bayes.lib.models.forecast.fit", "ENTRY"),
}
MODEL_NAMES = tuple(_ENTRIES)


def entry(name: str) -> ModelEntry:
    """One model's entry, importing that model's module only."""
    import importlib

    module, attr = _ENTRIES[name]
    return getattr(importlib.import_module(module), attr)


def registry() -> dict[str, ModelEntry]:
    """Every model the pipeline fits, by name, in the order they are shown."""
    return {name: entry(name) for name in _ENTRIES}


def load_fitted(idata, attrs: dict, tables: dict[str, pd.DataFrame] | None = None) -> FittedModel:
    """Rebuild a fitted model from an artifact's InferenceData, attributes and side tables."""
    name = str(attrs.get("racedayai_model", "seed_profile"))  # artifacts before the models: the seed's
    if name not in _ENTRIES:
        raise ValueError(f"unknown model {name!r} in the artifact; expected one of {', '.join(_ENTRIES)}")
    model = entry(name).load(idata, attrs)
    if tables:
        model.attach_tables(tables)
    return model
