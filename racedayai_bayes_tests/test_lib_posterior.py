import numpy as np
import pandas as pd
import pytest

from racedayai_bayes.lib.inference.nuts import Draws
from racedayai_bayes.lib.models.seed.encoding import fit_encoding
from racedayai_bayes.lib.models.seed.fit import SeedSettings, _sample, posterior_analysis


def test_engine_defaults():
    assert SeedSettings().engine == "exact"
    assert SeedSettings(engine="rowwise").target_accept_for_engine() == 0.85  # the seed's
    assert SeedSettings(engine="exact_nuts").target_accept_for_engine() == 0.98
    assert SeedSettings(engine="exact_nuts", target_accept=0.8).target_accept_for_engine() == 0.8
    assert SeedSettings().seed_for("70.3") == 42 and SeedSettings().seed_for("140.6") == 99
    assert SeedSettings(seed=7).seed_for("70.3") == 7


def test_subsample_is_the_seeds_pandas_sample():
    rows = pd.DataFrame({"x": np.arange(1000)}).sample(frac=1, random_state=3)
    pd.testing.assert_frame_equal(_sample(rows, 100), rows.sample(100, random_state=42))
    assert _sample(rows, 5000) is rows and _sample(rows, 0) is rows


def test_analysis_reports_gender_effects_in_seconds():
    frame = pd.DataFrame({
        "gender": ["M", "F"] * 5, "age_group": ["30-34"] * 10, "cluster_id": [np.nan] * 10,
        "total_races": [1] * 10, "pb_total_sec": [np.nan] * 10, "total_sec": np.linspace(18000, 27000, 10),
    })
    enc = fit_encoding(frame, "70.3")
    g = np.stack([np.full((2, 50), -0.1), np.full((2, 50), 0.2)], axis=-1)
    scalar = np.zeros((2, 50))
    draws = Draws({"mu_gender": g, "beta_fitness": scalar, "beta_experience": scalar, "sigma": scalar + 1},
                  np.zeros((2, 50), bool), "test")
    out = posterior_analysis(draws, enc)
    assert out["gender_effect_sec"]["Male"]["mean"] == pytest.approx(-0.1 * enc.y_std)
    assert out["gender_effect_sec"]["Female"]["p97.5"] == pytest.approx(0.2 * enc.y_std)
    assert out["coefficients"]["sigma"]["mean"] == pytest.approx(1.0)


@pytest.mark.parametrize("name", ["seed_profile", "seed_asof"])
def test_forecasts_of_some_rows_are_those_of_the_whole_rows(demo_world, name):
    """predict(frame, rows) takes only the columns the encoding reads (fit.READS): the same
    forecasts and log densities as predicting those rows with every column."""
    from racedayai_bayes.lib.data.frame import distance_rows, model_frame_and_seasons
    from racedayai_bayes.lib.models.base import registry

    frame = model_frame_and_seasons(demo_world["athlete_race"], demo_world["athlete_profile"],
                                    demo_world["cluster_assignments"])[0]
    rows = distance_rows(frame, "70.3").iloc[:4000].reset_index(drop=True)
    fitted = registry()[name].build(num_warmup=50, num_samples=100).fit(rows, "70.3")
    pick = np.random.default_rng(1).choice(len(rows), 500, replace=False)
    mask = np.zeros(len(rows), dtype=bool)
    mask[pick] = True
    whole = fitted.predict(rows.iloc[pick].reset_index(drop=True), log_density=True)
    for some in (fitted.predict(rows, pick, log_density=True), fitted.predict(rows, mask, log_density=True).take(np.argsort(np.argsort(pick)))):
        for field in ("pred", "std", "p05", "p50", "p95", "log_density"):
            np.testing.assert_array_equal(getattr(some, field), getattr(whole, field), err_msg=field)
