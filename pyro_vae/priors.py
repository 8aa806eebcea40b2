"""Priors p(z) over the latent code.

A prior is a small ``nn.Module`` whose ``forward()`` returns a ``pyro.distributions`` object with
``event_shape == (latent_dim,)``; the model samples ``z`` from it inside the data plate, which
broadcasts it over the batch. Learnable values are ``nn.Parameter``s, so ``state_dict()`` holds
them.
To add a prior, write such a class and register it in ``PRIORS`` (or pass an instance to ``VAE``).
"""

import pyro.distributions as dist
import torch
from torch import nn

from pyro_vae.registry import build


class Prior(nn.Module):
    """Base class of priors: ``forward()`` returns p(z) with event shape ``(latent_dim,)``."""

    def __init__(self, latent_dim: int):
        super().__init__()
        self.latent_dim = latent_dim

    def forward(self) -> dist.Distribution:
        raise NotImplementedError


class StandardNormalPrior(Prior):
    """p(z) = N(z; 0, I): the seed's prior; its KL to the Gaussian guide has a closed form."""

    def __init__(self, latent_dim: int):
        super().__init__(latent_dim)
        # Buffers, not parameters: they follow .to(device) but are not learnt or checkpointed.
        self.register_buffer("loc", torch.zeros(latent_dim), persistent=False)
        self.register_buffer("scale", torch.ones(latent_dim), persistent=False)

    def forward(self) -> dist.Distribution:
        return dist.Normal(self.loc, self.scale).to_event(1)


PRIORS: dict[str, type[Prior]] = {
    "standard": StandardNormalPrior,
}


def build_prior(prior: "str | Prior", latent_dim: int, **options: object) -> Prior:
    """The prior registered as ``prior`` for ``latent_dim``, or ``prior`` itself if a module."""
    return build(PRIORS, prior, "prior", latent_dim, **options)
