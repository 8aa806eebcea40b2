"""Semi-supervised learning with the M2 model (Kingma, Rezende, Mohamed and Welling, 2014).

Generative model:  y ~ Cat(π),  z ~ p(z),  x ~ p_θ(x | y, z)        (``SemiSupervisedVAE.model``)
Guide:             y ~ q_φ(y | x) (a classifier),  z ~ q_φ(z | x, y)  (``SemiSupervisedVAE.guide``)

π is uniform. For a labelled image y is observed and the ELBO bounds log p(x, y):
    L(x, y) = E_q(z|x,y)[log p(x | y, z) + log p(y) + log p(z) − log q(z | x, y)].
For an unlabelled one y is a latent variable that the guide's site marks for enumeration, so
Pyro's ``TraceEnum_ELBO`` sums over its K values exactly, weighted by q(y | x):
    U(x) = Σ_y q(y | x) L(x, y) + H(q(y | x))  ≤  log p(x),
one batched pass over the classes (the y site gets a dimension of its own), no sampling of y and
no Python loop. Training computes the same sum with y observed as all K classes at once
(inference/m2_trainer.py), which a recorded step can hold. The classifier q(y | x) would learn
only from U, so the labelled images also train it directly, as in the paper:
    J = Σ_labelled [L(x, y) + α · log q(y | x)] + Σ_unlabelled U(x),
α per labelled image (``default_alpha`` in core/train_config.py where not given, chosen from
measurements: docs/models.md). The trainer
(inference/m2_trainer.py) takes an unbiased mini-batch estimate of J at every step.
"""

import contextlib
import inspect
import logging
import math
from typing import Any

import pyro
import pyro.distributions as dist
import torch
from pyro import poutine
from pyro.distributions.kl import kl_divergence
from pyro.nn import pyro_method

from pyro_vae.components.guides import build_guide
from pyro_vae.components.networks import (
    DataShape,
    as_data_shape,
    build_classifier,
    build_networks,
)
from pyro_vae.core.config import ModelConfig, TrainConfig
from pyro_vae.core.errors import UserInputError
from pyro_vae.core.options import require
from pyro_vae.data.labels import one_hot
from pyro_vae.models.stacked import Codes, CodesLikelihood, OnCodes
from pyro_vae.models.vae import VAE, HeldOutTerms

log = logging.getLogger(__name__)


