"""The input contract: CSV readers, their coercions, notes and InputErrors (lib/contracts.py)."""

from __future__ import annotations

import csv

import pandas as pd
import pytest

from racedayai_bayes.lib.data.contracts import (
    InputError,
    read_clusters,
    read_profiles,
    read_races,
    read_start_list,
)

from .conftest import CLUSTER_HEADER, PROFILE_HEADER, RACE_HEADER, csv_text, race_rows
from .conftest import write_file as _write


def _races_csv(tmp_path, rows: list[str], name: str = "athlete_race.csv", header: str = RACE_HEADER):
    return _write(tmp_path, name, csv_text(header, race_rows(rows, header)))


def _assert_names(err: InputError, path, column: str | None):
    text = str(err)
    assert str(path) in text
    assert err.path == str(path)
    if column is not None:
        assert column in text
        assert err.column == column


# --- missing, empty and header-only files -------------------------------------------------


@pytest.mark.parametrize("reader", [read_races, read_profiles, read_clusters])
def test_missing_file_is_an_input_error_naming_the_path(tmp_path, reader):
    path = tmp_path / "nope.csv"
    with pytest.raises(InputError, match="not found") as info:
        reader(path)
    _assert_names(info.value, path, None)
    # the advice names the folder read, and a command that writes demo inputs there
    assert f"racedayai-bayes demo-data --out {tmp_path}" in str(info.value)


def test_a_missing_input_beside_the_others_is_to_be_restored_not_replaced_by_demo_data(tmp_path):
    """demo-data rewrites all three inputs: with real files beside the missing one, the advice
    is to restore it, never to write demo inputs over them."""
    (tmp_path / "athlete_race.csv").write_text("athlete_hash\n")
    (tmp_path / "athlete_profile.csv").write_text("athlete_hash\n")
    with pytest.raises(InputError) as info:
        read_clusters(tmp_path / "cluster_assignments.csv")
    message = str(info.value)
    assert "demo-data" not in message
    assert ("file not found (the folder holds athlete_race.csv and athlete_profile.csv: restore cluster_assignments.csv "
            "from the upstream export, or set RACEDAYAI_INPUT_DIR to the folder of the cleaned files)") in message


@pytest.mark.parametrize("reader", [read_races, read_profiles, read_clusters])
@pytest.mark.parametrize("content", [b"", b"\xef\xbb\xbf"], ids=["zero bytes", "a BOM only"])
def test_zero_byte_file_is_an_input_error(tmp_path, reader, content):
    path = _write(tmp_path, "empty.csv", content)
    with pytest.raises(InputError, match="file is empty: no header line") as info:
        reader(path)
    _assert_names(info.value, path, None)


def test_header_only_races_file_is_an_error(tmp_path):
    path = _races_csv(tmp_path, [])
    with pytest.raises(InputError, match="no rows") as info:
        read_races(path)
    _assert_names(info.value, path, None)


def test_header_only_profiles_and_clusters_are_allowed(tmp_path):
    profiles = read_profiles(_write(tmp_path, "p.csv", PROFILE_HEADER + "\n"))
    clusters = read_clusters(_write(tmp_path, "c.csv", CLUSTER_HEADER + "\n"))
    assert len(profiles.frame) == 0
    assert {"athlete_hash", "total_races", "pb_total_sec", "consistency_cv", "improvement_slope"} <= set(
        profiles.frame.columns
    )
    assert len(clusters.frame) == 0
    assert list(clusters.frame.columns) == ["athlete_hash", "cluster_id"]


# --- columns ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "reader, header, row, column",
    [
        (read_races, RACE_HEADER.replace(",total_sec", ""), "a,M,18-24,False,70.3,2020", "total_sec"),
        (read_races, RACE_HEADER.replace("is_pro,", ""), "a,M,18-24,70.3,2020,5000", "is_pro"),
        (read_profiles, "athlete_hash,total_races", "a,3", "pb_total_sec"),
        (read_clusters, "athlete_hash,cluster", "a,3", "cluster_id"),
    ],
)
def test_missing_required_column_names_file_and_column(tmp_path, reader, header, row, column):
    path = _write(tmp_path, "input.csv", f"{header}\n{row}\n")
    with pytest.raises(InputError, match="required column missing") as info:
        reader(path)
    _assert_names(info.value, path, column)


def test_extra_and_reordered_race_columns_are_ignored(tmp_path):
    header = (
        "athlete_name,athlete_hash,country,gender,age_group,is_pro,event_name,"
        "event_year,event_distance,total_sec,finish_status"
    )
    path = _write(tmp_path, "r.csv", f"{header}\nAnn,a,US,F,25-29,False,IM Nice,2021,140.6,40000.5,FIN\n")
    frame = read_races(path).frame
    assert sorted(frame.columns) == sorted(RACE_HEADER.split(","))
    row = frame.iloc[0]
    assert (row["athlete_hash"], row["gender"], row["age_group"]) == ("a", "F", "25-29")
    assert row["event_distance"] == "140.6"
    assert row["event_year"] == 2021
    assert row["total_sec"] == 40000.5


def test_profile_optional_columns_absent_are_filled_and_extras_ignored(tmp_path):
    path = _write(
        tmp_path,
        "p.csv",
        "athlete_hash,athlete_name,total_races,pb_total_sec,improvement_slope,dominant_discipline\n"
        "a,Ann,3,20000,-12.5,bike\n",
    )
    result = read_profiles(path)
    frame = result.frame
    assert "athlete_name" not in frame.columns and "dominant_discipline" not in frame.columns
    assert frame.loc[0, "total_races"] == 3.0
    assert frame.loc[0, "pb_total_sec"] == 20000.0
    assert frame.loc[0, "improvement_slope"] == -12.5
    assert pd.isna(frame.loc[0, "consistency_cv"])
    assert any("consistency_cv" in n for n in result.notes)
    assert not any("improvement_slope" in n for n in result.notes)


# --- numeric columns ----------------------------------------------------------------------


