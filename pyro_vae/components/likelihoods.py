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

from pyro_vae.components.priors import inverse_softplus
from pyro_vae.core.errors import UserInputError
from pyro_vae.core.registry import build


class Likelihood(nn.Module):
    """Base class: ``forward(x_hat)`` returns p(x|z) with event shape ``(data_dim,)``."""

    support: constraints.Constraint = constraints.real
    support_description = "finite real numbers"
    support_hint = ""  # what to do about data outside the support, ending the error message
    # Past it, a layer's products (x·w, summed over hundreds of inputs) and the likelihood's
    # squares leave float32's range within a few steps, whatever the learning rate.
    MAX_MAGNITUDE = 1e6

    def __init__(self, data_dim: int):
        super().__init__()
        self.data_dim = data_dim

    @property
    def decoded_dim(self) -> int:
        """The values the decoder gives per data point: one per dimension of the data (M1+M2's
        likelihood of codes takes fewer: models/stacked.py)."""
        return self.data_dim

    def forward(self, x_hat: torch.Tensor) -> dist.Distribution:
        raise NotImplementedError

    def check_data(self, x: torch.Tensor) -> None:
        """Raise ``UserInputError`` unless every value of ``x`` lies in the support and has a
        finite log-density (in float32) under a decoder output of 0."""
        inside = self.support.check(x) & torch.isfinite(x)
        if not bool(inside.all()):
            bad = x[~inside][0].item()
            raise UserInputError(
                f"the {type(self).__name__} needs data that are {self.support_description}, "
                f"but the data hold {bad!r}: choose a likelihood that fits the data"
                f"{self.support_hint}"
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

    recordable = True  # its step is static: see inference/fast/contract.py

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


class _EightBitValues(constraints.Constraint):
    """The 256 values k/255, k = 0..255: 8-bit pixels scaled to [0, 1] (uint8 / 255 in float32).

    The tolerance, a thousandth of a grid step, admits float32's rounding of k/255 and nothing
    that was ever a different number (an average of two pixels lies half a step away).
    """

    is_discrete = True
    event_dim = 0

    def check(self, value: torch.Tensor) -> torch.Tensor:
        steps = value * 255
        return (value >= 0) & (value <= 1) & ((steps - steps.round()).abs() < 1e-3)


eight_bit_values = _EightBitValues()


class DiscretizedLogistic(dist.TorchDistribution):
    """A logistic(loc, scale) on [-1, 1] binned into 256 values, reported on the 8-bit grid k/255.

    Salimans, Karpathy, Chen & Kingma, "PixelCNN++: improving the PixelCNN with discretized
    logistic mixture likelihood and other modifications", ICLR 2017 (one component, no mixture).
    A value x = k/255 is the bin of x' = 2x − 1 ∈ [-1, 1], which covers [x' − 1/255, x' + 1/255]
    with the two edge bins open to ±∞, so that the 256 probabilities sum to 1:

        P(x) = σ((x' + 1/255 − loc)/scale) − σ((x' − 1/255 − loc)/scale)   for 0 < x < 1,
        P(0) = σ((x' + 1/255 − loc)/scale),   P(1) = 1 − σ((x' − 1/255 − loc)/scale).

    Elementwise (batch shape = the broadcast shape of loc and scale, event shape ()): a likelihood
    makes its images events with ``.to_event(1)``.
    """

    arg_constraints = {"loc": constraints.real, "scale": constraints.positive}  # noqa: RUF012
    support = eight_bit_values
    has_rsample = False

    def __init__(self, loc: torch.Tensor, scale: torch.Tensor, validate_args: bool | None = None):
        self.loc, self.scale = torch.broadcast_tensors(loc, scale)  # views, nothing copied
        super().__init__(self.loc.shape, validate_args=validate_args)

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        """With a = (x' + 1/255 − loc)/scale and b = (x' − 1/255 − loc)/scale, the interior bins
        use the identity σ(a) − σ(b) = σ(a)·σ(−b)·(1 − e^−(a−b)):

            log P(x) = log σ(a) + log σ(−b) + log(1 − e^−(a−b)),

        exact and finite for any loc: each log σ is computed as −softplus, which neither
        underflows nor loses the difference of two sigmoids that both round to 1 (or to 0), and
        a − b = 2/(255·scale) does not depend on loc. So no fallback to the density at the bin's
        centre (PixelCNN++'s) is needed. The edge bins keep one factor each.
        """
        if self._validate_args:
            self._validate_sample(value)
        inverse_scale = self.scale.reciprocal()
        centred = (2 * value - 1 - self.loc) * inverse_scale  # (x' − loc)/scale
        half_bin = inverse_scale / 255  # (a − b)/2
        log_below_upper = F.logsigmoid(centred + half_bin)  # log σ(a) = log P(X' < x' + 1/255)
        log_above_lower = F.logsigmoid(-(centred - half_bin))  # log σ(−b) = log P(X' > x' − 1/255)
        log_bin_width = torch.log(-torch.expm1(-2 * half_bin))  # log(1 − e^−(a−b)), < 0
        interior = log_below_upper + log_above_lower + log_bin_width
        # The edges by the grid index (half a step away from the neighbours): every branch is
        # finite, so torch.where's zero gradient for the unused ones stays zero, never NaN.
        steps = value * 255
        return torch.where(
            steps < 0.5, log_below_upper, torch.where(steps > 254.5, log_above_lower, interior)
        )

    @property
    def mean(self) -> torch.Tensor:
        """E[x] = E[k]/255 with E[k] = Σ_{j=1..255} P(k ≥ j) = Σ_j σ((loc − b_j)/scale), b_j the
        boundary (2j − 1)/255 − 1 between bins j − 1 and j: one boundary at a time, so it takes
        the memory of one batch rather than 255 of them."""
        inverse_scale = self.scale.reciprocal()
        total = torch.zeros_like(self.loc)
        for j in range(1, 256):
            boundary = (2 * j - 1) / 255 - 1
            total = total + torch.sigmoid((self.loc - boundary) * inverse_scale)
        return total / 255

    def sample(self, sample_shape: torch.Size = torch.Size()) -> torch.Tensor:  # noqa: B008
        """A logistic draw binned to its grid value: the bins' boundaries are the midpoints
        between grid values, so rounding 255·x is the binning, and clamping folds the tails into
        the edge bins, exactly as P assigns them. (A uniform draw of 0 gives −∞, which the clamp
        makes 0: still a value of the distribution.)"""
        shape = self._extended_shape(sample_shape)
        with torch.no_grad():
            uniform = torch.rand(shape, dtype=self.loc.dtype, device=self.loc.device)
            logistic = self.loc + self.scale * torch.logit(uniform)  # in x' ∈ ℝ
            return ((logistic + 1) * (255 / 2)).round().clamp(0, 255) / 255

    def expand(self, batch_shape: torch.Size, _instance=None) -> "DiscretizedLogistic":
        new = self._get_checked_instance(DiscretizedLogistic, _instance)
        batch_shape = torch.Size(batch_shape)
        new.loc, new.scale = self.loc.expand(batch_shape), self.scale.expand(batch_shape)
        super(DiscretizedLogistic, new).__init__(batch_shape, validate_args=False)
        new._validate_args = self._validate_args
        return new


class GaussianLikelihood(Likelihood):
    """p(x|z) = N(x; x̂, σ²I) with fixed σ; σ = 1 is the seed's identity covariance."""

    recordable = True  # its step is static: see inference/fast/contract.py

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

    recordable = True  # its step is static: see inference/fast/contract.py

    def __init__(self, data_dim: int, min_sigma: float = 0.01):
        super().__init__(data_dim)
        self.sigma = LearnedScale(data_dim, min_sigma)

    def forward(self, x_hat: torch.Tensor) -> dist.Distribution:
        return dist.Normal(x_hat, self.sigma()).to_event(1)


class BernoulliLikelihood(Likelihood):
    """p(x|z) = Π_d Bernoulli(x_d; sigmoid(x̂_d)), for binary data; x̂ are logits."""

    recordable = True  # its step is static: see inference/fast/contract.py

    support = constraints.boolean
    support_description = "binary (0 or 1)"
    support_hint = " (binarize them)"

    def forward(self, x_hat: torch.Tensor) -> dist.Distribution:
        return dist.Bernoulli(logits=x_hat).to_event(1)


class ContinuousBernoulliLikelihood(Likelihood):
    """p(x|z) = Π_d C(λ_d) λ_d^x_d (1 − λ_d)^(1 − x_d), λ = sigmoid(x̂), for data in [0, 1].

    Loaiza-Ganem & Cunningham, "The continuous Bernoulli", NeurIPS 2019: the Bernoulli
    likelihood that VAEs often apply to grey pixels, normalised. torch computes log C(λ) with a
    Taylor expansion near λ = 0.5, where the closed form is 0/0 (tests check it by integration).
    The image of a code is the distribution's mean, which is not λ.
    """

    recordable = True  # its step is static: see inference/fast/contract.py

    support = constraints.unit_interval
    support_description = "in [0, 1]"

    def forward(self, x_hat: torch.Tensor) -> dist.Distribution:
        return dist.ContinuousBernoulli(logits=x_hat).to_event(1)


class LaplaceLikelihood(Likelihood):
    """p(x|z) = Π_d Laplace(x_d; x̂_d, b_d), one learnt scale b_d ≥ ``min_scale`` per dimension."""

    recordable = True  # its step is static: see inference/fast/contract.py

    def __init__(self, data_dim: int, min_scale: float = 0.01):
        super().__init__(data_dim)
        self.scale = LearnedScale(data_dim, min_scale)

    def forward(self, x_hat: torch.Tensor) -> dist.Distribution:
        return dist.Laplace(x_hat, self.scale()).to_event(1)


class DiscretizedLogisticLikelihood(Likelihood):
    """p(x|z) = Π_d DiscretizedLogistic(x_d; x̂_d, s_c(d)), for 8-bit images x = k/255.

    The standard likelihood of 8-bit images in VAE papers, after PixelCNN++ (Salimans et al.,
    ICLR 2017; see ``DiscretizedLogistic``): unlike a density, it cannot grow without bound on
    pixels that never change. The decoder's x̂ is the location in [-1, 1] (x' = 2x − 1), as in
    PixelCNN++; the scale is learnt per channel, shared by that channel's H·W pixels of the
    channel-major flat data: dimension d belongs to channel d // (H·W).
    """

    recordable = True  # its step is static: see inference/fast/contract.py

    support = eight_bit_values
    support_description = "8-bit pixel values k/255 in [0, 1]"
    support_hint = (
        " (data that are not 8-bit need a continuous one: gaussian-learned, laplace or "
        "continuous-bernoulli)"
    )

    def __init__(
        self,
        data_dim: int,
        data_shape: tuple[int, int, int],
        initial_scale: float = 0.2,  # on [-1, 1]; see below
        min_scale: float = math.exp(-7),  # PixelCNN++'s floor, log s ≥ −7
    ):
        super().__init__(data_dim)
        channels, height, width = data_shape
        if channels * height * width != data_dim:
            raise UserInputError(
                f"the data shape {tuple(data_shape)} holds {channels * height * width} values, "
                f"but the data have {data_dim} per image"
            )
        self.pixels_per_channel = height * width
        # Initial s = 0.2: the logistic's sd (s·π/√3 = 0.36) is about the spread of pixel values
        # on [-1, 1] around an untrained decoder's x̂ ≈ 0, so every value starts near the uniform's
        # 5.5 nats (an edge pixel costs 5.0, a mid-grey one 4.6) and the gradients in x̂, which
        # grow as 1/s, start moderate; s = 0.01 would charge an edge pixel 100 nats at the start.
        # The floor keeps 1/s, hence the steps in x̂, finite: the probability of a bin is at most
        # 1, so unlike a density the likelihood needs no floor to stay bounded.
        self.scale = LearnedScale(channels, min_scale, initial_scale)

    def forward(self, x_hat: torch.Tensor) -> dist.Distribution:
        # (C,) → (D,): channel c's scale for dimensions c·H·W … (c + 1)·H·W − 1
        scale = self.scale().repeat_interleave(self.pixels_per_channel)
        return DiscretizedLogistic(x_hat, scale).to_event(1)  # event (D,)


LIKELIHOODS: dict[str, type[Likelihood]] = {
    "gaussian": GaussianLikelihood,
    "gaussian-learned": LearnedGaussianLikelihood,
    "bernoulli": BernoulliLikelihood,
    "continuous-bernoulli": ContinuousBernoulliLikelihood,
    "laplace": LaplaceLikelihood,
    "discretized-logistic": DiscretizedLogisticLikelihood,
}


def build_likelihood(
    likelihood: "str | Likelihood",
    data_dim: int,
    *,
    data_shape: tuple[int, int, int] | None = None,
    **options: object,
) -> Likelihood:
    """The likelihood registered as ``likelihood`` for ``data_dim``, or the module itself.

    ``data_shape`` (C, H, W), with C·H·W = ``data_dim``, reaches only the likelihoods whose
    constructors ask for it (one with a parameter per channel, say); (1, 1, D) if not given.
    """
    context = {"data_shape": data_shape if data_shape is not None else (1, 1, data_dim)}
    return build(LIKELIHOODS, likelihood, "likelihood", data_dim, context=context, **options)
