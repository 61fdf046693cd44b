"""The input contract: which columns each cleaned CSV must have, and how they are coerced.

Every problem is reported as an :class:`InputError` that names the file, the column, what is
wrong, how many rows and what to do. Recoverable quirks (a blank athlete_hash, a few
non-numeric times, other spellings of a gender) are handled as documented here and reported
as notes, which the assets put in metadata.

Closed vocabularies (``gender``, ``is_pro``) accept a fixed set of spellings, read as their
canonical values and counted in a note. Values outside the set are unrecognised: up to 1% of
a column's non-blank cells are handled as documented and counted; more is an error, since
it more likely means a mislabelled or shifted column than a few typos. ``age_group`` is an
open vocabulary, as in the notebook (each distinct string is its own level): only dash
characters and stray spaces are normalised, and counted.
"""

from __future__ import annotations

import contextlib
import csv
import re
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import pandas as pd

from racedayai_bayes.lib.cpu_slots import SecondCore
from racedayai_bayes.lib.data.history import COUNT_COLUMNS as HISTORY_COUNT_COLUMNS
from racedayai_bayes.lib.data.history import LEVEL_COLUMNS as HISTORY_LEVEL_COLUMNS


RACE_FILE = "athlete_race.csv"
PROFILE_FILE = "athlete_profile.csv"
CLUSTER_FILE = "cluster_assignments.csv"

RACE_REQUIRED = (
    "athlete_hash",
    "gender",
    "age_group",
    "is_pro",
    "event_name",
    "event_distance",
    "event_year",
    "total_sec",
)
PROFILE_REQUIRED = ("athlete_hash", "total_races", "pb_total_sec")
PROFILE_OPTIONAL = ("consistency_cv", "improvement_slope")
CLUSTER_REQUIRED = ("athlete_hash", "cluster_id")

# The seed's gender codes: M and F; anything else (blank) is encoded like M, as the seed does.
GENDER_MAP = {"M": 0, "F": 1}

# A column of numbers with a few bad cells is usable (the cells become missing and are
# counted); beyond this share the column is more likely misaligned or mislabelled. The same
# share applies to unrecognised values of a closed vocabulary.
MAX_BAD_NUMERIC_SHARE = 0.01
MAX_UNRECOGNISED_SHARE = MAX_BAD_NUMERIC_SHARE
# The first IRONMAN was raced in 1978: an event_year before it is no season.
FIRST_SEASON = 1978
# The seed's finish-time bounds, both exclusive: 1 h < total_sec < 17 h (lib/data/frame.py).
MIN_TOTAL_SEC = 3600.0
MAX_TOTAL_SEC = 61200.0
MAX_PB_SEC = 7 * 24 * 3600.0  # a week: no finish time of any race is longer

_TRUE = {"true", "1", "1.0", "yes", "t", "y"}
_FALSE = {"false", "0", "0.0", "no", "f", "n"}
# Closed vocabularies: every accepted spelling, lower-cased, and the value it stands for
# (genders: the keys of GENDER_MAP).
GENDER_SPELLINGS = {
    "m": "M", "male": "M", "man": "M", "men": "M",
    "f": "F", "female": "F", "w": "F", "woman": "F", "women": "F",
}
IS_PRO_SPELLINGS = {**{t: True for t in _TRUE}, **{f: False for f in _FALSE}}
# Dash characters read as a hyphen in age groups: hyphen, non-breaking hyphen, figure dash,
# en dash, em dash, horizontal bar, minus sign, small and full-width hyphen-minus.
AGE_GROUP_DASHES = "\u2010\u2011\u2012\u2013\u2014\u2015\u2212\ufe58\ufe63\uff0d"
_DASH_TABLE = str.maketrans({c: "-" for c in AGE_GROUP_DASHES})
# A distance column that a writer stored as floats comes back as e.g. '70.30' or '140.60'.
_DISTANCE_SPELLINGS = {"70.30": "70.3", "140.60": "140.6", "70.300": "70.3", "140.600": "140.6"}


class InputError(ValueError):
    """An input file breaks the data contract."""

    def __init__(
        self, path: str | Path, problem: str, column: str | tuple[str, ...] | None = None, rows: int | None = None,
        hint: str | None = None,
    ):
        columns = (column,) if isinstance(column, str) else tuple(column or ())
        self.path = str(path)
        self.column = ", ".join(columns) or None
        self.rows = rows
        self.problem = problem
        self.hint = hint
        named = ", ".join(f"'{c}'" for c in columns)
        where = f"{self.path}" + (f", column {named}" if len(columns) == 1 else f", columns {named}" if columns else "")
        count = f" ({rows:,} rows)" if rows is not None else ""
        todo = f"; {hint}" if hint else ""
        super().__init__(f"{where}: {problem}{count}{todo}")


@dataclass
class ReadResult:
    """A validated input frame plus the notes on what was coerced or dropped."""

    frame: pd.DataFrame
    path: Path
    notes: list[str] = field(default_factory=list)


