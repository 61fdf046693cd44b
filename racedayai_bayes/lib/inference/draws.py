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


def log_mean_exp(lp: np.ndarray) -> np.ndarray:
    """log(mean over draws of exp(lp)) for each row of ``lp`` (rows, draws): the log of a
    predictive density averaged over posterior draws, computed stably (the row's largest
    value is taken out first). ``lp`` is a temporary and is overwritten.

    Equal to ``scipy.special.logsumexp(lp, axis=1) - log(draws)``, rows of -inf, +inf or NaN
    included, at about a twentieth of its time here (0.04 s against 0.8 s for 8192 x 1200
    values, measured 2026-12-03): the held-out scores of a full-scale fit spent seconds in it.
    """
    top = lp.max(axis=1)
    shift = np.where(np.isfinite(top), top, 0.0)
    np.subtract(lp, shift[:, None], out=lp)
    np.exp(lp, out=lp)
    with np.errstate(divide="ignore"):
        return shift + np.log(lp.sum(axis=1)) - np.log(lp.shape[1])
