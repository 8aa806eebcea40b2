"""Semi-supervised learning with the M2 model (Kingma, Rezende, Mohamed and Welling, 2014).

Generative model:  y ~ Cat(π),  z ~ p(z),  x ~ p_θ(x | y, z)        (``SemiSupervisedVAE.model``)
Guide:             y ~ q_φ(y | x) (a classifier),  z ~ q_φ(z | x, y)  (``SemiSupervisedVAE.guide``)

π is uniform. For a labelled image y is observed and the ELBO bounds log p(x, y):
    L(x, y) = E_q(z|x,y)[log p(x | y, z) + log p(y) + log p(z) − log q(z | x, y)].
For an unlabelled one y is a latent variable that the guide's site marks for enumeration, so
Pyro's ``TraceEnum_ELBO`` sums over its K values exactly, weighted by q(y | x):
    U(x) = Σ_y q(y | x) L(x, y) + H(q(y | x))  ≤  log p(x),
one batched pass over the classes (the y site gets a dimension of its own), no sampling of y and
no Python loop. The classifier q(y | x) would learn only from U, so the labelled images also
train it directly, as in the paper:
    J = Σ_labelled L(x, y) + Σ_unlabelled U(x) + α · mean_labelled log q(y | x),
α = 0.1·N by default, N the training images (the paper's choice). ``SemiSupervisedTrainer`` takes
an unbiased mini-batch estimate of J at every step: a batch of unlabelled images and one of the
labelled, each term scaled by its share of the data set.
"""

import logging
from collections.abc import Callable
from typing import Any

import pyro
import pyro.distributions as dist
import torch
from pyro import poutine
from pyro.infer import TraceEnum_ELBO
from pyro.nn import pyro_method

from pyro_vae.config import TrainConfig
from pyro_vae.data import Dataset, Split
from pyro_vae.distributed import SINGLE_PROCESS, Replicas
from pyro_vae.errors import UserInputError
from pyro_vae.evaluate import Estimate, elbo_estimate
from pyro_vae.labels import choose_labelled, one_hot
from pyro_vae.model import VAE
from pyro_vae.networks import build_classifier
from pyro_vae.objectives import make_elbo
from pyro_vae.semisupervised_bounds import bound_sums, classification_error
from pyro_vae.train import Trainer

log = logging.getLogger(__name__)

ALPHA_PER_IMAGE = 0.1  # the paper's α = 0.1·N, N the number of training images


class SemiSupervisedVAE(VAE):
    """M2: ``model(x, y=None)`` and ``guide(x, y=None)`` take the classes y, (N,) integers, or
    None where the images are unlabelled (the guide then enumerates y). The constructor takes
    ``VAE``'s arguments; the classifier q(y | x) is the encoder's network with K outputs."""

    labelled = True
    kind = "m2"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if self.network_name is None:
            raise ValueError("give M2 its networks by name: its classifier is built beside them")
        # q(y | x): the encoder's network and widths, its outputs the K classes' logits.
        self.classifier = build_classifier(
            self.network_name, self.data_shape, self.latent_dim, self.hidden_dims, self.num_classes
        )
        self.register_buffer("class_probs", torch.full((self.num_classes,), 1 / self.num_classes))

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


def enumerated_elbo(num_particles: int = 1) -> TraceEnum_ELBO:
    """Pyro's ELBO that sums over the guide's enumerated y exactly (z sampled)."""
    return TraceEnum_ELBO(
        num_particles=num_particles,
        vectorize_particles=num_particles > 1,
        max_plate_nesting=1,  # the data plate; y's enumeration takes the dimension left of it
    )


def default_alpha(num_train: int) -> float:
    """Kingma et al.'s α = 0.1·N, N the training images (labelled and not)."""
    return ALPHA_PER_IMAGE * num_train