# what to do about a missing input file, or a column missing from it: the pipeline's
# inputs, and a file a command was given (predict's --input, forecast's --start-list)
PIPELINE_INPUT = (None,  # what to do about a missing input depends on the folder: _missing_input_hint
                  "add the column, or point RACEDAYAI_INPUT_DIR at the folder of the cleaned files")
GIVEN_FILE = ("check the path given to the command", "add the column; the file needs {required}")


@dataclass(frozen=True)
class _Header:
    """A CSV file's header line, read once: its names as a CSV reader gives them (a BOM
    removed; a quoted name without its quotes, spaces outside them kept: Python's csv module
    parses a header line as Arrow's reader does, so these are the names the columns are asked
    for by), and whether the file holds nothing after it."""

    names: list[str]
    header_only: bool

    @property
    def plain(self) -> list[str]:
        """The names without spaces or quotes around them: what the contract calls them."""
        return [c.strip().strip('"') for c in self.names]


def _missing_input_hint(path: Path) -> str:
    """What to do about a missing pipeline input. Demo inputs are offered only for a folder
    that holds none of the three: `demo-data` rewrites all three, and a folder that holds the
    others holds real data whose missing file is to be restored, not replaced."""
    folder = path.parent
    others = [name for name in (RACE_FILE, PROFILE_FILE, CLUSTER_FILE) if name != path.name and (folder / name).exists()]
    if others:
        return (f"the folder holds {' and '.join(others)}: restore {path.name} from the upstream export, "
                "or set RACEDAYAI_INPUT_DIR to the folder of the cleaned files")
    return (f"set RACEDAYAI_INPUT_DIR to the folder of the cleaned files, or write demo inputs to {folder} "
            f"with `racedayai-bayes demo-data --out {folder}`")


def _read_header(path: Path, hints: tuple[str | None, str] = PIPELINE_INPUT) -> _Header:
    if not path.exists():
        hint = hints[0] or _missing_input_hint(path)
        raise InputError(path, f"file not found ({hint})")
    if path.is_dir():
        raise InputError(path, "is a directory, expected a CSV file")
    with open(path, "rb") as fh:
        first = fh.readline()
        header_only = not first.endswith(b"\n") or not fh.read(1)  # with or without the line's end
    if first.startswith(b"\xef\xbb\xbf"):
        first = first[3:]
    if not first.strip():
        raise InputError(path, "file is empty: no header line", hint="write the file again (its export may have failed)")
    try:
        text = first.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InputError(
            path, f"header is not valid UTF-8 ({exc.reason} at byte {exc.start})", hint="save the file as UTF-8"
        ) from exc
    header = _Header(next(csv.reader([text.rstrip("\r\n")]), []), header_only)
    seen = pd.Series(header.plain)
    twice = [c for c in dict.fromkeys(seen[seen.duplicated()]) if c]
    if twice:
        # which of the columns is meant cannot be told: the reader would take one silently
        raise InputError(path, f"the header names {len(twice)} column{'s' if len(twice) > 1 else ''} more than once "
                         f"({', '.join(repr(c) for c in twice[:3])})", column=twice[0],
                         hint="keep one column of each name (rename or delete the others)")
    return header


def _read_text_columns(path: Path, columns: list[str], header: _Header,
                      second_core: SecondCore | None = None) -> tuple[pd.DataFrame, list[str]]:
    """Read the named columns as text, whatever they look like (no type guessing). A header
    name with spaces or quotes around it is read under its plain name, and counted."""
    notes: list[str] = []
    if header.header_only:
        return pd.DataFrame({c: pd.Series([], dtype="string") for c in columns}), notes
    raw = dict(zip(header.plain, header.names))  # plain name -> the reader's
    spelled = {raw[c]: c for c in columns if raw.get(c, c) != c}
    if spelled:
        n = len(spelled)
        notes.append(f"{n} header name{'s' if n > 1 else ''} had spaces around {'them' if n > 1 else 'it'} "
                     f"({', '.join(repr(k) for k in list(spelled)[:3])}); read as the plain name{'s' if n > 1 else ''}")
    kwargs = dict(usecols=[raw.get(c, c) for c in columns], dtype="string", keep_default_na=False, na_values=[""])
    try:
        frame = pd.read_csv(path, engine="pyarrow", encoding="utf-8", **kwargs)
    except KeyError as exc:  # pyarrow's ArrowKeyError: a header name the reader spells otherwise
        raise InputError(path, f"cannot be parsed as CSV: the header's names cannot be matched ({exc})",
                         hint="write the header as plain names separated by commas") from None
    except (UnicodeDecodeError, ValueError) as exc:
        if "utf" not in str(exc).lower() and not isinstance(exc, UnicodeDecodeError):
            raise InputError(
                path, f"cannot be parsed as CSV: {exc}", rows=_count_bad_rows(path, raw.get(columns[0], columns[0])),
                hint="quote the fields that hold commas, or fix the rows"
            ) from exc
        # Bytes that are not UTF-8: undecodable bytes become U+FFFD and are counted.
        frame = pd.read_csv(path, engine="c", encoding="utf-8", encoding_errors="replace", **kwargs)
        bad = int(sum(frame[c].str.contains("\ufffd", regex=False).sum() for c in columns))
        notes.append(f"{bad:,} cells held bytes that are not UTF-8; they were replaced by U+FFFD")
    frame.columns = [spelled.get(c, c).lstrip("\ufeff") for c in frame.columns]
    with _helpers(second_core) as pool:
        edges = _in_order(pool, [lambda text=frame[col]: _edge_space_and_empty(text) for col in columns])
    for col, (edge, empty) in zip(columns, edges):
        if edge:
            trimmed = frame[col].str.strip()
            n = int((trimmed != frame[col]).fillna(False).sum())
            if n:
                notes.append(f"{n:,} rows: {col} had spaces around the value; trimmed")
            frame[col] = trimmed
        if edge or empty:
            frame[col] = frame[col].replace("", pd.NA)
    return frame, notes


