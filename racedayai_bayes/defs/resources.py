"""Where inputs are read and outputs written, and how assets are stored between steps."""


import contextlib
import os
from pathlib import Path
from typing import Any

import dagster as dg
from pydantic import Field, PrivateAttr
from upath import UPath

from racedayai_bayes.lib import cpu_slots, pages
from racedayai_bayes.lib.outputs import stored
from racedayai_bayes.lib.outputs.artifacts import refit_output_dir
from racedayai_bayes.lib.outputs.io import as_path, atomic_path

PROJECT_ROOT = Path(__file__).resolve().parents[2]
# Where intermediate asset values are stored when the io_manager has no base_dir. Runs on
# different machines (one Kubernetes pod per run) must share it: an object-store URL.
STORAGE_DIR_ENV = "RACEDAYAI_STORAGE_DIR"


def _default_dir(env_var: str, sub: str) -> str:
    return os.environ.get(env_var) or str(PROJECT_ROOT / "data" / sub)


class PipelinePaths(dg.ConfigurableResource):
    """Folders of the cleaned input CSVs and of the prediction outputs."""

    input_dir: str = Field(description="Local folder holding athlete_race.csv, athlete_profile.csv, cluster_assignments.csv")
    output_dir: str = Field(
        description="Folder the prediction CSVs and posterior means are written to: a local path, "
        "or an object-store URL such as s3://bucket/racedayai or gs://bucket/racedayai"
    )
    start_lists_dir: str = Field(
        default_factory=lambda: _default_dir("RACEDAYAI_START_LISTS_DIR", "start_lists"),
        description="Local folder the start-list sensor watches: one CSV per upcoming race, "
        "named <partition>.csv (e.g. im703-florida-2027.csv)",
    )

    @classmethod
    def from_env(cls) -> "PipelinePaths":
        """Defaults to data/cleaned, data/outputs and data/start_lists; RACEDAYAI_INPUT_DIR,
        _OUTPUT_DIR and _START_LISTS_DIR override."""
        return cls(
            input_dir=_default_dir("RACEDAYAI_INPUT_DIR", "cleaned"),
            output_dir=_default_dir("RACEDAYAI_OUTPUT_DIR", "outputs"),
            start_lists_dir=_default_dir("RACEDAYAI_START_LISTS_DIR", "start_lists"),
        )

    def start_list(self, name: str) -> Path:
        return Path(self.start_lists_dir) / f"{name}.csv"

    def input_file(self, name: str) -> Path:
        # lib/contracts.py reads local files (header check, then Arrow's reader), so inputs
        # stay local: copy them from the store first, or mount the bucket
        folder = as_path(self.input_dir)
        if not isinstance(folder, Path):
            raise ValueError(
                f"input_dir must be a local folder, not {self.input_dir!r}: the cleaned inputs are "
                "read from local files (RACEDAYAI_INPUT_DIR)"
            )
        return folder / name

    def output_file(self, name: str) -> Path | UPath:
        """A local Path, or a UPath when output_dir is an object-store URL."""
        return as_path(self.output_dir) / name

    def refit_dir(self, split) -> Path | UPath:
        """Where a refit on ``split`` writes: output_dir, or its ``backtests/<season>/`` for a
        backtest (lib/outputs/artifacts.refit_output_dir)."""
        return refit_output_dir(self.output_dir, split)


# The model frame step's outputs, which the later steps read (and a refit of unchanged inputs
# reuses: defs/inputs.stored_frame_if_current)
FRAME_ASSETS = ("model_frame", "athlete_seasons")
# The metadata entry, on the materialisation of each of FRAME_ASSETS, that identifies its
# stored local file (stored.file_identity, taken from the written file before its rename).
STORED_FILE = "stored_file"


