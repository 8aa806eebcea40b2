"""The VAE as a Pyro model/guide pair (Kingma & Welling, 2014).

Generative model:  z ~ p(z),  x̂ = NeuralNet(z; θ),  x ~ p_θ(x | z)        (``VAE.model``)
Guide:             λ = NeuralNet(x; φ),  z ~ q_φ(z | x) = Family(λ)          (``VAE.guide``)

The guide family (components/guides.py) is N(μ, diag σ²) by default, with λ = (μ, log σ²); a
full-covariance Gaussian or a normalizing flow are the others.

x is flat in both, a vector of D = C·H·W values per data point (channel-major for images), so
every prior, likelihood and estimator works on any data; the networks (``components/networks.py``)
know the data's shape (C, H, W) and reshape where they need it.

Pyro reparameterises z = μ + σ ⊙ ε, ε ~ N(0, I) because the guide's Normal has ``rsample`` (as do
the other families: z = μ + Lε, or the flows applied to μ + σ ⊙ ε); the ELBO
E_q[log p_θ(x|z)] − KL(q_φ(z|x) ‖ p(z)) is estimated by the objectives in
``inference/objectives.py``.
"""

import contextlib
import inspect
import math
import os
import warnings
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import pyro
import pyro.distributions as dist
import torch
from pyro import poutine
from pyro.distributions.kl import kl_divergence
from pyro.nn import PyroModule, pyro_method
from pyro.poutine.util import prune_subsample_sites
from torch import nn

from pyro_vae.components.guides import GuideFamily, build_guide
from pyro_vae.components.likelihoods import Likelihood, build_likelihood
from pyro_vae.components.networks import DataShape, as_data_shape, build_networks
from pyro_vae.components.priors import Prior, VampPrior, build_prior
from pyro_vae.core.config import ModelConfig, TrainConfig
from pyro_vae.core.errors import UserInputError
from pyro_vae.core.options import require


@dataclass(frozen=True)
class HeldOutTerms:
    """What a model's held-out bound is made of, for S samples of z per image and group.

    ``elbos``: name -> (S, N), each an unbiased per-sample estimate of that ELBO;
    ``log_w`` (S, G, N): importance weights log p(x, z | g) / q(z | x, g) in G groups (one for
    the VAE; M2's K classes), whose mean over samples estimates p(x | g) without bias;
    ``log_group_weights`` (G, 1): log p(g), so that log Σ_g p(g) (1/S) Σ_s w is the IWAE bound;
    ``rate``: the KL terms of ``elbos["elbo_analytic_kl"]``, broadcasting against it.
    """

    elbos: dict[str, torch.Tensor]
    log_w: torch.Tensor
    log_group_weights: torch.Tensor
    rate: torch.Tensor


