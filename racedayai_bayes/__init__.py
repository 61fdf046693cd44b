"""RaceDayAI's per-distance Bayesian finish-time model, as a Dagster code location."""

import os

# JAX must never look for an accelerator: set before anything imports jax. Child processes
# (Dagster's multiprocess executor) import this package too, so they inherit the setting.
os.environ.setdefault("JAX_PLATFORMS", "cpu")

# glibc's malloc raises its mmap threshold (up to 32 MB) once a large block is freed, so later
# per-row arrays of a full-scale fit (about 18 MB each) land in the heap, and their pages stay
# in the process's memory after they are freed. A fixed threshold keeps every block of 4 MB
# and more in a mapping of its own, returned to the system when it is freed. glibc reads the
# setting when a process starts: it applies to the processes started after this import (the
# step servers and their steps).
os.environ.setdefault("MALLOC_MMAP_THRESHOLD_", str(4 << 20))

__version__ = "0.1.0"
