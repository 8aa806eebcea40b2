"""A training run from configuration to run directory: the facade that the CLI calls.

A run directory holds:
    checkpoint.pt         config, model and optimizer state, history (see checkpoint.py)
    config.json           the same configuration and the versions, for people and scripts
    metrics.jsonl         one JSON object per epoch (see train.EpochMetrics)
    elbo_curve.png        training and validation ELBO against epochs
    reconstructions.png   test images beside their reconstructions
    samples.png           decoded means of z ~ p(z)
"""

import json
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import pyro
import torch

from pyro_vae import plots
from pyro_vae.checkpoint import Checkpoint, environment, save_checkpoint
from pyro_vae.config import RunConfig
from pyro_vae.data import load_dataset
from pyro_vae.errors import UserInputError
from pyro_vae.model import VAE
from pyro_vae.pictures import save_reconstructions, save_samples
from pyro_vae.train import EpochMetrics, StepCallback, Trainer, resolve_device

CHECKPOINT = "checkpoint.pt"
CONFIG = "config.json"
METRICS = "metrics.jsonl"
ELBO_CURVE = "elbo_curve.png"
RECONSTRUCTIONS = "reconstructions.png"
SAMPLES = "samples.png"

NUM_SAMPLES = 64  # images in the samples grid written at the end of training
NUM_RECONSTRUCTIONS = 16  # test images shown beside their reconstructions


@dataclass(frozen=True)
class RunResult:
    run_dir: Path
    device: torch.device
    history: list[EpochMetrics]
    files: list[Path]


def check_run_dir(run_dir: Path, overwrite: bool) -> None:
    """Refuse a file, or a folder that already holds something, unless ``overwrite`` is set."""
    if run_dir.exists() and not run_dir.is_dir():
        raise UserInputError(f"{run_dir} is a file: choose a directory for the run's output")
    if run_dir.is_dir() and any(run_dir.iterdir()) and not overwrite:
        raise UserInputError(
            f"{run_dir} already holds files: choose a new output directory, "
            "or ask to overwrite it (--overwrite)"
        )


def train_run(
    config: RunConfig,
    run_dir: Path,
    overwrite: bool = False,
    on_step: StepCallback | None = None,
    on_epoch: Callable[[EpochMetrics], None] | None = None,
) -> RunResult:
    """Train a VAE as ``config`` says, writing the checkpoint and metrics after every epoch.

    Every check that can fail (options, device, output folder, data against the likelihood) runs
    before the first step, so a mistake costs seconds, not a training run.
    """
    run_dir = Path(run_dir)
    check_run_dir(run_dir, overwrite)
    device = resolve_device(config.train.device)
    pyro.set_rng_seed(config.train.seed)
    data = load_dataset(config.data).to(device)
    vae = VAE.from_config(config.model, data.data_dim).to(device)
    for split in data.modelled_splits():
        vae.likelihood.check_data(split.x)
    trainer = Trainer(vae, config.train)

    run_dir.mkdir(parents=True, exist_ok=True)
    record = {
        "config": config.to_dict(),
        "environment": environment(),
        "device": str(device),
        "data": {"name": data.name, "image_shape": data.image_shape, "note": data.note},
    }
    (run_dir / CONFIG).write_text(json.dumps(record, indent=2) + "\n")
    (run_dir / METRICS).write_text("")
    for _ in range(config.train.epochs):
        metrics = trainer.train_epoch(data, on_step)
        with open(run_dir / METRICS, "a") as file:
            file.write(json.dumps(asdict(metrics)) + "\n")
        save_checkpoint(
            Checkpoint(config, data.image_shape, vae.state_dict(), trainer.state_dict()),
            run_dir / CHECKPOINT,
        )
        if on_epoch is not None:
            on_epoch(metrics)

    pictures = [
        save_reconstructions(
            vae, data.test.x[:NUM_RECONSTRUCTIONS], data.image_shape, run_dir / RECONSTRUCTIONS
        ),
        save_samples(vae, data.image_shape, run_dir / SAMPLES, NUM_SAMPLES, config.train.seed),
        plots.save_elbo_curve(trainer.history, run_dir / ELBO_CURVE),
    ]
    files = [run_dir / name for name in (CHECKPOINT, CONFIG, METRICS)] + pictures
    return RunResult(run_dir, device, trainer.history, files)