def test_few_non_numeric_total_sec_cells_become_missing_with_a_note(tmp_path):
    rows = [f"h{i},M,18-24,False,70.3,2020,{5000 + i}" for i in range(200)]
    rows += ["x,M,18-24,False,70.3,2020,DNF"]  # 1 bad of 201 given: under the 1% limit
    result = read_races(_races_csv(tmp_path, rows))
    frame = result.frame
    assert len(frame) == 201
    assert frame["total_sec"].isna().sum() == 1
    assert pd.isna(frame.loc[200, "total_sec"])
    assert frame.loc[0, "total_sec"] == 5000.0
    notes = [n for n in result.notes if "total_sec" in n]
    assert len(notes) == 1
    assert notes[0].startswith("1 rows")
    assert "DNF" in notes[0]


def test_mostly_non_numeric_total_sec_is_an_error_with_column_and_row_count(tmp_path):
    rows = [
        "a,M,18-24,False,70.3,2020,DNF",
        "b,M,18-24,False,70.3,2020,DQ",
        "c,M,18-24,False,70.3,2020,5000",
    ]
    path = _races_csv(tmp_path, rows)
    with pytest.raises(InputError, match="not numeric") as info:
        read_races(path)
    _assert_names(info.value, path, "total_sec")
    assert info.value.rows == 2
    assert "(2 rows)" in str(info.value)


def test_nan_spelled_out_is_a_blank_counted_in_a_note_not_a_bad_number(tmp_path):
    """Arrow's CSV writer (and pandas' with na_rep) spell a missing float 'nan': such cells are
    blanks, whatever their share, counted; they do not use up the 1% allowance of bad cells
    (a file of many DNFs written so failed with "not numeric, e.g. 'nan'" before 2026-12-06)."""
    rows = ["a,M,18-24,False,70.3,2020,nan", "b,M,18-24,False,70.3,2020,NaN", "c,M,18-24,False,70.3,nan,5000",
            "d,M,18-24,False,70.3,2021,5100"]
    result = read_races(_races_csv(tmp_path, rows))
    frame = result.frame
    assert frame["total_sec"].isna().tolist() == [True, True, False, False]
    assert frame["event_year"].isna().tolist() == [False, False, True, False]
    assert ("2 rows: total_sec written as 'nan' (how some CSV writers spell a missing number); read as blank"
            in result.notes), result.notes
    assert any(n.startswith("1 rows: event_year written as 'nan'") for n in result.notes), result.notes
    assert not [n for n in result.notes if "not numeric" in n]
    # a real bad number beside them is still one
    with pytest.raises(InputError, match="not numeric, e.g. 'DNF'"):
        read_races(_races_csv(tmp_path, rows + ["e,M,18-24,False,70.3,2020,DNF"]))


def test_blank_total_sec_is_missing_without_a_note(tmp_path):
    result = read_races(_races_csv(tmp_path, ["a,M,18-24,False,70.3,2020,", "b,M,18-24,False,70.3,2020,5000"]))
    assert result.frame["total_sec"].isna().tolist() == [True, False]
    assert result.notes == []


def test_is_pro_spellings(tmp_path):
    rows = [
        "a,M,18-24,True,70.3,2020,5000",
        "b,M,18-24,False,70.3,2020,5000",
        'c,M,18-24,"True",70.3,2020,5000',
        'd,M,18-24,"False",70.3,2020,5000',
        "e,M,18-24,,70.3,2020,5000",
        "f,M,18-24,true,70.3,2020,5000",
        "g,M,18-24,FALSE,70.3,2020,5000",
        "h,M,18-24,1.0,70.3,2020,5000",  # a column of 1/0 a writer stored as floats
        "i,M,18-24,0.0,70.3,2020,5000",
    ]
    frame = read_races(_races_csv(tmp_path, rows)).frame
    assert str(frame["is_pro"].dtype) == "boolean"
    got = [None if pd.isna(v) else bool(v) for v in frame["is_pro"]]
    assert got == [True, False, True, False, None, True, False, True, False]


def test_invalid_is_pro_is_an_error(tmp_path):
    path = _races_csv(tmp_path, ["a,M,18-24,False,70.3,2020,5000", "b,M,18-24,maybe,70.3,2020,5000"])
    with pytest.raises(InputError, match="maybe") as info:
        read_races(path)
    _assert_names(info.value, path, "is_pro")
    assert info.value.rows == 1


def test_numeric_only_event_distance_stays_text(tmp_path):
    rows = [
        "a,M,18-24,False,70.3,2020,5000",
        "b,M,18-24,False,140.6,2020,40000",
        "c,M,18-24,False,140.60,2020,40000",
        "d,M,18-24,False,70.30,2020,5000",
    ]
    path = _races_csv(tmp_path, rows)
    # the quirk: a default reader turns this column into floats
    assert pd.read_csv(path)["event_distance"].dtype == "float64"
    result = read_races(path)
    frame = result.frame
    assert frame["event_distance"].tolist() == ["70.3", "140.6", "140.6", "70.3"]
    assert all(isinstance(v, str) for v in frame["event_distance"])
    # recoded, and counted
    assert result.notes == ["2 rows: event_distance in another spelling, read as 70.3 or 140.6: "
                            "'140.60' \u2192 140.6, '70.30' \u2192 70.3"]


def test_event_years_that_are_no_season_are_missing_and_counted_or_an_error(tmp_path):
    """A year before the first IRONMAN (1978) or after next year is no season: it would
    otherwise be held out alone as "the latest season" (20240), or key another athlete's
    history. A few are read as missing (the race is dropped, as a year that does not parse);
    more than 1% of the column is an error naming the file and the column."""
    from racedayai_bayes.lib.data.contracts import last_plausible_season

    last = last_plausible_season()
    good = [f"a{i},M,18-24,False,70.3,{2000 + i % 20},5000" for i in range(300)]
    odd = ["x,M,18-24,False,70.3,20240,5000", "y,M,18-24,False,70.3,14,5000",
           f"z,M,18-24,False,70.3,{last + 1},5000", f"w,M,18-24,False,70.3,{last},5000",
           "v,M,18-24,False,70.3,1978,5000"]
    result = read_races(_races_csv(tmp_path, good + odd))
    years = result.frame["event_year"]
    assert years.iloc[-5:-2].isna().all() and years.iloc[-2:].tolist() == [last, 1978]
    assert years.iloc[:300].notna().all()
    assert result.notes == [f"3 rows: event_year not a season from 1978 to {last} (e.g. '20240', '14', '{last + 1}'); "
                            "treated as missing"]
    path = _races_csv(tmp_path, good[:50] + odd, name="many.csv")
    with pytest.raises(InputError, match=f"not a season from 1978 to {last}") as info:
        read_races(path)
    _assert_names(info.value, path, "event_year")
    assert info.value.rows == 3
    # years that are not numbers and years that are no season share the one 1% allowance:
    # 3 of each in 306 rows is within it alone, not together
    both = good + odd[:3] + [f"t{i},M,18-24,False,70.3,TBD,5000" for i in range(3)]
    with pytest.raises(InputError, match="not a season"):
        read_races(_races_csv(tmp_path, both, name="both.csv"))


