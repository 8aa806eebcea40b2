"""Training M2 (models/m2.py): the objective J, estimated without bias at every step.

    J = Σ_labelled [L(x, y) + α · log q(y | x)] + Σ_unlabelled U(x),

α per labelled image. Kingma et al. write the last term α' · mean_labelled log q(y | x) with
α' = 0.1·N, N the training images, so theirs is α = 0.1·N / N_labelled (1.67 per image at 3,000
labels of 50,000, 50 at 100); the default (``default_alpha``, core/train_config.py) was
chosen from measurements instead (docs/models.md).
``SemiSupervisedTrainer`` takes an unbiased mini-batch estimate of J at every step: a batch of
unlabelled images and one of the labelled, each term scaled by its share of the data set
(``SemiSupervisedELBO``).

The unlabelled images' classes are summed out exactly, as Pyro's ``TraceEnum_ELBO`` sums over an
enumerated site, but written as what that sum is here: U(x) = Σ_y q(y|x) L(x, y) + H(q(y|x)),
Pyro's ``Trace_ELBO`` run once on every class at once (y observed as a (K, 1) tensor, so each
image's bound gets a class dimension) under ``poutine.scale`` by q(y|x). The numbers are
TraceEnum_ELBO's (a test compares them on the same z), and unlike TraceEnum_ELBO's contraction,
which reads a mask's value in Python at every step, the step is a fixed sequence of tensor
operations: it is recorded once and replayed (inference/fast/replay.py) like the VAE's.
"""

from collections.abc import Callable

import pyro
import torch
from pyro import poutine
from pyro.infer import Trace_ELBO, TraceEnum_ELBO

from pyro_vae.core.config import TrainConfig
from pyro_vae.core.errors import UserInputError
from pyro_vae.core.train_config import default_alpha
from pyro_vae.data.datasets import Dataset, Split
from pyro_vae.data.labels import choose_labelled
from pyro_vae.inference.distributed import SINGLE_PROCESS, Replicas
from pyro_vae.inference.evaluate import (
    Estimate,
    classification_error,
    elbo_estimate,
    elbo_sums,
)
from pyro_vae.inference.objectives import DeviceLossMixin, DeviceTrace_ELBO
from pyro_vae.inference.trainer import Trainer
from pyro_vae.models.m2 import SemiSupervisedVAE

ALPHA_PER_IMAGE = 0.1  # the paper's α' = 0.1·N, N the number of training images


def enumerated_elbo(num_particles: int = 1) -> TraceEnum_ELBO:
    """Pyro's ELBO that sums over the guide's enumerated y exactly (z sampled): what
    ``SemiSupervisedELBO.unlabelled_loss`` computes, through Pyro's enumeration machinery (the
    tests and benchmarks compare the two; training uses the recordable one)."""
    return TraceEnum_ELBO(
        num_particles=num_particles,
        vectorize_particles=num_particles > 1,
        max_plate_nesting=1,  # the data plate; y's enumeration takes the dimension left of it
    )


