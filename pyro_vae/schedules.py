"""What changes over a run: the KL weight (warm-up), the learning rate, and when to stop.

- KL warm-up (Bowman et al., 2016; Sønderby et al., 2016): β rises linearly, step by step, from
  nearly 0 to ``beta`` over the first ``kl_warmup`` epochs, then stays there.
- Learning-rate schedules are torch's own (``torch.optim.lr_scheduler``), stepped once an epoch,
  their state in the checkpoint.
- Early stopping: the run ends once the validation ELBO has not improved for ``patience`` epochs.
"""

import math
from dataclasses import dataclass

import torch
from torch.optim.lr_scheduler import CosineAnnealingLR, LRScheduler, ReduceLROnPlateau, StepLR

from pyro_vae.config import TrainConfig

Scheduler = LRScheduler | ReduceLROnPlateau


def kl_weight(config: TrainConfig, step: int, steps_per_epoch: int) -> float:
    """β at the run's ``step``-th step (counted from 0): ``beta`` · min(1, (step + 1) / T), with
    T the warm-up's steps. Never 0, so the first step already sees the KL term a little."""
    if not config.kl_warmup:
        return config.beta
    return config.beta * min(1.0, (step + 1) / (config.kl_warmup * steps_per_epoch))


def lr_scheduler(config: TrainConfig, optimizer: torch.optim.Optimizer) -> Scheduler | None:
    """The schedule ``config.lr_schedule`` names, on ``optimizer``; None for a constant rate."""
    if config.lr_schedule == "cosine":  # from lr at the first epoch to lr_min after the last
        return CosineAnnealingLR(optimizer, T_max=config.epochs, eta_min=config.lr_min)
    if config.lr_schedule == "step":  # × lr_factor every lr_step epochs
        return StepLR(optimizer, step_size=config.lr_step, gamma=config.lr_factor)
    if config.lr_schedule == "plateau":  # × lr_factor after lr_step epochs without a gain
        # torch cuts after more than `patience` bad epochs; a gain is any rise of the ELBO (a
        # relative threshold would misjudge a negative one).
        return ReduceLROnPlateau(
            optimizer,
            mode="max",
            factor=config.lr_factor,
            patience=config.lr_step - 1,
            threshold=0.0,
            threshold_mode="abs",
        )
    return None


def extend_cosine(scheduler: CosineAnnealingLR, epochs: int) -> None:
    """Stretch a cosine schedule to end at ``epochs`` (a resumed run trained longer), its rate
    set on the new curve where the run stands: torch's own update only scales the distance to
    lr_min, so a schedule already at its end would otherwise stay there."""
    scheduler.T_max = epochs
    t = min(scheduler.last_epoch, scheduler.T_max)
    factor = (1 + math.cos(math.pi * t / scheduler.T_max)) / 2
    rates = [scheduler.eta_min + (base - scheduler.eta_min) * factor for base in scheduler.base_lrs]
    for group, rate in zip(scheduler.optimizer.param_groups, rates, strict=True):
        group["lr"] = rate
    scheduler._last_lr = rates  # what get_last_lr() reports


@dataclass
class EarlyStopping:
    """The best validation ELBO so far and its epoch: what ``patience`` is counted from."""

    best_elbo: float = -math.inf
    best_epoch: int = 0

    def improved(self, val_elbo: float, epoch: int) -> bool:
        """Note ``epoch``'s validation ELBO; whether it is the best so far."""
        if val_elbo > self.best_elbo:
            self.best_elbo, self.best_epoch = val_elbo, epoch
            return True
        return False

    def exhausted(self, epoch: int, patience: int | None) -> bool:
        """Whether ``patience`` epochs have passed since the best one, by ``epoch``'s end."""
        return patience is not None and epoch - self.best_epoch >= patience
