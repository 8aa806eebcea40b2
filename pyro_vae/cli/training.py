"""The ``train`` command's side of the terminal: Ctrl-C and SIGTERM, progress bars and the
summary of a run.

Split from train.py, which calls the library; this module is the CLI's too, and prints: the
library (pyro_vae) never does. Its progress display (``WorkProgress``) also serves ``evaluate``
(runs.py).
"""

import contextlib
import signal
import sys
import time
from collections.abc import Iterator
from dataclasses import replace
from typing import Any, ClassVar

import torch
import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from pyro_vae import (
    EpochMetrics,
    RunConfig,
    RunResult,
)
from pyro_vae.inference.distributed import Replicas, disconnect
from pyro_vae.models.build import MODELS
from pyro_vae.runs.runner import RunHooks

stderr = Console(stderr=True)


@contextlib.contextmanager
def training(
    replicas: Replicas, checkpoint_every: int | None, tensorboard: bool = False
) -> Iterator[tuple[RunHooks, "StopRequests"]]:
    """The hooks of a training run: Ctrl-C and SIGTERM handling, a progress bar on rank 0 only."""
    try:
        with _TrainingProgress() as progress, StopRequests(replicas) as stops:
            hooks = RunHooks(
                should_stop=stops,
                checkpoint_every=checkpoint_every,
                command=sys.argv,
                tensorboard=tensorboard,
            )
            if replicas.is_main:
                hooks = replace(hooks, on_step=progress.on_step, on_epoch=progress.on_epoch)
            yield hooks, stops
    except BaseException:
        disconnect(together=False)
        raise
    disconnect()


class StopRequests:
    """Ctrl-C (SIGINT) and SIGTERM (what ``kill`` and cluster schedulers send) as requests to save
    and stop after the current step; called, says whether one came.

    Stopping between steps, never inside one, keeps the parameters and the optimizer in step;
    a second signal stops at once, without saving. Not under torchrun, though: there the terminal
    and then torchrun itself send each process a SIGINT, and the processes must stop together.
    """

    SIGNALS = (signal.SIGINT, signal.SIGTERM)
    NAMES: ClassVar[dict[int, str]] = {signal.SIGINT: "Ctrl-C", signal.SIGTERM: "SIGTERM"}

    def __init__(self, replicas: Replicas):
        self.replicas = replicas
        self.signal: int | None = None  # the first that came
        self._previous: dict[int, Any] = {}

    def __call__(self) -> bool:
        return self.signal is not None

    def _handle(self, signum: int, frame: object) -> None:
        # Plain writes: a signal may land while rich is still importing a module of its own.
        if self.signal is not None and not self.replicas.distributed:
            print(
                "Aborted at once: this step is not saved (the last checkpoint, if there is one, "
                "is intact).",
                file=sys.stderr,
                flush=True,
            )
            raise SystemExit(128 + signum)  # 130 after Ctrl-C, 143 after SIGTERM
        if self.signal is None and self.replicas.is_main:
            again = "" if self.replicas.distributed else f" ({self.NAMES[signum]} again to abort)"
            print(f"{self.NAMES[signum]}: stopping after this step{again}...", file=sys.stderr)
        self.signal = self.signal or signum

    def __enter__(self) -> "StopRequests":
        for signum in self.SIGNALS:
            self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for signum, previous in self._previous.items():
            signal.signal(signum, previous)


def summarise(
    result: RunResult, replicas: Replicas, stops: StopRequests, tensorboard: bool = False
) -> None:
    # The shell's code for a process ended by the signal: 128 + its number (130, 143).
    stopped_code = 128 + (stops.signal or signal.SIGINT)
    if not replicas.is_main:  # rank 0 reports for all the processes
        raise typer.Exit(0 if result.finished else stopped_code)
    if not result.finished:
        position = f"epoch {result.history[-1].epoch if result.history else 0}"
        if result.steps_done:
            position += f" and {result.steps_done} steps"
        typer.echo(
            f"Stopped after {position}; the checkpoint is saved. Continue with: "
            f"pyro-vae train --resume {result.run_dir}" + (" --tensorboard" if tensorboard else "")
        )
        raise typer.Exit(stopped_code)
    final = result.history[-1]
    error = f" ± {final.val_elbo_se:.2f}" if final.val_elbo_se is not None else ""
    precision = result.config.train.matmul_precision
    products = "" if precision == "highest" else f", --matmul-precision {precision}"
    particles = result.config.train.val_particles
    samples = f"{particles} samples of z each" if particles > 1 else "one sample of z each"
    spread = "; ± one standard error of sampling them" if error else ""
    typer.echo(
        f"Trained {final.epoch} epochs on {result.device} in {sum(result.epoch_seconds):.1f} s "
        f"of SVI steps ({final.train_kl} KL{products}). Validation ELBO: "
        f"{final.val_elbo:.2f}{error} nats per image ({final.val_kl} KL, {samples}{spread})."
    )
    if final.val_error is not None:
        labels = result.config.train.labels
        typer.echo(
            f"Validation error of q(y|x): {final.val_error:.2%} (trained with {labels} labels)."
        )
    config = result.config
    if result.stopped_early:
        typer.echo(
            f"Stopped early: no better validation ELBO in the {config.train.patience} "
            f"epoch{'s' if config.train.patience != 1 else ''} after epoch {result.best_epoch}."
        )
    if result.best_epoch is not None and result.best_epoch != final.epoch:
        best = result.history[result.best_epoch - 1]
        typer.echo(
            f"best.pt keeps epoch {best.epoch} (validation ELBO {best.val_elbo:.2f}), which "
            "evaluate and the pictures use (--latest for the last epoch's)."
        )
    if result.active_units is not None and collapsed(result.active_units, config.model.latent_dim):
        typer.echo(collapse_note(result.active_units, config, result.free_bits_possible))
    if config.train.elbo == "analytic" and final.train_kl != "closed-form":
        typer.echo(
            f"Note: the {config.model.guide} guide has no closed-form KL to the "
            f"{config.model.prior} prior, so --elbo analytic (TraceMeanField_ELBO) estimated that "
            "term by Monte Carlo."
        )
    typer.echo(f"Run directory: {result.run_dir}")
    for path in result.files:
        typer.echo(f"  {path.name}")


