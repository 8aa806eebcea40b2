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

from pyro_vae.core.config import TrainConfig
from pyro_vae.inference.fast.torch_private import set_last_lr

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


def extend_cosine(
    scheduler: CosineAnnealingLR, epochs_done: int, epochs: int, last_rate: float | None
) -> float:
    """Re-plan a cosine schedule for a run resumed to end at ``epochs`` instead: the rate goes
    on from where the run stands, down to lr_min after the new last epoch, never back up.

    Where the run has epochs of its old plan left, the next one keeps the rate that plan gave
    it. A finished run stands at lr_min, which would leave its new epochs nothing to learn
    with; its new epochs go on from ``last_rate``, the rate of its last epoch, as if that had
    been the first point of a curve they continue. (Stretching the whole curve over the new
    length instead put the rate back up where the old curve had already gone below.) Returns
    the rate the next epoch trains at.
    """
    remaining = epochs - epochs_done
    if remaining < 1:  # nothing left to plan: resume_run refuses such a target
        return scheduler.optimizer.param_groups[0]["lr"]
    finished = scheduler.last_epoch >= scheduler.T_max and last_rate is not None
    # The anchor is point 0 of the new curve (the last epoch, for a finished run: point 1 is
    # then the first new epoch), and lr_min its point T_max, after the new last epoch.
    anchors = (
        [last_rate] * len(scheduler.base_lrs)
        if finished
        else [group["lr"] for group in scheduler.optimizer.param_groups]
    )
    position = 1 if finished else 0
    scheduler.T_max = remaining + position
    scheduler.base_lrs = anchors
    scheduler.last_epoch = position
    factor = (1 + math.cos(math.pi * position / scheduler.T_max)) / 2
    rates = [scheduler.eta_min + (anchor - scheduler.eta_min) * factor for anchor in anchors]
    for group, rate in zip(scheduler.optimizer.param_groups, rates, strict=True):
        group["lr"] = rate
    set_last_lr(scheduler, rates)
    return rates[0]


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
