"""Stochastic variational inference: Adam on a Pyro ELBO, one mini-batch per step."""

import math
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import pyro
import torch
from pyro.infer import ELBO, RenyiELBO
from torch.optim.lr_scheduler import ReduceLROnPlateau

from pyro_vae.components.guides import DiagonalGuide, GuideFamily
from pyro_vae.core.config import TrainConfig
from pyro_vae.core.errors import UserInputError
from pyro_vae.data.datasets import Dataset, Split
from pyro_vae.inference.distributed import (
    ORDER_STREAM,
    SINGLE_PROCESS,
    TRAINING_STREAM,
    VALIDATION_STREAM,
    Replicas,
    derived_seed,
)
from pyro_vae.inference.evaluate import Estimate, elbo_estimate, elbo_sums
from pyro_vae.inference.fast.cuda_graph import CapturedStep
from pyro_vae.inference.fast.denormals import flush_denormals
from pyro_vae.inference.fast.precision import matmul_precision
from pyro_vae.inference.fast.replay import RecordedGradient
from pyro_vae.inference.objectives import (
    DeviceLossMixin,
    kl_method,
    loss_and_backward,
    make_elbo,
    per_dimension_kl,
)
from pyro_vae.inference.schedules import EarlyStopping, kl_weight, lr_scheduler
from pyro_vae.inference.update import UpdateRule
from pyro_vae.models.vae import VAE