class SemiSupervisedVAE(VAE):
    """M2: ``model(x, y=None)`` and ``guide(x, y=None)`` take the classes y, (N,) integers, or
    None where the images are unlabelled (the guide then enumerates y). The constructor takes
    ``VAE``'s arguments; the classifier q(y | x) is the encoder's network with K outputs."""

    labelled = True
    classifies = True
    semi_supervised = True
    kind = "m2"
    recordable = True  # its step is static: see inference/fast/contract.py

    def __init__(self, *args: Any, features: VAE | None = None, **kwargs: Any) -> None:
        """``features``: a trained VAE (M1), frozen, whose posterior means of the images M2
        models instead of the images (M1+M2: models/stacked.py)."""
        codes = None if features is None else Codes(features)
        if codes is not None:
            activation = kwargs.get("activation", ModelConfig.activation)
            args, kwargs = (), _on_codes(codes, args, kwargs)
        super().__init__(*args, **kwargs)
        if codes is None and self.network_name is None:
            raise ValueError("give M2 its networks by name: its classifier is built beside them")
        self.codes = codes
        if codes is not None:
            self.network_name = "mlp"  # its networks' kind, built for the codes by _on_codes
            self.activation = activation  # theirs, and the classifier's below
        # q(y | x): the encoder's network and widths, its outputs the K classes' logits.
        read = self.data_shape if codes is None else as_data_shape(codes.dim)
        self.classifier = build_classifier(
            self.network_name,
            read,
            self.latent_dim,
            self.hidden_dims,
            self.num_classes,
            self.activation,
        )
        if codes is not None:
            self.classifier = OnCodes(codes, self.classifier)
        self.register_buffer("class_probs", torch.full((self.num_classes,), 1 / self.num_classes))

    @classmethod
    def extra_arguments(cls, config: ModelConfig, data_shape: DataShape) -> dict[str, Any]:
        if config.m1 is None:
            return {}
        # M1's architecture; its weights are part of this model's.
        return {"features": VAE.from_config(ModelConfig(**config.m1), data_shape)}

    def labels_in(self, y: torch.Tensor | None) -> tuple[torch.Tensor, ...]:
        if y is None:
            raise ValueError("pass the classes y (M2's classify gives them for unlabelled x)")
        return (one_hot(y, self.num_classes),)

    def generative_model(  # type: ignore[override]
        self,
        x: torch.Tensor | None = None,
        y: torch.Tensor | None = None,
        batch_size: int | None = None,
    ) -> torch.Tensor:
        """y ~ Cat(π);  z ~ p(z);  x ~ p_θ(x | y, z).  With ``x=None``, new data points."""
        if x is None and y is None and batch_size is None:
            raise ValueError("model() needs data x, classes y, or a batch_size to draw new data")
        n = x.shape[0] if x is not None else y.shape[0] if y is not None else batch_size
        with pyro.plate("data", n):
            y = pyro.sample("y", dist.Categorical(probs=self.class_probs), obs=y)
            with poutine.scale(scale=self.kl_weight):
                z = pyro.sample("z", self.prior())
            # Under enumeration y is (K, 1): the decoder broadcasts it against z's (K, N).
            return pyro.sample("x", self.likelihood(self.decoder(z, *self.labels_in(y))), obs=x)

    def inference_guide(  # type: ignore[override]
        self,
        x: torch.Tensor | None = None,
        y: torch.Tensor | None = None,
        batch_size: int | None = None,  # unused: the model's arguments, as Pyro passes them
    ) -> torch.Tensor:
        """y ~ q_φ(y | x) where not given, enumerated: all K classes at once;  z ~ q_φ(z | x, y)."""
        if x is None:
            raise ValueError("the guide needs data x")
        with pyro.plate("data", x.shape[0]):
            if y is None:
                y = pyro.sample(
                    "y",
                    dist.Categorical(logits=self.classifier(x)),
                    infer={"enumerate": "parallel"},
                )
            q = self.guide_family(self.encoder(x, *self.labels_in(y)))
            with poutine.scale(scale=self.kl_weight):
                return pyro.sample("z", q)

    model = pyro_method(generative_model)
    guide = pyro_method(inference_guide)

    def class_posterior(self, x: torch.Tensor) -> dist.Categorical:
        """q_φ(y | x), batch shape x.shape[:-1]."""
        return dist.Categorical(logits=self.classifier(x))

    @torch.no_grad()
    def classify(self, x: torch.Tensor) -> torch.Tensor:
        """The most probable class under q(y | x), (N,)."""
        return self.classifier(x).argmax(-1)

    def posterior(self, x: torch.Tensor, y: torch.Tensor | None = None) -> dist.Distribution:
        """q_φ(z | x, y); y None: the class the classifier gives."""
        return super().posterior(x, self.classify(x) if y is None else y)

    def encode(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        return super().encode(x, self.classify(x) if y is None else y)

    def reconstruct(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        return super().reconstruct(x, self.classify(x) if y is None else y)

    def generate(self, num_samples: int, y: torch.Tensor | None = None) -> torch.Tensor:
        """Decoded means of z ~ p(z) for classes ``y`` (default: 0, 1, ..., K−1, 0, 1, ...)."""
        if y is None:
            y = torch.arange(num_samples, device=self.class_probs.device) % self.num_classes
        return super().generate(num_samples, y)

    # Its held-out bound: U(x) written out, the K classes as one tensor dimension, so that each
    # image gets its own value (for standard errors), the KL of z its closed form where one
    # exists, and the importance-weighted bound the same samples. Training sums over y with
    # Pyro's Trace_ELBO on every class at once (inference/m2_trainer.py); tests check both
    # against Pyro's TraceEnum_ELBO on the same z.

    @classmethod
    def check_training(cls, train: TrainConfig) -> None:
        require(
            train.labels is not None,
            "`kind` m2 needs `labels` N: how many training images keep their labels (the rest "
            "are unlabelled)",
        )
        require(
            train.elbo == "mc",
            f"`kind` m2 sums over the class exactly with Pyro's Trace_ELBO on every class, which "
            f"samples z as mc does: use `elbo` mc (not {train.elbo})",
        )
        require(
            train.beta == 1 and not train.kl_warmup,
            "`kind` m2 trains on its ELBO and classification term as Kingma et al. (2014) "
            "weight them: drop `beta` and `kl_warmup`",
        )

    @classmethod
    def decodes_per_image(cls, num_classes: int) -> int:
        # every class (the enumerated y), and a labelled batch beside the unlabelled one
        return num_classes + 1

    @property
    def bound_groups(self) -> int:
        return self.num_classes

    def class_terms(
        self, x: torch.Tensor, num_particles: int, analytic: bool = True
    ) -> dict[str, torch.Tensor]:
        """U(x) written out, the K classes as one tensor dimension, for ``num_particles`` samples of
        z per class and image:

        - ``elbo`` (S, N): Σ_y q(y|x) [log p(x|y,z_y) − KL_y] − KL(q(y|x) ‖ π), which is
          Σ_y q(y|x) [log p(x|y,z_y) + log π_y − KL_y] + H(q(y|x)), with KL_y the closed-form
          KL(q(z|x,y) ‖ p(z)) where one exists and ``analytic``, else log q(z_y|x,y) − log p(z_y);
        - ``rate`` (S, N): Σ_y q(y|x) KL_y + KL(q(y|x) ‖ π), the bound's KL terms;
        - ``log_w`` (S, K, N): log p(x | y, z_y) + log p(z_y) − log q(z_y | x, y), the importance
          weights of each class's samples (for the IWAE bound).
        """
        k = self.num_classes
        log_q_y = self.class_posterior(x).logits.transpose(0, 1)  # (K, N), normalised
        classes = torch.arange(k, device=x.device).reshape(k, 1)  # (K, 1), as enumeration has it
        q_z = self.posterior(x, classes)  # batch (K, N)
        z = q_z.rsample((num_particles,))  # (S, K, N, L)
        log_likelihood = self.likelihood(self.decoder(z, one_hot(classes, k))).log_prob(
            x
        )  # (S, K, N)
        prior = self.prior()
        sampled_kl = q_z.log_prob(z) - prior.log_prob(z)  # (S, K, N)
        kl_z = sampled_kl
        if analytic:  # where Pyro has the closed form; else sampled, as TraceMeanField_ELBO does
            with contextlib.suppress(NotImplementedError):
                kl_z = kl_divergence(q_z, prior.expand(q_z.batch_shape))  # (K, N)
        weights = log_q_y.exp()
        kl_y = (weights * (log_q_y - self.class_probs.log().reshape(k, 1))).sum(0)  # (N,)
        elbo = (weights * (log_likelihood - kl_z)).sum(-2) - kl_y
        rate = (weights * kl_z).sum(-2) + kl_y
        return {"elbo": elbo, "rate": rate.expand_as(elbo), "log_w": log_likelihood - sampled_kl}

    @torch.no_grad()
    def held_out_terms(
        self, x: torch.Tensor, num_samples: int, y: torch.Tensor | None = None
    ) -> HeldOutTerms:
        """The bound on log p(x), the class summed out exactly, whether or not ``y`` is given
        (a labelled image's class is scored by the classifier's error instead):
        ``elbo_analytic_kl`` is U(x), and each class's samples are a group of importance
        weights, so that log Σ_y π_y (1/S) Σ_s p(x | y, z_ys) p(z_ys) / q(z_ys | x, y) is a
        lower bound on log p(x) with no importance sampling of y."""
        terms = self.class_terms(x, num_samples)
        return HeldOutTerms(
            elbos={"elbo_analytic_kl": terms["elbo"]},
            log_w=terms["log_w"],
            log_group_weights=self.class_probs.log().reshape(-1, 1),
            rate=terms["rate"],
        )


def _on_codes(codes: Codes, args: tuple, kwargs: dict[str, Any]) -> dict[str, Any]:
    """``VAE``'s arguments for M2 on M1's codes: its networks built for the codes and reading
    them from the images (``OnCodes``), its likelihood that of the codes (``CodesLikelihood``)."""
    bound = inspect.signature(VAE.__init__).bind(None, *args, **kwargs)
    bound.apply_defaults()
    given = dict(bound.arguments)
    given.pop("self")
    if given["encoder"] is not None:
        raise ValueError("M1+M2 builds its networks by name, for M1's codes")
    if given["network"] != "mlp":
        raise UserInputError(
            f"M1+M2's networks read M1's codes, vectors of {codes.dim} numbers, not images: "
            f"use `network` mlp, not {given['network']}"
        )
    data_dim = math.prod(as_data_shape(given["data_shape"]))
    family = build_guide(given["guide"], given["latent_dim"], **(given["guide_options"] or {}))
    encoder, decoder = build_networks(
        "mlp",
        as_data_shape(codes.dim),
        given["latent_dim"],
        given["hidden_dims"],
        family.parameter_dim,
        given["num_classes"],
        given["activation"],
    )
    reader = OnCodes(codes, encoder)
    likelihood = CodesLikelihood(
        codes, data_dim, given["likelihood"], **(given["likelihood_options"] or {})
    )
    given.update(
        encoder=reader,
        decoder=decoder,
        guide=family,
        guide_options=None,
        likelihood=likelihood,
        likelihood_options=None,
        activation=ModelConfig.activation,  # the VAE builds no networks: they are built here
    )
    return given