def test_cells_with_spaces_around_them_are_trimmed_and_counted(tmp_path):
    result = read_races(_races_csv(tmp_path, ["a,M,18-24,False,70.3,2020,5000", "b, m ,18-24,False, 70.3 ,2020,5000"]))
    assert result.frame["gender"].tolist() == ["M", "M"]
    assert result.frame["event_distance"].tolist() == ["70.3", "70.3"]
    assert "1 rows: gender had spaces around the value; trimmed" in result.notes
    assert "1 rows: event_distance had spaces around the value; trimmed" in result.notes


def test_event_year_must_be_whole(tmp_path):
    path = _races_csv(tmp_path, ["a,M,18-24,False,70.3,2020.5,5000"])
    with pytest.raises(InputError, match="whole numbers") as info:
        read_races(path)
    _assert_names(info.value, path, "event_year")


# --- athlete_hash keys --------------------------------------------------------------------


def test_duplicated_hash_in_profiles_is_an_error(tmp_path):
    path = _write(tmp_path, "p.csv", f"{PROFILE_HEADER}\na,1,5000\nb,2,6000\na,3,7000\n")
    with pytest.raises(InputError, match="duplicated") as info:
        read_profiles(path)
    _assert_names(info.value, path, "athlete_hash")
    assert info.value.rows == 2
    assert "(2 rows)" in str(info.value)


def test_duplicated_hash_in_clusters_is_an_error(tmp_path):
    path = _write(tmp_path, "c.csv", f"{CLUSTER_HEADER}\na,1\na,2\nb,1\nb,3\nc,0\n")
    with pytest.raises(InputError, match="duplicated") as info:
        read_clusters(path)
    _assert_names(info.value, path, "athlete_hash")
    assert info.value.rows == 4
    assert "(4 rows)" in str(info.value)


def test_a_sorted_file_is_checked_for_duplicates_by_order(tmp_path, monkeypatch):
    """A file sorted by athlete_hash is known to hold no duplicate by comparing neighbours (no
    hashing); a sorted file with a repeated hash, or any other, is still checked in full."""
    from racedayai_bayes.lib.data.contracts import _strictly_increasing

    sorted_ok = _write(tmp_path, "ok.csv", f"{PROFILE_HEADER}\na,1,5000\nb,2,6000\nc,3,7000\n")
    duplicated = pd.Series.duplicated

    def no_hashing(series, *args, **kwargs):  # the header's own check of its names may run
        if series.name == "athlete_hash":
            pytest.fail("the sorted file's hashes were hashed")
        return duplicated(series, *args, **kwargs)

    with monkeypatch.context() as m:  # the order check alone
        m.setattr(pd.Series, "duplicated", no_hashing)
        hashes = read_profiles(sorted_ok).frame["athlete_hash"]
    assert hashes.tolist() == ["a", "b", "c"]
    repeated = _write(tmp_path, "rep.csv", f"{PROFILE_HEADER}\na,1,5000\nb,2,6000\nb,3,7000\nc,3,7000\n")
    with pytest.raises(InputError, match="duplicated") as info:
        read_profiles(repeated)
    assert info.value.rows == 2
    text = lambda values: pd.Series(pd.array(values, dtype="string[pyarrow]"))  # noqa: E731
    assert _strictly_increasing(text(["a", "b", "c"]))
    assert not _strictly_increasing(text(["a", "b", "b"]))  # equal neighbours
    assert not _strictly_increasing(text(["b", "a", "c"]))  # distinct but not sorted: hashed instead
    # a blank makes its two comparisons null, which Arrow's ``all`` would skip: a repeat beyond it unseen
    assert not _strictly_increasing(text(["a", "b", None, "a", "b"]))
    assert not _strictly_increasing(pd.Series(["a", "b"], dtype=object))  # not Arrow-backed


def test_blank_hash_in_profiles_is_dropped_with_a_note(tmp_path):
    # two blank hashes are not a "duplicate": they are dropped first
    path = _write(tmp_path, "p.csv", f"{PROFILE_HEADER}\n,1,5000\na,2,6000\n  ,3,7000\n")
    result = read_profiles(path)
    assert result.frame["athlete_hash"].tolist() == ["a"]
    assert result.frame["total_races"].tolist() == [2.0]
    assert any(n.startswith("2 rows dropped") and "blank athlete_hash" in n for n in result.notes)


def test_blank_hash_in_races_stays_missing(tmp_path):
    frame = read_races(_races_csv(tmp_path, [",M,18-24,False,70.3,2020,5000", "a,M,18-24,False,70.3,2020,5000"])).frame
    assert len(frame) == 2
    assert pd.isna(frame.loc[0, "athlete_hash"])
    assert frame.loc[1, "athlete_hash"] == "a"


# --- encodings and line endings -----------------------------------------------------------

_BODY = [
    "a,M,18-24,True,70.3,2020,5000.5",
    ",F,25-29,,140.6,2021,",
    "c,,,False,140.60,2019,40000",
]


@pytest.mark.parametrize(
    "prefix, newline",
    [(b"\xef\xbb\xbf", "\n"), (b"", "\r\n"), (b"\xef\xbb\xbf", "\r\n")],
    ids=["bom", "crlf", "bom+crlf"],
)
def test_bom_and_crlf_parse_like_a_clean_file(tmp_path, prefix, newline):
    text = "\n".join([RACE_HEADER, *race_rows(_BODY)]) + "\n"
    clean = read_races(_write(tmp_path, "clean.csv", text))
    odd = read_races(_write(tmp_path, "odd.csv", prefix + text.replace("\n", newline).encode()))
    pd.testing.assert_frame_equal(clean.frame, odd.frame)
    # the body's one distance written as a float is the only note of either file
    assert odd.notes == clean.notes == ["1 rows: event_distance in another spelling, read as 70.3 or 140.6: '140.60' \u2192 140.6"]
    assert odd.frame.columns[0] == "athlete_hash"


