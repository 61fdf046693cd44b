"""The synthetic world: contract shape, determinism, real-data quirks, derived profiles and
clusters, and calibration of the seed's model frame against real summary statistics."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from racedayai_bayes.demo import simulate as sim

# Calibration tolerances, per distance, on the seed's model frame (age-group 70.3/140.6
# finishers with 3600 < total_sec < 61200) read back from the demo CSVs.
MEAN_SD_REL_TOL = 0.05  # mean and sd of total_sec, relative
GENDER_SHARE_TOL = 0.03  # female share among rows with a gender, absolute
AGE_SHARE_TOL = 0.03  # share of each of the 11 standard age groups, absolute
REPEAT_SHARE_TOL = 0.05  # share of named athletes with 2+ finishes, absolute
DNF_SHARE_TOL = 0.02  # DNF share of non-pro starts, absolute

# shared/ sits beside the repository (for developers and for CI's clean clone alike)
CALIBRATION_JSON = Path(__file__).resolve().parents[2] / "shared" / "calibration" / "real_results_summary.json"
MODEL_DISTANCES = ["70.3", "140.6"]

# The data contract's columns, written out here rather than taken from the module.
RACE_COLUMNS = (
    "athlete_hash, athlete_name, gender, age_group, age_band, country, country_iso2, is_pro, "
    "event_name, event_year, event_location, event_distance, source, swim_sec, t1_sec, "
    "bike_sec, t2_sec, run_sec, total_sec, overall_rank, gender_rank, age_group_rank, "
    "division_rank, finish_status, swim_pct, bike_pct, run_pct, transition_pct, "
    "bike_run_ratio, fade_ratio, implied_bike_if, cohort_percentile").split(", ")
PROFILE_COLUMNS = (
    "athlete_hash, athlete_name, gender, country, total_races, years_active, distances_raced, "
    "pb_swim_sec, pb_bike_sec, pb_run_sec, pb_total_sec, first_race_year, latest_race_year, "
    "improvement_slope, consistency_cv, swim_strength_z, bike_strength_z, run_strength_z, "
    "dominant_discipline, dnf_count, dnf_rate, mean_fade").split(", ")
CLUSTER_COLUMNS = ["athlete_hash", "cluster_id"]
CONTRACT_FRAMES = ("athlete_race", "athlete_profile", "cluster_assignments")


@pytest.fixture(scope="module")
def world() -> dict[str, pd.DataFrame]:
    return sim.simulate_world("demo", seed=0)


@pytest.fixture(scope="module")
def truth_world() -> dict[str, pd.DataFrame]:
    """The same world, with what the simulator drew for each race row."""
    return sim.simulate_world("demo", seed=0, truth=True)


@pytest.fixture(scope="module")
def paths(tmp_path_factory) -> dict[str, Path]:
    return sim.write_demo_data(tmp_path_factory.mktemp("seed0"), "demo", seed=0)


@pytest.fixture(scope="module")
def csv(paths) -> dict[str, pd.DataFrame]:
    """The CSVs as the pipeline reads them: keys and event_distance as text."""
    text = {"athlete_hash": str, "event_distance": str}
    return {name: pd.read_csv(path, dtype=text if name != "cluster_assignments" else None,
                              low_memory=False) for name, path in paths.items()}


def model_frame(races: pd.DataFrame) -> pd.DataFrame:
    """The seed's filter (section 1)."""
    return races[(races["is_pro"] != True)  # noqa: E712  (the seed's test; empty is kept)
                 & races["event_distance"].isin(MODEL_DISTANCES)
                 & races["total_sec"].notna()
                 & (races["total_sec"] > 3600) & (races["total_sec"] < 61200)]


def standard_age_group(labels: pd.Series) -> pd.Series:
    """Map each source's spelling to the 11 standard groups; '18-99' and pros map to NaN."""
    std = labels.str.replace(r"^[MF](?=\d)", "", regex=True).replace(
        {"16-19": "18-24", "20-24": "18-24", "70-74": "70+", "75-79": "70+", "80+": "70+"})
    return std.where(std.isin(sim.AGE_GROUPS))


