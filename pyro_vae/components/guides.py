"""Guide families: the form of the amortized posterior q_φ(z | x).

The encoder maps x to a vector of the guide's parameters; a guide family turns that vector into
q(z|x), a ``pyro.distributions`` object with event shape (latent_dim,) that the VAE's guide samples
``z`` from. A family says how many values it takes (``parameter_dim``), so the VAE builds its
encoder's last layer to that size.

- ``diagonal``: N(μ, diag σ²) from 2L values (μ, log σ²), the seed's guide (Kingma & Welling, 2014).
- ``full``: N(μ, L Lᵀ), L lower-triangular with a positive diagonal, from L + L(L+1)/2 values:
  μ, log σ² of the diagonal (as ``diagonal`` has them), then the entries below it, times a learnt
  factor that starts at 0, so that q starts as the diagonal guide. Correlations between latent
  dimensions, at a cost quadratic in the latent dimension.
- ``iaf``: the diagonal Gaussian followed by ``flows`` inverse autoregressive flows (Kingma et al.,
  2016), each Pyro's ``ConditionalAffineAutoregressive`` in the numerically stable form
  z ← σ ⊙ z + (1 − σ) ⊙ m, with (m, logit σ) = AR-NN(z, h) conditioned on a context h of
  ``context_dim`` further values from the encoder. Consecutive flows read the dimensions in
  opposite orders, so that each dimension comes to depend on all the others.

To add a family, subclass ``GuideFamily`` and register it in ``GUIDES`` (or pass an instance to
``VAE``). A constructor takes ``latent_dim`` and, by name, its own options (``flows``).
"""

import itertools
from collections.abc import Sequence
from functools import partial
from typing import Any

import pyro.distributions as dist
import torch
from pyro.distributions.transforms import AffineAutoregressive, ConditionalAffineAutoregressive
from pyro.nn import ConditionalAutoRegressiveNN
from torch import nn
from torch.distributions import Independent, MultivariateNormal, Normal, register_kl

from pyro_vae.core.errors import UserInputError
from pyro_vae.core.registry import build, check_options

# An encoder's output: one tensor of ``parameter_dim`` values per data point, or (for the
# diagonal family, as Pyro's examples write encoders) the pair (loc, scale).
GuideParameters = torch.Tensor | tuple[torch.Tensor, torch.Tensor]


class GuideFamily(nn.Module):
    """Base class of guide families: ``forward(parameters)`` returns q(z|x) with event shape
    ``(latent_dim,)`` and batch shape ``parameters.shape[:-1]``."""

    parameter_dim: int  # values per data point that the encoder must output

    def __init__(self, latent_dim: int):
        super().__init__()
        self.latent_dim = latent_dim

    def forward(self, parameters: GuideParameters) -> dist.Distribution:
        raise NotImplementedError

    def encode(self, parameters: GuideParameters) -> torch.Tensor:
        """One deterministic code per data point, for pictures and summaries: the mean of q."""
        return self(parameters).mean

    def layout(self) -> str:
        """What the encoder's ``parameter_dim`` values are, for error messages."""
        return f"{self.parameter_dim} values"

    @classmethod
    def size(cls, latent_dim: int, **options: Any) -> tuple[int, int]:
        """(``parameter_dim``, the family's own parameters) of ``cls(latent_dim, **options)``,
        for a budget that must not build a family too large to build: here by building it (on
        a forked random generator, so that a run's weights do not change); the registered
        families count instead."""
        with torch.random.fork_rng(devices=[]):
            family = cls(latent_dim, **options)
        return family.parameter_dim, sum(p.numel() for p in family.parameters())


