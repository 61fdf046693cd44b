"""Sampler settings and the progress callback, shared by every engine (NUTS and the
independence sampler alike). No JAX here: an engine that needs none never imports it."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

ProgressFn = Callable[[str], None] | None


@dataclass(frozen=True)
class Sampler:
    """Sampler settings shared by every engine (the defaults are the seed's)."""

    num_warmup: int = 1500
    num_samples: int = 1500
    num_chains: int = 2
    target_accept: float = 0.85
    seed: int = 42
