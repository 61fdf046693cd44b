"""Fixtures and helpers shared by the test modules: inputs, resources, instances, hand-made draws."""

import os
import shutil
from collections.abc import Iterable
from pathlib import Path

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import numpy as np
import pandas as pd
import pytest

from racedayai_bayes.lib.data.contracts import CLUSTER_FILE, PROFILE_FILE, RACE_FILE
from racedayai_bayes.lib.inference.nuts import Draws
from racedayai_bayes.lib.models.seed.encoding import Encoding
from racedayai_bayes.lib.outputs.io import write_csv_atomic

REPO = Path(__file__).resolve().parents[1]

# Headers of the three input files with exactly the columns the pipeline reads.
RACE_HEADER = "athlete_hash,gender,age_group,is_pro,event_distance,event_year,total_sec,event_name"
# The course of a hand-written race row that names none (see race_rows).
TEST_EVENT = "IRONMAN Testville"
PROFILE_HEADER = "athlete_hash,total_races,pb_total_sec"
CLUSTER_HEADER = "athlete_hash,cluster_id"

# Sampler settings small enough for tests, large enough for the exact engine to pass the
# r_hat and bulk-ESS checks (ESS >= 400 needs about 1000 well-mixed draws).
FAST_FIT = {"num_warmup": 300, "num_samples": 1000, "num_chains": 2, "predictive_draws": 300}
# Seed chains far too short: they fail the ESS check (and the seed models cannot be published).
SHORT_SEED_FIT = {"engine": "exact", "num_warmup": 20, "num_samples": 20, "eval_rows": 500}
# A forecast sampler far too short for its ESS check.
SHORT_FORECAST_FIT = {"num_chains": 2, "num_samples": 20, "num_warmup": 0}

# The steps of one distance's refit after the first run of an invocation: the split, every
# model, the comparison and the outputs (the first run also builds the inputs and the frame).
MODEL_ASSETS = ("posterior_seed_profile", "posterior_seed_asof", "posterior_forecast")
REFIT_ASSETS = ("holdout_split", *MODEL_ASSETS, "published_model", "bayesian_predictions",
                "bayesian_posterior_means", "forecast_posterior_means")
FRAME_ASSETS = ("athlete_race", "athlete_profile", "cluster_assignments", "model_frame", "athlete_seasons")


# What one run of the suite writes under its temporary folder at most (measured 2026-12-05:
# 1.26 GB with 2 workers), with room to spare.
SUITE_DISK_GB = 2.0


# A process that starts a forkserver (the step server's kind) preloading its arguments, runs
# ``state(queue)`` in one process forked from it, then ``parent()`` in itself, and prints the
# values of both (:func:`run_in_step_process`)
_STEP_PROCESS_SCRIPT = """
import multiprocessing, sys

{state}

{parent}

if __name__ == "__main__":
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(sys.argv[1:])
    queue = ctx.Queue()
    step = ctx.Process(target=state, args=(queue,))
    step.start()
    in_step = queue.get(timeout=120)
    step.join(120)
    print(*in_step, *parent())
"""


def run_in_step_process(folder: Path, state: str, parent: str, preload: list[str], env: dict | None = None) -> list[str]:
    """Run ``state`` (the source of ``def state(queue)``, which puts a tuple on the queue) in a
    process forked from a forkserver that preloaded ``preload``, and ``parent`` (the source of
    ``def parent()``, which returns a tuple) in the process that started the server, after the
    step ended; their values, as printed, in order. The script is a file in ``folder``: the
    forked process unpickles its target from it."""
    import subprocess
    import sys
    import textwrap

    path = folder / "step_process.py"
    path.write_text(_STEP_PROCESS_SCRIPT.format(state=textwrap.dedent(state), parent=textwrap.dedent(parent)))
    out = subprocess.run([sys.executable, str(path), *preload], capture_output=True, text=True, env=env,
                         timeout=300, check=True, cwd=folder)
    return out.stdout.split()


def pytest_report_header(config) -> str | None:
    """A warning at the top of the report when the temporary folder's disk is nearly full: a
    full disk fails tests deep in SQLite or a CSV writer ('disk I/O error', 'No space left
    on device'), far from the cause."""
    import tempfile

    folder = tempfile.gettempdir()
    free_gb = shutil.disk_usage(folder).free / 1e9
    if free_gb < SUITE_DISK_GB:
        return (f"WARNING: {free_gb:.1f} GB free on the disk of {folder}; the suite writes up to about "
                f"{SUITE_DISK_GB:.0f} GB there, and tests fail with 'No space left on device' or "
                "'disk I/O error' when it runs out")
    return None


