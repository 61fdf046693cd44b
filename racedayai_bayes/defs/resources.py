"""Where inputs are read and outputs written, and how assets are stored between steps."""


import os
import pickle
from pathlib import Path
from typing import Any

import dagster as dg
from pydantic import Field

from racedayai_bayes.lib.io import atomic_path

PROJECT_ROOT = Path(__file__).resolve().parents[2]


def _default_dir(env_var: str, sub: str) -> str:
    return os.environ.get(env_var) or str(PROJECT_ROOT / "data" / sub)


class PipelinePaths(dg.ConfigurableResource):
    """Folders of the cleaned input CSVs and of the prediction outputs."""

    input_dir: str = Field(description="Folder holding athlete_race.csv, athlete_profile.csv, cluster_assignments.csv")
    output_dir: str = Field(description="Folder the prediction CSVs and posterior means are written to")

    @classmethod
    def from_env(cls) -> "PipelinePaths":
        """Defaults to data/cleaned and data/outputs; RACEDAYAI_INPUT_DIR / _OUTPUT_DIR override."""
        return cls(
            input_dir=_default_dir("RACEDAYAI_INPUT_DIR", "cleaned"),
            output_dir=_default_dir("RACEDAYAI_OUTPUT_DIR", "outputs"),
        )

    def input_file(self, name: str) -> Path:
        return Path(self.input_dir) / name

    def output_file(self, name: str) -> Path:
        return Path(self.output_dir) / name


class AtomicPickleIOManager(dg.UPathIOManager):
    """Pickles asset values like Dagster's filesystem IO manager, but writes atomically.

    Two runs may materialise the same unpartitioned asset at once (one per distance); a
    temp-file-and-rename write means a reader always gets a complete value.
    """

    extension = ".pkl"

    def dump_to_path(self, context: dg.OutputContext, obj: Any, path) -> None:
        with atomic_path(Path(path)) as tmp, open(tmp, "wb") as fh:
            pickle.dump(obj, fh, protocol=pickle.HIGHEST_PROTOCOL)

    def load_from_path(self, context: dg.InputContext, path) -> Any:
        with open(Path(path), "rb") as fh:
            return pickle.load(fh)


class AtomicPickleIOManagerFactory(dg.ConfigurableIOManagerFactory):
    """Stores intermediate asset values under base_dir (default: the instance's storage)."""

    base_dir: str | None = Field(default=None, description="Folder for stored asset values; default: $DAGSTER_HOME/storage")

    def create_io_manager(self, context: dg.InitResourceContext) -> AtomicPickleIOManager:
        from upath import UPath

        base = self.base_dir or context.instance.storage_directory()
        return AtomicPickleIOManager(base_path=UPath(base))