@pytest.mark.parametrize(
    "spell, newline",
    [(lambda n: f" {n}", "\n"), (lambda n: f"{n} ", "\r\n"), (lambda n: f' "{n}"', "\n"), (lambda n: f'"{n}"', "\n"),
     (lambda n: f'"{n}" ', "\n")],
    ids=["space-before", "space-after+crlf", "space-then-quotes", "quotes", "quotes-then-space"],
)
def test_header_names_with_spaces_or_quotes_are_read_as_their_plain_names_and_counted(tmp_path, spell, newline):
    """A header written with ', ' between names is read like a clean one: not an error, not a
    crash in the CSV reader (its columns are asked for by the names the file holds)."""
    text = "\n".join([RACE_HEADER, *race_rows(_BODY)]) + "\n"
    clean = read_races(_write(tmp_path, "clean.csv", text))
    names = RACE_HEADER.split(",")
    header = ",".join([names[0], *(spell(n) for n in names[1:])])
    odd = read_races(_write(tmp_path, "odd.csv", (header + "\n" + text.split("\n", 1)[1]).replace("\n", newline)))
    pd.testing.assert_frame_equal(clean.frame, odd.frame)
    spaced = len(names) - 1 if " " in spell("x") else 0
    as_read = [next(csv.reader([spell(n)]))[0] for n in names[1:4]]  # a CSV reader's name: quotes removed
    assert odd.notes == ([f"{spaced} header names had spaces around them ({', '.join(repr(n) for n in as_read)}); "
                          "read as the plain names"] if spaced else []) + clean.notes
    profiles = read_profiles(_write(tmp_path, "p.csv", ", ".join(PROFILE_HEADER.split(",")) + "\na,3,5000\n"))
    assert profiles.frame["pb_total_sec"].tolist() == [5000.0]
    assert profiles.notes[0] == "2 header names had spaces around them (' total_races', ' pb_total_sec'); read as the plain names"
    clusters = read_clusters(_write(tmp_path, "c.csv", ", ".join(CLUSTER_HEADER.split(",")) + "\na,7\n"))
    assert clusters.frame["cluster_id"].tolist() == [7]
    assert clusters.notes == ["1 header name had spaces around it (' cluster_id'); read as the plain name"]


def test_a_header_without_its_line_end_is_a_header_only_file(tmp_path):
    """A header with no newline and no rows reads like a header-only file, not a CSV parse error."""
    with pytest.raises(InputError, match="has a header but no rows") as info:
        read_races(_write(tmp_path, "r.csv", RACE_HEADER))
    _assert_names(info.value, tmp_path / "r.csv", None)
    assert len(read_profiles(_write(tmp_path, "p.csv", PROFILE_HEADER)).frame) == 0
    assert len(read_clusters(_write(tmp_path, "c.csv", CLUSTER_HEADER)).frame) == 0


def test_bom_and_crlf_in_profiles_and_clusters(tmp_path):
    p = read_profiles(_write(tmp_path, "p.csv", b"\xef\xbb\xbf" + f"{PROFILE_HEADER}\r\na,3,5000\r\n".encode()))
    c = read_clusters(_write(tmp_path, "c.csv", b"\xef\xbb\xbf" + f"{CLUSTER_HEADER}\r\na,7\r\n".encode()))
    assert p.frame["athlete_hash"].tolist() == ["a"]
    assert p.frame["pb_total_sec"].tolist() == [5000.0]
    assert c.frame["athlete_hash"].tolist() == ["a"]
    assert c.frame["cluster_id"].tolist() == [7]


def test_non_utf8_bytes_in_athlete_hash_are_replaced_and_counted(tmp_path):
    text = "\n".join([RACE_HEADER, *race_rows(["caf\xe9,M,18-24,False,70.3,2020,5000", "b,F,18-24,False,140.6,2020,40000"])]) + "\n"
    result = read_races(_write(tmp_path, "r.csv", text.encode("latin-1")))
    frame = result.frame
    assert frame["athlete_hash"].tolist() == ["caf\ufffd", "b"]
    assert frame["total_sec"].tolist() == [5000.0, 40000.0]
    notes = [n for n in result.notes if "UTF-8" in n]
    assert len(notes) == 1 and notes[0].startswith("1 cells")


def test_non_utf8_bytes_in_an_unused_column_do_not_matter(tmp_path):
    # athlete_name is not read, so its bytes cannot corrupt anything the model uses
    header = "athlete_name," + RACE_HEADER
    text = "\n".join([header, *race_rows(["Jos\xe9,a,M,18-24,False,70.3,2020,5000", "Ann,b,F,25-29,False,140.6,2021,40000"], header)]) + "\n"
    result = read_races(_write(tmp_path, "r.csv", text.encode("latin-1")))
    assert result.frame["athlete_hash"].tolist() == ["a", "b"]
    assert result.frame["total_sec"].tolist() == [5000.0, 40000.0]
    assert not result.frame["athlete_hash"].str.contains("\ufffd").any()


def test_non_utf8_bytes_in_profiles_hash_with_crlf(tmp_path):
    raw = f"{PROFILE_HEADER}\r\nJos\xe9,3,5000\r\nb,1,6000\r\n".encode("latin-1")
    result = read_profiles(_write(tmp_path, "p.csv", raw))
    assert result.frame["athlete_hash"].tolist() == ["Jos\ufffd", "b"]
    assert result.frame["total_races"].tolist() == [3.0, 1.0]
    assert any(n.startswith("1 cells") and "UTF-8" in n for n in result.notes)


# --- clusters -----------------------------------------------------------------------------


@pytest.mark.parametrize("value, problem", [("1.5", "whole numbers"), ("x", "not numeric")])
def test_non_integer_cluster_id_is_an_error(tmp_path, value, problem):
    path = _write(tmp_path, "c.csv", f"{CLUSTER_HEADER}\na,{value}\nb,1\n")
    with pytest.raises(InputError, match=problem) as info:
        read_clusters(path)
    _assert_names(info.value, path, "cluster_id")
    assert info.value.rows == 1