@contextlib.contextmanager
def _helpers(second_core: SecondCore | None) -> Iterator[ThreadPoolExecutor | None]:
    """Two threads for :func:`_in_order` while ``second_core()`` grants a second core (asked
    only now: after the CSV is parsed, when the other input steps may have ended); None
    without one. This thread waits while they work."""
    if second_core is None:
        yield None
        return
    with second_core() as two:
        if not two:
            yield None
            return
        with ThreadPoolExecutor(2, thread_name_prefix="input-check") as pool:
            yield pool


def _in_order(pool: ThreadPoolExecutor | None, calls: list[Callable[[], object]]) -> list:
    """The results of ``calls`` in their order: one after the other without a ``pool``, else
    two at a time (numpy, pandas and Arrow release the GIL in their loops). Each call reads
    only its own column. An error is the one calling them in order would raise first: the
    earliest failing call's (``Executor.map``: a later call may have run meanwhile; the
    calls not yet started are cancelled)."""
    return list((pool.map if pool is not None else map)(lambda call: call(), calls))


def _count_bad_rows(path: Path, column: str) -> int | None:
    """How many rows of a file that failed to parse Arrow's reader skips as invalid (the wrong
    number of fields), reading one column: the error's row count. None if the count itself
    fails (the error then shows the first bad row only)."""
    import pyarrow as pa
    import pyarrow.csv as pcsv

    bad = 0

    def skip(_row) -> str:
        nonlocal bad
        bad += 1
        return "skip"

    try:
        pcsv.read_csv(path, parse_options=pcsv.ParseOptions(invalid_row_handler=skip),
                      convert_options=pcsv.ConvertOptions(include_columns=[column], column_types={column: pa.string()}))
    except (pa.ArrowException, OSError, ValueError):
        return None
    return bad or None


# bytes a cell may not start or end with and skip trimming: ASCII white space, and any byte
# that is not ASCII (it may begin Unicode white space)
_EDGE_BYTE = np.zeros(256, dtype=bool)
_EDGE_BYTE[0x09:0x0E] = _EDGE_BYTE[0x1C:0x21] = _EDGE_BYTE[0x80:] = True


def _edge_space_and_empty(text: pd.Series) -> tuple[bool, bool]:
    """Whether any cell of a text column may start or end with white space, and whether any
    is empty: (True, True) unless the column is Arrow-backed.

    Read from Arrow's buffers, with no string made: a cell may need trimming if its first or
    last byte is ASCII white space (what Arrow's ``utf8_trim_whitespace`` and Python's
    ``str.strip`` remove: tab to carriage return, 0x1C to 0x20) or not ASCII (Unicode white
    space, such as a no-break space). Most columns of a clean file need neither trimming nor
    blanking, each of which took 0.05-0.1 s per column of 3.7M rows (measured 2026-12-04).
    """
    import pyarrow as pa

    arr = getattr(text.array, "_pa_array", None)
    if arr is None or not pa.types.is_string(arr.type) and not pa.types.is_large_string(arr.type):
        return True, True
    edge = empty = False
    for chunk in arr.chunks:
        if len(chunk) == 0:
            continue
        _, offsets_buf, data_buf = chunk.buffers()
        wide = np.int64 if pa.types.is_large_string(chunk.type) else np.int32
        offsets = np.frombuffer(offsets_buf, dtype=wide, count=chunk.offset + len(chunk) + 1)[chunk.offset:]
        cells = offsets[1:] > offsets[:-1]  # not empty (a missing cell is empty too)
        if chunk.null_count:
            valid = chunk.is_valid().to_numpy(zero_copy_only=False)
            empty = empty or bool((valid & ~cells).any())
            cells &= valid
        else:
            empty = empty or not cells.all()
        if cells.any():
            data = np.frombuffer(data_buf, dtype=np.uint8)
            last = len(data) - 1
            first_byte = data[np.minimum(offsets[:-1], last)]
            last_byte = data[np.maximum(offsets[1:] - 1, 0)]
            edge = edge or bool(((_EDGE_BYTE[first_byte] | _EDGE_BYTE[last_byte]) & cells).any())
        if edge and empty:
            break
    return edge, empty


