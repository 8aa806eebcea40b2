"""Likelihoods p_θ(x|z) of the data given the decoder's output x̂ = NeuralNet(z; θ).

A likelihood is a small ``nn.Module`` whose ``forward(x_hat)`` returns a ``pyro.distributions``
object with ``event_shape == (data_dim,)``. ``support`` says which data it can score, and
``check_data`` turns a mismatch into a one-line error before training instead of a NaN during it.
To add a likelihood, write such a class and register it in ``LIKELIHOODS``.
"""

import math

import pyro.distributions as dist
import torch
import torch.nn.functional as F
from torch import nn
from torch.distributions import constraints

from pyro_vae.errors import UserInputError
from pyro_vae.priors import inverse_softplus
from pyro_vae.registry import build


class Likelihood(nn.Module):
    """Base class: ``forward(x_hat)`` returns p(x|z) with event shape ``(data_dim,)``."""

    support: constraints.Constraint = constraints.real
    support_description = "finite real numbers"
    # Past it, a layer's products (x·w, summed over hundreds of inputs) and the likelihood's
    # squares leave float32's range within a few steps, whatever the learning rate.
    MAX_MAGNITUDE = 1e6

    def __init__(self, data_dim: int):
        super().__init__()
        self.data_dim = data_dim

    def forward(self, x_hat: torch.Tensor) -> dist.Distribution:
        raise NotImplementedError

    def check_data(self, x: torch.Tensor) -> None:
        """Raise ``UserInputError`` unless every value of ``x`` lies in the support and has a
        finite log-density (in float32) under a decoder output of 0."""
        inside = self.support.check(x) & torch.isfinite(x)
        if not bool(inside.all()):
            bad = x[~inside][0].item()
            hint = " (binarize them)" if self.support is constraints.boolean else ""
            raise UserInputError(
                f"the {type(self).__name__} needs data that are {self.support_description}, "
                f"but the data hold {bad!r}: choose a likelihood that fits the data{hint}"
            )
        largest = x.abs().max().item()
        if largest > self.MAX_MAGNITUDE:
            raise UserInputError(
                f"the data hold values up to {largest:g}, beyond what float32 networks can train "
                f"on (about {self.MAX_MAGNITUDE:g}): rescale the data to about unit size"
            )
        with torch.no_grad():
            for chunk in x.split(4096):
                # Element by element, so that one huge value is found whatever the others do.
                distribution = self(torch.zeros_like(chunk))
                if isinstance(distribution, dist.Independent):
                    distribution = distribution.base_dist
                log_density = distribution.log_prob(chunk)
                if not bool(torch.isfinite(log_density).all()):
                    # per element, or per row where the distribution scores rows as wholes
                    bad = chunk[~torch.isfinite(log_density)][0].abs().max().item()
                    raise UserInputError(
                        f"the {type(self).__name__} cannot score the value {bad:g} in float32 "
                        "arithmetic (its log-density overflows): rescale the data to about "
                        "unit size"
                    )

    def scale_note(self, x: torch.Tensor) -> str | None:
        """A note when the data's scale is far from what this likelihood assumes, else None."""
        return None


class LearnedScale(nn.Module):
    """A per-dimension scale, learnt through a softplus and kept above ``min_scale``.

    The floor matters: a pixel that is constant in the data (the border of the digits) would
    otherwise drive its scale to 0 and the likelihood, hence the ELBO, to +∞.
    """

    recordable = True  # its step is static: see recordable.py

    def __init__(self, data_dim: int, min_scale: float, initial_scale: float = 1.0):
        super().__init__()
        if not 0 < min_scale < initial_scale:
            raise UserInputError(
                f"min_scale must lie between 0 and the initial scale {initial_scale}, "
                f"got {min_scale}"
            )
        self.min_scale = min_scale
        start = torch.full((data_dim,), initial_scale - min_scale)
        self.raw = nn.Parameter(inverse_softplus(start))

    def forward(self) -> torch.Tensor:
        return self.min_scale + F.softplus(self.raw)  # (data_dim,)


class IsotropicNormal(dist.TorchDistribution):
    """N(x; loc, σ² I) over the last dimension with one σ for every element: the distribution of
    ``Normal(loc, σ).to_event(1)``, its log-density computed as one sum of squares,

        log p(x) = −‖x − loc‖² / (2σ²) − D (log σ + ½ log 2π),

    which reads the data twice where ``Normal``'s elementwise form, broadcasting σ to the data's
    shape, makes nine full-size passes: a validation pass of 16 samples on 1,000 MNIST-sized images
    takes 0.52× the time; a training step, where the matrix products dominate, is unchanged within
    the noise (benchmarks/recorded_checks.py).
    """

    arg_constraints = {"loc": constraints.real_vector, "scale": constraints.positive}  # noqa: RUF012
    support = constraints.real_vector
    has_rsample = True

    def __init__(self, loc: torch.Tensor, scale: torch.Tensor, validate_args: bool | None = None):
        self.loc, self.scale = loc, scale  # scale: a 0-dim tensor
        super().__init__(loc.shape[:-1], loc.shape[-1:], validate_args=validate_args)

    @property
    def mean(self) -> torch.Tensor:
        return self.loc

    @property
    def variance(self) -> torch.Tensor:
        return (self.scale**2).expand(self.loc.shape)

    def rsample(self, sample_shape: torch.Size = torch.Size()) -> torch.Tensor:  # noqa: B008
        shape = self._extended_shape(sample_shape)
        noise = torch.randn(shape, dtype=self.loc.dtype, device=self.loc.device)
        return self.loc + noise * self.scale

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        if self._validate_args:
            self._validate_sample(value)
        difference = value - self.loc
        squares = (difference * difference).sum(-1)
        normaliser = self.loc.shape[-1] * (self.scale.log() + 0.5 * math.log(2 * math.pi))
        return squares * (-0.5 / self.scale**2) - normaliser

    def expand(self, batch_shape: torch.Size, _instance=None) -> "IsotropicNormal":
        new = self._get_checked_instance(IsotropicNormal, _instance)
        batch_shape = torch.Size(batch_shape)
        new.loc, new.scale = self.loc.expand(batch_shape + self.event_shape), self.scale
        super(IsotropicNormal, new).__init__(batch_shape, self.event_shape, validate_args=False)
        new._validate_args = self._validate_args
        return new