def calibration_stats(races: pd.DataFrame, distance: str) -> dict:
    frame = model_frame(races)
    rows = frame[frame["event_distance"] == distance]
    gender = rows["gender"].dropna()
    ages = standard_age_group(rows["age_group"]).value_counts(normalize=True)
    finishes = rows["athlete_hash"].dropna().value_counts()
    starts = races[(races["is_pro"] != True) & (races["event_distance"] == distance)]  # noqa: E712
    return {
        "mean": rows["total_sec"].mean(), "sd": rows["total_sec"].std(),
        "female_share": (gender == "F").mean(),
        "age_share": ages.reindex(list(sim.AGE_GROUPS), fill_value=0.0).to_numpy(),
        "repeat_share": (finishes >= 2).mean(),
        "dnf_share": (starts["finish_status"].str.lower() == "dnf").mean(),
        "anon_share": rows["athlete_hash"].isna().mean(),
    }


def assert_calibrated(races: pd.DataFrame, distance: str) -> None:
    got, real = calibration_stats(races, distance), sim.CALIBRATION[distance]
    assert got["mean"] == pytest.approx(real["mean"], rel=MEAN_SD_REL_TOL)
    assert got["sd"] == pytest.approx(real["sd"], rel=MEAN_SD_REL_TOL)
    assert got["female_share"] == pytest.approx(real["female_share"], abs=GENDER_SHARE_TOL)
    np.testing.assert_allclose(got["age_share"], real["age_share"], atol=AGE_SHARE_TOL)
    assert got["repeat_share"] == pytest.approx(1 - real["finishes_share"][0],
                                                abs=REPEAT_SHARE_TOL)
    assert got["dnf_share"] == pytest.approx(real["dnf_share"], abs=DNF_SHARE_TOL)


def test_columns_are_the_contracts_in_order(world, csv):
    expected = {"athlete_race": RACE_COLUMNS, "athlete_profile": PROFILE_COLUMNS,
                "cluster_assignments": CLUSTER_COLUMNS}
    for name, columns in expected.items():
        assert list(world[name].columns) == columns
        assert list(csv[name].columns) == columns


def test_same_seed_gives_identical_files_and_another_seed_does_not(world, paths, tmp_path):
    again = sim.write_demo_data(tmp_path / "again", "demo", seed=0)
    for name in paths:
        assert paths[name].read_bytes() == again[name].read_bytes(), name
    other = sim.simulate_world("demo", seed=1)
    for name, frame in world.items():
        assert not frame.equals(other[name]), name


def test_same_seed_gives_identical_frames(world):
    for name, frame in sim.simulate_world("demo", seed=0).items():
        pd.testing.assert_frame_equal(frame, world[name])


def test_recording_the_truth_leaves_the_world_unchanged(world, truth_world):
    assert set(world) == set(CONTRACT_FRAMES)
    assert set(truth_world) == {*CONTRACT_FRAMES, "truth"}
    for name, frame in world.items():
        pd.testing.assert_frame_equal(truth_world[name], frame)
    truth = truth_world["truth"]
    assert list(truth.columns) == list(sim.TRUTH_COLUMNS)
    assert len(truth) == len(world["athlete_race"])
    assert truth.drop(columns="course_debut_season").notna().all().all()


def _distance_codes(races: pd.DataFrame) -> np.ndarray:
    return pd.Index(sim.DISTANCES).get_indexer(races["event_distance"])


