import os
import shutil
from pathlib import Path

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import numpy as np
import pandas as pd
import pytest

from racedayai_bayes.lib.data.contracts import CLUSTER_FILE, PROFILE_FILE, RACE_FILE
from racedayai_bayes.lib.outputs.io import write_csv_atomic

REPO = Path(__file__).resolve().parents[1]

# Sampler settings small enough for tests, large enough for the exact engine to pass the
# r_hat and bulk-ESS checks (ESS >= 400 needs about 1000 well-mixed draws).
FAST_FIT = {"num_warmup": 300, "num_samples": 1000, "num_chains": 2, "predictive_draws": 300}


@pytest.fixture(scope="session")
def demo_world() -> dict[str, pd.DataFrame]:
    from racedayai_bayes.demo.simulate import simulate_world

    return simulate_world("demo", seed=7)


def small_world(world: dict[str, pd.DataFrame], share: float = 0.06, seed: int = 0) -> dict[str, pd.DataFrame]:
    """A consistent slice of a simulated world: every race of a random share of athletes."""
    rng = np.random.default_rng(seed)
    races = world["athlete_race"]
    hashes = races["athlete_hash"].dropna().unique()
    keep = set(rng.choice(hashes, int(len(hashes) * share), replace=False))
    anon = races["athlete_hash"].isna() & (rng.random(len(races)) < share)
    races = races[races["athlete_hash"].isin(keep) | anon]
    return {
        "athlete_race": races.reset_index(drop=True),
        "athlete_profile": world["athlete_profile"].loc[lambda f: f["athlete_hash"].isin(keep)],
        "cluster_assignments": world["cluster_assignments"].loc[lambda f: f["athlete_hash"].isin(keep)],
    }


def write_inputs(world: dict[str, pd.DataFrame], folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name, file in (("athlete_race", RACE_FILE), ("athlete_profile", PROFILE_FILE), ("cluster_assignments", CLUSTER_FILE)):
        write_csv_atomic(world[name], folder / file)
    return folder


@pytest.fixture(scope="session")
def small_inputs(demo_world, tmp_path_factory) -> Path:
    """Input CSVs of a small simulated world (a few thousand modelled rows per distance)."""
    return write_inputs(small_world(demo_world), tmp_path_factory.mktemp("inputs"))


@pytest.fixture
def dagster_home(tmp_path, monkeypatch) -> Path:
    """A temporary DAGSTER_HOME holding the project's own dagster.yaml."""
    home = tmp_path / "dagster_home"
    home.mkdir()
    shutil.copy(REPO / "dagster.yaml", home / "dagster.yaml")
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    return home
