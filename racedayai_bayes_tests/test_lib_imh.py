"""The independence sampler's contract with its target (lib/inference/imh.py)."""

import numpy as np

from racedayai_bayes.lib.inference import imh

CHAINS, DRAWS, WARMUP, BATCH = 3, 40, 5, 8


def _log_density(theta: np.ndarray) -> np.ndarray:
    return -0.5 * np.sum((theta - np.array([0.3, -0.2])) ** 2 / np.array([1.0, 0.5]), axis=1)


def _run(target, copies: list) -> imh.IMHResult:
    def copy(payload):
        copies.append(1)
        return np.array(payload, copy=True)

    return imh.independence_mh(
        target, imh.MultivariateT(np.zeros(2), np.eye(2), 7.0), chains=CHAINS, draws=DRAWS, warmup=WARMUP,
        seed=3, batch=BATCH, copy_fn=copy, draw_fn=lambda payload, rng: float(payload.sum() + rng.standard_normal()),
    )


def test_a_target_may_reuse_its_payloads_memory_from_one_batch_to_the_next():
    """A target that writes every batch's payloads into the same buffer (as the forecast
    model's evaluations write their factors to one workspace) gets the draws of one that
    allocates afresh: a chain's state is copied out of its batch before the next batch is
    evaluated, once per batch however many proposals it accepted there."""

    def fresh(theta):
        return _log_density(theta), [np.array([t[0], 2 * t[1], 7.0]) for t in theta]

    buffer = np.empty((CHAINS * BATCH, 3))

    def reusing(theta):
        view = buffer[:len(theta)]
        view[:] = np.nan  # whatever the previous batch left is gone
        view[:, 0], view[:, 1], view[:, 2] = theta[:, 0], 2 * theta[:, 1], 7.0
        return _log_density(theta), view

    copies_fresh, copies_reusing = [], []
    want, got = _run(fresh, copies_fresh), _run(reusing, copies_reusing)
    np.testing.assert_array_equal(got.draws, want.draws)
    np.testing.assert_array_equal(got.accepted, want.accepted)
    assert got.extra == want.extra and not np.isnan(got.extra).any()
    assert 0.3 < want.acceptance < 1.0  # the chains move, and stay put sometimes
    batches = -(-(WARMUP + DRAWS) // BATCH)
    assert len(copies_reusing) <= CHAINS * (batches + 1)  # the start, then at most once per chain and batch
