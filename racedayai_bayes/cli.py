"""Command line: `racedayai-bayes demo-data | refit | predict`."""

import argparse
import os
import sys
from pathlib import Path

import racedayai_bayes  # noqa: F401  (pins JAX to the CPU)

from racedayai_bayes.lib.data.frame import MODEL_DISTANCES

# Unpartitioned assets that the first run of a refit builds and later runs reuse.
FRAME_ASSETS = ("athlete_race", "athlete_profile", "cluster_assignments", "model_frame", "athlete_seasons")


def _demo_data(args: argparse.Namespace) -> int:
    from racedayai_bayes.demo.simulate import write_demo_data

    paths = write_demo_data(args.out, size=args.size, seed=args.seed)
    for name, path in paths.items():
        print(f"{name}: {path}")
    return 0


def _run_config(args: argparse.Namespace) -> dict:
    """Run config of a refit: the seed models' sampler flags, the split and the publish setting."""
    from racedayai_bayes.defs.models import posterior_key

    seed = {
        "engine": args.engine,
        "num_warmup": args.warmup,
        "num_samples": args.samples,
        "num_chains": args.chains,
        "seed": args.seed,
        "predictive_draws": args.predictive_draws,
    }
    seed = {k: v for k, v in seed.items() if v is not None}
    forecast = {k: v for k, v in {"seed": args.seed, "num_samples": args.forecast_samples}.items() if v is not None}
    split = {k: v for k, v in {"holdout": args.holdout, "holdout_season": args.holdout_season}.items() if v is not None}
    ops = {
        posterior_key("seed_profile"): {"config": seed},
        posterior_key("seed_asof"): {"config": seed},
        posterior_key("forecast"): {"config": forecast},
        "holdout_split": {"config": split},
        "published_model": {"config": {"publish": args.publish}},
    }
    return {"ops": ops}


def _refit(args: argparse.Namespace) -> int:
    import dagster as dg

    from racedayai_bayes.definitions import refit_job_def
    from racedayai_bayes.defs.schedules import DISTANCE_TAG

    if not os.environ.get("DAGSTER_HOME"):
        print("DAGSTER_HOME is not set; run through `make run` or export DAGSTER_HOME=<repo root>", file=sys.stderr)
        return 2
    instance = dg.DagsterInstance.get()
    distances = [args.distance] if args.distance else list(MODEL_DISTANCES)
    run_config = _run_config(args)
    job = dg.reconstructable(refit_job_def)
    failed = False
    frame_ready = False
    for distance in distances:
        # The first run reads the inputs and rebuilds the model frame; later runs reuse it.
        selection = None if not frame_ready else [
            key for key in job.get_definition().asset_layer.executable_asset_keys
            if key.to_user_string() not in FRAME_ASSETS
        ]
        result = dg.execute_job(
            job,
            instance=instance,
            run_config=run_config,
            tags={"dagster/partition": distance, DISTANCE_TAG: distance},
            asset_selection=selection,
            raise_on_error=False,
        )
        failed |= _report(instance, result, distance)
        frame_ready = frame_ready or _materialized(instance, result.run_id, "model_frame")
        if not frame_ready:
            print("the model frame could not be built; not fitting other distances", file=sys.stderr)
            return 1
    return 1 if failed else 0


def _materialized(instance, run_id: str, asset: str) -> bool:
    import dagster as dg

    return any(
        e.dagster_event.asset_key == dg.AssetKey(asset)
        for e in instance.all_logs(run_id, of_type=dg.DagsterEventType.ASSET_MATERIALIZATION)
    )


def _report(instance, result, distance: str) -> bool:
    """Print the run's outcome and check results; True if anything failed."""
    import dagster as dg

    status = "succeeded" if result.success else "FAILED"
    print(f"\n== refit {distance}: run {result.run_id} {status}")
    failed = not result.success
    for entry in instance.all_logs(result.run_id, of_type=dg.DagsterEventType.ASSET_CHECK_EVALUATION):
        ev = entry.dagster_event.event_specific_data
        value = ev.metadata.get("value")
        mark = "pass" if ev.passed else f"FAIL ({ev.severity.value})"
        print(f"   check {ev.check_name:<20} {mark:<12} {ev.description or ''}" + (f" [value {value.value:.4g}]" if value else ""))
        failed |= not ev.passed and ev.severity == dg.AssetCheckSeverity.ERROR
    for entry in instance.all_logs(result.run_id, of_type=dg.DagsterEventType.ASSET_MATERIALIZATION):
        mat = entry.dagster_event.event_specific_data.materialization
        for key in ("path", "artifact"):
            path = mat.metadata.get(key)
            if path is not None:
                print(f"   wrote {mat.asset_key.to_user_string()}{' artifact' if key == 'artifact' else ''}: {path.value}")
    for entry in instance.all_logs(result.run_id, of_type=dg.DagsterEventType.STEP_FAILURE):
        err = entry.dagster_event.event_specific_data.error
        print(f"   step {entry.step_key} failed: {err.message.strip() if err else ''}", file=sys.stderr)
    return failed


