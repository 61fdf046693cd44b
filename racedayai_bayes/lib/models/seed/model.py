"""The seed's hierarchical Normal model of standardised finish time, for one distance.

NumPyro (and so JAX) is imported when the model runs, not with this module: its constants
are read by processes that never sample (the command line, the code location's server).
"""

from __future__ import annotations

# Prior constants, in one place so that every engine uses the same ones.
PRIOR_MU_GLOBAL_SD = 1.0
PRIOR_GROUP_SCALE = 0.5  # HalfNormal scale of sigma_gender, sigma_age, sigma_cluster
PRIOR_BETA_FITNESS = (0.3, 0.2)
PRIOR_BETA_EXPERIENCE = (-0.1, 0.1)
PRIOR_SIGMA_SCALE = 1.0

# Parameter names and their per-distance shapes, in the seed's order of definition.
SCALAR_SITES = (
    "mu_global",
    "sigma_gender",
    "sigma_age",
    "sigma_cluster",
    "beta_fitness",
    "beta_experience",
    "sigma",
)
VECTOR_SITES = {"mu_gender": "n_gender", "mu_age": "n_age", "mu_cluster": "n_cluster"}
SCALE_SITES = ("sigma", "sigma_gender", "sigma_age", "sigma_cluster")


def finish_time_model(
    gender_idx,
    age_idx,
    cluster_idx,
    fitness,
    experience,
    n_gender: int,
    n_age: int,
    n_cluster: int,
    y=None,
):
    r"""Partial pooling over gender, age group and athlete cluster, plus two slopes.

    With y the standardised finish time of row i,

    .. math::

        \mu_0 &\sim N(0, 1) \\
        \sigma_g, \sigma_a, \sigma_c &\sim \mathrm{HalfNormal}(0.5) \\
        \mu^{g}_j \sim N(0, \sigma_g),\quad \mu^{a}_k &\sim N(0, \sigma_a),\quad
        \mu^{c}_l \sim N(0, \sigma_c) \\
        \beta_f \sim N(0.3, 0.2),\quad \beta_e &\sim N(-0.1, 0.1),\quad
        \sigma \sim \mathrm{HalfNormal}(1) \\
        y_i &\sim N(\mu_0 + \mu^g_{g[i]} + \mu^a_{a[i]} + \mu^c_{c[i]}
                    + \beta_f f_i + \beta_e e_i,\ \sigma)

    The four intercepts are only identified through their priors (adding a constant to
    mu_global and subtracting it from every mu_gender leaves the likelihood unchanged),
    which is why the row-wise NUTS sampler mixes slowly on this model.
    """
    import numpyro
    import numpyro.distributions as dist

    # priors on the population parameters
    mu_global = numpyro.sample("mu_global", dist.Normal(0.0, PRIOR_MU_GLOBAL_SD))
    sigma_gender = numpyro.sample("sigma_gender", dist.HalfNormal(PRIOR_GROUP_SCALE))
    sigma_age = numpyro.sample("sigma_age", dist.HalfNormal(PRIOR_GROUP_SCALE))
    sigma_cluster = numpyro.sample("sigma_cluster", dist.HalfNormal(PRIOR_GROUP_SCALE))
    beta_fitness = numpyro.sample("beta_fitness", dist.Normal(*PRIOR_BETA_FITNESS))
    beta_experience = numpyro.sample("beta_experience", dist.Normal(*PRIOR_BETA_EXPERIENCE))
    sigma = numpyro.sample("sigma", dist.HalfNormal(PRIOR_SIGMA_SCALE))

    # group effects
    mu_gender = numpyro.sample("mu_gender", dist.Normal(0.0, sigma_gender).expand([n_gender]))
    mu_age = numpyro.sample("mu_age", dist.Normal(0.0, sigma_age).expand([n_age]))
    mu_cluster = numpyro.sample("mu_cluster", dist.Normal(0.0, sigma_cluster).expand([n_cluster]))

    # likelihood
    mu = (
        mu_global
        + mu_gender[gender_idx]
        + mu_age[age_idx]
        + mu_cluster[cluster_idx]
        + beta_fitness * fitness
        + beta_experience * experience
    )
    with numpyro.plate("rows", fitness.shape[0]):
        numpyro.sample("obs", dist.Normal(mu, sigma), obs=y)
