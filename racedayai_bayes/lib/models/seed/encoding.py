"""Per-distance group encodings and standardisation (the seed's section 3).

An :class:`Encoding` is fitted once on the rows a posterior is fitted on and stored with the
posterior, so that predictions use exactly the same maps and constants.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field

import numpy as np
import pandas as pd

from racedayai_bayes.lib.data.contracts import GENDER_MAP
from racedayai_bayes.lib.errors import FitError

N_GENDER = 2
NO_CLUSTER = -1
UNSEEN = -1  # index given to a category the posterior never saw (see predict.py)


@dataclass(frozen=True)
class Encoding:
    """Maps and constants that turn a model frame into model inputs for one distance."""

    distance: str
    age_levels: tuple[str, ...]
    cluster_levels: tuple[int, ...]
    y_mean: float
    y_std: float
    exp_mean: float
    exp_std: float
    default_cluster_idx: int
    gender_map: dict[str, int] = field(default_factory=lambda: dict(GENDER_MAP))

    @property
    def n_gender(self) -> int:
        return N_GENDER

    @property
    def n_age(self) -> int:
        return len(self.age_levels)

    @property
    def n_cluster(self) -> int:
        return len(self.cluster_levels)

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> Encoding:
        raw = json.loads(text)
        raw["age_levels"] = tuple(raw["age_levels"])
        raw["cluster_levels"] = tuple(int(c) for c in raw["cluster_levels"])
        return cls(**raw)


@dataclass(frozen=True)
class Design:
    """Model inputs for a set of rows: integer group indices and standardised covariates.

    ``y`` is the standardised target, or None when the rows have no observed time.
    Group indices equal ``UNSEEN`` (-1) for categories the encoding does not know.
    """

    gender_idx: np.ndarray
    age_idx: np.ndarray
    cluster_idx: np.ndarray
    fitness: np.ndarray
    experience: np.ndarray
    y: np.ndarray | None
    n_gender: int
    n_age: int
    n_cluster: int

    def __len__(self) -> int:
        return len(self.fitness)

    @property
    def has_unseen(self) -> bool:
        return bool((self.age_idx < 0).any() or (self.cluster_idx < 0).any())

    def model_kwargs(self, with_y: bool = True) -> dict:
        """Keyword arguments for :func:`racedayai_bayes.lib.models.seed.model.finish_time_model`."""
        kwargs = dict(
            gender_idx=self.gender_idx,
            age_idx=self.age_idx,
            cluster_idx=self.cluster_idx,
            fitness=self.fitness,
            experience=self.experience,
            n_gender=self.n_gender,
            n_age=self.n_age,
            n_cluster=self.n_cluster,
        )
        if with_y:
            kwargs["y"] = self.y
        return kwargs


def _cluster_ids(frame: pd.DataFrame) -> np.ndarray:
    return frame["cluster_id"].fillna(NO_CLUSTER).astype("int64").to_numpy()


def _experience_raw(frame: pd.DataFrame) -> np.ndarray:
    return np.log1p(frame["total_races"].astype("float64").fillna(0.0).to_numpy())


def fit_encoding(frame: pd.DataFrame, distance: str) -> Encoding:
    """Learn the seed's encodings from the rows a model is fitted on.

    Age groups and clusters are indexed in sorted order; rows without a cluster get cluster
    -1. The target is standardised with its mean and sample sd (ddof=1), and experience is
    log1p(total_races) standardised the same way (plus 1e-8, as in the seed).
    """
    if len(frame) < 2:
        raise FitError(
            f"distance {distance}: {len(frame)} modelled rows; at least 2 are needed to fit"
        )
    y = frame["total_sec"].astype("float64")
    y_std = float(y.std())
    if not np.isfinite(y_std) or y_std <= 0:
        raise FitError(
            f"distance {distance}: total_sec has no spread (sd={y_std}) over {len(frame):,} rows; cannot fit"
        )
    age_levels = tuple(sorted(frame["age_group"].dropna().astype(str).unique()))
    if not age_levels:
        raise FitError(f"distance {distance}: none of the {len(frame):,} rows has an age_group")
    clusters = _cluster_ids(frame)
    cluster_levels, counts = np.unique(clusters, return_counts=True)
    experience = _experience_raw(frame)
    return Encoding(
        distance=str(distance),
        age_levels=age_levels,
        cluster_levels=tuple(int(c) for c in cluster_levels),
        y_mean=float(y.mean()),
        y_std=y_std,
        exp_mean=float(experience.mean()),
        exp_std=float(experience.std(ddof=1)) + 1e-8,
        # pandas' mode() returns the smallest of tied values, as np.argmax over sorted levels
        default_cluster_idx=int(np.argmax(counts)),
    )


def _lookup(values: pd.Series, mapping: dict, *, missing: int) -> np.ndarray:
    """``values.map(mapping)`` as int64, ``missing`` where a value is missing or not a key.

    Text columns go through Arrow's hash lookup (lib/data/history.index_in): on 2.2M rows
    about a third of the time of ``Series.map``, which makes a Python string of every value
    first (measured 2026-12-05). Other columns are mapped by pandas.
    """
    if isinstance(values.dtype, pd.StringDtype) and all(isinstance(k, str) for k in mapping):
        from racedayai_bayes.lib.data.history import index_in

        pos = index_in(values, pd.Index(list(mapping), dtype="string"))
        codes = np.r_[np.asarray(list(mapping.values()), dtype=np.int64), missing]
        return codes[np.where(pos >= 0, pos, len(mapping))]
    return np.array(values.map(mapping).astype("Float64").fillna(missing).astype("int64").to_numpy(), dtype=np.int64)


def encode(frame: pd.DataFrame, enc: Encoding, *, fitting: bool = False) -> Design:
    """Turn model-frame rows into a :class:`Design` using a fitted encoding.

    Gender: 'M'->0, 'F'->1, anything else (empty) -> 0, as in the seed. With ``fitting=True``
    a missing age group maps to index 0 as in the seed; otherwise a missing or unknown age
    group, and an unknown cluster, get ``UNSEEN`` so that predictions can treat them as new
    groups instead of silently borrowing index 0.
    """
    gender_idx = _lookup(frame["gender"], enc.gender_map, missing=0)
    age = frame["age_group"].astype("string")
    age_idx = _lookup(age, {a: i for i, a in enumerate(enc.age_levels)}, missing=-2)  # -2: missing or not a level
    if fitting and (age.notna().to_numpy(dtype=bool) & (age_idx == -2)).any():
        raise ValueError("age groups outside the encoding in fitting rows")
    age_idx[age_idx == -2] = 0 if fitting else UNSEEN
    cluster_lookup = {c: i for i, c in enumerate(enc.cluster_levels)}
    cluster_idx = (
        pd.Series(_cluster_ids(frame)).map(cluster_lookup).fillna(UNSEEN).astype("int64").to_numpy()
    )
    pb = frame["pb_total_sec"].astype("float64").fillna(enc.y_mean).to_numpy()
    fitness = (pb - enc.y_mean) / enc.y_std
    experience = (_experience_raw(frame) - enc.exp_mean) / enc.exp_std
    y = None
    if "total_sec" in frame.columns and frame["total_sec"].notna().all():
        y = (frame["total_sec"].astype("float64").to_numpy() - enc.y_mean) / enc.y_std
    return Design(
        gender_idx=gender_idx,
        age_idx=age_idx,
        cluster_idx=cluster_idx,
        fitness=fitness.astype("float64"),
        experience=experience.astype("float64"),
        y=None if y is None else y.astype("float64"),
        n_gender=enc.n_gender,
        n_age=enc.n_age,
        n_cluster=enc.n_cluster,
    )
