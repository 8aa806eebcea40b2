"""What every experiment shares: where its numbers came from (provenance), where its report
goes, and training to a budget of epochs or seconds, scored on the held-out test images."""

import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import pyro
import torch

from pyro_vae import VAE, Trainer
from pyro_vae.data import Dataset
from pyro_vae.evaluate import Bound, evaluate_bounds


def provenance(script: str, argv: list[str] | None) -> str:
    """One markdown line: the command that reproduces the report, versions, machine and date."""
    args = " ".join(sys.argv[1:] if argv is None else argv)
    command = f"python experiments/{script} {args}".strip()
    return (
        f"Command: `{command}` · torch {torch.__version__}, pyro {pyro.__version__}, "
        f"Python {platform.python_version()} · {platform.machine()} CPU, "
        f"{os.cpu_count()} cores, {torch.get_num_threads()} torch threads · "
        f"{time.strftime('%Y-%m-%d')}"
    )


def output_path(out: Path | None, quick: bool, committed: Path) -> Path:
    """Where a report goes: ``out`` if given; a quick (smoke) run's into a new temporary folder,
    so that it never replaces the committed report; else the committed report's place."""
    if out is not None:
        return out
    if quick:
        return Path(tempfile.mkdtemp(prefix="pyro-vae-quick-")) / committed.name
    return committed


def train_for(
    trainer: Trainer, data: Dataset, epochs: int | None, seconds: float | None
) -> tuple[int, float, float]:
    """Whole epochs, ``epochs`` of them or until ``seconds`` have passed: (epochs, seconds, the
    median epoch's seconds, steps and validation: the steady state)."""
    start, done = time.perf_counter(), 0
    while (epochs is not None and done < epochs) or (
        seconds is not None and time.perf_counter() - start < seconds
    ):
        trainer.train_epoch(data)
        done += 1
    pairs = zip(trainer.epoch_seconds, trainer.validation_seconds, strict=True)
    median = statistics.median(steps + validation for steps, validation in pairs)
    return done, time.perf_counter() - start, median


def held_out_bounds(vae: VAE, data: Dataset, seed: int, samples: int) -> dict[str, Bound]:
    """The test split's ELBOs and IWAE bound, all from the same K = ``samples`` z per image."""
    pyro.set_rng_seed(seed)
    return evaluate_bounds(vae, data.test.x, num_samples=samples)
