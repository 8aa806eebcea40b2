"""The conditional VAE (Sohn, Lee and Yan, 2015): the class y given, both networks read it.

Generative model:  z ~ p(z),  x ~ p_θ(x | z, y)              (``ConditionalVAE.model(x, y)``)
Guide:             z ~ q_φ(z | x, y) = Family(NeuralNet(x, y; φ))   (``ConditionalVAE.guide(x, y)``)

y is not modelled (no p(y)): it is an argument, as in Pyro's ``examples/cvae``, given one-hot to
both networks (components/networks.py, ``label_dim``). Its ELBO bounds log p(x | y); ``generate``
draws images of the classes asked for. Every prior but the VampPrior (whose components are q(z | u)
at pseudo-inputs, which have no class), every likelihood, guide family and network works.
"""

import pyro
import torch
from pyro import poutine
from pyro.nn import pyro_method

from pyro_vae.data.labels import one_hot
from pyro_vae.models.vae import VAE


class ConditionalVAE(VAE):
    """A VAE whose model and guide take the data points' classes ``y``, (N,) integers from 0 to
    ``num_classes`` − 1, as an argument; the constructor takes ``VAE``'s arguments."""

    recordable = True  # its step is static: see inference/fast/contract.py
    labelled = True
    kind = "cvae"

    def labels_in(self, y: torch.Tensor | None) -> tuple[torch.Tensor, ...]:
        if y is None:
            raise ValueError("the conditional VAE reads the class y of every data point: pass y")
        return (one_hot(y, self.num_classes),)

    def generative_model(  # type: ignore[override]
        self, x: torch.Tensor | None = None, y: torch.Tensor | None = None
    ) -> torch.Tensor:
        """z ~ p(z);  x ~ p_θ(x | z, y).  With ``x=None``, draws one data point per label."""
        if y is None:
            raise ValueError("the conditional VAE's model p(x | z, y) needs the classes y")
        with pyro.plate("data", y.shape[0]):
            with poutine.scale(scale=self.kl_weight):  # the KL term counts β times
                z = pyro.sample("z", self.prior())
            return pyro.sample("x", self.likelihood(self.decoder(z, *self.labels_in(y))), obs=x)

    def inference_guide(  # type: ignore[override]
        self, x: torch.Tensor | None = None, y: torch.Tensor | None = None
    ) -> torch.Tensor:
        """z ~ q_φ(z | x, y)."""
        if x is None or y is None:
            raise ValueError("the guide q(z | x, y) needs data x and their classes y")
        with pyro.plate("data", x.shape[0]):
            q = self.guide_family(self.encoder(x, *self.labels_in(y)))
            with poutine.scale(scale=self.kl_weight):
                return pyro.sample("z", q)

    model = pyro_method(generative_model)
    guide = pyro_method(inference_guide)

    def generate(self, num_samples: int, y: torch.Tensor | None = None) -> torch.Tensor:
        """Decoded means of z ~ p(z) for classes ``y`` (default: 0, 1, ..., K−1, 0, 1, ...)."""
        if y is None:
            device = self.kl_weight.device
            y = torch.arange(num_samples, device=device) % self.num_classes
        return super().generate(num_samples, y)