def _open(path: str | Path, required: tuple[str, ...], optional: tuple[str, ...] = (),
          hints: tuple[str | None, str] = PIPELINE_INPUT, *, every_column: bool = False,
          second_core: SecondCore | None = None) -> tuple[pd.DataFrame, list[str], Path]:
    """The file's ``required`` columns (an error names those missing) and those of
    ``optional`` it has, as text; with ``every_column``, every named column of the file.
    ``second_core``: see :func:`_helpers`."""
    path = Path(path)
    header = _read_header(path, hints)
    names = header.plain
    missing = [c for c in required if c not in names]
    if missing:
        raise InputError(
            path,
            f"required column{'s' if len(missing) > 1 else ''} missing; the header has {len(names)} columns: {', '.join(names[:12])}"
            + ("..." if len(names) > 12 else ""),
            column=tuple(missing),
            hint=hints[1].format(required=", ".join(required)),  # a given file's hint names every column it needs
        )
    wanted = [c for c in dict.fromkeys(names) if c] if every_column else list(required) + [c for c in optional if c in names]
    frame, notes = _read_text_columns(path, wanted, header, second_core)
    return frame, notes, path


def parse_numbers(text) -> np.ndarray:
    """Text cells (a pandas Series, or an Arrow array as read) parsed as float64, writable: NaN
    where a cell is missing or not a finite number ('DNF'; 'inf' parses as a number but would
    poison every sum downstream). The parsing of :func:`_numeric`, which then counts and
    checks what did not parse."""
    import pyarrow as pa
    import pyarrow.compute as pc

    arrow = isinstance(text, (pa.Array, pa.ChunkedArray))
    try:
        # fast path: Arrow's cast parses millions of cells in C++, but fails on any bad cell
        parsed = pc.cast(text if arrow else pa.array(text), pa.float64()).to_numpy(zero_copy_only=False)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, TypeError):
        series = pd.Series(text.to_pandas()) if arrow else text
        parsed = pd.to_numeric(series, errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)
    values = np.asarray(parsed, dtype=np.float64)
    if not values.flags.writeable:  # Arrow's buffer, shared without a copy
        values = values.copy()
    values[~np.isfinite(values)] = np.nan
    return values


def _numeric(frame: pd.DataFrame, col: str, path: Path, notes: list[str], *, integer: bool = False,
             valid: tuple | None = None) -> pd.Series:
    """A text column parsed as numbers. A cell 'nan' (any case) is a blank, counted in a note;
    a cell that is not a number ('DNF', 'inf') is missing; with ``valid`` = (test, what it is),
    so is a number that fails the test (a year 20240 is no season). Up to 1% of the column's
    given cells may be such, counted in a note each; beyond, an error names the file, the
    column and examples. ``integer``: whole numbers only (an error otherwise), as Int64."""
    text = frame[col]
    values = pd.Series(parse_numbers(text), index=text.index, dtype="float64", copy=False)
    given = text.notna().to_numpy(dtype=bool)
    unparsed = values.isna().to_numpy(dtype=bool) & given
    if unparsed.any():
        # 'nan' is how Arrow's CSV writer (and others) spell a missing float: a blank, counted
        spelled_nan = np.zeros(len(text), dtype=bool)
        spelled_nan[unparsed] = text[unparsed].astype("string").str.casefold().eq("nan").to_numpy(dtype=bool, na_value=False)
        n_nan = int(spelled_nan.sum())
        if n_nan:
            notes.append(f"{n_nan:,} rows: {col} written as 'nan' (how some CSV writers spell a missing number); read as blank")
            given = given & ~spelled_nan  # (not in place: pandas may hand out a read-only array)
            unparsed = unparsed & ~spelled_nan
    problems = [("numeric", unparsed)]
    if integer:
        number = values.to_numpy()
        whole = np.isnan(number) | (number == np.round(number))
        if not whole.all():
            raise InputError(path, "must hold whole numbers", column=col, rows=int((~whole).sum()),
                             hint="write these cells as whole numbers")
    if valid is not None:
        test, what = valid
        number = values.to_numpy()
        problems.append((what, ~np.isnan(number) & ~test(np.nan_to_num(number))))
    allowed, seen = MAX_BAD_NUMERIC_SHARE * int(given.sum()), 0
    for what, bad in problems:
        n_bad = int(bad.sum())
        if not n_bad:
            continue
        seen += n_bad
        examples = ", ".join(repr(v) for v in pd.unique(text[bad])[:3])
        if seen > allowed:  # every kind of bad cell counts against the one allowance
            raise InputError(
                path, f"not {what}, e.g. {examples}", column=col, rows=n_bad,
                hint=f"fix or blank these cells (up to {MAX_BAD_NUMERIC_SHARE:.0%} of a column's cells are read as missing)",
            )
        notes.append(f"{n_bad:,} rows: {col} not {what} (e.g. {examples}); treated as missing")
        values[bad] = np.nan
    return values.astype("Int64") if integer else values


