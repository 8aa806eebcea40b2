"""The KL term of the ELBO: closed form (TraceMeanField_ELBO) and Monte Carlo (Trace_ELBO).

Hiding the observed site ``x`` leaves a model with only ``z ~ p(z)``, so the ELBO loss of the
blocked model is exactly the KL(q_φ(z|x) ‖ p(z)) term of the VAE's own model/guide pair.
"""

import pytest
import torch
from pyro import poutine

from pyro_vae import VAE, active_units, kl_per_datapoint, make_elbo
from pyro_vae.components.guides import diagonal_parameters


def kl_term_only(vae: VAE):
    return poutine.block(vae.model, hide=["x"])


def closed_form_kl(vae: VAE, x: torch.Tensor) -> torch.Tensor:
    """KL(N(μ, diag σ²) ‖ N(0, I)) = −½ Σ (1 + log σ² − μ² − σ²), summed over the batch."""
    mu, sigma = diagonal_parameters(vae.encoder(x))
    return -0.5 * torch.sum(1 + torch.log(sigma**2) - mu**2 - sigma**2)


def test_analytic_kl_matches_the_formula(digits):
    vae = VAE(64, latent_dim=6).double()
    x = digits.val.x[:32].double()
    with torch.no_grad():
        # Move the guide away from N(0, I) so the KL is far from zero.
        vae.encoder.net[-1].bias.normal_()
        analytic = make_elbo("analytic").differentiable_loss(kl_term_only(vae), vae.guide, x)
        expected = closed_form_kl(vae, x)
    assert expected > 10
    torch.testing.assert_close(analytic, expected, atol=1e-5, rtol=0)


def test_kl_per_datapoint_is_the_closed_form_average(digits):
    vae = VAE(64, latent_dim=6)
    x = digits.val.x[:32]
    with torch.no_grad():
        vae.encoder.net[-1].bias.normal_()
        expected = closed_form_kl(vae, x) / x.shape[0]
    assert kl_per_datapoint(vae, x, batch_size=10) == pytest.approx(expected.item(), rel=1e-5)


def test_active_units_count_dimensions_whose_posterior_mean_varies(digits):
    vae = VAE(64, latent_dim=6)
    x = digits.val.x
    with torch.no_grad():
        last = vae.encoder.net[-1]
        last.weight[:6].zero_()  # μ no longer depends on x in any dimension ...
        assert active_units(vae, x) == 0
        last.weight[:2].normal_()  # ... until two of them do again
    assert active_units(vae, x) == 2


def test_monte_carlo_kl_averages_to_the_analytic_value(digits):
    vae = VAE(64, latent_dim=6)
    x = digits.val.x[:8]
    with torch.no_grad():
        vae.encoder.net[-1].bias.normal_()
        expected = closed_form_kl(vae, x)
        mc = make_elbo("mc")
        draws = torch.stack(
            [mc.differentiable_loss(kl_term_only(vae), vae.guide, x) for _ in range(2000)]
        )
    standard_error = draws.std() / len(draws) ** 0.5
    assert draws.std() > 0.1  # the estimator really is stochastic
    assert abs(draws.mean() - expected) < 3 * standard_error