def _predict(args: argparse.Namespace) -> int:
    """Predictions from a posterior artifact alone, as the pipeline's prediction CSVs."""
    from racedayai_bayes.lib.data.contracts import InputError, read_model_rows
    from racedayai_bayes.lib.outputs.artifacts import ArtifactError, load_artifact
    from racedayai_bayes.lib.outputs.io import OutputWriteError, write_csv_atomic
    from racedayai_bayes.lib.outputs.tables import prediction_table

    try:
        artifact = load_artifact(args.posterior)
        model = artifact.model
        rows = read_model_rows(args.input, model.predict_columns)
    except (ArtifactError, InputError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    frame = rows.frame
    distances = frame["event_distance"].dropna()
    other = distances[distances != artifact.distance]
    if len(other):
        print(
            f"error: {rows.path}, column 'event_distance': {len(other):,} rows are not {artifact.distance} "
            f"(e.g. {other.iloc[0]!r}), but {artifact.path} is a posterior of {artifact.distance}",
            file=sys.stderr,
        )
        return 2
    for note in rows.notes:
        print(f"note: {rows.path}: {note}", file=sys.stderr)
    try:
        pred = model.predict_rows(frame, draws=args.draws, seed=args.seed)
    except ValueError as exc:
        print(f"error: {rows.path}: {exc}", file=sys.stderr)
        return 2
    held = frame["held_out"].fillna(False).to_numpy(dtype=bool) if "held_out" in frame else _held_out(artifact, frame)
    table = prediction_table(frame, pred, model.name, held)
    try:
        path = write_csv_atomic(table, args.output)
    except OutputWriteError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"wrote {len(table):,} predictions of {artifact.distance} by {model.name} to {path} (posterior {artifact.path})")
    return 0


def _held_out(artifact, frame) -> "np.ndarray":
    """Rows of the artifact's held-out season (its split held out a season), else none."""
    import json

    import numpy as np

    season = json.loads(artifact.attrs.get("racedayai_split", "{}")).get("season")
    years = frame["event_year"].astype("Float64").to_numpy(dtype=float, na_value=np.nan)
    return years == season if season is not None else np.zeros(len(frame), dtype=bool)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="racedayai-bayes", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    demo = sub.add_parser("demo-data", help="write synthetic input CSVs calibrated to real results")
    demo.add_argument("--size", choices=["demo", "full"], default="demo", help="demo: ~100k rows; full: ~3.7M rows")
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--out", type=Path, default=Path("data/cleaned"))
    demo.set_defaults(func=_demo_data)

    refit = sub.add_parser("refit", help="materialise the whole asset graph on the instance in DAGSTER_HOME")
    refit.add_argument("--distance", choices=list(MODEL_DISTANCES), help="one distance (default: both)")
    refit.add_argument("--engine", choices=["exact", "rowwise"], help="sampler engine (default: exact)")
    refit.add_argument("--warmup", type=int, help="warmup iterations per chain (default 1500)")
    refit.add_argument("--samples", type=int, help="draws per chain (default 1500)")
    refit.add_argument("--chains", type=int, help="chains (default 2)")
    refit.add_argument("--seed", type=int, help="PRNG seed (default: 42 for 70.3, 99 for 140.6)")
    refit.add_argument("--predictive-draws", type=int, help="posterior draws for the seed models' predictive intervals (default 1000)")
    refit.add_argument("--forecast-samples", type=int, help="draws per chain of the forecast model (default 300)")
    refit.add_argument("--holdout", choices=["latest_year", "random_athletes", "none"], help="held-out rows (default latest_year)")
    refit.add_argument("--holdout-season", type=int, help="hold out this season and drop later ones (a backtest); default the latest")
    refit.add_argument("--publish", choices=["auto", "seed_profile", "seed_asof", "forecast"], default="auto",
                       help="which model's forecasts to publish (default auto: the best eligible by held-out ELPD)")
    refit.set_defaults(func=_refit)

    predict = sub.add_parser(
        "predict",
        help="predict finish times from a posterior artifact alone",
        description="Write the pipeline's prediction columns for the rows of --input, from a posterior "
        "artifact (a .nc file, or a folder posterior/<distance> whose 'latest' names one). With the "
        "artifact's own seed and draws the output equals the pipeline's CSV for the same rows.",
    )
    predict.add_argument("--posterior", required=True, help="artifact .nc file, or <output dir>/posterior/<distance>")
    predict.add_argument(
        "--input", required=True, type=Path,
        help="CSV of rows to predict with the model frame's columns: gender, age_group, pb_total_sec, "
        "total_races, cluster_id (required); athlete_hash, event_distance, event_year, total_sec (optional)",
    )
    predict.add_argument("--output", required=True, help="CSV to write (atomically): a path, or an object-store URL")
    predict.add_argument("--draws", type=int, help="posterior draws for the intervals (default: the artifact's)")
    predict.add_argument("--seed", type=int, help="seed of the interval simulations (default: the artifact's)")
    predict.set_defaults(func=_predict)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
