"""Likelihoods p_θ(x|z) of the data given the decoder's output x̂ = NeuralNet(z; θ).

A likelihood is a small ``nn.Module`` whose ``forward(x_hat)`` returns a ``pyro.distributions``
object with ``event_shape == (data_dim,)``. ``support`` says which data it can score, and
``check_data`` turns a mismatch into a one-line error before training instead of a NaN during it.
To add a likelihood, write such a class and register it in ``LIKELIHOODS``.
"""

import pyro.distributions as dist
import torch
from torch import nn
from torch.distributions import constraints

from pyro_vae.errors import UserInputError
from pyro_vae.registry import build


class Likelihood(nn.Module):
    """Base class: ``forward(x_hat)`` returns p(x|z) with event shape ``(data_dim,)``."""

    support: constraints.Constraint = constraints.real
    support_description = "finite real numbers"

    def __init__(self, data_dim: int):
        super().__init__()
        self.data_dim = data_dim

    def forward(self, x_hat: torch.Tensor) -> dist.Distribution:
        raise NotImplementedError

    def check_data(self, x: torch.Tensor) -> None:
        """Raise ``UserInputError`` unless every value of ``x`` lies in the support."""
        inside = self.support.check(x) & torch.isfinite(x)
        if not bool(inside.all()):
            bad = x[~inside][0].item()
            raise UserInputError(
                f"the {type(self).__name__} needs data that are {self.support_description}, "
                f"but the data hold {bad!r}: choose a likelihood that fits the data"
            )


class GaussianLikelihood(Likelihood):
    """p(x|z) = N(x; x̂, σ²I) with fixed σ; σ = 1 is the seed's identity covariance."""

    def __init__(self, data_dim: int, sigma: float = 1.0):
        super().__init__(data_dim)
        if not sigma > 0:
            raise UserInputError(f"sigma of the Gaussian likelihood must be positive, got {sigma}")
        self.register_buffer("scale", torch.tensor(float(sigma)), persistent=False)

    def forward(self, x_hat: torch.Tensor) -> dist.Distribution:
        return dist.Normal(x_hat, self.scale).to_event(1)


class BernoulliLikelihood(Likelihood):
    """p(x|z) = Π_d Bernoulli(x_d; sigmoid(x̂_d)), for binary data; x̂ are logits."""

    support = constraints.boolean
    support_description = "binary (0 or 1)"

    def forward(self, x_hat: torch.Tensor) -> dist.Distribution:
        return dist.Bernoulli(logits=x_hat).to_event(1)


LIKELIHOODS: dict[str, type[Likelihood]] = {
    "gaussian": GaussianLikelihood,
    "bernoulli": BernoulliLikelihood,
}


def build_likelihood(
    likelihood: "str | Likelihood", data_dim: int, **options: object
) -> Likelihood:
    """The likelihood registered as ``likelihood`` for ``data_dim``, or the module itself."""
    return build(LIKELIHOODS, likelihood, "likelihood", data_dim, **options)
