"""Judge a fitted model on the split it was fitted on: held-out scores, checks, drift.

This is the one place where the harness meets a model: it calls the model interface
(lib/models/base.py) and knows none of the model's parameters. Every model of a distance is
judged on the same held-out rows, with the same scores (lib/evaluation/scores.py) and the
same checks:

- the model's own sampler checks (``diagnostics()``: r_hat, ESS, and divergences or the
  proposal's k-hat);
- ``coverage``: 90% interval coverage of the held-out rows, with a clustered allowance;
- ``coverage_by_decile``: the same per decile of the predicted time (WARN);
- ``drift``: how far the predictions moved from the model's previous refit (WARN).

Failures at ERROR level make a model ineligible for publishing; they never stop the other
models from being judged and compared.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from racedayai_bayes.lib.data.split import Split
from racedayai_bayes.lib.evaluation import diagnostics as dx
from racedayai_bayes.lib.evaluation.scores import Scores, edition_labels, score
from racedayai_bayes.lib.models.base import FittedModel, Prediction

EVAL_RANDOM_STATE = 42


@dataclass(frozen=True)
class JudgeSettings:
    eval_rows: int = 50_000  # in-sample rows evaluated (random_state 42), as the notebook does
    drift_threshold_sec: float = dx.DRIFT_THRESHOLD_SEC


@dataclass
class Evaluation:
    """A model's forecasts of some rows of the split, and their scores."""

    label: str
    positions: np.ndarray  # rows of split.rows
    observed: np.ndarray
    prediction: Prediction
    scores: Scores
    clusters: np.ndarray  # each row's edition (lib/evaluation/scores.edition_labels): the SEs' clusters


@dataclass
class Judged:
    """One model's posterior for one distance, judged."""

    model: FittedModel
    split: dict
    in_sample: Evaluation
    holdout: Evaluation | None
    checks: list
    drift: dict = field(default_factory=dict)
    artifact: str | None = None  # set once the artifact is written
    timings: dict = field(default_factory=dict)
    # the forecasts of every row of the split (FittedModel.predicts_every_row_when_judged),
    # and the fingerprint of the rows they forecast
    every_row: Prediction | None = None
    every_row_of: str | None = None

    def keep_every_row(self, rows: pd.DataFrame) -> None:
        """Forecast every row of ``rows`` (the split's) now, and keep the forecasts."""
        self.every_row = self.model.predict(rows)
        self.every_row_of = rows_fingerprint(rows)

    def predict_every_row(self, rows: pd.DataFrame, progress=None) -> Prediction:
        """The model's forecasts of every row of ``rows``: those the posterior step made, if
        they are of these very rows (the same call, so the same numbers), else made now."""
        if self.every_row is not None and self.every_row_of == rows_fingerprint(rows):
            return self.every_row
        return self.model.predict(rows, progress=progress)

    @property
    def name(self) -> str:
        return self.model.name

    @property
    def distance(self) -> str:
        return self.model.distance

    @property
    def judged(self) -> Evaluation:
        """The evaluation the checks and the comparison use: held-out rows when there are any."""
        return self.holdout if self.holdout is not None else self.in_sample

    @property
    def failed_checks(self) -> list[str]:
        """Checks failed at ERROR level: the model may not be published."""
        return [c.name for c in self.checks if c.level == dx.ERROR]

    @property
    def passed(self) -> bool:
        return not self.failed_checks

    def check(self, name: str) -> dx.CheckOutcome:
        return next(c for c in self.checks if c.name == name)