class SemiSupervisedELBO(DeviceLossMixin, Trace_ELBO):
    """−J's unbiased estimate, up to the factor N_u / B, from a batch x of B unlabelled images
    and one (x_l, y_l) of B_l labelled images:

        Σ_x −U(x)  +  B·N_l / (N_u·B_l) · Σ_(x_l, y_l) [−L(x_l, y_l) − α · log q(y_l | x_l)],

    N_u and N_l the unlabelled and labelled images of the training set: each labelled term weighs
    what its share of the data set weighs against one unlabelled batch. ``losses(model, guide, x,
    x_l, y_l)`` returns that loss and Σ_x −U(x). ``class_posterior`` is M2's q(y | x).
    """

    recordable = True  # its step is static: see inference/fast/contract.py

    def __init__(
        self,
        class_posterior: Callable[[torch.Tensor], pyro.distributions.Categorical],
        num_unlabelled: int,
        num_labelled: int,
        alpha: float,
        num_particles: int = 1,
    ):
        super().__init__(num_particles=num_particles, max_plate_nesting=1)
        self.class_posterior = class_posterior
        self.num_unlabelled, self.num_labelled, self.alpha = num_unlabelled, num_labelled, alpha
        # Particles in a loop, not vectorised: the dimension left of the data plate holds y.
        self.elbo = DeviceTrace_ELBO(
            num_particles=num_particles, vectorize_particles=False, max_plate_nesting=1
        )

    def losses(  # type: ignore[override]
        self,
        model: Callable,
        guide: Callable,
        x: torch.Tensor,
        x_labelled: torch.Tensor,
        y_labelled: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        negative_u = self.unlabelled_loss(model, guide, x)
        negative_l = self.elbo.differentiable_loss(model, guide, x_labelled, y_labelled)
        log_q = self.class_posterior(x_labelled).log_prob(y_labelled).sum()
        scale = x.shape[0] / (self.num_unlabelled * x_labelled.shape[0])
        loss = negative_u + scale * self.num_labelled * (negative_l - self.alpha * log_q)
        return loss, negative_u

    def unlabelled_loss(self, model: Callable, guide: Callable, x: torch.Tensor) -> torch.Tensor:
        """Σ_x −U(x) = Σ_x [Σ_y q(y|x) (−L(x, y)) − H(q(y|x))]: every class at once, y (K, 1)
        broadcast against the data plate as Pyro's enumeration would place it."""
        log_q = self.class_posterior(x).logits.transpose(0, 1)  # (K, N), normalised
        q = log_q.exp()
        classes = torch.arange(q.shape[0], device=x.device).reshape(-1, 1)
        # A class the classifier rules out has q = 0 exactly (e^(−104) underflows), which Pyro's
        # validation refuses as a scale: its term, q · L, is 0 either way.
        with pyro.validation_enabled(False):
            weighted = poutine.scale(scale=q)
        with weighted:
            expected = self.elbo.differentiable_loss(model, guide, x, classes)
        return expected + (q * log_q).sum()


def paper_alpha(num_train: int, num_labelled: int) -> float:
    """Kingma et al.'s α' = 0.1·N (N the training images, labelled and not), the weight of the
    labelled images' mean log q(y|x), as a weight per labelled image: 0.1·N / N_labelled."""
    return ALPHA_PER_IMAGE * num_train / num_labelled


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
        record_graph: bool = True,
    ):
        """``record_graph=False`` takes every step eagerly, through Pyro (see ``Trainer``)."""
        if replicas.distributed:
            raise UserInputError("--model m2 trains in one process: launch it without torchrun")
        if config.labels is None:
            raise UserInputError("`kind` m2 needs `labels` N: how many training labels to keep")
        device = data.train.stored.device
        # Rows of the training split: those that keep their labels, and the rest.
        chosen = choose_labelled(data.train.labels.cpu(), config.labels, config.seed)
        self.labelled_rows = chosen.to(device)
        keep = torch.ones(len(data.train), dtype=torch.bool, device=device)
        keep[self.labelled_rows] = False
        self.unlabelled_rows = keep.nonzero().flatten()
        if len(self.unlabelled_rows) == 0:
            raise UserInputError(
                f"`labels` {config.labels} labels every training image, leaving none unlabelled "
                f"for M2: give fewer labels (or train a classifier)"
            )
        self.alpha = (  # per labelled image
            default_alpha(config.labels, vae.num_classes, on_codes=vae.codes is not None)
            if config.alpha is None
            else config.alpha
        )
        elbo = SemiSupervisedELBO(
            vae.class_posterior,
            len(self.unlabelled_rows),
            len(self.labelled_rows),
            self.alpha,
            config.num_particles,
        )
        super().__init__(vae, config, replicas, elbo=elbo, record_graph=record_graph)

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
        """One step on the unlabelled images at ``index`` and a batch of the labelled (drawn
        afresh, up to ``batch_size`` of them): the loss summed (−J's estimate) and −Σ U(x) over
        the unlabelled batch. Recorded after the first step, as the VAE's is (``Trainer``)."""
        count = len(self.labelled_rows)
        draw = torch.randperm(count, device=self.labelled_rows.device)[: self.config.batch_size]
        labelled = self.labelled_rows[draw]
        x_labelled, y_labelled = data.train_batch(labelled), data.train.labels[labelled]
        return self._update(data.train_batch(index), x_labelled, y_labelled)

    def _validation_elbo(self, split: Split) -> tuple[Estimate, float]:
        """U(x) on the validation images, with the class summed out (M2's held_out_terms)."""
        with pyro.validation_enabled(False):
            sums = elbo_sums(self.vae, split.stored, self.config.val_particles)
        return elbo_estimate(sums, len(split)), sums[2].item() / len(split)

    def _validation_error(self, split: Split) -> float:
        return classification_error(self.vae, split)