def _closed_vocabulary(
    frame: pd.DataFrame, col: str, path: Path, notes: list[str], spellings: dict, *,
    what: str, accepted: str, unrecognised: str, dtype: str,
) -> tuple[pd.Series, pd.Series]:
    """Read ``col`` through a closed vocabulary: (canonical values, mask of unrecognised cells).

    Each accepted spelling (``spellings``, matched case-insensitively) becomes its canonical
    value; cells spelled otherwise than the canonical value are counted in a note. A blank
    stays blank. Up to ``MAX_UNRECOGNISED_SHARE`` of the non-blank cells may be unrecognised
    (not ``what``): they are counted in a note, which says how they are handled
    (``unrecognised``). More raise an :class:`InputError` naming the share and the most
    common examples, and saying what to write (``accepted``).
    """
    text = frame[col]
    codes, uniques = pd.factorize(text)  # distinct values once: fast on millions of rows
    canonical = [spellings.get(str(u).lower()) for u in uniques]
    known_u = np.array([c is not None for c in canonical], dtype=bool)
    respelled_u = np.array([c is not None and str(c) != str(u) for c, u in zip(canonical, uniques)], dtype=bool)
    given = codes >= 0
    known = given & known_u[np.maximum(codes, 0)]
    bad = given & ~known
    n_given, n_bad = int(given.sum()), int(bad.sum())
    if n_bad:
        counts = pd.Series(codes[bad]).value_counts()
        examples = ", ".join(repr(str(uniques[i])) for i in counts.index[:5])
        share = n_bad / n_given
        if share > MAX_UNRECOGNISED_SHARE:
            raise InputError(
                path,
                f"{share:.1%} of the {n_given:,} non-blank values are not {what} (e.g. {examples})",
                column=col,
                rows=n_bad,
                hint=f"{accepted}; up to {MAX_UNRECOGNISED_SHARE:.0%} of the values may be unrecognised: "
                f"they are {unrecognised}",
            )
        notes.append(f"{n_bad:,} rows: {col} not {what} (e.g. {examples}); {unrecognised}")
    respelled = given & respelled_u[np.maximum(codes, 0)]
    if respelled.any():
        counts = pd.Series(codes[respelled]).value_counts()
        examples = ", ".join(f"{str(uniques[i])!r} \u2192 {canonical[i]}" for i in counts.index[:5])
        notes.append(f"{int(respelled.sum()):,} rows: {col} in another spelling, read as {what}: {examples}")
    # the distinct canonical values in ``dtype``, then one take per row (no Python object per row)
    levels = pd.array([c if c is not None else pd.NA for c in canonical] or [pd.NA], dtype=dtype)
    values = levels.take(np.where(known, codes, -1), allow_fill=True)
    return pd.Series(values, index=frame.index), pd.Series(bad, index=frame.index)


def _boolean(frame: pd.DataFrame, col: str, path: Path, notes: list[str]) -> pd.Series:
    """is_pro: True/False (true, 1, 1.0, yes, t, y / false, 0, 0.0, no, f, n, any case) or blank."""
    values, _ = _closed_vocabulary(
        frame, col, path, notes, IS_PRO_SPELLINGS,
        what="True or False",
        accepted="write True or False (true/false, 1/0, 1.0/0.0, yes/no, t/f, y/n, in any case, are read too) "
        "or leave the cell blank",
        unrecognised="read as blank (not known to be a pro, so the race is kept)",
        dtype="boolean",
    )
    return values


def _gender(frame: pd.DataFrame, path: Path, notes: list[str]) -> pd.Series:
    """gender: M or F in any accepted spelling, or blank; up to 1% unrecognised kept as written."""
    values, bad = _closed_vocabulary(
        frame, "gender", path, notes, GENDER_SPELLINGS,
        what="M or F",
        accepted="write M or F (m, male, man, men / f, female, w, woman, women, in any case, are read too) or leave the cell blank",
        unrecognised="encoded like a blank gender (the seed models: index 0, as the notebook does; the forecast model: U)",
        dtype="string",
    )
    # unrecognised values stay as written (the encoding treats them like a blank)
    return values.where(~bad, frame["gender"]).astype("string") if bad.any() else values


def _tidy_age_group(value: str) -> str:
    text = value.translate(_DASH_TABLE)
    text = " ".join(text.split())  # any run of (unicode) spaces is one space, none at the ends
    return re.sub(r" ?- ?", "-", text)


def _age_groups(frame: pd.DataFrame, notes: list[str]) -> pd.Series:
    """age_group, an open vocabulary: dashes read as '-', stray spaces removed, changes counted."""
    text = frame["age_group"]
    codes, uniques = pd.factorize(text)
    tidy = [_tidy_age_group(str(u)) for u in uniques]
    changed_u = np.array([t != str(u) for t, u in zip(tidy, uniques)], dtype=bool)
    if not changed_u.any():
        return text
    changed = (codes >= 0) & changed_u[np.maximum(codes, 0)]
    counts = pd.Series(codes[changed]).value_counts()
    examples = ", ".join(f"{str(uniques[i])!r} \u2192 {tidy[i]!r}" for i in counts.index[:5])
    notes.append(
        f"{int(changed.sum()):,} rows: age_group normalised (dashes read as '-', stray spaces removed): {examples}"
    )
    out = pd.Series(pd.array(tidy, dtype="string")).take(np.maximum(codes, 0)).set_axis(frame.index)
    return out.where(codes >= 0, pd.NA).astype("string")


