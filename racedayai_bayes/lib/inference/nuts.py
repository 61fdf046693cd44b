"""The NUTS driver shared by the models: chunked, jitted chains with progress; :class:`Draws` re-exported.

Models call this driver; it knows nothing about any model's parameters."""

from __future__ import annotations

import functools
import time

import numpy as np
import numpyro

from racedayai_bayes.lib.inference.draws import Draws  # noqa: F401 (re-exported: the models import it from here)
from racedayai_bayes.lib.inference.sampler import ProgressFn, Sampler  # noqa: F401 (re-exported)
from racedayai_bayes.lib.runreport import with_progress

# Sums over millions of rows (sufficient statistics, standardised targets) need float64.
numpyro.enable_x64()



def _chunks(total: int, max_chunks: int = 10) -> list[int]:
    """Split ``total`` iterations into at most ``max_chunks`` chunks of (nearly) equal size.

    Every chunk but possibly the last has the same length, so at most two kernels compile.
    """
    if total <= 0:
        return []
    size = -(-total // max_chunks)
    return [size] * (total // size) + ([total % size] if total % size else [])


def run_nuts(
    model,
    model_kwargs: dict,
    sampler: Sampler,
    *,
    init_params: dict | None = None,
    init_jitter: float = 0.0,
    progress: ProgressFn = None,
    max_tree_depth: int = 10,
):
    """Run NUTS chain by chain in jitted chunks, reporting progress after each chunk.

    Each progress message ends in ``[progress <iterations done>/<all iterations>]`` over
    every chain, warmup included (lib/runreport.py reads it back).

    ``model_kwargs`` must hold arrays only (they are traced, so one compile serves every
    chunk and chain); bind static arguments with functools.partial. ``init_params`` are
    unconstrained starting values; the default starts at the prior median. With
    ``init_jitter`` > 0 each chain starts at init_params plus independent N(0, jitter²)
    noise, so that chains start apart and r_hat can see a chain that fails to mix.

    NumPyro's MCMC.run recompiles when called repeatedly, so this drives the NUTS kernel
    directly with ``lax.scan``; warmup adaptation happens inside ``kernel.sample`` while
    the iteration counter is below ``num_warmup``, exactly as in MCMC.run.

    Returns ``(samples, diverging, info)``: samples maps site -> (chains, draws, ...),
    diverging is (chains, draws).
    """
    import jax
    from numpyro.infer import NUTS, init_to_median

    say = progress or (lambda _msg: None)
    num_warmup, num_samples, num_chains = sampler.num_warmup, sampler.num_samples, sampler.num_chains
    target_accept, seed = sampler.target_accept, sampler.seed
    kernel = NUTS(
        model,
        target_accept_prob=target_accept,
        init_strategy=init_to_median(num_samples=15),
        max_tree_depth=max_tree_depth,
    )

    @functools.partial(jax.jit, static_argnums=2)
    def advance(state, kwargs, length):
        def body(s, _):
            s = kernel.sample(s, (), kwargs)
            return s, (s.z, s.diverging, s.num_steps)

        return jax.lax.scan(body, state, None, length=length)

    chain_keys = jax.random.split(jax.random.PRNGKey(seed), num_chains)
    chains_z, chains_div = [], []
    info: dict = {"warmup_s": [], "sampling_s": [], "step_size": [], "num_steps_mean": []}
    per_chain = num_warmup + num_samples  # iterations; the progress tail counts them over all chains
    for c in range(num_chains):
        label = f"chain {c + 1}/{num_chains}"
        start = init_params
        if init_params is not None and init_jitter > 0:
            leaves, tree = jax.tree.flatten(init_params)
            keys = jax.random.split(jax.random.fold_in(chain_keys[c], 1), len(leaves))
            start = jax.tree.unflatten(
                tree,
                [x + init_jitter * jax.random.normal(k, jax.numpy.shape(x)) for x, k in zip(leaves, keys)],
            )
        state = kernel.init(
            chain_keys[c], num_warmup, start, model_args=(), model_kwargs=model_kwargs
        )
        t0 = time.perf_counter()
        done = 0
        for length in _chunks(num_warmup):
            state, _ = advance(state, model_kwargs, length)
            done += length
            say(with_progress(
                f"{label}: warmup {done}/{num_warmup} ({time.perf_counter() - t0:.1f} s)",
                c * per_chain + done, num_chains * per_chain,
            ))
        t_warm = time.perf_counter() - t0
        step = float(np.asarray(state.adapt_state.step_size))
        say(f"{label}: warmup done in {t_warm:.1f} s, step size {step:.3g}")
        zs, divs, steps = [], [], []
        t1 = time.perf_counter()
        done = 0
        for length in _chunks(num_samples):
            state, (z, div, nsteps) = advance(state, model_kwargs, length)
            zs.append(jax.tree.map(np.asarray, z))
            divs.append(np.asarray(div, dtype=bool))
            steps.append(np.asarray(nsteps))
            done += length
            n_div = int(sum(d.sum() for d in divs))
            say(with_progress(
                f"{label}: sampling {done}/{num_samples} ({time.perf_counter() - t1:.1f} s, {n_div} divergent)",
                c * per_chain + num_warmup + done, num_chains * per_chain,
            ))
        chains_z.append({k: np.concatenate([z[k] for z in zs]) for k in zs[0]})
        chains_div.append(np.concatenate(divs))
        info["warmup_s"].append(t_warm)
        info["sampling_s"].append(time.perf_counter() - t1)
        info["step_size"].append(step)
        info["num_steps_mean"].append(float(np.mean(np.concatenate(steps))))

    # unconstrained -> constrained values, draw by draw
    to_constrained = jax.jit(jax.vmap(kernel.postprocess_fn((), model_kwargs)))
    per_chain = [jax.tree.map(np.asarray, to_constrained(z)) for z in chains_z]
    samples = {k: np.stack([pc[k] for pc in per_chain]) for k in per_chain[0]}
    return samples, np.stack(chains_div), info