@dataclass(frozen=True)
class EpochMetrics:
    """One epoch's numbers, as metrics.jsonl has them. Fields after ``val_kl`` have defaults so
    that older checkpoints' histories still load (as None where they did not record it)."""

    epoch: int  # counted from 1
    train_elbo: float  # nats per image, epoch average of the ELBO of the batches (iwae: its bound)
    val_elbo: float  # nats per image on the validation split, val_particles samples of z
    train_kl: str  # how training treated the KL term: "closed-form" or "monte-carlo"
    val_kl: str  # the same for the validation ELBO (closed form wherever the prior allows)
    # The standard error of val_elbo from sampling z (None with one sample): how far another
    # evaluation of this model on these images could land.
    val_elbo_se: float | None = None
    # What the steps maximised, beside the ELBO: the same number unless beta, a warm-up or free
    # bits weighted its KL term.
    train_objective: float | None = None
    beta: float | None = None  # the KL weight of the epoch's last step
    lr: float | None = None  # the learning rate of the epoch's steps
    # The validation ELBO's two terms (Alemi et al., 2018): rate = KL(q(z|x) ‖ p(z)) and
    # distortion = −E_q[log p(x|z)], nats per image; val_elbo = −(rate + distortion).
    val_rate: float | None = None
    val_distortion: float | None = None
    # For a model with a classifier (M2): the share of validation images it misclassifies. M2's
    # train_elbo is U(x), its bound with the class summed out, over the unlabelled images, and
    # train_objective its whole objective (labelled terms and α's included) per unlabelled image.
    val_error: float | None = None


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
    update ``vae.parameters()`` (through ``update_rule``, inference/update.py): the same update
    as ``SVI.step`` with ``pyro.optim.Adam``, but with the optimizer state in one ``state_dict``
    and the losses summed on the device instead of read back every step. From the second step
    on, the loss and its gradient are replayed from a graph recorded once per batch shape
    (inference/fast/replay.py): the same numbers without Pyro's Python at every step. The
    trainer's state includes an epoch in progress (its batch order and the steps done), so a
    checkpoint taken between two steps resumes exactly where it stopped.

    With ``replicas`` from a torchrun launch, this process is one replica of a data-parallel run:
    it trains on its shard of every batch and sums gradients with the others (see
    inference/distributed.py).
    """

    def __init__(
        self,
        vae: VAE,
        config: TrainConfig,
        replicas: Replicas = SINGLE_PROCESS,
        elbo: ELBO | None = None,
        record_graph: bool = True,
        cuda_graph: bool = True,
    ):
        """``elbo``, if given, replaces the one ``config.elbo`` names (to compare with another).

        Steps are recorded only where every component declares its step static
        (inference/fast/contract.py): others train eagerly, with a log line saying why.
        ``record_graph=False`` runs Pyro at every step whatever they declare. On CUDA a recorded
        step and Adam's update are captured as one CUDA graph (inference/fast/cuda_graph.py);
        ``cuda_graph=False`` replays the recording uncaptured.
        """
        # Denormals flushed to zero from here on, in every thread that trains: a sixth of the
        # steps' time over 10 MNIST epochs otherwise (inference/fast/denormals.py).
        flush_denormals()
        self.vae = vae
        self.config = config
        self.replicas = replicas
        self._parameters = list(vae.parameters())
        replicas.connect(self._parameters[0].device)  # a no-op when train_run has connected
        replicas.broadcast(self._parameters)  # one model on every replica, whatever happened
        if config.free_bits:
            _check_free_bits(vae)
            if replicas.distributed:
                raise UserInputError(
                    "`free_bits` floors each latent dimension's KL averaged over the whole batch, "
                    "which a data-parallel run splits between processes: train it in one process"
                )
        self._elbo = (
            elbo
            if elbo is not None
            else make_elbo(config.elbo, config.num_particles, config.free_bits)
        )
        if isinstance(self.elbo, RenyiELBO) and (config.beta != 1 or config.kl_warmup):
            raise UserInputError(
                "`beta` and `kl_warmup` weight the ELBO's KL term, which the importance-weighted "
                "bound does not have: use an ELBO (mc, analytic or stl) with them"
            )
        # This trainer owns the parameters, so it calls the model and guide without the
        # param-store registration that Pyro's optimizers need, a per-step cost. Pyro's own
        # RenyiELBO is the exception: it computes gradients only for traces in which it sees
        # parameter sites (ours, DeviceRenyiELBO, differentiates its loss itself).
        registered = isinstance(self.elbo, RenyiELBO) and not isinstance(self.elbo, DeviceLossMixin)
        self._model = vae.model if registered else vae.generative_model
        self._guide = vae.guide if registered else vae.inference_guide
        # After the first step, the same loss and gradient replayed from a graph of torch
        # operations instead of Pyro's Python machinery at every step (see
        # inference/fast/replay.py).
        self._recorded = (
            RecordedGradient(
                vae,
                self.elbo,
                self._model,
                self._guide,
                # Replicas left to decide could each time it otherwise: asked for, or not at all.
                compile=bool(config.compile) if replicas.distributed else config.compile,
                choose_products=not replicas.distributed,
            )
            if record_graph and not registered
            else None
        )
        # Every path below updates the parameters through this one object (inference/update.py).
        self.update_rule = UpdateRule.from_config(self._parameters, config)
        # On a GPU, the whole step launched as one graph: the host no longer sets the pace.
        # Not across replicas, whose gradients are summed between the backward pass and Adam.
        self._captured = (
            CapturedStep(self._recorded, self.update_rule)
            if self._recorded is not None
            and cuda_graph
            and self._parameters[0].device.type == "cuda"
            and not replicas.distributed
            else None
        )
        # None for a constant rate
        self.scheduler = lr_scheduler(config, self.update_rule.optimizer)
        self.early_stopping = EarlyStopping()
        self.history: list[EpochMetrics] = []
        # Wall-clock seconds of each epoch's steps: kept apart from the metrics, which a fixed
        # seed reproduces to the bit while timings never repeat.
        self.epoch_seconds: list[float] = []
        self.validation_seconds: list[float] = []  # and of each epoch's validation ELBO
        self.train_kl = kl_method(config.elbo, vae.prior(), vae.family_member())
        self.val_kl = kl_method("analytic", vae.prior(), vae.family_member())
        self._order: torch.Tensor | None = None  # the epoch in progress: its shuffled indices,
        self._steps_done = 0  # the steps taken,
        self._loss_sum = torch.zeros(())  # their summed loss,
        self._elbo_sum = torch.zeros(())  # and ELBO (−loss unless the KL term is weighted),
        self._seconds = 0.0  # and their time
        self._validated = False  # whether a step has run with Pyro's validation on

    @property
    def optimizer(self) -> torch.optim.Optimizer:
        """The torch optimizer that ``update_rule`` steps: its rate, state and hooks."""
        return self.update_rule.optimizer

    @optimizer.setter
    def optimizer(self, optimizer: torch.optim.Optimizer) -> None:
        self.update_rule = UpdateRule(optimizer)  # a new rule: a CUDA graph captures it anew

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

    def step(self, batch: torch.Tensor, *labels: torch.Tensor) -> torch.Tensor:
        """One SVI step, the KL weighted by ``config.beta``; returns the loss per data point (−ELBO
        where β is 1) as a detached 0-dim tensor. Warm-up is counted in epochs: ``train_epoch``.
        A model that reads labels (the conditional VAE) takes the batch's classes after it.

        On CUDA, after a step captured as a CUDA graph (inference/fast/cuda_graph.py), each
        ``.grad`` is the graph's own buffer, which the next step overwrites: copy one to keep it."""
        with self._kl_weight(self.config.beta), matmul_precision(self.config.matmul_precision):
            loss, _ = self._update(batch, *labels)
        return loss / batch.shape[0]

    def _update(self, *batch: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One step on ``batch``; returns its loss and −ELBO summed, on the device (on CUDA
        perhaps a graph's output buffers, overwritten by the next step: use them before it)."""
        if self._captured is not None and self._validated and batch[0].shape[0]:
            if self._captured.update_rule is not self.update_rule:  # replaced since: capture it
                self._captured = CapturedStep(self._recorded, self.update_rule)
            captured = self._captured(*batch)  # the update done too
            if captured is not None:
                return captured
        losses = self._backward(*batch)
        self.update_rule.step()
        return losses

    def _inputs(self, data: Dataset, index: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """What the model and guide take for the training images at ``index``: the images,
        and their classes for a model that reads them."""
        x = data.train_batch(index)
        return (x, data.train.labels[index]) if self.vae.labelled else (x,)

    def _backward(self, *batch: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The loss and −ELBO summed over ``batch`` (the images, then any classes), the loss's
        gradient in the ``.grad``s."""
        # The gradient of the ELBO summed over the batch, as SVI.step takes it: Adam's ε makes the
        # summed and the averaged loss step differently where gradients are tiny.
        recorded = self._recorded
        if (
            not self._validated
            and recorded is not None
            and recorded.departs_from_eager
            and batch[0].shape[0]
        ):
            # Resumed with its steps compiled or its products through oneDNN: checked eagerly,
            # then that step, as the uninterrupted run took here (the eager step's numbers
            # differ in the last bits).
            recorded.validate(*batch)
            self._validated = recorded.eager_reason is None
        if self._validated and recorded is not None and batch[0].shape[0]:
            losses = recorded(*batch)  # replaces every .grad: no zero_grad needed
            if losses is not None:
                return losses
        self.update_rule.zero_grad()
        if batch[0].shape[0] == 0:  # a replica's shard of a last batch smaller than the replicas
            zero = torch.zeros((), device=batch[0].device)
            return zero, zero
        # Pyro checks every distribution's arguments and every site's shape: worth it once, to
        # catch a component's mistake at its first step, then only a cost per step (the data are
        # checked before training, and a divergence is caught by check_finite).
        with pyro.validation_enabled(not self._validated):
            losses = loss_and_backward(self.elbo, self._model, self._guide, *batch)
        self._validated = True
        return losses

    @contextmanager
    def _kl_weight(self, beta: float) -> Iterator[None]:
        """β on the VAE's KL weight for the block: a buffer the recorded step reads at every
        replay, written in place (no host read), and 1 again afterwards."""
        if beta == 1:
            yield
            return
        self.vae.kl_weight.fill_(beta)
        try:
            yield
        finally:
            self.vae.kl_weight.fill_(1.0)

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
        num_train, device = self._num_train(data), data.train.stored.device
        if self._order is None:
            self._order = self._epoch_order(num_train, device)
            self._steps_done, self._seconds = 0, 0.0
            self._loss_sum = torch.zeros((), device=device)  # one sync an epoch
            self._elbo_sum = torch.zeros((), device=device)
        batches = self._order.split(self.config.batch_size)
        if self._recorded is not None and self._recorded.planned_steps is None:
            # whether to compile the step and to time its products
            self._recorded.planned_steps = len(batches) * self.config.epochs
            # the graph that may be compiled: a full batch's (this replica's share of one)
            self._recorded.full_batch = len(self.replicas.shard(batches[0]))
        lr = self.update_rule.lr
        beta = self.config.beta
        start = time.perf_counter()
        for index in batches[self._steps_done :]:
            # No stop inside an epoch's last step: the epoch ends there anyway.
            last = self._steps_done + 1 == len(batches)
            beta = kl_weight(
                self.config, self.epoch * len(batches) + self._steps_done, len(batches)
            )
            with self._kl_weight(beta), matmul_precision(self.config.matmul_precision):
                losses, stopping = self._train_step(data, index, None if last else should_stop)
            loss_sum, negative_elbo_sum = losses
            self._loss_sum += loss_sum
            self._elbo_sum -= negative_elbo_sum
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
        val, val_rate = self._validation_elbo(data.val)
        val_error = self._validation_error(data.val)
        self.validation_seconds.append(time.perf_counter() - start)
        if not math.isfinite(val.value):  # finite weights can still overflow on some image
            raise TrainingDiverged(
                f"training diverged in epoch {self.epoch + 1}: the validation ELBO is "
                f"{val.value}, though the weights are finite numbers (some image's activations "
                f"or likelihood overflow); the learning rate ({self.config.lr:g}) is the usual "
                "cause"
            )
        loss_sum, elbo_sum = torch.stack([self._loss_sum, self._elbo_sum]).tolist()  # one sync
        metrics = EpochMetrics(
            self.epoch + 1,
            elbo_sum / num_train,
            val.value,
            self.train_kl,
            self.val_kl,
            val_elbo_se=val.standard_error,
            train_objective=-loss_sum / num_train,
            beta=beta,
            lr=lr,
            val_rate=val_rate,
            val_distortion=-val.value - val_rate,
            val_error=val_error,
        )
        self.history.append(metrics)
        self.early_stopping.improved(metrics.val_elbo, metrics.epoch)
        if isinstance(self.scheduler, ReduceLROnPlateau):
            self.scheduler.step(metrics.val_elbo)
        elif self.scheduler is not None:
            self.scheduler.step()
        self.epoch_seconds.append(self._seconds)
        self._order = None
        return metrics

    def _num_train(self, data: Dataset) -> int:
        """The images an epoch passes over."""
        return len(data.train)

    def _epoch_order(self, num_train: int, device: torch.device) -> torch.Tensor:
        if not self.replicas.distributed:
            return torch.randperm(num_train, device=device)
        # The same order on every replica, drawn from the seed and the epoch alone.
        seed = derived_seed(self.config.seed, ORDER_STREAM, self.epoch)
        return torch.randperm(num_train, generator=torch.Generator().manual_seed(seed)).to(device)

    def _train_step(
        self, data: Dataset, index: torch.Tensor, should_stop: Callable[[], bool] | None
    ) -> tuple[tuple[torch.Tensor, torch.Tensor], bool]:
        """One step on the batch at ``index``: the loss and −ELBO summed over it, and whether
        to stop."""
        if not self.replicas.distributed:
            losses = self._update(*self._inputs(data, index))
            return losses, should_stop is not None and should_stop()
        # This replica's noise comes from a seed of its own for this step (see
        # inference/distributed.py).
        rank = self.replicas.rank
        torch.manual_seed(
            derived_seed(self.config.seed, TRAINING_STREAM, self.epoch, self._steps_done, rank)
        )
        loss_sum, negative_elbo_sum = self._backward(
            *self._inputs(data, self.replicas.shard(index))
        )
        wish = torch.tensor(float(should_stop is not None and should_stop()), device=index.device)
        riders = torch.stack([loss_sum, negative_elbo_sum, wish])
        loss_sum, negative_elbo_sum, stops = self.replicas.sum_gradients(self._parameters, riders)
        self.update_rule.step()
        # Reading the stop flag waits for the step to finish: the price of stopping together.
        return (loss_sum, negative_elbo_sum), bool(stops > 0)

    def _validation_elbo(self, split: Split) -> tuple[Estimate, float]:
        """The ELBO on ``split`` (as stored: uint8 rows are converted a chunk at a time), with
        closed-form KL where the prior allows and ``val_particles`` samples of z per image, its
        standard error, and its rate (the KL term) in nats per image; replicas each take a
        shard, with their own seed."""
        particles = self.config.val_particles
        x = split.stored
        labels = split.labels if self.vae.labelled else None
        with pyro.validation_enabled(False):  # as for the steps: the first one checked it all
            if not self.replicas.distributed:
                sums = elbo_sums(self.vae, x, particles, labels)
            else:
                rank = self.replicas.rank
                seed = derived_seed(self.config.seed, VALIDATION_STREAM, self.epoch, rank)
                torch.manual_seed(seed)
                shard = self.replicas.shard(x)
                shard_labels = None if labels is None else self.replicas.shard(labels)
                sums = torch.zeros(3, dtype=torch.float64, device=x.device)
                if shard.shape[0]:
                    sums += elbo_sums(self.vae, shard, particles, shard_labels)
                sums = self.replicas.sum(sums)
        return elbo_estimate(sums, x.shape[0]), sums[2].item() / x.shape[0]

    def _validation_error(self, split: Split) -> float | None:
        """The validation images' classification error, for a model that classifies."""
        return None

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
        """Use learning rate ``lr`` from the next step on; a schedule goes on from it."""
        self.update_rule.set_lr(lr)
        if self.scheduler is not None and hasattr(self.scheduler, "base_lrs"):
            self.scheduler.base_lrs = [lr for _ in self.update_rule.optimizer.param_groups]

    def state_dict(self) -> dict[str, Any]:
        in_progress = None
        if self._order is not None:
            in_progress = {
                "order": self._order,
                "steps_done": self._steps_done,
                "loss_sum": self._loss_sum,
                "elbo_sum": self._elbo_sum,
                "seconds": self._seconds,
            }
        return {
            "optimizer": self.update_rule.state_dict(),
            "scheduler": self.scheduler.state_dict() if self.scheduler is not None else None,
            "early_stopping": asdict(self.early_stopping),
            "history": [asdict(metrics) for metrics in self.history],
            "epoch_seconds": list(self.epoch_seconds),
            "validation_seconds": list(self.validation_seconds),
            "epoch_in_progress": in_progress,
            # whether the step was compiled (None: not yet decided), for a resumed run to repeat,
            # and what it was told (a resumed run told otherwise decides anew)
            "compiled": self._recorded.compiled if self._recorded is not None else None,
            "compile_option": self.config.compile,
            # and the library of each matrix product (None: not yet decided)
            "products": self._recorded.products if self._recorded is not None else None,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a ``state_dict``; tensors move to the VAE's device. The learning rate is the
        saved one (a schedule's): ``set_lr`` changes it."""
        self.update_rule.load_state_dict(state["optimizer"])  # restores the saved lr too
        if self.scheduler is not None and state.get("scheduler") is not None:
            self.scheduler.load_state_dict(state["scheduler"])
        self.early_stopping = EarlyStopping(**state.get("early_stopping", {}))
        self.history = [EpochMetrics(**metrics) for metrics in state["history"]]
        self.epoch_seconds = list(state["epoch_seconds"])
        self.validation_seconds = list(state.get("validation_seconds", []))  # older checkpoints
        # The step the run took, compiled or replayed, unless it is told otherwise now: the
        # same numbers as the uninterrupted run, or the new choice.
        told = state.get("compile_option", self.config.compile)
        if self._recorded is not None and self.config.compile == told:
            self._recorded.compiled = state.get("compiled")
        if self._recorded is not None:
            # A checkpoint of an older pyro-vae, without the choice, took MKL's products.
            self._recorded.products = state.get("products", {})
        in_progress = state["epoch_in_progress"]
        if in_progress is not None:
            device = next(self.vae.parameters()).device
            self._order = in_progress["order"].to(device)
            self._steps_done = in_progress["steps_done"]
            self._loss_sum = in_progress["loss_sum"].to(device)
            # Older checkpoints trained on the ELBO itself: its sum was the loss's, negated.
            self._elbo_sum = in_progress.get("elbo_sum", -in_progress["loss_sum"]).to(device)
            self._seconds = in_progress["seconds"]


def supports_free_bits(vae: VAE, family: GuideFamily | None = None) -> bool:
    """Whether the KL of the VAE's guide (or of ``family``) to its prior is a sum over latent
    dimensions in closed form, which free bits floor one by one."""
    if family is None:
        q = vae.family_member()
    else:
        q = family(vae.kl_weight.new_zeros(2, family.parameter_dim))
    try:
        per_dimension_kl(q, vae.prior())
    except NotImplementedError:
        return False
    return True


def _check_free_bits(vae: VAE) -> None:
    if supports_free_bits(vae):
        return
    diagonal = isinstance(vae.guide_family, DiagonalGuide)
    if supports_free_bits(vae, DiagonalGuide(vae.latent_dim)):
        fix = "use `guide` diagonal with `free_bits`"
    elif diagonal:
        fix = "use `prior` standard or gaussian with `free_bits`"
    else:
        fix = "use `guide` diagonal and `prior` standard or gaussian with `free_bits`"
    raise UserInputError(
        "free bits floor the KL of each latent dimension, but the "
        f"{type(vae.guide_family).__name__}'s KL to the {type(vae.prior).__name__} is not a sum "
        f"over dimensions in closed form: {fix}"
    )