def test_cluster_ids_are_integers_and_blank_ids_dropped(tmp_path):
    result = read_clusters(_write(tmp_path, "c.csv", f"{CLUSTER_HEADER}\na,3\nb,\nc,0.0\n"))
    assert result.frame["athlete_hash"].tolist() == ["a", "c"]
    assert str(result.frame["cluster_id"].dtype) == "Int64"
    assert result.frame["cluster_id"].tolist() == [3, 0]
    assert any(n.startswith("1 rows dropped") for n in result.notes)


# --- rows to predict (racedayai-bayes predict) ---------------------------------------------


def test_model_rows_missing_a_covariate_column_names_file_and_column(tmp_path):
    from racedayai_bayes.lib.data.contracts import read_model_rows

    path = tmp_path / "rows.csv"
    path.write_text("gender,age_group,pb_total_sec,total_races\nM,30-34,20000,3\n")
    with pytest.raises(InputError) as err:
        read_model_rows(path)
    assert err.value.column == "cluster_id" and "rows.csv" in str(err.value)


def test_model_rows_without_optional_columns_are_typed_and_blank(tmp_path):
    from racedayai_bayes.lib.data.contracts import read_model_rows

    path = tmp_path / "rows.csv"
    path.write_text("gender,age_group,pb_total_sec,total_races,cluster_id\nM,30-34,20000,3,\nF,80+,,1,4\n")
    result = read_model_rows(path)
    frame = result.frame
    assert frame["cluster_id"].dtype == "Int64" and frame["cluster_id"].isna().tolist() == [True, False]
    assert frame["pb_total_sec"].isna().tolist() == [False, True]
    assert frame["athlete_hash"].isna().all() and frame["total_sec"].isna().all()
    assert frame["event_year"].dtype == "Int64" and frame["event_name"].isna().all()
    assert sum("optional column" in n for n in result.notes) == 5  # held_out is derived, not blank


# --- closed vocabularies: gender and is_pro ------------------------------------------------

GENDER_SPELLINGS = {
    "M": "M", "m": "M", "male": "M", "Male": "M", "MALE": "M",
    "F": "F", "f": "F", "female": "F", "Female": "F", "W": "F", "w": "F", "woman": "F",
}


def _race_rows(genders: list[str], is_pro: list[str] | None = None, ages: list[str] | None = None) -> list[str]:
    n = len(genders)
    is_pro = is_pro or ["False"] * n
    ages = ages or ["30-34"] * n
    return [f"h{i},{g},{a},{p},70.3,2020,{5000 + i}" for i, (g, p, a) in enumerate(zip(genders, is_pro, ages))]


def test_the_gender_vocabulary_reads_only_genders_the_encoding_knows():
    from racedayai_bayes.lib.data.contracts import GENDER_SPELLINGS as VOCABULARY
    from racedayai_bayes.lib.models.seed.encoding import GENDER_MAP

    assert set(VOCABULARY.values()) == set(GENDER_MAP) == {"M", "F"}
    assert {k.lower() for k in GENDER_SPELLINGS} <= set(VOCABULARY)  # every spelling the issue lists


def test_every_gender_spelling_of_the_vocabulary_is_read_as_m_or_f(tmp_path):
    spellings = list(GENDER_SPELLINGS)
    result = read_races(_races_csv(tmp_path, _race_rows([*spellings, ""])))
    frame = result.frame
    assert frame["gender"].iloc[:-1].tolist() == list(GENDER_SPELLINGS.values())
    assert pd.isna(frame["gender"].iloc[-1])  # blank stays blank
    (note,) = [n for n in result.notes if n.startswith(f"{len(spellings) - 2} rows: gender")]
    assert "'Male' \u2192 M" in note and "'f' \u2192 F" in note  # 10 rows not spelled M or F; 5 examples


def test_a_gender_file_spelled_male_female_reads_exactly_like_one_spelled_m_f(tmp_path):
    plain = read_races(_races_csv(tmp_path, _race_rows(["M", "F", "", "F"]), name="plain.csv")).frame
    for spelled in (["Male", "Female", "", "female"], ["m", "f", "", "w"]):
        other = read_races(_races_csv(tmp_path, _race_rows(spelled), name="spelled.csv")).frame
        pd.testing.assert_frame_equal(other, plain)


def test_a_few_unrecognised_genders_are_kept_and_counted(tmp_path):
    genders = ["M", "F"] * 100 + ["X", "x", ""]  # 2 of 202 non-blank values: 0.99%, under 1%
    result = read_races(_races_csv(tmp_path, _race_rows(genders)))
    assert result.frame["gender"].iloc[200:202].tolist() == ["X", "x"]  # kept as written
    note = "2 rows: gender not M or F (e.g. 'X', 'x'); encoded like a blank gender (the seed models: index 0, as the notebook does; the forecast model: U)"
    assert note in result.notes


def test_more_than_one_percent_unrecognised_genders_is_an_error_naming_file_column_share_and_examples(tmp_path):
    genders = ["M"] * 97 + ["Unknown", "Unknown", "X"]  # 3 of 100 non-blank values
    path = _races_csv(tmp_path, _race_rows(genders + ["", ""]))
    with pytest.raises(InputError, match="gender") as info:
        read_races(path)
    _assert_names(info.value, path, "gender")
    assert info.value.rows == 3
    text = str(info.value)
    assert "3.0% of the 100 non-blank values are not M or F (e.g. 'Unknown', 'X') (3 rows)" in text
    assert "write M or F" in text and "leave the cell blank" in text  # what to do


def test_a_few_unrecognised_is_pro_values_are_read_as_blank_and_counted(tmp_path):
    is_pro = ["False"] * 150 + ["maybe", "True"]
    result = read_races(_races_csv(tmp_path, _race_rows(["M"] * 152, is_pro=is_pro)))
    got = result.frame["is_pro"]
    assert pd.isna(got.iloc[150]) and bool(got.iloc[151]) and not got.iloc[:150].any()
    assert "1 rows: is_pro not True or False (e.g. 'maybe'); read as blank (not known to be a pro, so the race is kept)" in result.notes


def test_more_than_one_percent_unrecognised_is_pro_is_an_error_saying_what_to_write(tmp_path):
    path = _races_csv(tmp_path, _race_rows(["M"] * 50, is_pro=["False"] * 48 + ["maybe", "pro"]))
    with pytest.raises(InputError, match="is_pro") as info:
        read_races(path)
    _assert_names(info.value, path, "is_pro")
    assert "4.0% of the 50 non-blank values are not True or False" in str(info.value)
    assert "write True or False" in str(info.value)


