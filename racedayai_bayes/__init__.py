"""RaceDayAI's per-distance Bayesian finish-time model, as a Dagster code location."""

import os

# JAX must never look for an accelerator: set before anything imports jax. Child processes
# (Dagster's multiprocess executor) import this package too, so they inherit the setting.
os.environ.setdefault("JAX_PLATFORMS", "cpu")

__version__ = "0.1.0"
