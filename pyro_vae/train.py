"""Stochastic variational inference: Adam on a Pyro ELBO, one mini-batch per step."""

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from math import ceil
from typing import Any

import torch

from pyro_vae.config import TrainConfig
from pyro_vae.data import Dataset
from pyro_vae.errors import UserInputError
from pyro_vae.evaluate import elbo_per_datapoint
from pyro_vae.model import VAE
from pyro_vae.objectives import kl_method, make_elbo


def resolve_device(name: str) -> torch.device:
    """``auto`` is CUDA when available, else the CPU; asking for CUDA without it is an error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise UserInputError(
                f"device {name!r} was asked for, but CUDA is not available on this machine: "
                "use device 'cpu' or 'auto'"
            )
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise UserInputError(
                f"device {name!r} does not exist: this machine has "
                f"{torch.cuda.device_count()} CUDA device(s)"
            )
    return device


@dataclass(frozen=True)
class EpochMetrics:
    epoch: int  # counted from 1
    train_elbo: float  # nats per image, the training estimator, averaged over the epoch's steps
    val_elbo: float  # nats per image on the validation split, val_particles samples of z
    seconds: float  # wall-clock time of the epoch's training steps (validation excluded)
    train_kl: str  # how training treated the KL term: "closed-form" or "monte-carlo"
    val_kl: str  # the same for the validation ELBO (closed form wherever the prior allows)


# Called after every step with (step within the epoch, steps per epoch, loss as a 0-dim tensor).
StepCallback = Callable[[int, int, torch.Tensor], None]


class Trainer:
    """Maximises the ELBO of a VAE: θ (decoder, prior, likelihood) and φ (encoder) together.

    Each step computes Pyro's differentiable ELBO loss for one mini-batch and lets a torch Adam
    update ``vae.parameters()``: the same update as ``SVI.step`` with ``pyro.optim.Adam``, but with
    the optimizer state in one ``state_dict`` and no host synchronisation for a per-step
    ``.item()``.
    """

    def __init__(self, vae: VAE, config: TrainConfig):
        self.vae = vae
        self.config = config
        self.elbo = make_elbo(config.elbo, config.num_particles)
        self.optimizer = torch.optim.Adam(vae.parameters(), lr=config.lr)
        self.history: list[EpochMetrics] = []
        self.train_kl = kl_method(config.elbo, vae.prior())
        self.val_kl = kl_method("analytic", vae.prior())

    @property
    def epoch(self) -> int:
        """Number of completed epochs."""
        return len(self.history)

    def step(self, batch: torch.Tensor) -> torch.Tensor:
        """One SVI step; returns the loss, −ELBO per data point, as a detached 0-dim tensor."""
        # The gradient of the ELBO summed over the batch, as SVI.step takes it: Adam's ε makes the
        # summed and the averaged loss step differently where gradients are tiny.
        loss = self.elbo.differentiable_loss(self.vae.model, self.vae.guide, batch)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        return loss.detach() / batch.shape[0]

    def train_epoch(self, data: Dataset, on_step: StepCallback | None = None) -> EpochMetrics:
        """One pass over the training split in shuffled mini-batches, then the validation ELBO."""
        start = time.perf_counter()
        num_train = data.train.x.shape[0]
        num_steps = ceil(num_train / self.config.batch_size)
        loss_sum = torch.zeros((), device=data.train.x.device)  # on the device: one sync an epoch
        for step, batch in enumerate(data.train_batches(self.config.batch_size), start=1):
            loss = self.step(batch)
            loss_sum += loss * batch.shape[0]
            if on_step is not None:
                on_step(step, num_steps, loss)
        train_elbo = -loss_sum.item() / num_train
        seconds = time.perf_counter() - start
        val_elbo = elbo_per_datapoint(self.vae, data.val.x, num_particles=self.config.val_particles)
        metrics = EpochMetrics(
            self.epoch + 1, train_elbo, val_elbo, seconds, self.train_kl, self.val_kl
        )
        self.history.append(metrics)
        return metrics

    def state_dict(self) -> dict[str, Any]:
        return {
            "optimizer": self.optimizer.state_dict(),
            "history": [asdict(metrics) for metrics in self.history],
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.optimizer.load_state_dict(state["optimizer"])
        self.history = [EpochMetrics(**metrics) for metrics in state["history"]]