# --- age groups: an open vocabulary, dashes and spaces tidied --------------------------------


@pytest.mark.parametrize(
    "written, read",
    [
        ("30\u201334", "30-34"),  # en dash
        ("30\u201434", "30-34"),  # em dash
        ("30\u221234", "30-34"),  # minus sign
        ("30\u201134", "30-34"),  # non-breaking hyphen
        ("M30\u201234", "M30-34"),  # figure dash
        ("30 - 34", "30-34"),
        ("30  -34", "30-34"),
        ("M 30-34", "M 30-34"),  # one space between words is not stray: its own level
        ("70+", "70+"),
        ("PRO", "PRO"),
    ],
)
def test_age_group_dashes_and_stray_spaces_are_normalised(tmp_path, written, read):
    result = read_races(_races_csv(tmp_path, _race_rows(["M"], ages=[written])))
    assert result.frame["age_group"].tolist() == [read]
    changed = [n for n in result.notes if "age_group" in n]
    assert (changed == []) == (written == read)


def test_age_groups_stay_an_open_vocabulary_and_changes_are_counted(tmp_path):
    ages = ["30-34", "30\u201334", "30\u201334", "M30-34", "18-99", "35 - 39"]
    result = read_races(_races_csv(tmp_path, _race_rows(["M"] * len(ages), ages=ages)))
    assert result.frame["age_group"].tolist() == ["30-34", "30-34", "30-34", "M30-34", "18-99", "35-39"]
    (note,) = [n for n in result.notes if "age_group" in n]
    assert note.startswith("3 rows: age_group normalised")
    assert "'30\u201334' \u2192 '30-34'" in note and "'35 - 39' \u2192 '35-39'" in note


def test_rows_to_predict_get_the_same_gender_and_age_group_reading(tmp_path):
    from racedayai_bayes.lib.data.contracts import read_model_rows

    path = _write(tmp_path, "rows.csv", csv_text(
        "gender,age_group,pb_total_sec,total_races,cluster_id",
        ["Male,30\u201334,20000,3,", "woman,35-39,,1,4", ",30-34,,,"],
    ))
    result = read_model_rows(path)
    assert result.frame["gender"].tolist()[:2] == ["M", "F"] and pd.isna(result.frame["gender"].iloc[2])
    assert result.frame["age_group"].tolist() == ["30-34", "35-39", "30-34"]
    assert any(n.startswith("2 rows: gender") for n in result.notes)
    assert any(n.startswith("1 rows: age_group normalised") for n in result.notes)

    bad = _write(tmp_path, "bad.csv", csv_text("gender,age_group,pb_total_sec,total_races,cluster_id", ["X,30-34,,,"]))
    with pytest.raises(InputError, match="not M or F") as info:
        read_model_rows(bad)
    _assert_names(info.value, bad, "gender")


# --- start lists (the forecast command and the race_forecasts asset) -------------------------

START = "athlete_hash,gender,age_group"


@pytest.mark.parametrize("event_columns, text, column, problem", [
    (False, "athlete_hash,gender\na,M\n", "age_group", "required column missing"),
    (True, f"{START}\na,M,30-34\n", "event_name', 'event_year', 'event_distance", "required columns missing"),
    (False, "", None, "is empty"),
    (False, f"{START}\n", None, "has a header but no athletes"),
    (False, f"{START},event_name\na,M,30-34,X\nb,F,30-34,Y\n", "event_name", "holds 2 different values (X, Y)"),
    (True, f"{START},event_name,event_year,event_distance\na,M,30-34,,2027,70.3\n", "event_name", "is blank in every row"),
    (False, f"{START},event_year\na,M,30-34,next\n", "event_year", "is not a season (a year): 'next'"),
])
def test_bad_start_lists_are_input_errors_naming_file_and_column(tmp_path, event_columns, text, column, problem):
    path = tmp_path / "im703-x-2027.csv"
    path.write_text(text)
    with pytest.raises(InputError) as err:
        read_start_list(path, event_columns=event_columns)
    message = str(err.value)
    named = f", column{'s' if column and ',' in column else ''} '{column}'" if column else ""
    assert message.startswith(f"{path}{named}"), message
    assert problem in message, message


def test_a_start_list_keeps_its_columns_counts_repeats_and_reads_spellings(tmp_path):
    path = tmp_path / "start.csv"
    path.write_text(f"bib,{START},event_name,event_year,event_distance\n"
                    "1,a,male,30 - 34,X,2027.0,70.3\n2,a,M,30-34,X,2027,70.3\n3,,f,35–39,X,2027,70.3\n")
    start = read_start_list(path, event_columns=True)
    assert list(start.rows.columns[:4]) == ["bib", "athlete_hash", "gender", "age_group"]
    assert start.athletes["gender"].tolist() == ["M", "M", "F"]
    assert start.athletes["age_group"].tolist() == ["30-34", "30-34", "35-39"]
    assert start.event == {"event_name": "X", "event_year": 2027, "event_distance": "70.3"}
    assert start.counts == {"athletes": 3, "without_athlete_hash": 1, "listed_more_than_once": 1,
                            "listed_inconsistently": 0}
    assert any("listed more than once (e.g. a); each of their rows gets the same forecast" in n for n in start.notes)


def test_a_start_lists_float_spelling_of_its_distance_is_read_and_noted(tmp_path):
    """'70.30' (a float writer's) is 70.3, in the rows and the race, and said so, as the
    input files say it; a missing required column's hint is the start list's own."""
    path = tmp_path / "start.csv"
    path.write_text(f"{START},event_name,event_year,event_distance\na,M,30-34,X,2027,70.30\nb,F,30-34,X,2027,70.3\n")
    start = read_start_list(path, event_columns=True)
    assert start.event["event_distance"] == "70.3"
    assert start.rows["event_distance"].tolist() == ["70.3", "70.3"]
    assert any("1 rows: event_distance in another spelling, read as 70.3 or 140.6: '70.30' \u2192 70.3" in n
               for n in start.notes), start.notes
    path.write_text("athlete_hash,gender\na,M\n")
    with pytest.raises(InputError, match="a start list has one row per athlete"):
        read_start_list(path)


