"""Posterior artifacts: one ArviZ InferenceData NetCDF file per refit of a model and distance.

Layout under the output folder::

    posterior/<model>/<distance>/<refit timestamp>.nc   one file per refit of a model (UTC)
    posterior/<distance>/latest                         the published artifact: the one behind
                                                        bayesian_predictions_<distance>.csv

``latest`` holds the published artifact's path relative to ``posterior/`` (for example
``forecast/70.3/20261202T030012.481Z.nc``); a bare file name, as written before there were
several models, means a file beside the pointer. Every refit of every model is saved, one
whose checks failed included (people need to look at it). ``latest`` moves only when a
prediction CSV made from the artifact has been written (:func:`publish_artifact`). Pruning
keeps the newest :data:`KEEP_ARTIFACTS` of each model and never removes a published one.

An artifact alone is enough to predict (``racedayai-bayes predict``): the model rebuilds
itself from its InferenceData (lib/models/base.py, ``load_fitted``). Groups: ``posterior``
and ``sample_stats`` (the model's), ``observed_data`` (``total_sec`` of the judged rows),
``constant_data`` (those rows' identity and the model's forecasts of them). The attributes
hold JSON: the model's constants, the split, the scores, the checks and the drift.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import threading
import warnings
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd

from racedayai_bayes.lib.outputs.io import OutputWriteError, as_path, atomic_open, atomic_path, left_as_it_was

POSTERIOR_DIR = "posterior"
LATEST = "latest"
KEEP_ARTIFACTS = 104  # two years of weekly refits per model and distance
_ROW_COLUMNS = ("athlete_hash", "gender", "age_group", "event_name", "event_year")


class ArtifactError(ValueError):
    """A posterior artifact is missing or is not one this package wrote."""


@dataclass
class Artifact:
    """A stored refit: the fitted model rebuilt from it, and its attributes."""

    path: Path
    distance: str
    model: object  # FittedModel
    attrs: dict

    @property
    def model_name(self) -> str:
        return self.model.name


BACKTESTS_DIR = "backtests"


def refit_output_dir(output_dir, split):
    """Where a refit on ``split`` (a :class:`~racedayai_bayes.lib.data.split.Split` or its
    ``as_dict()``, which a judged posterior keeps) writes its CSVs, artifacts and ``latest``
    pointers: ``output_dir`` itself, or ``backtests/<season>/`` beneath it for a backtest (a
    split made with an explicit ``holdout_season``; the weekly refit leaves it unset).

    A backtest's CSV lacks the dropped seasons and its posterior knows only the seasons
    before the held-out one: it must never replace what the weekly refit published, nor be
    the previous refit that the next weekly refit's drift check and last week's published
    model are read from. In its own folder it keeps the same layout, so ``predict
    --posterior <output>/backtests/2025/posterior/70.3`` reads it like any other.
    """
    info = split.as_dict() if hasattr(split, "as_dict") else dict(split or {})
    season = info.get("backtest_season")
    return as_path(output_dir) if season is None else as_path(output_dir) / BACKTESTS_DIR / str(int(season))


def posterior_dir(output_dir):
    return as_path(output_dir) / POSTERIOR_DIR


def artifact_dir(output_dir, distance: str, model: str | None = None):
    """``posterior/<model>/<distance>`` (a model's refits), or ``posterior/<distance>`` (its ``latest``)."""
    base = posterior_dir(output_dir)
    return base / str(distance) if model is None else base / model / str(distance)


def refit_timestamp(now: datetime | None = None) -> str:
    now = (now or datetime.now(timezone.utc)).astimezone(timezone.utc)
    return now.strftime("%Y%m%dT%H%M%S.") + f"{now.microsecond // 1000:03d}Z"


# The side tables' columns are written plain, without Parquet's dictionary encoding: the
# forecast's athlete table has a distinct hash per row and measurements that rarely repeat,
# so Arrow built each column's dictionary only to drop it again (a table of 1.29M athletes
# x 25 columns, 2026-12-07: written in 0.67 s against 1.11 s, read back in 0.45 s against
# 1.00 s; 83 MB against 66 MB on disk). A table written either way reads the same.
SIDE_TABLE_DICTIONARY = False

# The NetCDF files are written and read with the netCDF-C library (the netCDF4 package), not
# h5netcdf, which makes each variable and dimension through h5py's Python layer: a demo
# artifact's 32 variables were written in 0.08-0.10 s against 0.20-0.27 s, and read back in
# 0.05-0.07 s against 0.17-0.24 s (2026-12-07); a refit writes one artifact per model and
# distance and reads each model's previous one. At full scale the writes take the same time
# either way (compressing the judged rows' columns is most of it), the reads 0.05 s against
# 0.12-0.16 s. Both make the same HDF5-based netCDF-4 files:
# an artifact written by h5netcdf (before 2026-12-07) reads back identical with netCDF-C, and
# ArviZ's own ``from_netcdf`` (h5netcdf by default) reads these.
NETCDF_ENGINE = "netcdf4"
# netCDF-C is not thread-safe, and xarray does not lock every call it makes into it: two
# threads of one process reading or writing NetCDF at once can crash the process (xarray
# issues 4100 and 9779; a review reproduced it with 4 threads, 2026-12-07). Nothing here does
# that today (every artifact is read and written by a step's or a command's main thread), but
# every NetCDF read and write of this module holds this lock, so that no caller can.
_NETCDF_LOCK = threading.Lock()

# The judged rows' text columns (athlete_hash, gender, age_group, event_name) are stored as
# compressed arrays of UTF-8 characters (a column of 12-character hashes: rows x 12 bytes,
# then zlib), not as HDF5's variable-length strings, one heap object per value. xarray reads
# them back as the same text (decoded by their ``_Encoding`` attribute), and so does ArviZ.
# A full-scale 70.3 forecast artifact (120,132 judged rows): 10.7 MB against 40.1 MB with
# variable-length strings (32.3 MB as h5netcdf wrote them), written in 0.71-0.82 s against
# 0.64-0.95 s (4 alternated repeats, 2026-12-07: within the noise).
TEXT_ENCODING = {"dtype": "S1", "zlib": True}


def _netcdf_column(col: pd.Series) -> np.ndarray:
    """A column as an array NetCDF can store: numbers with NaN; text as fixed-width UTF-8 bytes
    with '' for missing (:func:`utf8_bytes`), which refit_inference_data marks as UTF-8."""
    if pd.api.types.is_numeric_dtype(col) and not pd.api.types.is_bool_dtype(col):
        return col.astype("float64").to_numpy(na_value=np.nan)
    return utf8_bytes(col)


def utf8_bytes(col: pd.Series) -> np.ndarray:
    """The UTF-8 bytes of each value of a text column, missing values as b'', as one numpy
    array of fixed width (``S<longest>``), made from Arrow's buffers without a Python object
    per value.

    xarray writes such an array as the character array TEXT_ENCODING asks for as it is; given
    Python text it encodes each value in a Python loop first (the 120,132 judged rows' four
    text columns of a full-scale 70.3 artifact: 0.03 s here, against 0.13 s to make the text
    and 0.36 s for xarray to encode it, 2026-12-07). The bytes are the same. numpy's ``S``
    drops trailing NUL bytes, as xarray's own conversion does.
    """
    import pyarrow as pa
    import pyarrow.compute as pc

    text = pc.fill_null(_arrow_text(col).cast(pa.large_string()), "")
    text = text.combine_chunks() if isinstance(text, pa.ChunkedArray) else text
    n = len(text)
    offsets = np.frombuffer(text.buffers()[1], dtype=np.int64)[text.offset:text.offset + n + 1]
    data = text.buffers()[2]
    data = np.frombuffer(data, dtype=np.uint8) if data is not None else np.zeros(0, dtype=np.uint8)
    lengths = np.diff(offsets)
    width = max(1, int(lengths.max()) if n else 1)
    chars = np.zeros((n, width), dtype=np.uint8)
    chars[np.arange(width)[None, :] < lengths[:, None]] = data[offsets[0]:offsets[-1]]  # row by row, in order
    return chars.view(f"S{width}").reshape(n)


def _arrow_text(col: pd.Series):
    """``col``'s text as Arrow (history.arrow_strings): its own chunks when it is Arrow text
    already, else pandas' text of each value (``astype("string")``: True for a boolean, as
    before utf8_bytes)."""
    import pyarrow as pa

    from racedayai_bayes.lib.data.history import arrow_strings

    own = getattr(col.array, "_pa_array", None)  # pandas' Arrow chunks (not public API; see arrow_strings)
    kind = own.type.value_type if own is not None and pa.types.is_dictionary(own.type) else getattr(own, "type", None)
    if kind is None or not (pa.types.is_string(kind) or pa.types.is_large_string(kind)):
        col = col.astype("string")
    return arrow_strings(col)


def refit_inference_data(judged, rows: pd.DataFrame, tables: dict | None = None):
    """The model's InferenceData plus the judged rows and the harness's attributes."""
    import arviz as az

    idata = judged.model.inference_data()
    ev = judged.judged
    part = rows.iloc[ev.positions]
    constant = {c: _netcdf_column(part[c]) for c in _ROW_COLUMNS if c in part}
    pred = ev.prediction
    constant.update({"bayes_pred": pred.pred, "bayes_std": pred.std, "bayes_p05": pred.p05, "bayes_p50": pred.p50,
                     "bayes_p95": pred.p95})
    if pred.log_density is not None:
        constant["log_density"] = pred.log_density
    dims = {name: ["judged_row"] for name in [*constant, "total_sec"]}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        extra = az.from_dict(observed_data={"total_sec": ev.observed}, constant_data=constant, dims=dims)
    idata.extend(extra)
    for name in constant:
        values = idata.constant_data[name]
        if values.dtype.kind == "S":  # the rows' text, as UTF-8 bytes: see TEXT_ENCODING
            values.encoding.update(TEXT_ENCODING)
            values.attrs["_Encoding"] = "utf-8"  # what xarray sets when it encodes text itself: read back as text
    idata.posterior.attrs.update(_attrs(judged))
    idata.posterior.attrs["racedayai_side_tables"] = json.dumps(sorted(tables or {}))
    return idata


def _attrs(judged) -> dict:
    def evaluation(ev):
        return None if ev is None else {"label": ev.label, **ev.scores.as_dict()}

    return {
        "racedayai_created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "racedayai_split": json.dumps(judged.split),
        "racedayai_in_sample": json.dumps(evaluation(judged.in_sample), default=float),
        "racedayai_holdout": json.dumps(evaluation(judged.holdout), default=float),
        "racedayai_checks": json.dumps([asdict(c) for c in judged.checks], default=float),
        "racedayai_failed_checks": json.dumps(judged.failed_checks),
        "racedayai_drift": json.dumps(judged.drift),
    }


def side_path(path, name: str):
    """Where the side table ``name`` of artifact ``path`` lives: ``<stem>.<name>.parquet``."""
    return path.parent / f"{path.name[:-len('.nc')]}.{name}.parquet"


def write_artifact(judged, split, output_dir, seasons: pd.DataFrame | None = None, *, timestamp: str | None = None) -> Path:
    """Save a judged refit as ``posterior/<model>/<distance>/<timestamp>.nc``, atomically, with
    the model's side tables beside it (written first: the .nc appears last).

    ``latest`` is not moved here: see :func:`publish_artifact`. Any failure (disk full, an
    unwritable folder, an HDF5 error) is an :class:`OutputWriteError` and leaves nothing.
    """
    folder = artifact_dir(output_dir, judged.distance, judged.name)
    name = f"{timestamp or refit_timestamp()}.nc"
    path = folder / name
    rows = split.rows
    tables = judged.model.artifact_tables(split, seasons) if seasons is not None else {}
    for table_name, table in tables.items():
        target = side_path(path, table_name)
        try:
            with atomic_path(target) as tmp:
                table.to_parquet(tmp, index=False, use_dictionary=SIDE_TABLE_DICTIONARY)
        except OutputWriteError:  # atomic_path's own: it says what it left
            raise
        except (OSError, ValueError) as exc:
            raise OutputWriteError(f"could not write {target}: {exc}; {left_as_it_was(target)}") from exc
    idata = refit_inference_data(judged, rows, tables)
    # HDF5 takes its own lock on the file it creates, which collides with the lock that
    # atomic_path holds on its temporary file: write in a scratch folder, then copy
    with tempfile.TemporaryDirectory(prefix="racedayai-artifact-") as scratch:
        local = Path(scratch) / name
        try:
            with _NETCDF_LOCK:
                idata.to_netcdf(str(local), engine=NETCDF_ENGINE)
        except (OSError, ValueError, RuntimeError) as exc:
            raise OutputWriteError(f"could not write {path}: {exc}; {left_as_it_was(path)}") from exc
        with atomic_path(path) as tmp:
            shutil.copyfile(local, tmp)
    return path


def _relative(path, output_dir) -> str:
    base = str(posterior_dir(output_dir)).rstrip("/") + "/"
    text = str(path)
    if not text.startswith(base):
        raise ArtifactError(f"{path} is not under {base}")
    return text[len(base):]


def publish_artifact(path, output_dir, distance: str, keep: int = KEEP_ARTIFACTS) -> list:
    """Point ``posterior/<distance>/latest`` at the artifact ``path`` (atomically), then prune.

    Called once a prediction CSV made from that artifact is written. Pruning keeps the
    newest ``keep`` artifacts of the model and never a published one; it is best effort (a
    file it cannot remove is left for the next refit). Returns the removed paths.
    """
    path = as_path(path)
    pointer = artifact_dir(output_dir, distance) / LATEST
    with atomic_open(pointer, "w") as fh:
        fh.write(_relative(path, output_dir) + "\n")
    try:
        return prune_artifacts(path.parent, output_dir, keep)
    except OSError:
        return []


def _pointed(pointer) -> Path | None:
    """The artifact a ``latest`` pointer names (None if the pointer is absent)."""
    if not pointer.exists():
        return None
    name = pointer.read_text().strip()
    if not name:
        return None
    # a bare file name (an artifact from before the models) lives beside its pointer
    return pointer.parent / name if "/" not in name else pointer.parent.parent / name


def latest_artifact(output_dir, distance: str) -> Path | None:
    """The published artifact of ``distance``, or None if there is none yet."""
    path = _pointed(artifact_dir(output_dir, distance) / LATEST)
    return path if path is not None and path.exists() else None


def published_model(output_dir, distance: str) -> str | None:
    """The model name of the published artifact of ``distance`` (last week's choice)."""
    path = latest_artifact(output_dir, distance)
    if path is None:
        return None
    rel = _relative(path, output_dir).split("/")
    return rel[0] if len(rel) == 3 else "seed_profile"  # a bare name: the seed, before the models


def previous_artifact(output_dir, model: str, distance: str) -> Path | None:
    """The newest artifact of ``model`` and ``distance`` that passed its ERROR checks, or None.

    It is the baseline of the drift check: a refit whose chains failed is no reference for
    the next one. Only the attributes are read; an unreadable file is an ArtifactError.
    """
    folder = artifact_dir(output_dir, distance, model)
    if not folder.exists():
        return None
    files = sorted(p for p in folder.iterdir() if p.name.endswith(".nc") and not p.name.startswith("."))
    for path in reversed(files):
        if not _failed_checks(path):
            return path
    return None


def _failed_checks(path) -> list[str]:
    """The ERROR checks an artifact failed, from its attributes alone (h5py, no arrays read)."""
    import h5py

    try:
        with path.open("rb") as handle, h5py.File(handle, "r") as h5:
            attrs = h5["posterior"].attrs if "posterior" in h5 else {}
            raw = attrs.get("racedayai_failed_checks", "[]")
        return json.loads(raw.decode() if isinstance(raw, bytes) else str(raw))
    except Exception as exc:  # h5py and fsspec raise many types for a bad or unreachable file
        raise ArtifactError(f"{path}: not a readable NetCDF posterior artifact ({exc})") from exc


def resolve_artifact(location) -> Path:
    """A .nc file as given, or the published artifact of a distance folder (``posterior/<distance>``)."""
    path = as_path(location)
    if path.is_dir():
        pointer = path / LATEST
        if not pointer.exists():
            saved = sorted(p.name for p in path.iterdir() if p.name.endswith(".nc")) if isinstance(path, Path) else []
            if saved:  # a model's own folder (posterior/<model>/<distance>), or refits never published
                published = path.parent.parent / path.name
                other = (f", or the distance's folder {published} for the published one"
                         if (published / LATEST).exists() else "")
                raise ArtifactError(
                    f"{path}: {len(saved)} posterior artifacts and no '{LATEST}' pointer (none of them published "
                    f"here): pass one of its files (the newest: {path / saved[-1]}){other}")
            raise ArtifactError(f"{path}: no '{LATEST}' pointer; no refit of this distance has been published")
        path = _pointed(pointer)
    if path is None or not path.exists():
        raise ArtifactError(f"{path}: posterior artifact not found")
    return path


class _Groups:
    """The groups of an artifact that a model rebuilds itself from (``posterior`` and
    ``sample_stats``), read with xarray alone: ArviZ's import costs seconds that a forecast
    from the command line does not have. The same datasets ``arviz.from_netcdf`` gives."""

    def __init__(self, local: Path):
        import h5py
        import xarray as xr

        with h5py.File(local, "r") as h5:
            self._names = [name for name in h5.keys() if isinstance(h5[name], h5py.Group)]
        with _NETCDF_LOCK:  # see NETCDF_ENGINE
            with xr.open_dataset(local, engine=NETCDF_ENGINE) as root:  # decoded as ArviZ decodes them
                self.attrs = dict(root.attrs)
            for name in ("posterior", "sample_stats"):
                if name in self._names:
                    with xr.open_dataset(local, group=name, engine=NETCDF_ENGINE) as ds:
                        setattr(self, name, ds.load())  # read now: a scratch copy goes away

    def groups(self) -> list[str]:
        return list(self._names)


def load_artifact(location, athletes=None, *, side_tables: bool = True) -> Artifact:
    """Read an artifact written by :func:`write_artifact` (a file, or a distance folder).

    ``athletes``: only these athletes' rows of the athlete side table are needed (a start
    list's); the others are left unread. An athlete the table lacks has no history either way.
    ``side_tables=False``: read none of the side tables, for a model that will only forecast
    rows that carry their own history (the drift check's previous refit): the forecast
    model's athlete table of a full-scale 70.3 artifact took 0.8 of the 0.9 s (2026-12-04).
    """
    from racedayai_bayes.lib.models.base import load_fitted

    path = resolve_artifact(location)
    with tempfile.TemporaryDirectory(prefix="racedayai-artifact-") as scratch:
        local = path
        try:
            if not isinstance(path, Path):
                local = Path(scratch) / path.name  # an object-store artifact: read a local copy
                local.write_bytes(path.read_bytes())
            idata = _Groups(local)
        except Exception as exc:  # h5py, xarray and fsspec raise many types for a bad or unreachable file
            raise ArtifactError(f"{path}: not a readable NetCDF posterior artifact ({exc})") from exc
    if "posterior" not in idata.groups():
        raise ArtifactError(f"{path}: not a racedayai-bayes posterior artifact (no encoding attribute)")
    attrs = {**dict(idata.posterior.attrs), **dict(idata.attrs)}
    if "racedayai_encoding" not in attrs or "sample_stats" not in idata.groups():
        raise ArtifactError(f"{path}: not a racedayai-bayes posterior artifact (no encoding attribute)")
    tables = {}
    for name in json.loads(attrs.get("racedayai_side_tables", "[]")) if side_tables else []:
        table_path = side_path(path, name)
        try:
            filters = None
            if name == "athletes" and athletes is not None:
                wanted = sorted({str(a) for a in athletes if isinstance(a, str) and a})
                filters = [("athlete_hash", "in", wanted or [""])]
            tables[name] = pd.read_parquet(table_path if isinstance(table_path, Path) else str(table_path),
                                           filters=filters)
        except Exception as exc:  # pyarrow and fsspec raise many types for a missing or bad file
            raise ArtifactError(f"{path}: its side table {table_path} cannot be read ({exc})") from exc
    try:
        model = load_fitted(idata, attrs, tables)
    except (KeyError, ValueError) as exc:
        raise ArtifactError(f"{path}: cannot rebuild its model ({exc})") from exc
    return Artifact(path=path, distance=str(attrs["racedayai_distance"]), model=model, attrs=attrs)


def _published_names(output_dir) -> set[str]:
    """Relative paths of every published artifact (every distance's ``latest``)."""
    base = posterior_dir(output_dir)
    names = set()
    if base.exists():
        for sub in base.iterdir():
            pointer = sub / LATEST
            if pointer.exists():
                names.add(pointer.read_text().strip())
    return names


def prune_artifacts(folder, output_dir, keep: int = KEEP_ARTIFACTS) -> list:
    """Remove all but the newest ``keep`` artifacts of a model folder; never a published one."""
    if keep <= 0 or not folder.exists():
        return []
    published = _published_names(output_dir)
    files = sorted((p for p in folder.iterdir() if p.name.endswith(".nc") and not p.name.startswith(".")), key=lambda p: p.name)
    removed = []
    for old in files[:-keep]:
        if _relative(old, output_dir) not in published and old.name not in published:
            stem = old.name[:-len(".nc")] + "."
            for side in [p for p in folder.iterdir() if p.name.startswith(stem) and p.name.endswith(".parquet")]:
                side.unlink()
                removed.append(side)
            old.unlink()
            removed.append(old)
    return removed