def _strictly_increasing(column: pd.Series) -> bool:
    """True when an Arrow-backed text column without blanks is in strictly increasing order, and
    so holds no value twice: Arrow compares each value with the next, without hashing (a
    file written sorted by athlete_hash, as the synthetic world's are: 1.36M profiles in
    4-9 ms, against 0.2-0.6 s for ``duplicated``). False for anything else, which is then
    looked at the slower way."""
    import pyarrow as pa
    import pyarrow.compute as pc

    arr = getattr(column.array, "_pa_array", None)
    # nulls must not be there: Arrow's ``all`` skips the comparisons they make null
    if arr is None or arr.null_count or len(arr) < 2 or not (pa.types.is_string(arr.type) or pa.types.is_large_string(arr.type)):
        return False
    return bool(pc.all(pc.less(arr.slice(0, len(arr) - 1), arr.slice(1))).as_py())


def _no_duplicates(frame: pd.DataFrame, path: Path) -> None:
    if _strictly_increasing(frame["athlete_hash"]):
        return
    dup = frame["athlete_hash"].duplicated(keep=False) & frame["athlete_hash"].notna()
    if dup.any():
        examples = ", ".join(frame.loc[dup, "athlete_hash"].unique()[:3])
        raise InputError(
            path,
            f"duplicated athlete_hash (a merge would multiply race rows), e.g. {examples}",
            column="athlete_hash",
            rows=int(dup.sum()),
            hint="keep one row per athlete_hash",
        )


def _note_if_empty(frame: pd.DataFrame, notes: list[str], consequence: str) -> None:
    if frame.empty:
        notes.append(f"file has a header but no rows: {consequence}")


def _drop_blank_hash(frame: pd.DataFrame, notes: list[str]) -> pd.DataFrame:
    blank = frame["athlete_hash"].isna()
    if blank.any():
        notes.append(f"{int(blank.sum()):,} rows dropped: blank athlete_hash cannot be joined")
        frame = frame[~blank.to_numpy()].reset_index(drop=True)
    return frame


def _distances(distance: pd.Series, notes: list[str]) -> pd.Series:
    """event_distance with a float writer's spellings ('70.30', '140.600') read as 70.3 or
    140.6, and counted."""
    respelled = distance.isin(list(_DISTANCE_SPELLINGS)).fillna(False).to_numpy(dtype=bool)
    if not respelled.any():
        return distance
    examples = ", ".join(f"{v!r} \u2192 {_DISTANCE_SPELLINGS[v]}" for v in pd.unique(distance[respelled])[:3])
    notes.append(f"{int(respelled.sum()):,} rows: event_distance in another spelling, read as 70.3 or 140.6: {examples}")
    return distance.replace(_DISTANCE_SPELLINGS)


def last_plausible_season() -> int:
    """The latest event_year a results file can hold: next year (a season's calendar can
    start before the new year)."""
    import datetime as dt

    return dt.date.today().year + 1


def read_races(path: str | Path, *, second_core: SecondCore | None = None) -> ReadResult:
    """Read athlete_race.csv: the models' eight columns, typed; other columns are ignored.

    event_distance stays text ('70.3' parsed as a float would silently match nothing), a
    blank athlete_hash stays missing (it never joins), is_pro becomes a nullable boolean
    (blank = not known to be a pro), gender is M, F or blank whatever its spelling, age
    groups have their dashes and spaces tidied, and a blank total_sec is a non-finisher. A
    blank event_name (the course) stays missing and is counted: the forecast model cannot
    place such a race on a course (see lib/data/frame.py).

    With ``second_core`` (see :func:`_helpers`), the columns are checked two at a time once
    the CSV is parsed, if a second core is free then: the same frame, notes and errors.
    """
    frame, notes, path = _open(path, RACE_REQUIRED, second_core=second_core)
    if frame.empty:
        raise InputError(path, "has a header but no rows", hint="the race file must hold at least one race")
    last = last_plausible_season()
    # a year before the first IRONMAN or after next year is no season: it would be held out
    # alone as "the latest season" (20240), or key another athlete's history
    seasons = (lambda y: (y >= FIRST_SEASON) & (y <= last), f"a season from {FIRST_SEASON} to {last}")
    checks = {  # each reads its own column only, and writes its own notes (kept in this order)
        "is_pro": lambda own: _boolean(frame, "is_pro", path, own),
        "gender": lambda own: _gender(frame, path, own),
        "age_group": lambda own: _age_groups(frame, own),
        "event_distance": lambda own: _distances(frame["event_distance"], own),
        "event_year": lambda own: _numeric(frame, "event_year", path, own, integer=True, valid=seasons),
        "total_sec": lambda own: _numeric(frame, "total_sec", path, own),
    }
    own_notes: dict[str, list[str]] = {col: [] for col in checks}
    with _helpers(second_core) as pool:
        checked = _in_order(pool, [lambda col=col, check=check: check(own_notes[col]) for col, check in checks.items()])
    for col, values in zip(checks, checked):
        frame[col] = values
        notes.extend(own_notes[col])
    blank_event = int(frame["event_name"].isna().sum())
    if blank_event:
        notes.append(f"{blank_event:,} rows: blank event_name (course unknown); kept, and counted again in model_frame")
    return ReadResult(frame=frame, path=path, notes=notes)