def test_an_athlete_listed_twice_with_different_age_groups_is_said_so(tmp_path):
    """Their rows are forecast as written, so they differ: the note says which athlete and why,
    not that every repeated row gets the same forecast."""
    path = tmp_path / "start.csv"
    path.write_text(f"{START}\na,M,35-39\na,M,40-44\nb,F,30-34\nb,female,30-34\nc,F,30-34\n")
    start = read_start_list(path)
    assert start.counts["listed_more_than_once"] == 2
    assert start.counts["listed_inconsistently"] == 1
    note = next(n for n in start.notes if "listed more than once" in n)
    assert "1 of them with different genders or age groups in their rows (e.g. a)" in note
    assert "each row forecast as written" in note


# --- white space around cells and empty cells ----------------------------------------------


@pytest.mark.parametrize("cells", [
    ["a", "b", "c"],  # clean: nothing to trim or blank
    [" a", "b ", "c"],  # ASCII spaces at either end
    ["a", "\tb", "c\x1c"],  # a tab, a file separator (both white space to Arrow and to Python)
    ["a", "\u00a0b", "c\u3000"],  # Unicode white space: a no-break and an ideographic space
    ["Échallens", "b", "c"],  # a first byte that is not ASCII and no white space
    ["a", '""', "c"],  # a quoted empty cell
    ["a", '" "', "c"],  # a quoted blank cell
    ["a", "", "c"],  # a missing cell
    ["", "", ""],  # nothing at all
])
def test_text_cells_are_trimmed_and_blank_ones_missing_whatever_the_shortcut(tmp_path, cells):
    """A column's cells are trimmed of white space and blanks become missing; a clean column
    skips both passes. The result is the same as trimming and blanking every column."""
    from racedayai_bayes.lib.data.contracts import _read_header, _read_text_columns

    path = _write(tmp_path, "t.csv", "x,y\n" + "".join(f"{c},k{i}\n" for i, c in enumerate(cells)))
    frame, _ = _read_text_columns(path, ["x", "y"], _read_header(path))
    raw = pd.read_csv(path, engine="pyarrow", dtype="string", keep_default_na=False, na_values=[""])
    for col in ("x", "y"):
        expected = raw[col].str.strip().replace("", pd.NA)
        pd.testing.assert_series_equal(frame[col], expected, check_names=False)


def test_profile_values_that_no_athlete_can_have_are_missing_and_counted_or_an_error(tmp_path):
    """A negative count of races, or a PB that is no finish time (0, negative, a week or
    more), would reach the seed model's design (log1p of a negative count is NaN, a PB of
    1e12 s a fitness of 1e8 sd): read as missing (the race gets the no-profile encoding) and
    counted; more than 1% of a column is an error. A PB beyond the models' 17 h bound is a
    finish time still (an athlete whose races all took longer): kept."""
    good = [f"a{i},{1 + i % 9},{20000 + i}" for i in range(300)] + ["slow,1,104986"]
    odd = ["x,-3,20000", "y,2,0", "z,2,1e12", "w,2,-5"]
    result = read_profiles(_write(tmp_path, "p.csv", csv_text(PROFILE_HEADER, good + odd)))
    frame = result.frame.set_index("athlete_hash")
    assert pd.isna(frame.loc["x", "total_races"]) and frame.loc["x", "pb_total_sec"] == 20000
    assert frame.loc[["y", "z", "w"], "pb_total_sec"].isna().all() and (frame.loc[["y", "z", "w"], "total_races"] == 2).all()
    assert frame["pb_total_sec"].notna().sum() == 302 and frame["total_races"].notna().sum() == 304
    assert frame.loc["slow", "pb_total_sec"] == 104986
    assert "1 rows: total_races not a count (0 or more) (e.g. '-3'); treated as missing" in result.notes
    assert ("3 rows: pb_total_sec not a finish time in seconds (0 to 604,800, a week) (e.g. '0', '1e12', '-5'); "
            "treated as missing") in result.notes
    path = _write(tmp_path, "many.csv", csv_text(PROFILE_HEADER, good[:20] + odd[1:]))
    with pytest.raises(InputError, match="not a finish time in seconds") as info:
        read_profiles(path)
    _assert_names(info.value, path, "pb_total_sec")


def test_a_file_given_to_a_command_gets_advice_about_that_file_not_the_pipelines_inputs(tmp_path):
    """predict's --input and forecast's --start-list are files the user named: a missing one,
    or a column missing from it, is not fixed by RACEDAYAI_INPUT_DIR or `make demo-data`."""
    from racedayai_bayes.lib.data.contracts import read_model_rows

    for reader in (read_model_rows, read_start_list):
        with pytest.raises(InputError, match=r"file not found \(check the path given to the command\)") as info:
            reader(tmp_path / "nope.csv")
        assert "RACEDAYAI_INPUT_DIR" not in str(info.value)
    path = _write(tmp_path, "rows.csv", "athlete_hash,gender,age_group\na,M,30-34\n")
    with pytest.raises(InputError, match="required column missing") as info:
        read_model_rows(path, ("gender", "age_group", "event_name"))  # the forecast model's
    assert "RACEDAYAI_INPUT_DIR" not in str(info.value)
    # the columns the reader was asked for, named in full (predict asks for the published model's)
    assert str(info.value).startswith(f"{path}, column 'event_name': ")
    assert str(info.value).endswith("; add the column; the file needs gender, age_group, event_name")
    # several missing: each named, in the plural
    with pytest.raises(InputError, match="required columns missing") as info:
        read_model_rows(path, ("gender", "pb_total_sec", "total_races"))
    assert str(info.value).startswith(f"{path}, columns 'pb_total_sec', 'total_races': ")
    assert info.value.column == "pb_total_sec, total_races"