class GaussianLikelihood(Likelihood):
    """p(x|z) = N(x; x̂, σ²I) with fixed σ; σ = 1 is the seed's identity covariance."""

    recordable = True  # its step is static: see recordable.py

    MIN_SIGMA = 1e-6  # below it, float32's (x − x̂)/σ and its square overflow for unit-scale data
    MAX_SIGMA = 1e6

    def __init__(self, data_dim: int, sigma: float = 1.0):
        super().__init__(data_dim)
        if not math.isfinite(sigma) or not self.MIN_SIGMA <= sigma <= self.MAX_SIGMA:
            raise UserInputError(
                f"sigma of the Gaussian likelihood must be a number from {self.MIN_SIGMA:g} to "
                f"{self.MAX_SIGMA:g}, where float32 can compute log N(x; x̂, σ²), got {sigma}: "
                "0.1 suits images scaled to [0, 1]"
            )
        self.register_buffer("scale", torch.tensor(float(sigma)), persistent=False)

    def forward(self, x_hat: torch.Tensor) -> dist.Distribution:
        return IsotropicNormal(x_hat, self.scale)  # Normal(x̂, σ).to_event(1), computed faster

    def scale_note(self, x: torch.Tensor) -> str | None:
        low, high = x.min().item(), x.max().item()
        sigma = self.scale.item()
        if high - low <= 20 or high - low <= 50 * sigma:
            return None
        return (
            f"the data span [{low:g}, {high:g}], far from the unit scale that σ = {sigma:g} "
            "suits: the reconstruction term will swamp the KL term and the ELBO will be huge "
            "and negative; rescale the data (integer images are scaled for you), set --sigma "
            "to the noise you expect, or use --likelihood gaussian-learned"
        )


class LearnedGaussianLikelihood(Likelihood):
    """p(x|z) = N(x; x̂, diag σ²) with one learnt σ_d per dimension, σ_d ≥ ``min_sigma``."""

    recordable = True  # its step is static: see recordable.py

    def __init__(self, data_dim: int, min_sigma: float = 0.01):
        super().__init__(data_dim)
        self.sigma = LearnedScale(data_dim, min_sigma)

    def forward(self, x_hat: torch.Tensor) -> dist.Distribution:
        return dist.Normal(x_hat, self.sigma()).to_event(1)


class BernoulliLikelihood(Likelihood):
    """p(x|z) = Π_d Bernoulli(x_d; sigmoid(x̂_d)), for binary data; x̂ are logits."""

    recordable = True  # its step is static: see recordable.py

    support = constraints.boolean
    support_description = "binary (0 or 1)"

    def forward(self, x_hat: torch.Tensor) -> dist.Distribution:
        return dist.Bernoulli(logits=x_hat).to_event(1)


class ContinuousBernoulliLikelihood(Likelihood):
    """p(x|z) = Π_d C(λ_d) λ_d^x_d (1 − λ_d)^(1 − x_d), λ = sigmoid(x̂), for data in [0, 1].

    Loaiza-Ganem & Cunningham, "The continuous Bernoulli", NeurIPS 2019: the Bernoulli
    likelihood that VAEs often apply to grey pixels, normalised. torch computes log C(λ) with a
    Taylor expansion near λ = 0.5, where the closed form is 0/0 (tests check it by integration).
    The image of a code is the distribution's mean, which is not λ.
    """

    recordable = True  # its step is static: see recordable.py

    support = constraints.unit_interval
    support_description = "in [0, 1]"

    def forward(self, x_hat: torch.Tensor) -> dist.Distribution:
        return dist.ContinuousBernoulli(logits=x_hat).to_event(1)


class LaplaceLikelihood(Likelihood):
    """p(x|z) = Π_d Laplace(x_d; x̂_d, b_d), one learnt scale b_d ≥ ``min_scale`` per dimension."""

    recordable = True  # its step is static: see recordable.py

    def __init__(self, data_dim: int, min_scale: float = 0.01):
        super().__init__(data_dim)
        self.scale = LearnedScale(data_dim, min_scale)

    def forward(self, x_hat: torch.Tensor) -> dist.Distribution:
        return dist.Laplace(x_hat, self.scale()).to_event(1)


LIKELIHOODS: dict[str, type[Likelihood]] = {
    "gaussian": GaussianLikelihood,
    "gaussian-learned": LearnedGaussianLikelihood,
    "bernoulli": BernoulliLikelihood,
    "continuous-bernoulli": ContinuousBernoulliLikelihood,
    "laplace": LaplaceLikelihood,
}


def build_likelihood(
    likelihood: "str | Likelihood", data_dim: int, **options: object
) -> Likelihood:
    """The likelihood registered as ``likelihood`` for ``data_dim``, or the module itself."""
    return build(LIKELIHOODS, likelihood, "likelihood", data_dim, **options)
