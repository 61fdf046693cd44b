"""Posterior draws of one fit, whatever sampled them (no JAX or NumPyro import: loading a
forecast artifact must not pay for them)."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class Draws:
    """Posterior draws of one fit.

    ``samples`` maps each site name to an array of shape (chains, draws, *site_shape);
    ``diverging`` is a bool array (chains, draws). ``info`` holds engine facts (times,
    step sizes, rows used) for metadata.
    """

    samples: dict[str, np.ndarray]
    diverging: np.ndarray
    engine: str
    info: dict = field(default_factory=dict)

    @property
    def num_chains(self) -> int:
        return int(self.diverging.shape[0])

    @property
    def num_draws(self) -> int:
        return int(self.diverging.shape[1])

    def flat(self, name: str) -> np.ndarray:
        """Draws of one site with chains stacked: shape (chains*draws, *site_shape)."""
        arr = self.samples[name]
        return arr.reshape((-1,) + arr.shape[2:])