class AtomicPickleIOManager(dg.UPathIOManager):
    """Pickles asset values like Dagster's filesystem IO manager, but writes atomically, and
    loads local files by mapping their arrays (lib/outputs/stored.py).

    Two runs may materialise the same unpartitioned asset at once (one per distance); a
    temp-file-and-rename write (or a single object PUT) means a reader always gets a
    complete value. A step that reads a stored split or frame maps its arrays from the page
    cache instead of copying them: every step that reads it shares one copy.
    """

    extension = ".pkl"

    def dump_to_path(self, context: dg.OutputContext, obj: Any, path: UPath) -> None:
        # not fsynced (atomic_path's durable=False), as Dagster's own filesystem IO manager does
        # not: a process that dies still leaves the old value or the complete new one, a refit
        # makes them again from the inputs, and a file a crash of the machine left empty or
        # short is said to be corrupt when loaded (stored.CorruptStoredValue; what is not
        # detected: docs/failure-modes.md, section 2). The fsyncs
        # were most of a write's time: at full scale the model frame's 720 MB took 2.2 s to
        # store with them (the disk), 0.4 s without (2026-12-06); four such values lie on the
        # refit's critical path. The outputs people read (CSVs, artifacts, `latest`) are fsynced.
        # A large value is written through a mapping of the file by two threads (stored.dump_file).
        # A local one shares its buffers with the stored files it is a view of, which its step
        # loaded: a distance's split is a slice of the model frame (stored.py, "Shared buffers").
        local = as_path(path)
        previous = stored.source_names(local) if isinstance(local, Path) else None  # the value it replaces
        with atomic_path(path, durable=False) as tmp:
            stored.dump_file(obj, tmp, final=local if isinstance(local, Path) else None)
            if _is_frame(context) and isinstance(local, Path):  # which file this is, for a refit that would reuse it (defs/inputs.py)
                context.add_output_metadata({STORED_FILE: dg.MetadataValue.text(stored.file_identity(local, Path(tmp)))})
        if isinstance(local, Path):
            stored.remove_replaced_links(local, previous)

    def get_missing_partition_log_message(self, partition_key: str) -> str:
        """The warning of a step whose input allows missing partitions (the means steps) when a
        distance has no stored value: `refit` prints it as a note, in the project's words
        rather than Dagster's ("... allow_missing_partitions=True")."""
        return (f"no stored value of distance {partition_key} yet (it was never refitted in this instance, "
                "or its refit failed before storing it): this step leaves it out")

    def load_from_path(self, context: dg.InputContext, path: UPath) -> Any:
        local = as_path(path)
        if isinstance(local, Path):
            try:
                return stored.load(local)
            except stored.CorruptStoredValue as exc:
                if not _is_frame(context):
                    raise
                raise stored.CorruptStoredValue(
                    f"{exc} (a refit of unchanged inputs reuses the stored model frame: `racedayai-bayes refit "
                    "--rebuild-inputs` builds it again)") from None
        with local.open("rb") as fh:
            return stored.read(fh, local.stat().st_size, str(local))


def _is_frame(context: dg.InputContext | dg.OutputContext | None) -> bool:
    """Whether the value loaded or stored is one of :data:`FRAME_ASSETS`."""
    return context is not None and context.has_asset_key and context.asset_key.path[-1] in FRAME_ASSETS


class AtomicPickleIOManagerFactory(dg.ConfigurableIOManagerFactory):
    """Stores intermediate asset values under base_dir, a folder or an object-store URL."""

    base_dir: str | None = Field(
        default=None,
        description=f"Folder or URL for stored asset values; default: ${STORAGE_DIR_ENV} if set, "
        "else $DAGSTER_HOME/storage",
    )

    def create_io_manager(self, context: dg.InitResourceContext) -> AtomicPickleIOManager:
        # read when the run starts, in the run's own process (its pod, on Kubernetes)
        return AtomicPickleIOManager(base_path=storage_base(context.instance, self.base_dir))


def storage_base(instance: dg.DagsterInstance, base_dir: str | None = None) -> UPath:
    """Where the IO manager stores asset values: ``base_dir``, else $RACEDAYAI_STORAGE_DIR, else
    the instance's storage folder. An unpartitioned asset's value is ``<base>/<key>.pkl``."""
    return UPath(base_dir or os.environ.get(STORAGE_DIR_ENV) or instance.storage_directory())


def _cpu_count() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


# Which waiting step takes a freed CPU slot first (lower first): the steps that every later
# step of their run waits for, then the forecast posterior (the longest step by far), then the
# seed models' posteriors and the rest; of two such steps, the 70.3 one first (its fit and its
# CSV take longer). At full scale the 140.6 forecast posterior had waited 27 s while two seed
# posteriors that queued after it went first.
# (holdout_split and published_model take no slot: defs/split.py, defs/publish.py)
STEP_RANKS = {"athlete_race": 0, "athlete_profile": 0, "model_frame": 0, "bayesian_predictions": 0,
              "posterior_forecast": 1}


