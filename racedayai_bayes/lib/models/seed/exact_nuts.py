"""The exact engine's NUTS variant (engine ``exact_nuts``): NUTS on the four log scales,
with the coefficients integrated out (the maths is in exact.py's docstring).

Only this module of the exact engine needs JAX and NumPyro, so only a NUTS fit imports
them; the default independence sampler (exact.fit_exact_imh_from_stats) runs in numpy.
"""

from __future__ import annotations

import functools
import time

import jax
import jax.numpy as jnp
import jax.scipy.linalg
import numpy as np
import numpyro
import numpyro.distributions as dist

from racedayai_bayes.lib.inference.nuts import Draws, ProgressFn, Sampler, run_nuts
from racedayai_bayes.lib.models.seed.exact import (
    _COEFFICIENT_STREAM,
    _log_prior_theta,
    _stats_args,
    _value_and_grad,
    draw_coefficients,
    laplace,
)
from racedayai_bayes.lib.models.seed.model import SCALAR_SITES, SCALE_SITES, VECTOR_SITES
from racedayai_bayes.lib.models.seed.suffstats import SuffStats, column_slices

_JAX = (jnp, jax.scipy.linalg.solve_triangular)


@functools.partial(jax.custom_jvp, nondiff_argnums=(5,))
def _log_marginal_theta(theta, xtx, xty, yty, n, sizes):
    # differentiable in theta only: the statistics are data
    return _value_and_grad(theta, xtx, xty, yty, n, sizes, _JAX)[0]


@_log_marginal_theta.defjvp
def _log_marginal_jvp(sizes, primals, tangents):
    value, grad = _value_and_grad(*primals, sizes, _JAX)
    return value, grad @ tangents[0]


# Jitted at module level: numpyro evaluates the model eagerly (one XLA compile per primitive)
# when it initialises a chain; this compiles once per shape and is inlined in NUTS.
@functools.partial(jax.jit, static_argnums=7)
def _scales_and_log_density(z, loc, tril, xtx, xty, yty, n, sizes):
    theta = loc + tril @ z  # the constant Jacobian log|tril| is dropped
    return jnp.exp(theta), (_log_prior_theta(theta, jnp)
                            + _log_marginal_theta(theta, xtx, xty, yty, n, sizes))


def collapsed_model(xtx, xty, yty, n, loc, tril, *, n_gender: int, n_age: int, n_cluster: int):
    """NumPyro model of the four scales, b integrated out, in whitened coordinates z.

    log scales = loc + tril @ z; the density is the seed's HalfNormal priors (moved to the
    log scale) times p(y | scales).
    """
    z = numpyro.sample("z", dist.ImproperUniform(dist.constraints.real_vector, (), (4,)))
    scales, log_density = _scales_and_log_density(z, loc, tril, xtx, xty, yty, n,
                                                  (n_gender, n_age, n_cluster))
    for i, site in enumerate(SCALE_SITES):
        numpyro.deterministic(site, scales[i])
    numpyro.factor("log_posterior", log_density)



def fit_exact_from_stats(stats: SuffStats, sampler: Sampler = Sampler(), progress: ProgressFn = None) -> Draws:
    """Exact joint posterior draws from sufficient statistics, the scales by NUTS (the maths is in exact.py's docstring)."""
    say = progress or (lambda _msg: None)
    t0 = time.perf_counter()
    xtx, xty, yty, n = _stats_args(stats, jnp)
    loc, cov = laplace(stats)
    t_laplace = time.perf_counter() - t0
    say("exact: Laplace mode " + ", ".join(
        f"{s}={v:.4g}" for s, v in zip(SCALE_SITES, np.exp(loc))) + f" ({t_laplace:.2f} s)")
    kwargs = dict(xtx=xtx, xty=xty, yty=yty, n=n, loc=jnp.asarray(loc),
                  tril=jnp.asarray(np.linalg.cholesky(cov)))
    samples, diverging, info = run_nuts(
        functools.partial(collapsed_model, **stats.sizes),
        kwargs,
        sampler,
        # whitened coordinates: z = 0 is the Laplace mode and one unit is about one posterior
        # sd, so chains start 1.5 sd apart from the mode in random directions
        init_params={"z": jnp.zeros(4)},
        init_jitter=1.5,
        progress=progress,
    )
    t1 = time.perf_counter()

    # one exact draw of b per draw of the scales; a generator apart from run_nuts' keys
    shape, k = diverging.shape, stats.num_columns
    theta = np.log(np.stack([samples[s].reshape(-1) for s in SCALE_SITES], axis=-1))
    rng = np.random.default_rng([sampler.seed, _COEFFICIENT_STREAM])
    b = draw_coefficients(stats, theta, rng).reshape(shape + (k,))
    t2 = time.perf_counter()
    say(f"exact: {theta.shape[0]} coefficient draws in {t2 - t1:.2f} s")

    out = {s: np.asarray(samples[s]) for s in SCALE_SITES}
    for site, sl in column_slices(**stats.sizes).items():
        out[site] = b[..., sl] if site in VECTOR_SITES else b[..., sl.start]
    info.update(
        rows=int(stats.n), columns=k, laplace_mode=dict(zip(SCALE_SITES, np.exp(loc).tolist())),
        laplace_s=t_laplace, nuts_s=t1 - t0 - t_laplace, coefficients_s=t2 - t1,
        wall_s=time.perf_counter() - t0,
    )
    return Draws(samples={s: out[s] for s in (*SCALAR_SITES, *VECTOR_SITES)},
                 diverging=diverging, engine="exact", info=info)
