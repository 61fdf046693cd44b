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