def step_rank(step_key: str | None, partition: str | None) -> int:
    """The queue rank of a step (lib/cpu_slots.py): lower is served first."""
    return 10 * STEP_RANKS.get(step_key or "", 2) + (0 if partition in (None, "70.3") else 1)


# The op tag of every step that takes a CPU slot (requires the ``cpu`` resource). The refit
# job's executor runs at most two such steps of a run at once (definitions.py), as many as
# the slots of a 2-core machine, so that Dagster's step priority, not a race for the slots,
# picks which ready posteriors start (the forecast model's first); its third process is for
# a step that takes no slot (the cluster file, the split, the comparison that publishes).
SLOT_TAGS = {"racedayai/cpu_slot": "held"}


class CpuSlots(dg.ConfigurableResource):
    """A machine-wide slot that a heavy step holds while it runs (lib/cpu_slots.py).

    A step that requires this resource takes one of ``slots`` slots before it loads its
    inputs and gives it back when it ends, so that two runs at once (one per distance) never
    put more heavy steps than cores on the machine, nor more steps' data in memory.
    """

    slots: int = Field(
        default_factory=lambda: int(os.environ.get("RACEDAYAI_CPU_SLOTS") or _cpu_count()),
        description="Heavy steps at once on this machine, across runs; default: $RACEDAYAI_CPU_SLOTS, "
        "else the number of CPUs this process may use; 0: no limit",
    )
    folder: str | None = Field(
        default=None, description="Folder of the slot files; default: the instance's storage folder's cpu_slots/"
    )
    _held: cpu_slots.Slot | None = PrivateAttr(default=None)
    _threads: object = PrivateAttr(default=None)
    _folder: Path | None = PrivateAttr(default=None)

    def setup_for_execution(self, context: dg.InitResourceContext) -> None:
        if self.slots <= 0:
            return
        if self.folder:
            folder = Path(self.folder)
        elif context.instance is not None:
            folder = Path(context.instance.storage_directory()) / "cpu_slots"
        else:
            folder = PROJECT_ROOT / "storage" / "cpu_slots"
        slots = self.slots
        self._folder = folder

        def on_wait() -> None:
            context.log.info(f"waiting for one of {slots} CPU slots: other steps, of this run or another, hold them")

        metadata = context.log.metadata if context.log is not None else {}
        run = context.run
        rank = step_rank(metadata.get("step_key"), run.tags.get("dagster/partition") if run is not None else None)
        self._held = cpu_slots.acquire(folder, slots, on_wait=on_wait, rank=rank)
        if self._held.waited_s >= 1.0:
            context.log.info(f"took CPU slot {self._held.index} after waiting {self._held.waited_s:.1f} s")
        # the page size of the step's fresh memory, chosen again now that it is about to load
        # its inputs: the free memory may have changed while it waited (lib/pages.py). Only in
        # a step process the step server forked, which chose as it started: a step run in the
        # calling process (a test's, dg.materialize) leaves that process's pages alone
        choice = pages.reapply_step_pages()
        if choice is not None and context.log is not None:
            context.log.debug(choice.describe())
        # a slot is a core: BLAS on one thread, as the other cores run the other slots' steps
        # (OpenBLAS's threads spin while they wait; two steps of two threads each on two
        # cores made the heaviest step ~40% slower at full scale)
        from threadpoolctl import threadpool_limits

        self._threads = threadpool_limits(limits=1, user_api="blas")

    @contextlib.contextmanager
    def second_core(self):
        """Yield True while this step may use a second core: it holds a second slot, free
        when asked and wanted by no waiting step (never waited for), or slots are unlimited.
        False while every other slot is taken or another step waits for one: the step then
        does its work on its one core. The slot is given back on exit."""
        if self.slots <= 0:
            yield True
            return
        extra = cpu_slots.try_acquire(self._folder, self.slots, unless_queued=True) if self._folder is not None else None
        try:
            yield extra is not None
        finally:
            if extra is not None:
                extra.release()

    def teardown_after_execution(self, context: dg.InitResourceContext) -> None:
        if self._threads is not None:
            self._threads.restore_original_limits()
            self._threads = None
        if self._held is not None:
            self._held.release()
            self._held = None
