"""The seed's own sampler: NUTS over every parameter with the row-wise likelihood."""

from __future__ import annotations

import functools
import time

from racedayai_bayes.lib.inference.nuts import Draws, ProgressFn, Sampler, run_nuts
from racedayai_bayes.lib.models.seed.encoding import Design
from racedayai_bayes.lib.models.seed.model import finish_time_model


def fit_rowwise(design: Design, sampler: Sampler = Sampler(), progress: ProgressFn = None) -> Draws:
    """The seed's sampler: NUTS over every parameter with the row-wise likelihood."""
    import jax.numpy as jnp

    if design.y is None:
        raise ValueError("fit_rowwise needs observed finish times (design.y)")
    kwargs = design.model_kwargs()
    # group counts fix array shapes, so they are bound statically; the arrays are traced
    sizes = {k: kwargs.pop(k) for k in ("n_gender", "n_age", "n_cluster")}
    kwargs = {k: jnp.asarray(v) for k, v in kwargs.items()}
    t0 = time.perf_counter()
    samples, diverging, info = run_nuts(
        functools.partial(finish_time_model, **sizes),
        kwargs,
        sampler,
        progress=progress,
    )
    info.update(rows=len(design), wall_s=time.perf_counter() - t0)
    return Draws(samples=samples, diverging=diverging, engine="rowwise", info=info)