def refit_config(seed_fit: dict | None = FAST_FIT, forecast: dict | None = None, publish: str = "auto",
                 split: dict | None = None, selection=None) -> dict:
    """Run config of a refit: both seed models' sampler settings, the forecast model's, the
    split's and what to publish; only for the steps in ``selection`` (all when None)."""
    ops = {
        "posterior_seed_profile": {"config": dict(seed_fit or {})},
        "posterior_seed_asof": {"config": dict(seed_fit or {})},
        "posterior_forecast": {"config": dict(forecast or {})},
        "published_model": {"config": {"publish": publish}},
        "holdout_split": {"config": dict(split or {})},
    }
    if selection is not None:
        names = {s if isinstance(s, str) else s.to_user_string() for s in selection}
        ops = {k: v for k, v in ops.items() if k in names}
    return {"ops": ops}


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


# --- input files ----------------------------------------------------------------------------


def write_inputs(world: dict[str, pd.DataFrame], folder: Path) -> Path:
    """The three input CSVs of a world (frames keyed athlete_race, athlete_profile, cluster_assignments)."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, file in (("athlete_race", RACE_FILE), ("athlete_profile", PROFILE_FILE), ("cluster_assignments", CLUSTER_FILE)):
        write_csv_atomic(world[name], folder / file)
    return folder


def race_rows(rows: Iterable[str], header: str = RACE_HEADER, event: str = TEST_EVENT) -> list[str]:
    """Hand-written race rows for ``header``: a row one field short of a header ending in
    event_name gets ``event`` as its course (most tests are about other columns)."""
    width = header.count(",") + 1
    out = []
    for row in rows:
        short = header.endswith("event_name") and row.count(",") + 1 == width - 1
        out.append(f"{row},{event}" if short else row)
    return out


def csv_text(header: str, rows: Iterable[str]) -> str:
    """A CSV file's text: the header, then one line per row."""
    return "\n".join([header, *rows]) + "\n"


def write_file(folder: Path, name: str, content: str | bytes) -> Path:
    """Write ``content`` (text as UTF-8, or bytes as given) to ``folder/name``."""
    path = folder / name
    path.write_bytes(content.encode("utf-8") if isinstance(content, str) else content)
    return path


def pipeline_resources(inputs: Path, outputs: Path | str, storage: Path | None = None) -> dict:
    """The code location's resources on test folders: inputs, outputs and stored asset values
    (without ``storage``, the IO manager's own default: RACEDAYAI_STORAGE_DIR or the instance's)."""
    from racedayai_bayes.defs.resources import AtomicPickleIOManagerFactory, CpuSlots, PipelinePaths

    return {
        "paths": PipelinePaths(input_dir=str(inputs), output_dir=str(outputs)),
        "io_manager": AtomicPickleIOManagerFactory(base_dir=None if storage is None else str(storage)),
        "cpu": CpuSlots(),  # the instance's slots, as in the code location
    }


# --- hand-made posterior draws ------------------------------------------------------------------


def hand_draws(chains: int = 2, draws: int = 300, n_age: int = 5, n_cluster: int = 3, seed: int = 0) -> Draws:
    """Random draws of every site of the model around plausible values (the scales positive)."""
    rng = np.random.default_rng(seed)
    shape = (chains, draws)
    samples = {
        "mu_global": rng.normal(0.0, 0.1, shape),
        "sigma": np.abs(rng.normal(0.6, 0.01, shape)),
        "sigma_gender": np.abs(rng.normal(0.2, 0.1, shape)),
        "sigma_age": np.abs(rng.normal(0.3, 0.05, shape)),
        "sigma_cluster": np.abs(rng.normal(0.2, 0.05, shape)),
        "beta_fitness": rng.normal(0.3, 0.01, shape),
        "beta_experience": rng.normal(-0.1, 0.01, shape),
        "mu_gender": rng.normal([-0.1, 0.1], 0.05, shape + (2,)),
        "mu_age": rng.normal(np.linspace(-0.3, 0.3, n_age), 0.03, shape + (n_age,)),
        "mu_cluster": rng.normal(np.linspace(-0.2, 0.2, n_cluster), 0.02, shape + (n_cluster,)),
    }
    return Draws(samples=samples, diverging=np.zeros(shape, dtype=bool), engine="hand")


def constant_draws(values: dict, chains: int = 2, draws: int = 500) -> Draws:
    """Draws equal to ``values`` (scalars, or vectors of group effects) in every chain and draw."""
    shape = (chains, draws)
    samples = {}
    for name, value in values.items():
        value = np.asarray(value, dtype=float)
        samples[name] = np.broadcast_to(value, shape + value.shape).copy()
    return Draws(samples=samples, diverging=np.zeros(shape, dtype=bool), engine="hand")


