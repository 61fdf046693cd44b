"""The output tables: prediction CSVs and posterior-means CSVs, as the data contract lays them out."""

from __future__ import annotations

import numpy as np
import pandas as pd

from racedayai_bayes.lib.data.frame import MODEL_DISTANCES
from racedayai_bayes.lib.models.base import INTERVAL_COLUMNS, PREDICTION_COLUMNS, Prediction  # noqa: F401 (re-exported)


# After the contract's columns and the quantiles (lib/models/base.py); new columns are only appended.
APPENDED_COLUMNS = ("model", "event_name", "held_out")


def prediction_table(rows: pd.DataFrame, pred: Prediction, model: str, held_out: np.ndarray | None = None) -> pd.DataFrame:
    """bayesian_predictions_<distance>.csv: the contract's columns, the predictive quantiles,
    then which model made the forecast, the race's event_name and whether it was held out."""
    # a new frame of the rows' own columns (a list of columns is a new frame, which pandas
    # copies before writing to; the new columns are its own): a copy of every column first
    # was 2.2M rows of text and numbers in fresh memory for the full-scale 70.3 CSV
    out = rows[["athlete_hash", "event_distance", "event_year", "total_sec"]].reset_index(drop=True)
    out["bayes_pred"] = pred.pred
    out["bayes_std"] = pred.std
    out["bayes_p05"], out["bayes_p50"], out["bayes_p95"] = pred.p05, pred.p50, pred.p95
    out["model"] = model
    # the column's own (Arrow) array: ``to_numpy()`` made a Python string per row and a new
    # array of them again (0.27 s of a full-scale 70.3 table)
    out["event_name"] = rows["event_name"].reset_index(drop=True) if "event_name" in rows else pd.NA
    out["held_out"] = np.zeros(len(rows), dtype=bool) if held_out is None else np.asarray(held_out, dtype=bool)
    return out


def means_table(
    rows: dict[str, dict], previous: pd.DataFrame | None = None, keep: tuple[str, ...] = ()
) -> pd.DataFrame:
    """The table of bayesian_posterior_means.csv: one row per distance, in ``MODEL_DISTANCES`` order.

    ``rows`` maps a distance to its fresh row (``{"distance": d, **model.posterior_means()}``); for each distance
    in ``keep`` the row of ``previous`` (the file as last written) is carried over unchanged,
    so a distance whose new posterior is blocked keeps its last good values.
    """
    carried = {}
    if previous is not None and len(previous):
        for d in keep:
            match = previous.loc[previous["distance"].astype(str) == d]
            if len(match):
                carried[d] = {k: v for k, v in match.iloc[0].items() if not pd.isna(v)}
    table = {**carried, **rows}
    order = [d for d in MODEL_DISTANCES if d in table]
    return pd.DataFrame([table[d] for d in order])

