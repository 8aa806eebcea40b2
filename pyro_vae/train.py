"""Stochastic variational inference: Adam on a Pyro ELBO, one mini-batch per step."""

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import pyro
import torch
from pyro.infer import ELBO, RenyiELBO

from pyro_vae.config import TrainConfig
from pyro_vae.data import Dataset
from pyro_vae.distributed import (
    ORDER_STREAM,
    SINGLE_PROCESS,
    TRAINING_STREAM,
    VALIDATION_STREAM,
    Replicas,
    derived_seed,
)
from pyro_vae.errors import UserInputError
from pyro_vae.evaluate import Estimate, elbo_estimate, elbo_sums
from pyro_vae.model import VAE
from pyro_vae.objectives import kl_method, loss_and_backward, make_elbo
from pyro_vae.recorded import RecordedGradient


@dataclass(frozen=True)
class EpochMetrics:
    epoch: int  # counted from 1
    train_elbo: float  # nats per image, the training objective (for iwae, its bound), epoch average
    val_elbo: float  # nats per image on the validation split, val_particles samples of z
    train_kl: str  # how training treated the KL term: "closed-form" or "monte-carlo"
    val_kl: str  # the same for the validation ELBO (closed form wherever the prior allows)
    # The standard error of val_elbo from sampling z (None with one sample, and in checkpoints
    # older than it): how far another evaluation of this model on these images could land.
    val_elbo_se: float | None = None


class TrainingDiverged(UserInputError):
    """The loss or a parameter stopped being a finite number, almost always a too-high ``lr``.

    Raised by a run with what it knows of the way on: the run directory, a lower rate, and
    whether a checkpoint there can be resumed (else the run must start again).
    """

    def __init__(
        self,
        message: str,
        run_dir: Path | None = None,
        lower_lr: float | None = None,
        resumable: bool = False,
    ):
        super().__init__(message)
        self.run_dir, self.lower_lr, self.resumable = run_dir, lower_lr, resumable


# Called after every step with (step within the epoch, steps per epoch, loss as a 0-dim tensor).
StepCallback = Callable[[int, int, torch.Tensor], None]
# Called after every step but an epoch's last with whether the run stops there (to save, say).
AfterStepCallback = Callable[[bool], None]