class VAE(PyroModule):
    """A variational autoencoder whose ``model`` and ``guide`` are ordinary Pyro callables.

    ``data_shape`` is the data's (C, H, W), or (H, W) for one channel, or D for plain vectors.
    ``network`` names an encoder/decoder pair in ``networks.NETWORKS`` (``hidden_dims`` its
    widths, None for its default); or pass your own ``encoder`` and ``decoder`` modules (see
    ``components/networks.py`` for what each maps to what; the encoder outputs the guide family's
    ``parameter_dim`` values). ``guide``, ``prior`` and ``likelihood`` are registry names (see
    ``guides.GUIDES``, ``priors.PRIORS`` and ``likelihoods.LIKELIHOODS``), with keyword arguments
    in ``guide_options``, ``prior_options`` and ``likelihood_options``, or module instances.
    Being a ``PyroModule``, the VAE registers the
    parameters of its plain ``nn.Module`` children with Pyro whenever ``model`` or ``guide`` reads
    them, so ``SVI(vae.model, vae.guide, optim, elbo)`` trains every parameter.
    """

    # What a model can do, declared on its class: the trainer, the evaluation and the command
    # line ask these instead of testing the model's name.
    recordable = True  # its step is static: see inference/fast/contract.py
    # Whether model and guide read class labels (data/labels.py: the conditional VAE and M2 do), so
    # that both networks are built with ``label_dim`` = num_classes and fed one-hot classes.
    labelled = False
    # Whether it has a classifier q(y | x) (``classify``), whose error evaluation reports (M2).
    classifies = False
    # Whether it learns from partly labelled data, the missing classes summed out: its own
    # trainer (inference/m2_trainer.py) and objective, which takes no β, warm-up or free bits.
    semi_supervised = False
    kind = "vae"  # the name ``ModelConfig.kind`` gives it (models/build.py's MODELS)

    def __init__(
        self,
        data_shape: int | Sequence[int] | None = None,
        latent_dim: int = ModelConfig.latent_dim,
        hidden_dims: Sequence[int] | None = ModelConfig.hidden_dims,
        prior: "str | Prior" = ModelConfig.prior,
        likelihood: "str | Likelihood" = ModelConfig.likelihood,
        prior_options: Mapping[str, Any] | None = None,
        likelihood_options: Mapping[str, Any] | None = None,
        name: str = "",
        *,
        network: str = ModelConfig.network,
        encoder: nn.Module | None = None,
        decoder: nn.Module | None = None,
        guide: "str | GuideFamily" = ModelConfig.guide,
        guide_options: Mapping[str, Any] | None = None,
        num_classes: int = 0,
        data_dim: int | None = None,  # release 0.1.0's name for a flat data_shape: deprecated
        activation: str = ModelConfig.activation,
    ):
        data_shape = _data_shape(data_shape, data_dim)
        # ``name`` prefixes the parameters' names in Pyro's global param store, so that several
        # VAEs trained with SVI in one process do not share (and silently overwrite) entries.
        super().__init__(name)
        self.data_shape: DataShape = as_data_shape(data_shape)
        self.data_dim = math.prod(self.data_shape)
        self.latent_dim = latent_dim
        if (encoder is None) != (decoder is None):
            raise ValueError("give both an encoder and a decoder, or neither")
        if encoder is not None and activation != ModelConfig.activation:
            raise ValueError(
                "`activation` is the nonlinearity of the networks the VAE builds: give your "
                "encoder and decoder their own, or leave them out"
            )
        if self.labelled and num_classes < 2:
            raise ValueError(f"a {type(self).__name__} needs labels of 2 classes at least")
        self.num_classes = num_classes  # the labels' classes (0: none known)
        # The built-in networks' name and widths (None: the network's default), for a model
        # that builds another network of the same kind (M2's classifier).
        self.network_name = network if encoder is None else None
        self.hidden_dims = None if hidden_dims is None else tuple(hidden_dims)
        self.activation = activation
        label_dim = num_classes if self.labelled else 0
        # The family decides how many values the encoder outputs, so it comes first.
        self.guide_family = build_guide(guide, latent_dim, **(guide_options or {}))
        if encoder is None:
            encoder, decoder = build_networks(
                network,
                self.data_shape,
                latent_dim,
                hidden_dims,
                self.guide_family.parameter_dim,
                label_dim,
                activation,
            )
        self.encoder, self.decoder = encoder, decoder
        # A prior may ask for the encoder and the guide family (the VampPrior does), so it is
        # built after them.
        self.prior = build_prior(
            prior,
            latent_dim,
            data_dim=self.data_dim,
            encoder=self.encoder,
            guide_family=self.guide_family,
            **(prior_options or {}),
        )
        if self.labelled and isinstance(self.prior, VampPrior):
            raise UserInputError(
                f"`prior` vamp mixes q(z | u) at learnt pseudo-inputs u, which have no class for "
                f"`kind` {self.kind}'s q(z | x, y): use `prior` standard, gaussian or mog"
            )
        self.likelihood = build_likelihood(
            likelihood, self.data_dim, data_shape=self.data_shape, **(likelihood_options or {})
        )
        # β of a β-VAE (Higgins et al., 2017): the weight of the KL term, 1 for the ELBO itself.
        # A buffer changed in place, so that a recorded step reads the current one; not saved,
        # because a trained VAE is the model, whatever weight trained it (see ``kl_weighted``).
        self.register_buffer("kl_weight", torch.ones(()), persistent=False)
        # What the decoder outputs: the data's D values, or fewer for a likelihood that maps
        # them to the data itself (M1+M2's codes: models/stacked.py).
        decoded_dim = getattr(self.likelihood, "decoded_dim", self.data_dim)
        _check_networks(
            self.encoder,
            self.decoder,
            self.guide_family,
            self.data_dim,
            latent_dim,
            label_dim,
            decoded_dim,
        )
        _check_event_shape(self.prior(), (latent_dim,), "prior p(z)")
        _check_event_shape(
            self.likelihood(torch.zeros(decoded_dim)), (self.data_dim,), "likelihood p(x|z)"
        )

    @classmethod
    def from_config(cls, config: ModelConfig, data_shape: int | Sequence[int]) -> "VAE":
        """``cls`` made from ``config``; ``pyro_vae.build_model`` picks the class by
        ``config.kind``."""
        if cls is VAE and config.kind != cls.kind:
            # The previous release dispatched here, which made this module import its own
            # subclasses; build_model does that now, and this keeps old callers working.
            warnings.warn(
                f"{cls.__name__}.from_config with a {config.kind!r} config is deprecated: "
                "call pyro_vae.build_model(config, data_shape)",
                DeprecationWarning,
                stacklevel=2,
            )
            cls = next(c for c in _subclasses(cls) if c.kind == config.kind)
        return cls(
            data_shape,
            network=config.network,
            guide=config.guide,
            guide_options=config.guide_options,
            latent_dim=config.latent_dim,
            hidden_dims=config.hidden_dims,
            prior=config.prior,
            likelihood=config.likelihood,
            prior_options=config.prior_options,
            likelihood_options=config.likelihood_options,
            num_classes=config.num_classes,
            activation=config.activation,
            **cls.extra_arguments(config, as_data_shape(data_shape)),
        )

    @classmethod
    def extra_arguments(cls, config: ModelConfig, data_shape: DataShape) -> dict[str, Any]:
        """A subclass's own constructor arguments that ``config`` decides (M2's M1)."""
        return {}

    def generative_model(
        self, x: torch.Tensor | None = None, batch_size: int | None = None
    ) -> torch.Tensor:
        """z ~ p(z);  x ~ p_θ(x | z).  With ``x=None``, draws ``batch_size`` new data points."""
        if x is None and batch_size is None:
            raise ValueError("model() needs data x, or a batch_size to draw new data")
        with pyro.plate("data", x.shape[0] if x is not None else batch_size):
            with poutine.scale(scale=self.kl_weight):  # log p(z) counts β times; see kl_weighted
                z = pyro.sample("z", self.prior())  # (batch, latent_dim)
            return pyro.sample("x", self.likelihood(self.decoder(z)), obs=x)  # (batch, data_dim)

    def inference_guide(
        self, x: torch.Tensor | None = None, batch_size: int | None = None
    ) -> torch.Tensor:
        """z ~ q_φ(z | x), the guide family at the encoder's output.  Takes the model's arguments,
        as Pyro requires."""
        if x is None:
            raise ValueError("the guide q(z|x) needs data x")
        with pyro.plate("data", x.shape[0]):
            q = self.guide_family(self.encoder(x))
            with poutine.scale(scale=self.kl_weight):  # and log q(z|x): the KL term counts β times
                return pyro.sample("z", q)

    # Pyro's model and guide: the two functions above, run in the PyroModule's context, which
    # registers every parameter they read in Pyro's param store, where SVI and pyro.optim find
    # them. Trainer optimises vae.parameters() with its own Adam, so it calls the functions above
    # directly and skips that registration, a cost paid at every step.
    model = pyro_method(generative_model)
    guide = pyro_method(inference_guide)

    @contextmanager
    def kl_weighted(self, beta: float) -> Iterator[None]:
        """Within the block, ``model`` and ``guide`` weight the KL term by ``beta`` > 0: their
        ``z`` sites are scaled by it (``poutine.scale``), so any Pyro ELBO optimises
        E_q[log p(x|z)] − β·KL(q(z|x) ‖ p(z)), the β-VAE objective. Outside it, β = 1: the ELBO.
        For Pyro's own ``SVI``: ``Trainer`` sets the weight itself, from its ``TrainConfig``.
        """
        if not beta > 0:
            raise ValueError(f"the KL weight must be positive, got {beta}")
        previous = self.kl_weight.item()
        self.kl_weight.fill_(beta)
        try:
            yield
        finally:
            self.kl_weight.fill_(previous)

    # Deterministic helpers for pictures and evaluation: they read the networks directly. Each
    # takes the data points' classes y as well, which the models of data/labels.py read (as (N,)
    # integer labels) and this one ignores.

    def labels_in(self, y: torch.Tensor | None) -> tuple[torch.Tensor, ...]:
        """What the networks take beside their input: y one-hot for a labelled model, else
        nothing."""
        return ()

    def posterior(self, x: torch.Tensor, y: torch.Tensor | None = None) -> dist.Distribution:
        """q_φ(z | x), batch shape x.shape[:-1]: what the guide samples from."""
        return self.guide_family(self.encoder(x, *self.labels_in(y)))

    def decode(self, z: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """The mean of p_θ(x | z) (and y): an image with no pixel noise."""
        return self.likelihood(self.decoder(z, *self.labels_in(y))).mean

    @torch.no_grad()
    def family_member(self) -> dist.Distribution:
        """q(z|x) at two zero data points: members of the guide's family, to ask what holds for
        all of them (whether its KL to the prior has a closed form)."""
        parameter = next(self.encoder.parameters(), None)
        where = (
            {"device": parameter.device, "dtype": parameter.dtype} if parameter is not None else {}
        )
        zeros = torch.zeros(2, self.data_dim, **where)  # 2 rows: a batch to norm
        return self.posterior(zeros, torch.zeros(2, dtype=torch.long, device=zeros.device))

    def encode(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """One code per data point: the mean of q(z|x) (for a flow, the flows applied to its
        Gaussian's mean)."""
        return self.guide_family.encode(self.encoder(x, *self.labels_in(y)))

    def reconstruct(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """The mean of p_θ(x | z = encode(x)): what the VAE makes of ``x`` through its code."""
        return self.decode(self.encode(x, y), y)

    def generate(self, num_samples: int, y: torch.Tensor | None = None) -> torch.Tensor:
        """The mean of p_θ(x | z) for ``num_samples`` codes z ~ p(z): new data, no pixel noise."""
        z = self.prior().sample((num_samples,))
        return self.decode(z, y)

    # The model's held-out bound, which inference/evaluate.py's one driver chunks, sums and
    # turns into per-image estimates of log p(x).

    @classmethod
    def check_training(cls, train: TrainConfig) -> None:
        """Refuse training settings this model cannot take, before a run starts."""
        require(
            train.labels is None and train.alpha is None and train.features is None,
            "`labels`, `alpha` and `features` set up semi-supervised training: use them with "
            "`kind` m2",
        )

    @classmethod
    def decodes_per_image(cls, num_classes: int) -> int:
        """Decoder passes per training image and step (what a run's budget counts)."""
        return 1

    @property
    def bound_groups(self) -> int:
        """G, the groups of importance samples ``held_out_terms`` draws per sample of z."""
        return 1

    @torch.no_grad()
    def held_out_terms(
        self, x: torch.Tensor, num_samples: int, y: torch.Tensor | None = None
    ) -> HeldOutTerms:
        """For ``num_samples`` codes z_s ~ q(z|x) per image (S, N):

        - ``elbo_analytic_kl``: log p(x|z_s) − KL(q(z|x) ‖ p(z)), the KL in closed form where one
          exists (else sampled, as TraceMeanField_ELBO does);
        - ``elbo_mc_kl``: log w_s, with w_s = p(x, z_s) / q(z_s|x), Trace_ELBO's estimate;
        - the importance weights log w_s, one group, for the IWAE bound.

        ``y``: the images' classes, for a model that reads them (bounds on log p(x | y)).
        """
        labels = () if y is None else (y,)
        with pyro.plate("samples", num_samples, dim=-2):  # left of the data plate
            guide_trace = poutine.trace(self.guide).get_trace(x, *labels)
            model_trace = poutine.trace(poutine.replay(self.model, trace=guide_trace)).get_trace(
                x, *labels
            )
        guide_trace = prune_subsample_sites(guide_trace)
        model_trace = prune_subsample_sites(model_trace)
        z_p, z_q, x_p = model_trace.nodes["z"], guide_trace.nodes["z"], model_trace.nodes["x"]
        log_likelihood = x_p["fn"].log_prob(x_p["value"])  # (S, N)
        log_prior, log_guide = z_p["fn"].log_prob(z_p["value"]), z_q["fn"].log_prob(z_q["value"])
        kl = log_guide - log_prior
        with contextlib.suppress(NotImplementedError):  # no closed form: the sampled KL
            kl = kl_divergence(z_q["fn"], z_p["fn"])
        log_w = log_likelihood + log_prior - log_guide
        return HeldOutTerms(
            elbos={"elbo_analytic_kl": log_likelihood - kl, "elbo_mc_kl": log_w},
            log_w=log_w.unsqueeze(-2),
            log_group_weights=torch.zeros(1, 1, device=x.device),
            rate=kl,
        )


def _data_shape(data_shape: int | Sequence[int] | None, data_dim: int | None) -> Any:
    """``data_shape``, or release 0.1.0's ``data_dim`` with a warning that names the new one."""
    if data_dim is None:
        if data_shape is None:
            raise TypeError("VAE() needs the data's shape: data_shape=D or (C, H, W)")
        return data_shape
    if data_shape is not None:
        raise TypeError("give data_shape, not data_dim as well (data_dim is its old name)")
    warnings.warn(
        "VAE(data_dim=...) is deprecated: pass data_shape=D (or (C, H, W) for images)",
        DeprecationWarning,
        stacklevel=_outside_the_package(),
    )
    return data_dim


def _outside_the_package() -> int:
    """The ``stacklevel`` of the first caller outside pyro_vae (a subclass's ``__init__`` adds
    frames), so that a warning names the user's line."""
    package = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    frame, level = inspect.currentframe().f_back, 1
    while frame is not None and os.path.abspath(frame.f_code.co_filename).startswith(package):
        frame, level = frame.f_back, level + 1
    return level


def _subclasses(cls: type) -> Iterator[type]:
    for sub in cls.__subclasses__():
        yield sub
        yield from _subclasses(sub)


@torch.no_grad()
def _check_networks(
    encoder: nn.Module,
    decoder: nn.Module,
    family: GuideFamily,
    data_dim: int,
    latent_dim: int,
    label_dim: int = 0,
    decoded_dim: int | None = None,
) -> None:
    decoded_dim = data_dim if decoded_dim is None else decoded_dim
    # A network built for another size would otherwise fail deep inside Pyro, or worse, train:
    # one call each on two zero rows (two, so that a squeezed batch dimension is caught too).
    try:
        parameter = next(encoder.parameters())
        device, dtype = parameter.device, parameter.dtype
    except StopIteration:
        device, dtype = None, None
    labels = (torch.zeros(2, label_dim, device=device, dtype=dtype),) if label_dim else ()
    out = encoder(torch.zeros(2, data_dim, device=device, dtype=dtype), *labels)
    name = type(family).__name__
    if isinstance(out, tuple | list):  # (loc, scale), as Pyro's examples write encoders
        shapes = [tuple(value.shape) for value in out]
        if family.parameter_dim != 2 * latent_dim or shapes != [(2, latent_dim)] * 2:
            raise ValueError(
                f"the encoder returns {len(out)} tensors of shapes {shapes} for a batch of 2, "
                f"but the {name} takes (2, {family.parameter_dim}): {family.layout()}"
            )
    elif tuple(out.shape) != (2, family.parameter_dim):
        raise ValueError(
            f"the encoder returns shape {tuple(out.shape)} for a batch of 2, but the {name} "
            f"takes (2, {family.parameter_dim}): {family.layout()}"
        )
    q = family(out)
    if tuple(q.batch_shape) != (2,) or tuple(q.event_shape) != (latent_dim,):
        raise ValueError(
            f"the {name} gives q(z|x) of batch shape {tuple(q.batch_shape)} and event shape "
            f"{tuple(q.event_shape)} for a batch of 2, but this VAE needs (2,) and ({latent_dim},)"
        )
    x_hat = decoder(torch.zeros(2, latent_dim, device=device, dtype=dtype), *labels)
    if tuple(x_hat.shape) != (2, decoded_dim):
        raise ValueError(
            f"the decoder returns shape {tuple(x_hat.shape)} for a batch of 2 codes, but this "
            f"VAE needs (2, {decoded_dim}): flat data points of D = C·H·W values"
        )


def _check_event_shape(
    distribution: dist.Distribution, expected: tuple[int, ...], what: str
) -> None:
    # A component instance built for another size would otherwise fail deep inside Pyro.
    if tuple(distribution.event_shape) != expected:
        raise ValueError(
            f"the {what} has event shape {tuple(distribution.event_shape)}, "
            f"but this VAE needs {expected}"
        )