def test_truth_reconstructs_every_time(truth_world):
    """exp(latent + day + noise + bad day) is each finish's time, rounded; near the cutoff it is
    squeezed by the simulator's map or, far over it, a DNF; the ETL's corruptions are flagged."""
    races, truth = truth_world["athlete_race"], truth_world["truth"]
    total = races["total_sec"].to_numpy(dtype=np.float64)
    t = np.exp(truth["latent"] + truth["day_effect"] + truth["noise"] + truth["bad_day"]).to_numpy()
    cut = sim.CUTOFF[_distance_codes(races)]
    soft, hard = sim.SQUEEZE_FROM * cut, sim.DNF_OVER * cut
    status, squeezed, corrupted = (truth[c].to_numpy() for c in ("status", "squeezed", "corrupted"))
    finish = (status == 0) & ~corrupted
    plain = finish & ~squeezed
    assert plain.mean() > 0.8
    np.testing.assert_array_equal(np.round(t[plain]), total[plain])
    assert (t[plain] <= soft[plain]).all()
    sq = finish & squeezed
    assert sq.sum() > 10
    assert ((t[sq] > soft[sq]) & (t[sq] <= hard[sq])).all()
    expected = soft + (t - soft) * (cut - sim.SQUEEZE_MARGIN_SEC - soft) / (hard - soft)
    np.testing.assert_array_equal(total[sq], np.round(expected[sq]))
    assert (total[sq] <= cut[sq] - sim.SQUEEZE_MARGIN_SEC).all()
    over = truth["over_cutoff"].to_numpy()
    assert over.any() and (status[over] == 1).all() and (t[over] > hard[over]).all()
    assert np.isnan(total[status != 0]).all()
    published = races["finish_status"].str.lower().map({"finisher": 0, "fin": 0, "dnf": 1, "dq": 2})
    np.testing.assert_array_equal(published.to_numpy(), status)
    bad = corrupted.nonzero()[0]
    assert len(bad) and (status[bad] == 0).all()
    clean = np.round(np.where(squeezed, expected, t)[bad])
    assert ((total[bad] == np.round(clean / 60, 1)) | (total[bad] == clean + 86400)).all()


def test_truth_terms_are_the_simulators(truth_world):
    """The parts add up, ability and the trend follow the module's constants, and the course,
    the day, the athlete and the gender are consistent with the published rows."""
    races, truth = truth_world["athlete_race"], truth_world["truth"]
    d = _distance_codes(races)
    # (latent, their sum, is checked against every finish time by test_truth_reconstructs_every_time)
    z = sim.ABILITY_SHARED * truth["z_shared"] + sim.ABILITY_SPECIFIC * truth["z_distance"]
    pro = truth["pro"].to_numpy()
    np.testing.assert_allclose(truth["ability"], np.where(pro, sim.PRO_ABILITY + sim.PRO_ABILITY_SD * z,
                                                          sim.BETWEEN_SD[d] * z))
    np.testing.assert_allclose(truth["trend_term"],
                               truth["trend"] * (races["event_year"] - truth["center_year"]))
    assert (races.loc[races["is_pro"] == True, "is_pro"].index.isin(np.flatnonzero(pro))).all()  # noqa: E712
    gender = races["gender"].notna().to_numpy()
    np.testing.assert_array_equal(races["gender"][gender] == "F", truth["female"][gender])
    # one day per edition (a course in a season), one effect per course, none before its debut
    edition = races.groupby(truth["edition"])
    assert (edition["event_name"].nunique() == 1).all() and (edition["event_year"].nunique() == 1).all()
    assert (truth.groupby("edition")["day_effect"].nunique() == 1).all()
    assert (truth.groupby(races["event_name"])["course_effect"].nunique() == 1).all()
    debut = truth["course_debut_season"]
    assert debut.notna().any() and debut.isna().any()
    # a new course runs in its debut season: its first edition is then
    first = races["event_year"].groupby(races["event_name"]).min()
    debut_of = debut.groupby(races["event_name"]).first().dropna()
    np.testing.assert_array_equal(first[debut_of.index], debut_of.astype(int))
    # one athlete per hash; anonymous rows are other athletes'
    named = races["athlete_hash"].notna()
    pairs = pd.DataFrame({"hash": races["athlete_hash"][named], "athlete": truth["athlete"][named]})
    assert len(pairs.drop_duplicates()) == pairs["hash"].nunique() == pairs["athlete"].nunique()
    assert not truth["athlete"][~named].isin(pairs["athlete"]).any()
    # the noise's scales and the bad day's rate and mean, up to sampling noise
    for dd in (0, 1):
        assert truth["noise"][d == dd].std() == pytest.approx(sim.WITHIN_SD[dd], rel=0.03)
    bad = truth["bad_day"][truth["bad_day"] > 0]
    assert len(bad) / len(truth) == pytest.approx(sim.BAD_DAY_P, abs=0.004)
    assert bad.mean() == pytest.approx(sim.BAD_DAY_MEAN, rel=0.06)


