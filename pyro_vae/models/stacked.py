"""M1+M2 (Kingma, Rezende, Mohamed and Welling, 2014, section 3.2): M2 trained on the codes of a
trained VAE (M1) instead of on the images.

M1 is trained first, on the images alone; it is then frozen, and each image x stands for its code
z₁ = μ₁(x), the mean of M1's q(z₁ | x). M2 models those codes: y ~ Cat(π), z₂ ~ p(z₂),
z₁ ~ p_θ(z₁ | y, z₂), with its classifier q(y | z₁) and guide q(z₂ | z₁, y) reading them too.

The code is a fixed function of the image (the posterior mean, not a fresh sample of z₁), so that
M2's model and guide, called separately on the same x as Pyro calls them, read the same z₁, and a
test image is classified by one code, not by a random one. Dynamically binarized training images
still give a new code at every step, since each step draws a new binary image.

Written as parts of an ordinary M2 that takes images: its networks read μ₁(x) first
(``OnCodes``), and its likelihood scores μ₁(x) under p_θ(z₁ | y, z₂) (``CodesLikelihood``), whose
``mean`` is M1's decoded image of the mean code. So everything that takes images (training,
``classify``, ``evaluate``, the pictures) works on an M1+M2 model unchanged; its bound is on the
density of the codes, log p(z₁), not on log p(x).
"""

from collections.abc import Sequence
from typing import Any, ClassVar

import pyro.distributions as dist
import torch
from pyro.distributions import constraints
from torch import nn
from torch.utils.weak import WeakIdKeyDictionary

from pyro_vae.components.likelihoods import Likelihood, build_likelihood
from pyro_vae.core.errors import UserInputError
from pyro_vae.models.vae import VAE


class Codes(nn.Module):
    """μ₁(x): a frozen VAE's posterior mean, (…, D) images to (…, L₁) codes."""

    recordable = True  # its step is static: see inference/fast/contract.py

    def __init__(self, m1: VAE) -> None:
        super().__init__()
        if m1.labelled or m1.semi_supervised:
            raise ValueError(f"M1 is a VAE of the images alone, not a {type(m1).__name__}")
        self.m1 = m1.requires_grad_(False).eval()  # trained: M2's training leaves it alone
        # A step reads each batch three times (the classifier, the guide, the likelihood): its
        # codes are computed once, and a recorded step holds one encoding of each batch. Held
        # by the batch tensor's identity, weakly (an entry goes with its batch), and checked
        # against the batch's and M1's weights' versions (a change in place is read afresh).
        self._recent: WeakIdKeyDictionary = WeakIdKeyDictionary()

    @property
    def dim(self) -> int:
        return self.m1.latent_dim

    def train(self, mode: bool = True) -> "Codes":
        super().train(mode)
        self.m1.eval()  # frozen: a dropout or batch norm of M1's stays as trained
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.is_inference():  # no version counter to check a cached entry against
            return self.m1.encode(x).detach()
        key = (x._version, *(p._version for p in self.m1.parameters()))
        cached = self._recent.get(x)
        if cached is not None and cached[0] == key:
            return cached[1]
        codes = self.m1.encode(x).detach()
        self._recent[x] = (key, codes)
        return codes

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_recent"] = None  # weak references do not pickle; the cache starts anew
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        self._recent = WeakIdKeyDictionary()

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """M1's mean image of p(x | z₁ = codes)."""
        return self.m1.decode(codes)


class OnCodes(nn.Module):
    """A network of M2's that reads the images' codes: ``net(μ₁(x), *labels)``."""

    recordable = True  # its step is static: see inference/fast/contract.py

    def __init__(self, codes: Codes, net: nn.Module) -> None:
        super().__init__()
        self.net = net
        _refer_to(self, codes)

    def forward(self, x: torch.Tensor, *labels: torch.Tensor) -> torch.Tensor:
        return self.net(self.codes(x), *labels)


class CodesDistribution(dist.TorchDistribution):
    """p(z₁ | y, z₂) seen from the images: ``log_prob(x)`` scores μ₁(x) under ``on_codes``;
    ``mean`` and ``sample`` go through M1's decoder to images (a sample draws z₁, then x from
    M1's p(x | z₁))."""

    arg_constraints: ClassVar[dict[str, constraints.Constraint]] = {}
    has_rsample = False

    def __init__(self, on_codes: dist.Distribution, codes: Codes, data_dim: int) -> None:
        self.on_codes, self.codes = on_codes, codes
        super().__init__(on_codes.batch_shape, torch.Size((data_dim,)), validate_args=False)

    @constraints.dependent_property(is_discrete=False, event_dim=1)
    def support(self) -> constraints.Constraint:
        return constraints.independent(self.codes.m1.likelihood.support, 1)

    def expand(self, batch_shape: Any, _instance: Any = None) -> "CodesDistribution":
        shape = torch.Size(batch_shape)
        return CodesDistribution(self.on_codes.expand(shape), self.codes, self.event_shape[0])

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        return self.on_codes.log_prob(self.codes(x))

    @property
    def mean(self) -> torch.Tensor:
        return self.codes.decode(self.on_codes.mean)

    def sample(self, sample_shape: Sequence[int] = ()) -> torch.Tensor:
        with torch.no_grad():
            m1 = self.codes.m1
            return m1.likelihood(m1.decoder(self.on_codes.sample(sample_shape))).sample()


class CodesLikelihood(Likelihood):
    """M2's likelihood of the codes, ``on_codes`` (a registered likelihood of L₁ dimensions, by
    name or as a module), as a likelihood of the images (``CodesDistribution``). The decoder's
    outputs are L₁ values (``decoded_dim``), the data the images' D."""

    recordable = True  # its step is static: see inference/fast/contract.py

    def __init__(
        self, codes: Codes, data_dim: int, on_codes: "str | Likelihood" = "gaussian", **options: Any
    ) -> None:
        super().__init__(data_dim)
        _refer_to(self, codes)
        self.on_codes = build_likelihood(on_codes, codes.dim, **options)
        if self.on_codes.support is not constraints.real:
            raise UserInputError(
                f"M2 models M1's codes, which are real numbers: give it a likelihood of real "
                f"values (gaussian, gaussian-learned, laplace), not {type(self.on_codes).__name__}"
            )

    @property
    def decoded_dim(self) -> int:
        return self.codes.dim

    def forward(self, x_hat: torch.Tensor) -> dist.Distribution:
        return CodesDistribution(self.on_codes(x_hat), self.codes, self.data_dim)

    def check_data(self, x: torch.Tensor) -> None:
        # The images are M1's data: its likelihood says what they may hold.
        self.codes.m1.likelihood.check_data(x)


def _refer_to(module: nn.Module, codes: Codes) -> None:
    """``module.codes = codes`` without making M1 its submodule: M2 registers M1 once, as its
    own ``codes``, so that its weights are saved, moved and recorded once (torch's
    ``functional_call``, which a recorded step runs, swaps a module reached by several paths
    through one of them only)."""
    object.__setattr__(module, "codes", codes)