def rows_fingerprint(rows: pd.DataFrame) -> str:
    """A digest of every column of ``rows`` (names, types, values, in row order): equal for
    the same rows, whichever process loaded them. A forecast reads the athlete, course,
    season, age group and gender, and the as-of history columns, which come from races
    outside these rows: all are in the digest. Arrow-backed columns are hashed from their
    buffers, without a copy. The digest is xxh3's 128 bits: a check that the rows are the
    same, not a defence against forged rows (the 2.35M rows of 20 columns of a full-scale
    70.3 split in 0.11 s, against 0.68 s with hashlib's blake2b)."""
    import xxhash

    h = xxhash.xxh3_128()
    h.update(f"{len(rows)}".encode())
    for column in rows.columns:
        values = rows[column].array
        h.update(f"|{column}:{rows[column].dtype}".encode())
        chunked = getattr(values, "_pa_array", None)
        if chunked is not None:  # Arrow-backed: its buffers, with each chunk's slice and type
            for chunk in chunked.chunks:
                h.update(f"{chunk.type}:{chunk.offset}:{len(chunk)}".encode())
                for buf in chunk.buffers():
                    h.update(b"-" if buf is None else f"{buf.size}".encode())
                    if buf is not None:
                        h.update(memoryview(buf))
                dictionary = getattr(chunk, "dictionary", None)
                if dictionary is not None:
                    h.update(str(dictionary.to_pylist()).encode())
        elif isinstance(rows[column].dtype, np.dtype) and rows[column].dtype != object:
            h.update(np.ascontiguousarray(rows[column].to_numpy()).tobytes())
        elif isinstance(values, pd.arrays.IntegerArray | pd.arrays.FloatingArray | pd.arrays.BooleanArray):
            h.update(np.ascontiguousarray(values.to_numpy(dtype=values.dtype.numpy_dtype, na_value=0)).tobytes())
            h.update(np.ascontiguousarray(values.isna()).tobytes())
        else:  # masked numbers, objects, categories: pandas' own hash of each value
            h.update(pd.util.hash_pandas_object(rows[column], index=False).to_numpy().tobytes())
    return h.hexdigest()


def _evaluate(model: FittedModel, split: Split, positions: np.ndarray, label: str, groups) -> Evaluation:
    rows = split.rows
    pred = model.predict(rows, positions, log_density=True)
    observed = rows["total_sec"].to_numpy(dtype=np.float64)[positions]
    clusters = edition_labels(rows, positions)
    scores = score(observed, pred, clusters, {g: m[positions] for g, m in groups.items()})
    return Evaluation(label, positions, observed, pred, scores, clusters)


def in_sample_positions(split: Split, n: int) -> np.ndarray:
    """The notebook's evaluation rows: ``sample(n, random_state=42)`` of the fitted rows."""
    train = split.train_positions
    if n <= 0 or n >= len(train):
        return train
    # the same rows as sampling the fitted rows' frame (pandas draws by length only), without copying it
    return np.sort(pd.Series(train).sample(n, random_state=EVAL_RANDOM_STATE).to_numpy())


def judge(model: FittedModel, split: Split, settings: JudgeSettings = JudgeSettings(),
          previous: FittedModel | None = None) -> Judged:
    """Score ``model`` on the split's held-out rows (and the notebook's in-sample rows) and check it."""
    t0 = time.perf_counter()
    rows = split.rows
    groups = split.groups  # made once per split (lib/data/split.py), shared by every model's judge
    in_sample = _evaluate(model, split, in_sample_positions(split, settings.eval_rows), "in-sample", groups)
    holdout = None
    if split.held_out.any():
        holdout = _evaluate(model, split, split.holdout_positions, "held-out", groups)
    judged = holdout or in_sample
    s = judged.scores
    checks = [
        *model.diagnostics(),
        dx.check_coverage(s.coverage_90, s.coverage_se, rows=s.rows, editions=s.editions, label=judged.label),
        dx.check_coverage_by_decile(s.deciles),
    ]
    drift = {}
    if previous is not None:
        drift = prediction_shift(previous.predict(rows, judged.positions).pred, judged.prediction.pred)
    checks.append(dx.check_drift(drift or None, settings.drift_threshold_sec))
    return Judged(model=model, split=split.as_dict(), in_sample=in_sample, holdout=holdout, checks=checks,
                  drift=drift, timings={"judge_s": time.perf_counter() - t0})


def prediction_shift(previous: np.ndarray, current: np.ndarray) -> dict:
    """How far this refit's point predictions moved from the previous refit's, in seconds."""
    shift = np.asarray(current) - np.asarray(previous)
    return {
        "mean_abs_shift_sec": float(np.mean(np.abs(shift))),
        "p99_abs_shift_sec": float(np.percentile(np.abs(shift), 99)),
        "mean_shift_sec": float(np.mean(shift)),
        "rows": int(len(shift)),
    }