def test_size_is_about_the_target(csv):
    n = len(model_frame(csv["athlete_race"]))
    assert 0.9 * sim.SIZES["demo"] < n < 1.1 * sim.SIZES["demo"]


@pytest.mark.parametrize("distance", MODEL_DISTANCES)
def test_model_frame_matches_real_summary(csv, distance):
    assert_calibrated(csv["athlete_race"], distance)


@pytest.mark.skipif(not CALIBRATION_JSON.exists(), reason="calibration JSON not available")
def test_calibration_constants_are_the_real_summary():
    real = json.loads(CALIBRATION_JSON.read_text())
    for d in MODEL_DISTANCES:
        ours, theirs = sim.CALIBRATION[d], real[d]
        for key in ("mean", "sd", "p50"):
            assert ours[key] == theirs["total_sec"][key]
        assert ours["ag_finishers"] == theirs["ag_finishers"]
        assert ours["dnf_share"] == theirs["dnf_share_of_starts"]
        assert ours["female_share"] == theirs["gender_share"]["F"]
        assert list(ours["age_share"]) == [theirs["age_group_share"][g] for g in sim.AGE_GROUPS]
        for sex, key in (("M", "median_m"), ("F", "median_f")):
            medians = theirs["median_total_sec_by_gender_age"]
            assert list(ours[key]) == [medians[f"{sex}|{g}"] for g in sim.AGE_GROUPS]
        assert list(ours["finishes_share"]) == list(theirs["finishes_per_athlete_share"].values())
        years = theirs["year_counts"]
        assert ours["first_year"] == int(min(years))
        assert list(ours["year_counts"]) == list(years.values())
        assert ours["sd_edition"] == theirs["sd_log_edition_median"]
        assert ours["sd_within"] == theirs["sd_log_within_athlete"]
        assert ours["sd_between"] == theirs["sd_log_between_athletes"]
        assert ours["per_edition"] == theirs["finishers_per_edition"]["mean"]
        assert list(ours["split_missing"]) == [theirs[f"{s}_sec_missing_share"]
                                               for s in ("swim", "bike", "run")]
        assert list(ours["split_median"]) == [theirs[f"{s}_sec_median"]
                                              for s in ("swim", "bike", "run")]
    assert sim.CALIBRATION["athletes"] == real["athletes"]
    assert sim.CALIBRATION["athletes_both_distances"] == real["athletes_both_distances"]


def test_distances_are_written_as_text(paths):
    raw = pd.read_csv(paths["athlete_race"], dtype=str, keep_default_na=False)
    assert set(raw["event_distance"]) == {"70.3", "140.6", "sprint", "olympic"}
    assert (raw["event_distance"].isin(["sprint", "olympic"])).mean() > 0.01