# A count of races cannot be negative; a PB, the fastest of the athlete's races, is a finish
# time: positive, and under a week. (It may exceed the models' 17 h bound: the minimum over
# every race of an athlete whose races all took longer, which the model frame drops; such a
# profile joins no modelled race.)
PROFILE_VALUES = {
    "total_races": (lambda v: v >= 0, "a count (0 or more)"),
    "pb_total_sec": (lambda v: (v > 0) & (v < MAX_PB_SEC), f"a finish time in seconds (0 to {MAX_PB_SEC:,.0f}, a week)"),
}


def read_profiles(path: str | Path) -> ReadResult:
    """Read athlete_profile.csv: one row per athlete_hash (a duplicate is an error)."""
    frame, notes, path = _open(path, PROFILE_REQUIRED, PROFILE_OPTIONAL)
    _note_if_empty(frame, notes, "no race joins a profile (fitness at the mean, experience 0)")
    frame = _drop_blank_hash(frame, notes)
    _no_duplicates(frame, path)
    for col in frame.columns.drop("athlete_hash"):
        frame[col] = _numeric(frame, col, path, notes, valid=PROFILE_VALUES.get(col))
    for col in PROFILE_OPTIONAL:
        if col not in frame.columns:
            frame[col] = np.nan
            notes.append(f"optional column {col} absent; filled with missing values")
    return ReadResult(frame=frame, path=path, notes=notes)


def read_clusters(path: str | Path) -> ReadResult:
    """Read cluster_assignments.csv: one integer cluster_id per clustered athlete."""
    frame, notes, path = _open(path, CLUSTER_REQUIRED)
    _note_if_empty(frame, notes, "every athlete is unclustered (cluster -1)")
    frame = _drop_blank_hash(frame, notes)
    _no_duplicates(frame, path)
    frame["cluster_id"] = _numeric(frame, "cluster_id", path, notes, integer=True)
    missing = frame["cluster_id"].isna()
    if missing.any():
        notes.append(f"{int(missing.sum()):,} rows dropped: blank cluster_id (treated as unclustered)")
        frame = frame[~missing.to_numpy()].reset_index(drop=True)
    return ReadResult(frame=frame, path=path, notes=notes)


# Rows to predict (`racedayai-bayes predict`): the model frame's columns, one row per race.
# Which covariates are required depends on the artifact's model (its ``predict_columns``);
# these are the seed's (seed_profile).
MODEL_ROW_REQUIRED = ("gender", "age_group", "pb_total_sec", "total_races", "cluster_id")
MODEL_ROW_OPTIONAL = ("athlete_hash", "event_distance", "event_year", "total_sec", "event_name", "held_out")
_INTEGER_COLUMNS = ("event_year", "cluster_id", *(c for c in HISTORY_COUNT_COLUMNS))
_FLOAT_COLUMNS = ("pb_total_sec", "total_races", "total_sec", *HISTORY_LEVEL_COLUMNS)


def read_model_rows(path: str | Path, required: tuple[str, ...] = MODEL_ROW_REQUIRED) -> ReadResult:
    """Read rows to predict: the model frame's columns (as the pipeline builds them).

    ``required`` are the covariates the model reads; a cell may be blank (a blank
    pb_total_sec is the mean fitness, a blank total_races no experience, a blank cluster_id
    unclustered, as in the pipeline). athlete_hash, event_distance, event_year, total_sec,
    event_name and held_out are copied to the output when present, and left blank otherwise.
    """
    optional = tuple(c for c in MODEL_ROW_OPTIONAL if c not in required)
    frame, notes, path = _open(path, required, optional, GIVEN_FILE)
    if frame.empty:
        raise InputError(path, "has a header but no rows", hint="give at least one row to predict")
    if "gender" in frame.columns:
        frame["gender"] = _gender(frame, path, notes)
    if "age_group" in frame.columns:
        frame["age_group"] = _age_groups(frame, notes)
    for col in _FLOAT_COLUMNS:
        if col in frame.columns:
            frame[col] = _numeric(frame, col, path, notes)
    for col in _INTEGER_COLUMNS:
        if col in frame.columns:
            frame[col] = _numeric(frame, col, path, notes, integer=True)
    if "held_out" in frame.columns:
        frame["held_out"] = _boolean(frame, "held_out", path, notes)
    if "event_distance" in frame.columns:
        frame["event_distance"] = _distances(frame["event_distance"], notes)
    for col in optional:
        if col not in frame.columns:
            if col == "total_sec":
                frame[col] = np.nan
            elif col == "held_out":
                continue  # the command derives it from the artifact's split
            else:
                frame[col] = pd.Series(pd.NA, index=frame.index, dtype="Int64" if col == "event_year" else "string")
            notes.append(f"optional column {col} absent; left blank in the output")
    return ReadResult(frame=frame, path=path, notes=notes)


