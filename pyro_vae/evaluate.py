"""Held-out estimates: the ELBO, its KL term, and how many latent dimensions the model uses."""

from collections.abc import Callable

import torch
from pyro import poutine

from pyro_vae.model import VAE
from pyro_vae.objectives import make_elbo


@torch.no_grad()
def _mean_loss(
    model: Callable[..., torch.Tensor],
    guide: Callable[..., torch.Tensor],
    x: torch.Tensor,
    estimator: str,
    num_particles: int,
    batch_size: int,
) -> float:
    """An ELBO loss averaged over the rows of ``x``, computed ``batch_size`` rows at a time."""
    elbo = make_elbo(estimator, num_particles)
    total = torch.zeros((), device=x.device)
    for chunk in x.split(batch_size):
        total += elbo.differentiable_loss(model, guide, chunk)  # summed over the chunk
    return (total / x.shape[0]).item()


def elbo_per_datapoint(
    vae: VAE,
    x: torch.Tensor,
    estimator: str = "analytic",
    num_particles: int = 16,
    batch_size: int = 1024,
) -> float:
    """The ELBO of ``vae`` averaged over the rows of ``x``, in nats per data point.

    The default (closed-form KL, 16 samples of z per image) is the low-variance yardstick that
    validation uses whatever estimator trained the model; chunks of ``batch_size`` rows keep
    memory bounded on large test sets.
    """
    return -_mean_loss(vae.model, vae.guide, x, estimator, num_particles, batch_size)


def kl_per_datapoint(
    vae: VAE, x: torch.Tensor, num_particles: int = 16, batch_size: int = 1024
) -> float:
    """KL(q_φ(z|x) ‖ p(z)) averaged over the rows of ``x`` (closed form where Pyro has it).

    Hiding the observed site leaves a model with only z ~ p(z), whose ELBO loss is the KL term.
    """
    prior_only = poutine.block(vae.model, hide=["x"])
    return _mean_loss(prior_only, vae.guide, x, "analytic", num_particles, batch_size)


@torch.no_grad()
def active_units(vae: VAE, x: torch.Tensor, threshold: float = 0.01) -> int:
    """Latent dimensions u with Var_x(E_q[z_u | x]) > ``threshold`` (Burda et al., 2016).

    A dimension whose posterior mean does not move with the data carries no information about
    it: the VAE has collapsed that dimension onto the prior.
    """
    loc, _ = vae.encoder(x)
    return int((loc.var(dim=0) > threshold).sum())
