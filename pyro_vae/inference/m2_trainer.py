"""Training M2 (models/m2.py): the objective J, estimated without bias at every step.

    J = Σ_labelled L(x, y) + Σ_unlabelled U(x) + α · mean_labelled log q(y | x),

α = 0.1·N by default, N the training images (the paper's choice). ``SemiSupervisedTrainer`` takes
an unbiased mini-batch estimate of J at every step: a batch of unlabelled images and one of the
labelled, each term scaled by its share of the data set. Pyro's ``TraceEnum_ELBO`` sums over the
unlabelled images' classes exactly.
"""

import logging
from collections.abc import Callable

import pyro
import torch
from pyro.infer import TraceEnum_ELBO

from pyro_vae.core.config import TrainConfig
from pyro_vae.core.errors import UserInputError
from pyro_vae.data.datasets import Dataset, Split
from pyro_vae.data.labels import choose_labelled
from pyro_vae.inference.distributed import SINGLE_PROCESS, Replicas
from pyro_vae.inference.evaluate import (
    Estimate,
    classification_error,
    elbo_estimate,
    elbo_sums,
)
from pyro_vae.inference.objectives import make_elbo
from pyro_vae.inference.trainer import Trainer
from pyro_vae.models.m2 import SemiSupervisedVAE

log = logging.getLogger(__name__)

ALPHA_PER_IMAGE = 0.1  # the paper's α = 0.1·N, N the number of training images


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
            raise UserInputError("`kind` m2 needs `labels` N: how many training labels to keep")
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
                f"`labels` {config.labels} labels every training image, leaving none unlabelled "
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
        self.update_rule.zero_grad()
        x = data.train_batch(index)
        with pyro.validation_enabled(not self._validated):
            unlabelled = self.elbo.differentiable_loss(self._model, self._guide, x)
            labelled_loss = self._labelled_loss(data, x.shape[0])
        self._validated = True
        loss = unlabelled + labelled_loss
        loss.backward()
        self.update_rule.step()
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
        """U(x) on the validation images, with the class summed out (M2's held_out_terms)."""
        with pyro.validation_enabled(False):
            sums = elbo_sums(self.vae, split.stored, self.config.val_particles)
        return elbo_estimate(sums, len(split)), sums[2].item() / len(split)

    def _validation_error(self, split: Split) -> float:
        return classification_error(self.vae, split)