def _whole(value: object, minimum: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= minimum


def diagonal_parameters(parameters: GuideParameters) -> tuple[torch.Tensor, torch.Tensor]:
    """μ, σ from an output holding μ and log σ² side by side (one matmul instead of two), or from
    a (loc, scale) pair that an encoder returned itself."""
    if isinstance(parameters, tuple | list):
        loc, scale = parameters
        return loc, scale
    loc, log_var = parameters.chunk(2, dim=-1)  # (..., latent_dim) each
    return loc, torch.exp(0.5 * log_var)  # σ = exp(½ log σ²)


class DiagonalGuide(GuideFamily):
    """q(z|x) = N(μ(x), diag σ(x)²): independent latent dimensions."""

    recordable = True  # its step is static: see inference/fast/contract.py

    def __init__(self, latent_dim: int):
        super().__init__(latent_dim)
        self.parameter_dim = 2 * latent_dim

    def forward(self, parameters: GuideParameters) -> dist.Distribution:
        loc, scale = diagonal_parameters(parameters)
        return dist.Normal(loc, scale).to_event(1)

    def encode(self, parameters: GuideParameters) -> torch.Tensor:
        return diagonal_parameters(parameters)[0]

    @classmethod
    def size(cls, latent_dim: int, **options: Any) -> tuple[int, int]:
        return 2 * latent_dim, 0

    def layout(self) -> str:
        n = self.latent_dim
        return (
            f"2·{n} = {self.parameter_dim} values (μ and log σ²), or a pair (μ, σ) of (batch, {n})"
        )


class FullCovarianceGuide(GuideFamily):
    """q(z|x) = N(μ(x), L(x) L(x)ᵀ), L lower-triangular: correlated latent dimensions."""

    recordable = True  # its step is static: see inference/fast/contract.py

    def __init__(self, latent_dim: int):
        super().__init__(latent_dim)
        self.parameter_dim = 2 * latent_dim + latent_dim * (latent_dim - 1) // 2
        # Where the entries below the diagonal go in a flattened L × L matrix, row by row.
        rows, columns = torch.tril_indices(latent_dim, latent_dim, offset=-1)
        self.register_buffer("below", rows * latent_dim + columns, persistent=False)
        # The entries below the diagonal count this much. Starting at 0, q starts as the diagonal
        # guide and the correlations grow as they help: with the raw entries, the size of an
        # untrained encoder's outputs, the full guide trained far worse (see docs/results.md).
        self.correlation = nn.Parameter(torch.zeros(()))

    def scale_tril(self, parameters: torch.Tensor) -> torch.Tensor:
        """L (..., latent_dim, latent_dim): exp(½ log σ²) on the diagonal, as the diagonal
        family has σ, so that zero entries below it give exactly the diagonal guide."""
        n = self.latent_dim
        log_var = parameters[..., n : 2 * n]
        below = self.correlation * parameters[..., 2 * n :]
        flat = below.new_zeros(*below.shape[:-1], n * n).index_copy(-1, self.below, below)
        return flat.unflatten(-1, (n, n)) + torch.diag_embed(torch.exp(0.5 * log_var))

    def forward(self, parameters: GuideParameters) -> dist.Distribution:
        if isinstance(parameters, tuple | list):
            raise ValueError("the full-covariance guide takes one tensor of parameters, not a pair")
        loc = parameters[..., : self.latent_dim]
        return dist.MultivariateNormal(loc, scale_tril=self.scale_tril(parameters))

    def encode(self, parameters: GuideParameters) -> torch.Tensor:
        return parameters[..., : self.latent_dim]

    @classmethod
    def size(cls, latent_dim: int, **options: Any) -> tuple[int, int]:
        return 2 * latent_dim + latent_dim * (latent_dim - 1) // 2, 1  # the correlation factor

    def layout(self) -> str:
        n = self.latent_dim
        return (
            f"{self.parameter_dim} values (μ and log σ², {n} each, then the {n * (n - 1) // 2} "
            "entries below the diagonal of the Cholesky factor)"
        )


class IAFGuide(GuideFamily):
    """q(z|x): N(μ(x), diag σ(x)²) pushed through ``flows`` inverse autoregressive flows
    conditioned on the encoder's context h(x) (Kingma et al., 2016).

    ``context_dim`` values of h (default 2·latent_dim) follow μ and log σ² in the encoder's
    output; each flow's autoregressive network has ``hidden_dims`` units per layer (default two
    layers of max(4·latent_dim, context_dim)). The flows start near the identity: the stable
    form's σ starts near sigmoid(2) ≈ 0.88 (Pyro's ``sigmoid_bias``).
    """

    recordable = True  # its step is static: see inference/fast/contract.py

    def __init__(
        self,
        latent_dim: int,
        flows: int = 2,
        context_dim: int | None = None,
        hidden_dims: Sequence[int] | None = None,
    ):
        super().__init__(latent_dim)
        self.context_dim, hidden = self._checked(latent_dim, flows, context_dim, hidden_dims)
        self.parameter_dim = 2 * latent_dim + self.context_dim
        # Fixed orders, not Pyro's random default: a run's flows do not depend on the random
        # numbers drawn before them, and the reversal mixes dimensions.
        forward_order = tuple(range(latent_dim))
        self.orders = [forward_order if k % 2 == 0 else forward_order[::-1] for k in range(flows)]
        self.flows = nn.ModuleList(
            ConditionalAffineAutoregressive(
                ConditionalAutoRegressiveNN(
                    latent_dim, self.context_dim, list(hidden), permutation=torch.tensor(order)
                ),
                stable=True,
            )
            for order in self.orders
        )

    @staticmethod
    def _checked(
        latent_dim: int, flows: Any, context_dim: Any, hidden_dims: Any
    ) -> tuple[int, list[int]]:
        """The context size and the flows' layer sizes, defaults filled in; a user's mistake in
        any option (a config file's ``guide_options`` may hold anything) refused in one line."""
        if not _whole(flows, 1):
            raise UserInputError(
                f"an IAF guide needs `guide_options.flows` of at least 1, got {flows!r}"
            )
        if not (context_dim is None or _whole(context_dim, 1)):
            raise UserInputError(
                "the IAF guide's context_dim (guide_options) must be a whole number of at least "
                f"1, got {context_dim!r}"
            )
        context = 2 * latent_dim if context_dim is None else context_dim
        width = max(4 * latent_dim, context)
        hidden = [width, width] if hidden_dims is None else hidden_dims
        if not isinstance(hidden, list | tuple):
            hidden = []  # refused below
        # Pyro's autoregressive networks need every layer at least as wide as z, so that each
        # dimension has units that see exactly the dimensions before it.
        if not (len(hidden) and all(_whole(h, latent_dim) for h in hidden)):
            raise UserInputError(
                "the IAF guide's hidden_dims (guide_options, the flows' layers) must be sizes of "
                f"at least the latent dimension ({latent_dim}), got {hidden_dims!r}"
            )
        return context, list(hidden)

    @classmethod
    def size(
        cls, latent_dim: int, flows: Any = 2, context_dim: Any = None, hidden_dims: Any = None
    ) -> tuple[int, int]:
        context, hidden = cls._checked(latent_dim, flows, context_dim, hidden_dims)
        # Each flow's network: masked linear layers from (z, h) through ``hidden`` to (m, logit σ).
        sizes = [latent_dim + context, *hidden, 2 * latent_dim]
        per_flow = sum((n_in + 1) * n_out for n_in, n_out in itertools.pairwise(sizes))
        return 2 * latent_dim + context, flows * per_flow

    def _split(self, parameters: GuideParameters) -> tuple[torch.Tensor, ...]:
        """μ, σ and the context h."""
        if isinstance(parameters, tuple | list):
            raise ValueError("the IAF guide takes one tensor of parameters, not a pair")
        n = self.latent_dim
        loc, log_var, context = parameters.split([n, n, self.context_dim], dim=-1)
        return loc, torch.exp(0.5 * log_var), context

    def forward(self, parameters: GuideParameters) -> dist.Distribution:
        loc, scale, context = self._split(parameters)
        base = dist.Normal(loc, scale).to_event(1)
        return dist.TransformedDistribution(base, self._conditioned(context))

    def encode(self, parameters: GuideParameters) -> torch.Tensor:
        """The flows applied to the Gaussian's mean (q's mean has no closed form)."""
        z, _, context = self._split(parameters)
        for transform in self._conditioned(context):
            z = transform(z)
        return z

    def _conditioned(self, context: torch.Tensor) -> list[AffineAutoregressive]:
        """The flows conditioned on ``context``: Pyro's ``condition``, with the order as Python
        integers rather than its tensor, which a flow's inverse (for log q at a z it did not
        draw: the VampPrior's, the stl estimator's) iterates; a recorded step cannot iterate a
        tensor whose values it does not know."""
        transforms = []
        for flow, order in zip(self.flows, self.orders, strict=True):
            network = partial(flow.nn, context=context)
            network.permutation = order  # type: ignore[attr-defined]
            network.get_permutation = flow.nn.get_permutation  # type: ignore[attr-defined]
            transforms.append(AffineAutoregressive(network, **flow.kwargs))
        return transforms

    def layout(self) -> str:
        n = self.latent_dim
        return (
            f"{self.parameter_dim} values (μ and log σ², {n} each, then {self.context_dim} of "
            "context)"
        )


# KL(N(μ, LLᵀ) ‖ N(m, diag s²)) in closed form, which neither torch nor Pyro registers: the full
# guide against the standard and the learnt Gaussian priors, for ``--elbo analytic``.
@register_kl(MultivariateNormal, Independent)
def _kl_mvn_diagonal(p: MultivariateNormal, q: Independent) -> torch.Tensor:
    if not (isinstance(q.base_dist, Normal) and q.reinterpreted_batch_ndims == 1):
        raise NotImplementedError
    loc, scale = q.base_dist.loc, q.base_dist.scale
    variance = p.scale_tril.pow(2).sum(-1)  # Σ_ii = Σ_j L_ij²
    trace_and_distance = ((variance + (p.loc - loc).pow(2)) / scale.pow(2)).sum(-1)
    log_diagonal = p.scale_tril.diagonal(dim1=-2, dim2=-1).log()
    log_det_ratio = 2 * (scale.log().sum(-1) - log_diagonal.sum(-1))
    return 0.5 * (trace_and_distance - p.event_shape[0] + log_det_ratio)


GUIDES: dict[str, type[GuideFamily]] = {
    "diagonal": DiagonalGuide,
    "full": FullCovarianceGuide,
    "iaf": IAFGuide,
}


def guide_size(guide: str, latent_dim: int, options: dict[str, Any]) -> tuple[int, int]:
    """(values the encoder outputs, parameters of the family itself) for the registered
    ``guide`` with ``options``, counted without building it where the family knows how."""
    check_options(GUIDES, guide, "guide", latent_dim, **options)
    family = GUIDES[guide]
    if "size" in vars(family):  # counted by the class itself, not a parent that knows less
        return family.size(latent_dim, **options)
    return GuideFamily.size.__func__(family, latent_dim, **options)  # by building it


def build_guide(guide: "str | GuideFamily", latent_dim: int, **options: object) -> GuideFamily:
    """The guide family registered as ``guide`` for ``latent_dim``, or ``guide`` itself."""
    return build(GUIDES, guide, "guide", latent_dim, **options)
