"""A run's curves and pictures for TensorBoard (``train --tensorboard``), from the optional extra.

Event files go into the run directory, one scalar of each kind per epoch (the ELBO's terms, the
objective, β, the learning rate), image grids of samples and reconstructions every few epochs, and
the run's hyperparameters with its final numbers. Writing pictures draws random numbers: they come
from a generator forked off torch's, so a run with TensorBoard trains exactly as one without.
"""

from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from pyro_vae.core.config import RunConfig
from pyro_vae.core.errors import UserInputError
from pyro_vae.inference.trainer import EpochMetrics
from pyro_vae.models.vae import VAE
from pyro_vae.runs.figures import image_grid

NUM_IMAGES = 64  # in each grid
PICTURES = 10  # image grids over a run, at most (and always at its last epoch)

# metrics.jsonl's numbers, under TensorBoard's names: one chart per group
SCALARS = {
    "train_elbo": "elbo/train",
    "val_elbo": "elbo/validation",
    "train_objective": "objective/train",
    "val_rate": "validation/rate (KL)",
    "val_distortion": "validation/distortion",
    "val_elbo_se": "validation/ELBO standard error",
    "val_error": "validation/classification error",  # M2's q(y|x)
    "beta": "schedule/beta",
    "lr": "schedule/lr",
}


def summary_writer_class() -> Any:
    """torch's SummaryWriter, or a one-line error naming the extra that brings it."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # torch's module imports the tensorboard package, the optional extra
        raise UserInputError(
            "--tensorboard needs the tensorboard package: pip install 'pyro-vae[tensorboard]' "
            "(or pip install tensorboard), or drop --tensorboard"
        ) from None
    return SummaryWriter


class TensorBoardLog:
    """Writes a run's epochs as TensorBoard events into ``run_dir``."""

    def __init__(self, run_dir: Path, config: RunConfig, image_shape: tuple[int, ...]):
        self._writer = summary_writer_class()(log_dir=str(run_dir))
        self.config, self.image_shape = config, image_shape
        self._every = max(1, config.train.epochs // PICTURES)

    def epoch(
        self,
        metrics: EpochMetrics,
        vae: VAE,
        x_test: torch.Tensor,
        y_test: torch.Tensor | None = None,
    ) -> None:
        """The epoch's numbers, and now and then its pictures (``y_test``: the test images'
        classes, for a model that reads them)."""
        for key, tag in SCALARS.items():
            value = getattr(metrics, key)
            if value is not None:
                self._writer.add_scalar(tag, value, metrics.epoch)
        last = metrics.epoch == self.config.train.epochs
        if metrics.epoch % self._every == 0 or last:
            self._pictures(metrics.epoch, vae, x_test, y_test)
        self._writer.flush()

    @torch.no_grad()
    def _pictures(
        self, epoch: int, vae: VAE, x_test: torch.Tensor, y_test: torch.Tensor | None
    ) -> None:
        device = x_test.device
        devices = [device] if device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):  # the run's own random numbers untouched
            torch.manual_seed(self.config.train.seed)  # the same codes z at every epoch
            samples = vae.generate(NUM_IMAGES)
        originals = x_test[: NUM_IMAGES // 2]
        classes = () if y_test is None else (y_test[: NUM_IMAGES // 2],)
        reconstructions = vae.reconstruct(originals, *classes)
        pairs = torch.stack([originals, reconstructions], dim=1).flatten(0, 1)
        for tag, images in (("samples", samples), ("reconstructions", pairs)):
            grid = image_grid(images, self.image_shape, ncols=8)  # (H, W) grey, (H, W, 3) RGB
            dataformats = "HWC" if grid.ndim == 3 else "HW"
            self._writer.add_image(tag, grid, epoch, dataformats=dataformats)

    def close(self, history: list[EpochMetrics]) -> None:
        """The hyperparameters beside the final numbers (TensorBoard's HPARAMS tab), then close."""
        if history:
            final = history[-1]
            values = {**asdict(self.config.model), **asdict(self.config.train)}
            hparams = {
                k: v if isinstance(v, int | float | str | bool) else str(v)
                for k, v in values.items()
            }
            metrics = {"hparam/val_elbo": final.val_elbo, "hparam/train_elbo": final.train_elbo}
            self._writer.add_hparams(hparams, metrics, run_name=".", global_step=final.epoch)
        self._writer.close()