def test_real_data_quirks_are_present(csv):
    races = csv["athlete_race"]
    assert races["is_pro"].isna().any() and (races["is_pro"] == True).any()  # noqa: E712
    assert races["gender"].isna().any()
    assert set(races["gender"].dropna()) == {"M", "F"}
    labels = set(races["age_group"].dropna())
    assert len(labels) >= 25
    assert {"75-79", "80+", "18-99", "16-19", "PRO", "M40-44", "F30-34"} <= labels
    assert set(sim.AGE_GROUPS) <= labels
    status = set(races["finish_status"])
    assert {"finisher", "FIN", "dnf", "DNF", "dq", "DQ"} <= status
    finished = races["total_sec"].dropna()
    outside = (finished <= 3600) | (finished >= 61200)
    assert outside.any() and outside.mean() < 0.01
    pros = races[races["is_pro"] == True]  # noqa: E712
    agers = model_frame(races)
    for d in MODEL_DISTANCES:
        assert pros.loc[pros["event_distance"] == d, "total_sec"].median() \
            < 0.85 * agers.loc[agers["event_distance"] == d, "total_sec"].median()


def test_non_finishers_have_no_total_and_partial_splits(csv):
    races = csv["athlete_race"]
    status = races["finish_status"].str.lower()
    finished = status.isin(["finisher", "fin"])
    assert races.loc[~finished, "total_sec"].isna().all()
    assert races.loc[finished, "total_sec"].notna().all()
    dnf = races[status == "dnf"]
    assert dnf["run_sec"].isna().all() and dnf["swim_sec"].notna().any()
    assert races["overall_rank"].notna().eq(finished).all()


def test_splits_follow_the_real_medians_and_sum_to_total(csv):
    frame = model_frame(csv["athlete_race"])
    parts = ["swim_sec", "t1_sec", "bike_sec", "t2_sec", "run_sec"]
    whole = frame.dropna(subset=parts)
    assert (whole[parts].sum(axis=1) == whole["total_sec"]).all()
    for d in MODEL_DISTANCES:
        rows = frame[frame["event_distance"] == d]
        for part, median in zip(("swim_sec", "bike_sec", "run_sec"),
                                sim.CALIBRATION[d]["split_median"]):
            assert rows[part].median() == pytest.approx(median, rel=0.05)


def test_ranks_are_within_each_edition(csv):
    races = csv["athlete_race"]
    fin = races[races["overall_rank"].notna()]
    by_edition = fin.groupby(["event_name", "event_year"])
    assert (by_edition["overall_rank"].max() == by_edition.size()).all()
    assert (by_edition["overall_rank"].min() == 1).all()
    clean = fin[(fin["total_sec"] > 3600) & (fin["total_sec"] < 61200)]
    ranked = clean.sort_values(["event_name", "event_year", "overall_rank"])
    assert (ranked.groupby(["event_name", "event_year"])["total_sec"].diff().dropna() >= 0).all()
    # a row with an empty gender still ranks in its athlete's division
    division = fin.groupby(["event_name", "event_year", "gender", "age_group"])["division_rank"]
    assert (division.nunique() == division.size()).all()
    assert (division.max() >= division.size()).all()


def test_anonymous_rows_exist_and_have_no_profile(csv):
    races, profiles = csv["athlete_race"], csv["athlete_profile"]
    anon = races[races["athlete_hash"].isna()]
    assert set(anon["event_distance"]) == {"70.3"}
    share = calibration_stats(races, "70.3")["anon_share"]
    assert share == pytest.approx(sim.ANON_SHARE, abs=0.03)
    assert profiles["athlete_hash"].notna().all()
    assert csv["cluster_assignments"]["athlete_hash"].notna().all()
    merged = races.merge(profiles[["athlete_hash", "total_races"]], on="athlete_hash",
                         how="left")
    assert len(merged) == len(races)
    assert merged.loc[races["athlete_hash"].isna().to_numpy(), "total_races"].isna().all()