@pytest.mark.parametrize("which", ["races", "profiles", "start list"])
def test_a_column_named_twice_in_the_header_is_an_error_naming_it(tmp_path, which):
    """Which of two columns of one name is meant cannot be told; the reader took the first and
    dropped the other without a word. Blank names (trailing commas) are not names."""
    if which == "races":
        path = _write(tmp_path, "athlete_race.csv", f"{RACE_HEADER},gender\n" + race_rows(["a,M,18-24,False,70.3,2020,5000"])[0] + ",F\n")
        read = read_races
    elif which == "profiles":
        path = _write(tmp_path, "athlete_profile.csv", f"{PROFILE_HEADER},{PROFILE_HEADER.split(',')[1]}\n")
        read = read_profiles
    else:
        path = _write(tmp_path, "start.csv", "athlete_hash,gender,age_group,bib,bib,,\na,M,30-34,1,2,,\n")
        read = read_start_list
    named = {"races": "gender", "profiles": PROFILE_HEADER.split(",")[1], "start list": "bib"}[which]
    with pytest.raises(InputError, match=rf"column '{named}': the header names 1 column more than once \('{named}'\); keep one"):
        read(path)
    if which == "start list":
        _write(tmp_path, "ok.csv", "athlete_hash,gender,age_group,,\na,M,30-34,,\n")
        assert len(read_start_list(tmp_path / "ok.csv").rows) == 1


def test_race_columns_given_on_the_command_line_replace_the_files(tmp_path):
    """``--event`` (``--year``) names the race: a file holding two race names (seasons) is then
    not an error, as the file's column is not what is forecast."""
    path = _write(tmp_path, "start.csv", "athlete_hash,gender,age_group,event_name,event_year\n"
                                         "a,M,30-34,X,2027\nb,F,30-34,Y,2028\n")
    with pytest.raises(InputError, match="column 'event_name': holds 2 different values"):
        read_start_list(path)
    with pytest.raises(InputError, match="column 'event_year': holds 2 different values"):
        read_start_list(path, given=("event_name",))
    start = read_start_list(path, given=("event_name", "event_year"))
    assert start.event == {} and len(start.rows) == 2


# --- the race file's columns checked on a second core ----------------------------------------


class _Core:
    """A ``second_core`` callable: grants a second core (or not), counts the asks and the
    releases."""

    def __init__(self, grant: bool):
        self.grant, self.asked, self.released = grant, 0, 0

    def __call__(self):
        import contextlib

        @contextlib.contextmanager
        def held():
            self.asked += 1
            try:
                yield self.grant
            finally:
                self.released += 1

        return held()


def _is_pro_checked_last(monkeypatch):
    """Make the is_pro check (the first in column order) wait until the total_sec check (the
    last) has run, in another thread: the checks then end in the reverse of their order."""
    import threading

    from racedayai_bayes.lib.data import contracts

    done = threading.Event()
    boolean, numeric = contracts._boolean, contracts._numeric

    def late_boolean(*args, **kwargs):
        assert done.wait(20), "the total_sec check never ran beside this one"
        return boolean(*args, **kwargs)

    def numeric_then_go(frame, col, *args, **kwargs):
        try:
            return numeric(frame, col, *args, **kwargs)
        finally:
            if col == "total_sec":
                done.set()

    monkeypatch.setattr(contracts, "_boolean", late_boolean)
    monkeypatch.setattr(contracts, "_numeric", numeric_then_go)


def test_races_checked_on_a_second_core_are_read_as_on_one(tmp_path, monkeypatch):
    # every column with something to normalise, trim or count: the frame and the notes
    # (and their order) are the same whether the checks run two at a time or in order,
    # even when the first column's check ends last
    rows = [f"h{i},{'male' if i % 3 else 'F'},{'18 – 24' if i % 2 else '25-29'},{'yes' if i == 7 else 'False'},"
            f"{'70.30' if i % 4 == 0 else '140.6'},{2019 + i % 3},{5000 + i}, IRONMAN Testville " for i in range(300)]
    rows += ["x,M,18-24,False,70.3,2020,DNF,IRONMAN Testville", "y,M,18-24,False,70.3,2020,nan,"]
    path = _races_csv(tmp_path, rows)
    one = read_races(path)
    assert len(one.notes) >= 6  # spaces trimmed, is_pro, genders, age groups, distances, a bad and a 'nan' time
    assert any("is_pro" in n for n in one.notes)
    refused = _Core(False)
    three = read_races(path, second_core=refused)
    pd.testing.assert_frame_equal(three.frame, one.frame)
    assert three.notes == one.notes and refused.asked == refused.released == 2
    _is_pro_checked_last(monkeypatch)
    core = _Core(True)
    two = read_races(path, second_core=core)
    pd.testing.assert_frame_equal(two.frame, one.frame)
    assert two.notes == one.notes
    assert core.asked == core.released == 2  # after the parse: the edges, then the columns' checks


def test_races_checked_on_a_second_core_raise_the_first_error_in_column_order(tmp_path, monkeypatch):
    # is_pro and total_sec both fail: in order, is_pro's check comes first and its error is
    # the one raised, though total_sec's fails first; the second core is given back
    rows = ["a,M,18-24,maybe,70.3,2020,DNF", "b,M,18-24,perhaps,70.3,2020,DQ", "c,M,18-24,False,70.3,2020,5000"]
    path = _races_csv(tmp_path, rows)
    with pytest.raises(InputError) as info:
        read_races(path)
    _assert_names(info.value, path, "is_pro")
    _is_pro_checked_last(monkeypatch)
    core = _Core(True)
    with pytest.raises(InputError) as info:
        read_races(path, second_core=core)
    _assert_names(info.value, path, "is_pro")
    assert core.asked == core.released == 2


@pytest.mark.parametrize("cells", [
    ["4000", " 5000.5", "inf", "DNF", None, "-inf", "nan", "1e3"],  # the slow path: a cell Arrow cannot cast
    ["4000", "5000.5", "inf", None, "1e3"],  # Arrow's cast parses every cell
])
def test_parse_numbers_reads_pandas_and_arrow_text_alike(cells):
    import numpy as np
    import pyarrow as pa

    from racedayai_bayes.lib.data.contracts import parse_numbers

    expected = np.array([{"4000": 4000.0, " 5000.5": 5000.5, "5000.5": 5000.5, "1e3": 1000.0}.get(c, np.nan)
                         for c in cells])
    for text in (pd.Series(cells, dtype="string"), pd.Series(cells, dtype=object), pa.chunked_array([pa.array(cells)]),
                 pa.array(cells)):
        values = parse_numbers(text)
        np.testing.assert_array_equal(values, expected)  # NaN where missing, not a number, or not finite
        values[0] = 1.0  # writable: the caller marks cells it rejects