def collapsed(active: int, latent_dim: int) -> bool:
    """None, or almost none, of the latent dimensions in use: at most one in ten."""
    return active <= latent_dim // 10


def collapse_note(active: int, config: RunConfig, free_bits_possible: bool) -> str:
    """What happened, in a sentence, and the remedies that apply to this run: first the
    model's (its likelihood's σ), then the objective's, each one that this run's options accept."""
    model, train = config.model, config.train
    remedies = []
    if model.likelihood == "gaussian":
        sigma = model.likelihood_options.get("sigma", 1.0)
        if sigma > 0.1:
            remedies.append(f"--sigma 0.1 (this run: {sigma:g}; for pixels in [0, 1])")
        remedies.append("--likelihood gaussian-learned")
    objective = []
    warmup = max(1, min(10, train.epochs // 2))  # within the run's epochs, as the option requires
    analytic = "" if train.elbo == "analytic" else "--elbo analytic "
    model_class = MODELS[model.kind]
    if model_class.semi_supervised:  # its own objective: no warm-up, free bits or β to offer
        pass
    elif train.elbo == "iwae":  # no KL term to weight: the ELBO's remedies need an ELBO
        objective.append(f"--elbo analytic --kl-warmup {warmup}")
    elif not train.kl_warmup:
        objective.append(f"--kl-warmup {warmup}")
    if free_bits_possible and not train.free_bits and not model_class.semi_supervised:
        objective.append(f"{analytic}--free-bits 0.5")
    if train.beta > 1:
        objective.append(f"a --beta below this run's {train.beta:g}")
    if objective and remedies:  # measured: with σ too large, the objective does not save it
        remedies.append(
            "or change the objective (" + ", ".join(objective) + "), which on the digits at "
            "σ = 1 did not help the ELBO (experiments/results/rate_distortion.md)"
        )
    else:
        remedies += objective
    advice = "; try " + ", ".join(remedies) if remedies else ""
    if not model_class.labelled:
        what = "every image gets much the same code and the samples look alike"
    else:  # the class reaches the decoder beside the code
        what = "the code says little beyond the class, and samples of one class look alike"
    return (
        f"Note: posterior collapse: {active} of {model.latent_dim} latent dimensions are in use "
        f"(the encoder's mean moves with the image in no more), so {what}{advice}."
    )


class WorkProgress:
    """A progress bar for long work that reports (done, total); shown only past a second."""

    def __init__(self, what: str):
        self.what = what
        self.start = time.monotonic()
        self.progress = Progress(
            TextColumn(what), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), console=stderr
        )
        self.task: Any = None

    def __enter__(self) -> "WorkProgress":
        return self

    def __exit__(self, *exc: object) -> None:
        if self.task is not None:
            self.progress.stop()

    def update(self, done: int, total: int) -> None:
        if self.task is None:
            if time.monotonic() - self.start < 1.0:  # quick work needs no bar
                return
            self.progress.start()
            self.task = self.progress.add_task(self.what, total=total)
        self.progress.update(self.task, completed=done)


class _TrainingProgress:
    """A progress bar over the run's steps with the live loss and the last validation ELBO."""

    REFRESH_SECONDS = 0.2  # reading the loss forces a device sync: do it a few times a second only

    def __init__(self) -> None:
        self.fields = {"epochs": "…", "loss": "…", "val": "…"}
        self.last_read = 0.0
        self.progress = Progress(
            TextColumn("epochs done {task.fields[epochs]}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TextColumn("loss {task.fields[loss]}  val ELBO {task.fields[val]}"),
            console=stderr,
        )
        self.task: Any = None

    def __enter__(self) -> "_TrainingProgress":
        return self

    def __exit__(self, *exc: object) -> None:
        if self.task is not None:  # stopping a bar never shown would print an empty line
            self.progress.stop()

    def on_step(self, step: int, num_steps: int, loss: torch.Tensor) -> None:
        if self.task is None:  # only once training runs, not before the checks pass
            self.progress.start()
            self.task = self.progress.add_task("train", total=num_steps, **self.fields)
        if step == 1:
            self.progress.reset(self.task, total=num_steps)
        self.progress.advance(self.task)
        now = time.monotonic()
        if now - self.last_read > self.REFRESH_SECONDS or step == num_steps:
            self.last_read = now
            self.progress.update(self.task, loss=f"{loss.item():.2f}")

    def on_epoch(self, metrics: EpochMetrics) -> None:
        self.progress.update(self.task, epochs=str(metrics.epoch), val=f"{metrics.val_elbo:.2f}")