def test_profiles_are_derived_from_races(csv):
    races, profiles = csv["athlete_race"], csv["athlete_profile"].set_index("athlete_hash")
    named = races[races["athlete_hash"].notna()]
    assert profiles.index.is_unique
    assert set(profiles.index) == set(named["athlete_hash"])
    by = named.groupby("athlete_hash")
    total = by["total_sec"]
    pd.testing.assert_series_equal(profiles["total_races"], total.count().reindex(profiles.index),
                                   check_names=False)
    pd.testing.assert_series_equal(profiles["pb_total_sec"], total.min().reindex(profiles.index),
                                   check_names=False)
    cv = (total.std() / total.mean()).reindex(profiles.index)
    np.testing.assert_allclose(profiles["consistency_cv"], cv.where(profiles["total_races"] >= 2),
                               rtol=1e-4, atol=1e-6)
    assert (profiles["first_race_year"] == by["event_year"].min().reindex(profiles.index)).all()
    dnf = (named["finish_status"].str.lower() == "dnf").groupby(named["athlete_hash"]).sum()
    assert (profiles["dnf_count"] == dnf.reindex(profiles.index)).all()
    assert (profiles["distances_raced"] == by["event_distance"].nunique()
            .reindex(profiles.index)).all()


def test_pb_covers_both_distances(csv):
    races, profiles = csv["athlete_race"], csv["athlete_profile"].set_index("athlete_hash")
    both = profiles.index[(profiles["distances_raced"] == 2) & (profiles["total_races"] >= 2)]
    assert len(both) > 0.15 * len(profiles)
    rows = races[races["athlete_hash"].isin(both)]
    per_distance = rows.groupby(["athlete_hash", "event_distance"])["total_sec"].min().unstack()
    pb = profiles.loc[per_distance.index, "pb_total_sec"]
    np.testing.assert_array_equal(pb, per_distance.min(axis=1))
    has_70 = per_distance["70.3"].notna() & (per_distance["70.3"] > 3600)
    assert (pb[has_70] <= per_distance.loc[has_70, "70.3"]).all()
    assert (pb[has_70] < per_distance.loc[has_70, "140.6"].fillna(np.inf)).mean() > 0.95


def test_improvement_slope_is_the_ols_slope_on_year(csv):
    races, profiles = csv["athlete_race"], csv["athlete_profile"].set_index("athlete_hash")
    assert profiles["improvement_slope"].notna().any()
    sample = profiles[profiles["total_races"] >= 3].index[:40]
    done = races[races["athlete_hash"].isin(sample) & races["total_sec"].notna()]
    for athlete, rows in done.groupby("athlete_hash"):
        expected = (np.polyfit(rows["event_year"], rows["total_sec"], 1)[0]
                    if rows["event_year"].nunique() > 1 else np.nan)
        got = profiles.loc[athlete, "improvement_slope"]
        if np.isnan(expected):
            assert np.isnan(got)
        else:
            assert got == pytest.approx(expected, abs=0.01)
    one_year = profiles["latest_race_year"] == profiles["first_race_year"]
    assert profiles.loc[one_year, "improvement_slope"].isna().all()


def test_clusters_only_for_three_or_more_races(csv):
    clusters, profiles = csv["cluster_assignments"], csv["athlete_profile"]
    assert clusters["athlete_hash"].is_unique
    assert set(clusters["athlete_hash"]) == set(
        profiles.loc[profiles["total_races"] >= 3, "athlete_hash"])
    assert clusters["cluster_id"].dtype.kind == "i"
    assert set(clusters["cluster_id"]) == set(range(8))


@pytest.mark.slow
def test_a_bigger_world_is_calibrated_too(tmp_path):
    frames = sim._simulate(1_000_000, seed=7)
    path = tmp_path / "athlete_race.csv"
    frames["athlete_race"].to_csv(path, index=False)
    races = pd.read_csv(path, dtype={"athlete_hash": str, "event_distance": str},
                        low_memory=False)
    for distance in MODEL_DISTANCES:
        assert_calibrated(races, distance)
    assert frames["athlete_profile"]["athlete_hash"].is_unique