class Trainer:
    """Maximises the ELBO of a VAE: θ (decoder, prior, likelihood) and φ (encoder) together.

    Each step computes Pyro's differentiable ELBO loss for one mini-batch and lets a torch Adam
    update ``vae.parameters()``: the same update as ``SVI.step`` with ``pyro.optim.Adam``, but with
    the optimizer state in one ``state_dict`` and the losses summed on the device instead of read
    back every step. From the second step on, the loss and its gradient are replayed from a graph
    recorded once per batch shape (recorded.py): the same numbers without Pyro's Python at every
    step. The trainer's state includes an epoch in progress (its batch order and the steps done),
    so a checkpoint taken between two steps resumes exactly where it stopped.

    With ``replicas`` from a torchrun launch, this process is one replica of a data-parallel run:
    it trains on its shard of every batch and sums gradients with the others (see distributed.py).
    """

    def __init__(
        self,
        vae: VAE,
        config: TrainConfig,
        replicas: Replicas = SINGLE_PROCESS,
        elbo: ELBO | None = None,
        record_graph: bool = True,
    ):
        """``elbo``, if given, replaces the one ``config.elbo`` names (to compare with another).

        Steps are recorded only where every component declares its step static (recordable.py):
        others train eagerly, with a log line saying why. ``record_graph=False`` runs Pyro at
        every step whatever they declare.
        """
        self.vae = vae
        self.config = config
        self.replicas = replicas
        self._parameters = list(vae.parameters())
        replicas.connect(self._parameters[0].device)  # a no-op when train_run has connected
        replicas.broadcast(self._parameters)  # one model on every replica, whatever happened
        self._elbo = elbo if elbo is not None else make_elbo(config.elbo, config.num_particles)
        # This trainer owns the parameters, so it calls the model and guide without the
        # param-store registration that Pyro's optimizers need, a per-step cost. RenyiELBO is the
        # exception: it computes gradients only for traces in which it sees parameter sites.
        registered = isinstance(self.elbo, RenyiELBO)
        self._model = vae.model if registered else vae.generative_model
        self._guide = vae.guide if registered else vae.inference_guide
        # After the first step, the same loss and gradient replayed from a graph of torch
        # operations instead of Pyro's Python machinery at every step (see recorded.py).
        self._recorded = (
            RecordedGradient(vae, self.elbo, self._model, self._guide)
            if record_graph and not registered
            else None
        )
        # The fused implementation updates every parameter in one kernel: on the CPU a quarter
        # of the time of the default per-tensor loop, the same arithmetic.
        self.optimizer = torch.optim.Adam(vae.parameters(), lr=config.lr, fused=True)
        self.history: list[EpochMetrics] = []
        # Wall-clock seconds of each epoch's steps: kept apart from the metrics, which a fixed
        # seed reproduces to the bit while timings never repeat.
        self.epoch_seconds: list[float] = []
        self.validation_seconds: list[float] = []  # and of each epoch's validation ELBO
        self.train_kl = kl_method(config.elbo, vae.prior())
        self.val_kl = kl_method("analytic", vae.prior())
        self._order: torch.Tensor | None = None  # the epoch in progress: its shuffled indices,
        self._steps_done = 0  # the steps taken,
        self._loss_sum = torch.zeros(())  # their summed loss,
        self._seconds = 0.0  # and their time
        self._validated = False  # whether a step has run with Pyro's validation on

    @property
    def elbo(self) -> ELBO:
        """The objective, fixed for the trainer's life (a recorded step holds it): to train with
        another, make another ``Trainer`` (``Trainer(vae, config, elbo=...)``)."""
        return self._elbo

    @property
    def epoch(self) -> int:
        """Number of completed epochs."""
        return len(self.history)

    @property
    def steps_done(self) -> int:
        """Steps taken in the epoch in progress (0 between epochs)."""
        return self._steps_done if self._order is not None else 0

    def step(self, batch: torch.Tensor) -> torch.Tensor:
        """One SVI step; returns the loss, −ELBO per data point, as a detached 0-dim tensor."""
        return self._update(batch) / batch.shape[0]

    def _update(self, batch: torch.Tensor) -> torch.Tensor:
        """One step on ``batch``; returns its −ELBO summed, on the device."""
        loss = self._backward(batch)
        self.optimizer.step()
        return loss

    def _backward(self, batch: torch.Tensor) -> torch.Tensor:
        """The −ELBO summed over ``batch``, its gradient in the ``.grad``s."""
        # The gradient of the ELBO summed over the batch, as SVI.step takes it: Adam's ε makes the
        # summed and the averaged loss step differently where gradients are tiny.
        if self._validated and self._recorded is not None and batch.shape[0]:
            loss = self._recorded(batch)  # replaces every .grad: no zero_grad needed
            if loss is not None:
                return loss
        self.optimizer.zero_grad(set_to_none=True)
        if batch.shape[0] == 0:  # a replica's shard of a last batch smaller than the replicas
            return torch.zeros((), device=batch.device)
        # Pyro checks every distribution's arguments and every site's shape: worth it once, to
        # catch a component's mistake at its first step, then only a cost per step (the data are
        # checked before training, and a divergence is caught by check_finite).
        with pyro.validation_enabled(not self._validated):
            loss = loss_and_backward(self.elbo, self._model, self._guide, batch)
        self._validated = True
        return loss

    def train_epoch(
        self,
        data: Dataset,
        on_step: StepCallback | None = None,
        should_stop: Callable[[], bool] | None = None,
        after_step: AfterStepCallback | None = None,
    ) -> EpochMetrics | None:
        """Run the epoch in progress, or a new one, to its end; then the validation ELBO.

        ``should_stop()`` is asked at every step but the epoch's last (replicas stop when any of
        them asks); ``after_step(stopping)`` runs after those same steps (to save a checkpoint,
        say). On a stop the epoch ends there, its progress kept for a later call, and this
        returns None.
        """
        num_train = data.train.x.shape[0]
        if self._order is None:
            self._order = self._epoch_order(num_train, data.train.x.device)
            self._steps_done, self._seconds = 0, 0.0
            self._loss_sum = torch.zeros((), device=data.train.x.device)  # one sync an epoch
        batches = self._order.split(self.config.batch_size)
        start = time.perf_counter()
        for index in batches[self._steps_done :]:
            # No stop inside an epoch's last step: the epoch ends there anyway.
            last = self._steps_done + 1 == len(batches)
            loss_sum, stopping = self._train_step(data, index, None if last else should_stop)
            self._loss_sum += loss_sum
            self._steps_done += 1
            if on_step is not None:
                on_step(self._steps_done, len(batches), loss_sum / index.shape[0])
            if not last and after_step is not None:
                after_step(stopping)
            if stopping:
                self._seconds += time.perf_counter() - start
                return None
        self._seconds += time.perf_counter() - start
        self.check_finite()
        start = time.perf_counter()
        val = self._validation_elbo(data.val.x)
        self.validation_seconds.append(time.perf_counter() - start)
        train_elbo = -self._loss_sum.item() / num_train
        metrics = EpochMetrics(
            self.epoch + 1,
            train_elbo,
            val.value,
            self.train_kl,
            self.val_kl,
            val.standard_error,
        )
        self.history.append(metrics)
        self.epoch_seconds.append(self._seconds)
        self._order = None
        return metrics

    def _epoch_order(self, num_train: int, device: torch.device) -> torch.Tensor:
        if not self.replicas.distributed:
            return torch.randperm(num_train, device=device)
        # The same order on every replica, drawn from the seed and the epoch alone.
        seed = derived_seed(self.config.seed, ORDER_STREAM, self.epoch)
        return torch.randperm(num_train, generator=torch.Generator().manual_seed(seed)).to(device)

    def _train_step(
        self, data: Dataset, index: torch.Tensor, should_stop: Callable[[], bool] | None
    ) -> tuple[torch.Tensor, bool]:
        """One step on the batch at ``index``: the loss summed over it, and whether to stop."""
        if not self.replicas.distributed:
            loss_sum = self._update(data.train_batch(index))
            return loss_sum, should_stop is not None and should_stop()
        # This replica's noise comes from a seed of its own for this step (see distributed.py).
        rank = self.replicas.rank
        torch.manual_seed(
            derived_seed(self.config.seed, TRAINING_STREAM, self.epoch, self._steps_done, rank)
        )
        loss_sum = self._backward(data.train_batch(self.replicas.shard(index)))
        wish = torch.tensor(float(should_stop is not None and should_stop()), device=index.device)
        riders = torch.stack([loss_sum, wish])
        loss_sum, stops = self.replicas.sum_gradients(self._parameters, riders)
        self.optimizer.step()
        # Reading the stop flag waits for the step to finish: the price of stopping together.
        return loss_sum, bool(stops > 0)

    def _validation_elbo(self, x: torch.Tensor) -> Estimate:
        """The ELBO on ``x`` (closed-form KL where the prior allows, ``val_particles`` samples of
        z per image) and its standard error; replicas each take a shard, with their own seed."""
        particles = self.config.val_particles
        with pyro.validation_enabled(False):  # as for the steps: the first one checked it all
            if not self.replicas.distributed:
                return elbo_estimate(elbo_sums(self.vae, x, particles), x.shape[0])
            rank = self.replicas.rank
            torch.manual_seed(derived_seed(self.config.seed, VALIDATION_STREAM, self.epoch, rank))
            shard = self.replicas.shard(x)
            sums = torch.zeros(2, dtype=torch.float64, device=x.device)
            if shard.shape[0]:
                sums += elbo_sums(self.vae, shard, particles)
            return elbo_estimate(self.replicas.sum(sums), x.shape[0])

    def check_finite(self) -> None:
        """Raise ``TrainingDiverged`` if the loss so far or any parameter is NaN or infinite."""
        values = [self._loss_sum.reshape(1)] + [
            p.detach().reshape(-1) for p in self.vae.parameters()
        ]
        if not bool(torch.isfinite(torch.cat(values)).all()):  # one sync, at save points only
            raise TrainingDiverged(
                f"training diverged in epoch {self.epoch + 1} (by step {self._steps_done}): the "
                "loss or the parameters are no longer finite numbers; the learning rate "
                f"({self.config.lr:g}) is the usual cause"
            )

    def set_lr(self, lr: float) -> None:
        """Use learning rate ``lr`` from the next step on."""
        for group in self.optimizer.param_groups:
            group["lr"] = lr

    def state_dict(self) -> dict[str, Any]:
        in_progress = None
        if self._order is not None:
            in_progress = {
                "order": self._order,
                "steps_done": self._steps_done,
                "loss_sum": self._loss_sum,
                "seconds": self._seconds,
            }
        return {
            "optimizer": self.optimizer.state_dict(),
            "history": [asdict(metrics) for metrics in self.history],
            "epoch_seconds": list(self.epoch_seconds),
            "validation_seconds": list(self.validation_seconds),
            "epoch_in_progress": in_progress,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a ``state_dict``; tensors move to the VAE's device, the lr stays the config's."""
        self.optimizer.load_state_dict(state["optimizer"])  # restores the saved lr too ...
        self.set_lr(self.config.lr)  # ... but a resumed run may lower it
        self.history = [EpochMetrics(**metrics) for metrics in state["history"]]
        self.epoch_seconds = list(state["epoch_seconds"])
        self.validation_seconds = list(state.get("validation_seconds", []))  # older checkpoints
        in_progress = state["epoch_in_progress"]
        if in_progress is not None:
            device = next(self.vae.parameters()).device
            self._order = in_progress["order"].to(device)
            self._steps_done = in_progress["steps_done"]
            self._loss_sum = in_progress["loss_sum"].to(device)
            self._seconds = in_progress["seconds"]
