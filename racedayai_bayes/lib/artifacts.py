"""Posterior artifacts: one ArviZ InferenceData NetCDF file per refit of a distance.

Layout under the output folder::

    posterior/<distance>/<refit timestamp>.nc   one file per refit (UTC, e.g. 20261125T030012.481Z.nc)
    posterior/<distance>/latest                 the file name of the last published refit

Every refit is saved, one whose blocking checks failed included (people need to look at
it). ``latest`` moves only when a prediction CSV made from the refit has been written
(:func:`publish_artifact`, called by the ``bayesian_predictions`` asset): it always names
the posterior the current CSV came from. An artifact alone reproduces those predictions
(``racedayai-bayes predict``): it holds the draws in full precision, the encodings and
standardisation constants, and the seed and number of draws of the predictive intervals.

Groups: ``posterior`` (group effects carry their labels as coordinates), ``sample_stats``
(divergences), ``observed_data`` (``total_sec`` of the fitted rows and
``total_sec_holdout`` of the evaluated held-out rows), ``posterior_predictive``
(``total_sec_holdout``: simulated finish times of those rows) and ``constant_data`` (their
covariates). The attributes hold JSON: encoding, settings, holdout split, metrics, checks.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import warnings
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd

from .encoding import Encoding, encode
from .inference import Draws
from .io import OutputWriteError, as_path, atomic_open, atomic_path

POSTERIOR_DIR = "posterior"
LATEST = "latest"
KEEP_ARTIFACTS = 104  # two years of weekly refits per distance; `latest` is never removed
ARTIFACT_DRAWS_PER_CHAIN = 100  # posterior predictive draws stored per chain and held-out row
ARTIFACT_HOLDOUT_ROWS = 10_000  # held-out rows whose predictive draws are stored
_GROUP_DIMS = {"mu_gender": "gender", "mu_age": "age_group", "mu_cluster": "cluster"}
_HOLDOUT_COLUMNS = ("athlete_hash", "gender", "age_group", "event_year", "pb_total_sec", "total_races", "cluster_id")


class ArtifactError(ValueError):
    """A posterior artifact is missing or is not one this package wrote."""


@dataclass
class Artifact:
    """What a stored refit needs to predict: its draws, encoding and interval settings."""

    path: Path
    distance: str
    draws: Draws
    encoding: Encoding
    interval_draws: int
    prediction_seed: int
    attrs: dict


def artifact_dir(output_dir, distance: str):
    return as_path(output_dir) / POSTERIOR_DIR / str(distance)


def refit_timestamp(now: datetime | None = None) -> str:
    now = (now or datetime.now(timezone.utc)).astimezone(timezone.utc)
    return now.strftime("%Y%m%dT%H%M%S.") + f"{now.microsecond // 1000:03d}Z"


def refit_inference_data(post, *, draws_per_chain: int = ARTIFACT_DRAWS_PER_CHAIN, holdout_rows: int = ARTIFACT_HOLDOUT_ROWS):
    """The refit as an ArviZ InferenceData (see the module docstring for its groups)."""
    import arviz as az

    from .predict import predictive_draws

    enc: Encoding = post.encoding
    coords = {
        "gender": list(enc.gender_map),
        "age_group": list(enc.age_levels),
        "cluster": [int(c) for c in enc.cluster_levels],
    }
    dims = {site: [dim] for site, dim in _GROUP_DIMS.items()}
    observed = {"total_sec": np.asarray(post.fit_observed, dtype=np.float32)}
    dims["total_sec"] = ["fit_row"]
    groups: dict = {}
    if post.holdout_rows is not None and len(post.holdout_rows):
        rows = post.holdout_rows.iloc[:holdout_rows]
        sims = predictive_draws(
            post.draws, enc, encode(rows, enc), draws_per_chain=draws_per_chain, seed=int(post.settings["seed"]) + 2
        )
        observed["total_sec_holdout"] = rows["total_sec"].to_numpy(dtype=float)
        groups["posterior_predictive"] = {"total_sec_holdout": sims}
        groups["constant_data"] = {c: _netcdf_column(rows[c]) for c in _HOLDOUT_COLUMNS if c in rows}
        dims["total_sec_holdout"] = ["holdout_row"]
        dims.update({c: ["holdout_row"] for c in groups["constant_data"]})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        return az.from_dict(
            posterior=post.draws.samples,
            sample_stats={"diverging": post.draws.diverging},
            observed_data=observed,
            coords=coords,
            dims=dims,
            attrs=_attrs(post),
            **groups,
        )


def _netcdf_column(col: pd.Series) -> np.ndarray:
    """A column as an array NetCDF can store: text with '' for missing, numbers with NaN."""
    if pd.api.types.is_numeric_dtype(col) and not pd.api.types.is_bool_dtype(col):
        return col.astype("float64").to_numpy(na_value=np.nan)
    return col.astype("string").fillna("").to_numpy(dtype=object).astype(str)


def _attrs(post) -> dict:
    def evaluation(ev):
        return None if ev is None else {"label": ev.label, **ev.metrics}

    settings = dict(post.settings)
    return {
        "racedayai_distance": post.distance,
        "racedayai_engine": post.draws.engine,
        "racedayai_created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "racedayai_encoding": post.encoding.to_json(),
        "racedayai_settings": json.dumps(settings),
        "racedayai_prediction_seed": post.prediction_seed,
        "racedayai_interval_draws": post.interval_draws,
        "racedayai_split": json.dumps(post.split),
        "racedayai_in_sample": json.dumps(evaluation(post.in_sample)),
        "racedayai_holdout": json.dumps(evaluation(post.holdout)),
        "racedayai_checks": json.dumps([asdict(c) for c in post.checks], default=float),
        "racedayai_failed_checks": json.dumps(post.failed_checks),
        "racedayai_drift": json.dumps(post.drift),
        "racedayai_rows_fitted": int(post.rows_fitted),
        "racedayai_rows_available": int(post.rows_available),
    }


def write_artifact(post, output_dir, *, timestamp: str | None = None) -> Path:
    """Save ``post`` as ``posterior/<distance>/<timestamp>.nc``, atomically; return its path.

    ``latest`` is not moved here: see :func:`publish_artifact`. Any failure (disk full, an
    unwritable folder, an HDF5 error) is an :class:`OutputWriteError` and leaves nothing.
    """
    folder = artifact_dir(output_dir, post.distance)
    name = f"{timestamp or refit_timestamp()}.nc"
    path = folder / name
    idata = refit_inference_data(post)
    # HDF5 takes its own lock on the file it creates, which collides with the lock that
    # atomic_path holds on its temporary file: write in a scratch folder, then copy
    with tempfile.TemporaryDirectory(prefix="racedayai-artifact-") as scratch:
        local = Path(scratch) / name
        try:
            idata.to_netcdf(str(local), engine="h5netcdf")
        except (OSError, ValueError, RuntimeError) as exc:
            raise OutputWriteError(f"could not write {path}: {exc}; the previous file is unchanged") from exc
        with atomic_path(path) as tmp:
            shutil.copyfile(local, tmp)
    return path


def publish_artifact(path, keep: int = KEEP_ARTIFACTS) -> list:
    """Point ``latest`` at the artifact ``path`` (atomically), then prune old artifacts.

    Called once a prediction CSV made from that refit is written. Pruning keeps the newest
    ``keep`` artifacts and never the latest; it is best effort (a file it cannot remove is
    left for the next refit). Returns the removed paths.
    """
    path = as_path(path)
    with atomic_open(path.parent / LATEST, "w") as fh:
        fh.write(path.name + "\n")
    try:
        return prune_artifacts(path.parent, keep)
    except OSError:
        return []


def latest_artifact(output_dir, distance: str) -> Path | None:
    """The last published artifact of ``distance``, or None if there is none yet."""
    pointer = artifact_dir(output_dir, distance) / LATEST
    if not pointer.exists():
        return None
    path = pointer.parent / pointer.read_text().strip()
    return path if path.exists() else None


def resolve_artifact(location) -> Path:
    """A .nc file as given, or the latest artifact of a distance folder."""
    path = as_path(location)
    if path.is_dir():
        pointer = path / LATEST
        if not pointer.exists():
            raise ArtifactError(f"{path}: no '{LATEST}' pointer; no refit of this distance has been published")
        path = path / pointer.read_text().strip()
    if not path.exists():
        raise ArtifactError(f"{path}: posterior artifact not found")
    return path


def load_artifact(location) -> Artifact:
    """Read an artifact written by :func:`write_artifact` (a file, or a distance folder)."""
    import arviz as az

    path = resolve_artifact(location)
    with tempfile.TemporaryDirectory(prefix="racedayai-artifact-") as scratch:
        local = path
        try:
            if not isinstance(path, Path):
                local = Path(scratch) / path.name  # an object-store artifact: read a local copy
                local.write_bytes(path.read_bytes())
            idata = az.from_netcdf(str(local))
            idata.load()  # read everything now: the scratch copy goes away
        except Exception as exc:  # h5py, xarray and fsspec raise many types for a bad or unreachable file
            raise ArtifactError(f"{path}: not a readable NetCDF posterior artifact ({exc})") from exc
    attrs = {**dict(idata.posterior.attrs), **dict(getattr(idata, "attrs", {}) or {})}
    if "racedayai_encoding" not in attrs or "sample_stats" not in idata.groups():
        raise ArtifactError(f"{path}: not a racedayai-bayes posterior artifact (no encoding attribute)")
    samples = {name: np.asarray(idata.posterior[name].values) for name in idata.posterior.data_vars}
    diverging = np.asarray(idata.sample_stats["diverging"].values, dtype=bool)
    return Artifact(
        path=path,
        distance=str(attrs["racedayai_distance"]),
        draws=Draws(samples=samples, diverging=diverging, engine=str(attrs.get("racedayai_engine", "unknown"))),
        encoding=Encoding.from_json(attrs["racedayai_encoding"]),
        interval_draws=int(attrs["racedayai_interval_draws"]),
        prediction_seed=int(attrs["racedayai_prediction_seed"]),
        attrs=attrs,
    )


def prune_artifacts(folder, keep: int = KEEP_ARTIFACTS) -> list:
    """Remove all but the newest ``keep`` artifacts of a distance folder; never the latest."""
    if keep <= 0 or not folder.exists():
        return []
    pointer = folder / LATEST
    latest = pointer.read_text().strip() if pointer.exists() else None
    files = sorted((p for p in folder.iterdir() if p.name.endswith(".nc") and not p.name.startswith(".")), key=lambda p: p.name)
    removed = []
    for old in files[:-keep]:
        if old.name != latest:
            old.unlink()
            removed.append(old)
    return removed