# Start lists (`racedayai-bayes forecast`, the race_forecasts asset): one row per athlete
# entered in an upcoming race. Any other column is kept and written back beside the forecast.
START_LIST_REQUIRED = ("athlete_hash", "gender", "age_group")
START_LIST_EVENT = ("event_name", "event_year", "event_distance")


@dataclass
class StartList:
    """A validated start list: its rows (every column as text, in file order), the columns the
    forecast reads, typed, and the race it is for when the file names one."""

    path: Path
    rows: pd.DataFrame  # every column of the file, as text
    athletes: pd.DataFrame  # athlete_hash, gender, age_group, normalised
    event: dict  # event_name, event_year, event_distance read from the file (those it has)
    notes: list[str] = field(default_factory=list)
    counts: dict = field(default_factory=dict)


def _season_text(value, path) -> str:
    """A start list's event_year as the season's digits (``2027.0`` reads as ``2027``)."""
    try:
        season = float(value)
        if season != int(season):
            raise ValueError
    except (ValueError, OverflowError):
        raise InputError(path, f"is not a season (a year): {value!r}", column="event_year",
                         hint="write the race's season, e.g. 2027") from None
    return str(int(season))


def read_start_list(path: str | Path, *, event_columns: bool = False, given: tuple[str, ...] = ()) -> StartList:
    """Read a start list: ``athlete_hash, gender, age_group`` (cells may be blank), any other
    columns kept. With ``event_columns`` the file must also hold ``event_name, event_year,
    event_distance``, each with one value (the race the list is for). The race columns in
    ``given`` (named on the command line: ``--event``, ``--year``) replace the file's, which are
    then not read.

    An athlete listed twice is forecast twice (the output has one row per input row) and
    counted; an empty file, a header without rows, a missing column, or several races in one
    file are errors that name the file and the problem.
    """
    required = START_LIST_REQUIRED + (START_LIST_EVENT if event_columns else ())
    hint = ("a start list has one row per athlete with athlete_hash, gender, age_group"
            + (" and the race's event_name, event_year, event_distance" if event_columns else ""))
    rows, notes, path = _open(path, required, hints=(GIVEN_FILE[0], hint), every_column=True)
    if rows.empty:
        raise InputError(path, "has a header but no athletes", hint="list at least one athlete")
    athletes = rows[list(START_LIST_REQUIRED)].copy()
    athletes["gender"] = _gender(athletes, path, notes)
    athletes["age_group"] = _age_groups(athletes, notes)
    hashes = athletes["athlete_hash"]
    twice = hashes.notna() & hashes.duplicated(keep=False)
    counts = {"athletes": len(rows), "without_athlete_hash": int(hashes.isna().sum()),
              "listed_more_than_once": int(hashes[twice].nunique()), "listed_inconsistently": 0}
    if counts["listed_more_than_once"]:
        examples = ", ".join(hashes[twice].unique()[:3])
        repeated = athletes.loc[twice]
        # an athlete whose rows give different genders or age groups: their forecasts differ too
        conflicting = repeated.astype("string").fillna("").groupby("athlete_hash")[["gender", "age_group"]].nunique().gt(1).any(axis=1)
        counts["listed_inconsistently"] = int(conflicting.sum())
        same = "each of their rows gets the same forecast"
        if conflicting.any():
            odd = ", ".join(conflicting.index[conflicting][:3])
            same = (f"{int(conflicting.sum()):,} of them with different genders or age groups in their rows (e.g. {odd}), "
                    "each row forecast as written: check which is right; the others' rows get the same forecast")
        notes.append(f"{counts['listed_more_than_once']:,} athletes are listed more than once (e.g. {examples}); {same}")
    if "event_distance" in rows.columns and "event_distance" not in given:
        rows["event_distance"] = _distances(rows["event_distance"], notes)  # '70.30' is 70.3, noted as in the input files
    event = {}
    for col in START_LIST_EVENT:
        if col not in rows.columns or col in given:
            continue
        values = pd.Series(rows[col].dropna().unique(), dtype=object)
        if col == "event_year":  # 2027 and 2027.0 are one season
            values = values.map(lambda v: _season_text(v, path))
        values = values.unique()
        if len(values) > 1:
            raise InputError(path, f"holds {len(values)} different values ({', '.join(map(str, values[:3]))}); "
                             "a start list is for one race", column=col, hint="split the file into one file per race")
        if len(values) == 0:
            if event_columns:
                raise InputError(path, "is blank in every row", column=col, hint="name the race in every row")
            continue
        event[col] = str(values[0])
    if "event_year" in event:
        event["event_year"] = int(event["event_year"])
    return StartList(path=path, rows=rows, athletes=athletes, event=event, notes=notes, counts=counts)
