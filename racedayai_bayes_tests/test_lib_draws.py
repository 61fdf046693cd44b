"""lib/inference/draws.py: the log of a density averaged over draws."""

import numpy as np
from scipy.special import logsumexp

from racedayai_bayes.lib.inference.draws import log_mean_exp


def test_log_mean_exp_equals_scipy_on_every_kind_of_row():
    rng = np.random.default_rng(3)
    lp = rng.normal(-8.0, 30.0, size=(50, 300))  # spreads far beyond exp's range
    lp[1] = -np.inf  # a row of zero densities
    lp[2, :5] = -np.inf  # some draws give zero density
    lp[3, 7] = np.inf
    lp[4, 9] = np.nan
    lp[5] = -800.0  # every term underflows without the shift
    expected = logsumexp(lp, axis=1) - np.log(lp.shape[1])
    got = log_mean_exp(lp.copy())
    np.testing.assert_allclose(got, expected, rtol=1e-13, atol=0)  # equal where finite, same inf/NaN pattern
    assert got[1] == -np.inf and got[3] == np.inf and np.isnan(got[4])
    assert got[5] == -800.0