class SemiSupervisedTrainer(Trainer):
    """``Trainer`` for M2: an epoch is one pass over the unlabelled training images; every step
    also takes a batch of the labelled ones (``config.labels`` of them, chosen by class and
    seed), so that the few labels are seen at every step, their terms weighted so that the
    step's loss estimates J without bias. Validation reports U(x) and q(y|x)'s error."""

    def __init__(
        self,
        vae: SemiSupervisedVAE,
        config: TrainConfig,
        data: Dataset,
        replicas: Replicas = SINGLE_PROCESS,
    ):
        if replicas.distributed:
            raise UserInputError("--model m2 trains in one process: launch it without torchrun")
        if config.labels is None:
            raise UserInputError("--model m2 needs --labels N: how many training labels to keep")
        elbo = enumerated_elbo(config.num_particles)
        super().__init__(vae, config, replicas, elbo=elbo, record_graph=False)
        log.info(
            "training eagerly: Pyro's enumeration of y (TraceEnum_ELBO) is not a step that a "
            "recorded graph holds"
        )
        # The labelled batch has nothing to enumerate: the plain ELBO, y observed.
        self._labelled_elbo = make_elbo("mc", config.num_particles)
        device = data.train.stored.device
        # Rows of the training split: those that keep their labels, and the rest.
        chosen = choose_labelled(data.train.labels.cpu(), config.labels, config.seed)
        self.labelled_rows = chosen.to(device)
        keep = torch.ones(len(data.train), dtype=torch.bool, device=device)
        keep[self.labelled_rows] = False
        self.unlabelled_rows = keep.nonzero().flatten()
        if len(self.unlabelled_rows) == 0:
            raise UserInputError(
                f"--labels {config.labels} labels every training image, leaving none unlabelled "
                f"for M2: give fewer labels (or train a classifier)"
            )
        self.alpha = config.alpha if config.alpha is not None else default_alpha(len(data.train))

    def step(self, batch: torch.Tensor, *labels: torch.Tensor) -> torch.Tensor:
        """Not for M2: its steps take their labelled batch from the data (``train_epoch``)."""
        raise TypeError(
            "an M2 step takes its labelled images from the dataset: call train_epoch(data)"
        )

    def _num_train(self, data: Dataset) -> int:
        return len(self.unlabelled_rows)

    def _epoch_order(self, num_train: int, device: torch.device) -> torch.Tensor:
        return self.unlabelled_rows[torch.randperm(num_train, device=device)]

    def _train_step(
        self, data: Dataset, index: torch.Tensor, should_stop: Callable[[], bool] | None
    ) -> tuple[tuple[torch.Tensor, torch.Tensor], bool]:
        return self._semi_supervised_step(data, index), should_stop is not None and should_stop()

    def _semi_supervised_step(
        self, data: Dataset, index: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One step on the unlabelled images at ``index`` and a batch of the labelled: the
        loss summed (−J's estimate) and −Σ U(x) over the unlabelled batch."""
        self.optimizer.zero_grad(set_to_none=True)
        x = data.train_batch(index)
        with pyro.validation_enabled(not self._validated):
            unlabelled = self.elbo.differentiable_loss(self._model, self._guide, x)
            labelled_loss = self._labelled_loss(data, x.shape[0])
        self._validated = True
        loss = unlabelled + labelled_loss
        loss.backward()
        self.optimizer.step()
        return loss.detach(), unlabelled.detach()

    def _labelled_loss(self, data: Dataset, batch_size: int) -> torch.Tensor:
        """The labelled terms of the step's estimate of J, scaled as one unlabelled batch of
        ``batch_size`` is: (B_u / N_u)·(1 / B_l)·Σ_batch [N_l·(−L(x, y)) − α·log q(y | x)]."""
        count = len(self.labelled_rows)
        taken = min(count, self.config.batch_size)
        draw = torch.randperm(count, device=self.labelled_rows.device)[:taken]
        index = self.labelled_rows[draw]
        x, y = data.train_batch(index), data.train.labels[index]
        negative_elbo = self._labelled_elbo.differentiable_loss(self._model, self._guide, x, y)
        log_q = self.vae.class_posterior(x).log_prob(y).sum()
        scale = batch_size / (len(self.unlabelled_rows) * taken)
        return scale * (count * negative_elbo - self.alpha * log_q)

    def _validation_elbo(self, split: Split) -> tuple[Estimate, float]:
        """U(x) on the validation images, with the class summed out (semisupervised_bounds.py)."""
        with pyro.validation_enabled(False):
            sums = bound_sums(self.vae, split.stored, self.config.val_particles)
        return elbo_estimate(sums, len(split)), sums[2].item() / len(split)

    def _validation_error(self, split: Split) -> float:
        return classification_error(self.vae, split)
