"""The estimator statistics, checked on a model where everything has a closed form.

z ~ N(0, 1), x | z ~ N(z, 1), guide q(z) = N(m, s²). With u = z − x:
  ELBO = −½ log 2π − ½((x − m)² + s²) − ½(m² + s² − 1 − log s²)
  closed-form-KL estimate: −½ log 2π − ½u² − KL, so its variance is Var(½u²) = s⁴/2 + (m − x)²s²
  gradient in m, z = m + sε: closed-form KL gives x − 2m − sε (variance s²); Monte Carlo KL
  gives x − 2z = x − 2m − 2sε (variance 4s²): the entropy term's path derivative is 0.
"""

import math

import pyro
import pyro.distributions as dist
import pytest
import torch

from pyro_vae import make_elbo
from pyro_vae.inference.diagnostics import estimate_statistics, gradient_statistics

X, M, S = 1.5, 0.3, 0.8


def model(x):
    z = pyro.sample("z", dist.Normal(0.0, 1.0))
    pyro.sample("x", dist.Normal(z, 1.0), obs=x)


def guide(x):
    m = pyro.param("m", torch.tensor(M))
    s = pyro.param("s", torch.tensor(S), constraint=dist.constraints.positive)
    pyro.sample("z", dist.Normal(m, s))


def exact_elbo() -> float:
    expected_log_likelihood = -0.5 * math.log(2 * math.pi) - 0.5 * ((X - M) ** 2 + S**2)
    kl = 0.5 * (M**2 + S**2 - 1 - math.log(S**2))
    return expected_log_likelihood - kl


@pytest.mark.parametrize("estimator", ["mc", "analytic"])
def test_estimates_average_to_the_exact_elbo(estimator):
    stats = estimate_statistics(make_elbo(estimator), model, guide, [torch.tensor(X)], 2000)
    assert abs(stats.mean - exact_elbo()) < 4 * stats.standard_error
    assert stats.repeats == 2000


def test_closed_form_kl_estimate_has_the_variance_of_the_likelihood_term_alone():
    stats = estimate_statistics(make_elbo("analytic"), model, guide, [torch.tensor(X)], 2000)
    expected_variance = S**4 / 2 + (M - X) ** 2 * S**2
    assert stats.std**2 == pytest.approx(expected_variance, rel=0.1)


@pytest.mark.parametrize("estimator, variance", [("analytic", S**2), ("mc", 4 * S**2)])
def test_gradient_variance_and_snr(estimator, variance):
    guide(torch.tensor(X))  # create the params
    m = pyro.param("m").unconstrained()
    stats = gradient_statistics(
        make_elbo(estimator), model, guide, [torch.tensor(X)], {"m": [m]}, repeats=2000
    )["m"]
    assert stats.total_variance == pytest.approx(variance, rel=0.1)
    assert stats.mean_snr == pytest.approx(abs(X - 2 * M) / variance**0.5, rel=0.1)
    assert stats.coordinates == 1