# The encoding of a hand-made 70.3 posterior: two age groups, no cluster and cluster 3.
HAND_ENCODING = Encoding("70.3", ("25-29", "30-34"), (-1, 3), 20000.0, 4000.0, 0.5, 2.0, 0)


def hand_rows(seasons=(2023, 2024)) -> pd.DataFrame:
    """Model-frame rows of 70.3 (with as-of history) over ``seasons``: three races a season."""
    from racedayai_bayes.lib.data.frame import MODEL_DISTANCES
    from racedayai_bayes.lib.data.history import add_history, season_table

    n = 3 * len(seasons)
    frame = pd.DataFrame({
        "athlete_hash": pd.array(["a", None, "c"] * len(seasons), dtype="string"),
        "gender": pd.array(["M", "F", None] * len(seasons), dtype="string"),
        "age_group": pd.array(["25-29", "80+", "30-34"] * len(seasons), dtype="string"),
        "event_name": pd.array(["E1", "E1", "E2"] * len(seasons), dtype="string"),
        "event_distance": pd.array(["70.3"] * n, dtype="string"),
        "event_year": pd.array(np.repeat(seasons, 3), dtype="Int64"),
        "total_sec": np.linspace(19000.0, 23000.0, n),
        "pb_total_sec": [19000.0, np.nan, 21000.0] * len(seasons),
        "total_races": [3.0, 1.0, np.nan] * len(seasons),
        "cluster_id": pd.array([3, None, 7] * len(seasons), dtype="Int64"),
        "is_pro": pd.array([False] * n, dtype="boolean"),
    })
    table = season_table(frame, np.ones(n, dtype=bool), MODEL_DISTANCES)
    return add_history(frame, table, MODEL_DISTANCES).drop(columns="is_pro")


def hand_judged(failed: bool = False, name: str = "seed_profile"):
    """A judged seed posterior of 70.3 with hand-made draws, its split holding out 2024;
    ``failed``: an ERROR check is added (it may not be published)."""
    from racedayai_bayes.lib.data.split import split_holdout
    from racedayai_bayes.lib.evaluation import diagnostics as dx
    from racedayai_bayes.lib.evaluation.judge import judge
    from racedayai_bayes.lib.models.seed.fit import FittedSeed

    enc = HAND_ENCODING
    model = FittedSeed(
        name=name, distance="70.3", asof=name != "seed_profile", kind="asof" if name == "seed_asof" else "profile",
        encoding=enc, draws=hand_draws(chains=2, draws=50, n_age=len(enc.age_levels), n_cluster=len(enc.cluster_levels)),
        info={"settings": {"seed": 42, "prediction_seed": 43, "predictive_draws": 100, "engine": "exact",
                           "features": "asof" if name == "seed_asof" else "profile"}},
    )
    split = split_holdout(hand_rows(), "latest_year")
    judged = judge(model, split)
    if failed:
        judged.checks.append(dx.CheckOutcome("ess", dx.ERROR, 5.0, ">= 400"))
    return judged, split


# --- fixtures ----------------------------------------------------------------------------------


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


def pipeline_assets() -> list:
    """The refit job's asset definitions: every asset but the race-day forecasts, which are
    partitioned by start list (a run materialises assets of one partitions definition)."""
    import dagster as dg

    from racedayai_bayes.definitions import defs

    return [a for a in defs.assets if dg.AssetKey("race_forecasts") not in a.keys]


def sbc_dispersion_z(ranks: np.ndarray, draws: int) -> float:
    """A pooled SBC test of the posterior's width (z score; Talts et al. 2018, their
    'too wide / too narrow' shapes as one number).

    ``ranks`` (replications, parameters): each true value's rank among ``draws`` posterior
    draws. Under an exact fit each rank is uniform on 0..draws, so u = (rank + 1/2)/(draws + 1)
    has E[(u - 1/2)^2] = (1 - (draws + 1)^-2) / 12. A posterior too wide puts the truth near
    the middle (smaller), too narrow in the tails (larger). The parameters of one replication
    share its data, so each replication's mean over them is one value, and the replications
    are independent: z is a t statistic over them. The per-parameter histogram tests miss
    such a shift at 100 replications (a posterior 12% too wide: measured 2026-12-05); this
    pools every parameter.
    """
    ranks = np.asarray(ranks, dtype=np.float64)
    u = (ranks + 0.5) / (draws + 1)
    per_rep = ((u - 0.5) ** 2).mean(axis=1)
    expected = (1.0 - (draws + 1) ** -2) / 12.0
    return float((per_rep.mean() - expected) / (per_rep.std(ddof=1) / np.sqrt(len(per_rep))))
