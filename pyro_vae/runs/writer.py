"""What a training run writes into its directory as it trains, and at its end: ``RunWriter``.

runner.py drives the run; this module is its hand on the files. Only rank 0 writes (every replica
holds the same state, so its files describe them all), each file atomically or appended a line at
a time after the checkpoint that it describes.
"""

import json
import os
from collections.abc import Mapping
from dataclasses import asdict
from pathlib import Path
from typing import Any

from pyro_vae.core.config import RunConfig
from pyro_vae.data.datasets import Dataset
from pyro_vae.inference.evaluate import active_units
from pyro_vae.inference.trainer import EpochMetrics, Trainer
from pyro_vae.models.vae import VAE
from pyro_vae.runs import figures as plots
from pyro_vae.runs.checkpoint import Checkpoint, capture_rng_state, load_checkpoint, save_checkpoint
from pyro_vae.runs.pictures import save_reconstructions, save_samples
from pyro_vae.runs.rundir import (
    BEST,
    CHECKPOINT,
    CONFIG,
    ELBO_CURVE,
    METRICS,
    RECONSTRUCTIONS,
    SAMPLES,
    TIMING,
    writing,
)
from pyro_vae.runs.tensorboard import TensorBoardLog

NUM_SAMPLES = 64  # images in the samples grid written at the end of training
NUM_RECONSTRUCTIONS = 16  # test images shown beside their reconstructions


class RunWriter:
    """Everything a run writes into its directory while it trains, and at its end.

    Entering rewrites metrics.jsonl and timing.jsonl from the trainer's history (so a run killed
    between its checkpoint and its lines comes back consistent) and opens TensorBoard's log;
    leaving closes that log. In between: the checkpoint every ``checkpoint_every`` steps and
    where a stop is asked (``after_step``), and after each epoch best.pt, the checkpoint and the
    lines that describe it (``end_of_epoch``); then the final pictures (``finish``).

    Only rank 0 writes: every replica holds the same state, so its files describe them all. The
    check that the parameters are finite before a mid-epoch checkpoint runs on every replica.
    """

    def __init__(
        self,
        run_dir: Path,
        run_id: str,
        config: RunConfig,
        data: Dataset,
        trainer: Trainer,
        checkpoint_every: int | None = None,
        tensorboard: bool = False,
    ) -> None:
        self.run_dir, self.run_id, self.config = run_dir, run_id, config
        self.data, self.trainer = data, trainer
        self._main = trainer.replicas.is_main
        self._tensorboard = tensorboard
        self._checkpoint_every = checkpoint_every
        self._steps_since_save = 0
        self._board: TensorBoardLog | None = None

    def __enter__(self) -> "RunWriter":
        if self._main:
            history = self.trainer.history
            write_atomically(
                self.run_dir / METRICS, "".join(_json_line(asdict(m)) for m in history)
            )
            write_atomically(
                self.run_dir / TIMING,
                "".join(_timing_line(self.trainer, epoch) for epoch in range(1, len(history) + 1)),
            )
            if self._tensorboard:
                self._board = TensorBoardLog(self.run_dir, self.config, self.data.image_shape)
        return self

    def __exit__(self, *exception: object) -> None:
        if self._board is not None:
            self._board.close(self.trainer.history)

    def after_step(self, stopping: bool) -> None:
        """After every step but an epoch's last (``Trainer.train_epoch``'s ``after_step``)."""
        self._steps_since_save += 1
        every = self._checkpoint_every
        if stopping or (every and self._steps_since_save >= every):
            self.save()
            self._steps_since_save = 0

    def end_of_epoch(self, metrics: EpochMetrics) -> None:
        """After a finished epoch: its checkpoints, its lines, its TensorBoard events."""
        best = self.trainer.early_stopping.best_epoch == metrics.epoch
        if self.config.train.patience is not None and best:
            self.save(BEST)  # before the checkpoint that records it as the best
        self.save()  # first the checkpoint, then the lines that describe it
        self._steps_since_save = 0
        self._append_lines(metrics)
        if self._board is not None:
            test = self.data.test
            classes = test.labels[:64] if self.trainer.vae.labelled else None
            self._board.epoch(metrics, self.trainer.vae, test.rows(slice(0, 64)), classes)

    def save(self, name: str = CHECKPOINT) -> None:
        """The model, the trainer's state and the random number generators' states, to ``name``
        in the run directory."""
        trainer, data = self.trainer, self.data
        if trainer.steps_done:  # mid-epoch; a finished epoch was checked by train_epoch
            trainer.check_finite()
        if not self._main:
            return
        state = Checkpoint(
            self.config,
            data.image_shape,
            trainer.vae.state_dict(),
            trainer.state_dict(),
            capture_rng_state(),
            self.run_id,
            len(data.train) + len(data.val) + len(data.test),
            data.class_names,
        )
        path = self.run_dir / name
        with writing(path, "--out"):
            save_checkpoint(state, path)

    def _append_lines(self, metrics: EpochMetrics) -> None:
        if not self._main:
            return
        metrics_path, timing_path = self.run_dir / METRICS, self.run_dir / TIMING
        with writing(metrics_path, "--out"), open(metrics_path, "a") as file:
            file.write(_json_line(asdict(metrics)))
        with writing(timing_path, "--out"), open(timing_path, "a") as file:
            file.write(_timing_line(self.trainer, metrics.epoch))

    def finish(self) -> tuple[list[Path], int | None]:
        """The pictures of the run's final model (best.pt's with --patience, else the last);
        returns the run directory's files and that model's active units (no files and None on a
        replica other than rank 0, which writes none)."""
        if not self._main:
            return [], None
        run_dir, data, config = self.run_dir, self.data, self.config
        vae = self.trainer.vae
        device = next(vae.parameters()).device
        kept = [CHECKPOINT]
        if config.train.patience is not None and (run_dir / BEST).is_file():
            vae = load_checkpoint(run_dir / BEST, device).build_vae(device)
            kept.append(BEST)
        labelled = vae.labelled  # its networks read the classes: give them the data's
        active = active_units(vae, data.val.stored, labels=data.val.labels if labelled else None)
        shown = slice(0, NUM_RECONSTRUCTIONS)
        pictures = [
            save_reconstructions(
                vae,
                data.test.rows(shown),
                data.image_shape,
                run_dir / RECONSTRUCTIONS,
                data.test.labels[shown] if labelled else None,
            ),
            save_samples(
                vae,
                data.image_shape,
                run_dir / SAMPLES,
                _samples(vae),
                config.train.seed,
                class_names=data.class_names,
            ),
            plots.save_elbo_curve(self.trainer.history, run_dir / ELBO_CURVE),
        ]
        events = sorted(run_dir.glob("events.out.tfevents.*")) if self._board is not None else []
        files = [run_dir / name for name in (*kept, CONFIG, METRICS, TIMING)] + events + pictures
        return files, active


def _samples(vae: VAE) -> int:
    """Images in the run's samples picture: 64, or 8 a class for a model that reads labels."""
    return 8 * vae.num_classes if vae.labelled else NUM_SAMPLES


def write_atomically(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with writing(path, "--out"):
        tmp.write_text(text)
        os.replace(tmp, path)


def _timing_line(trainer: Trainer, epoch: int) -> str:
    """Seconds of an epoch's steps, and of its validation ELBO where known."""
    values = {"epoch": epoch, "seconds": trainer.epoch_seconds[epoch - 1]}
    if len(trainer.validation_seconds) == len(trainer.epoch_seconds):
        values["validation_seconds"] = trainer.validation_seconds[epoch - 1]
    return _json_line(values)


def _json_line(values: Mapping[str, Any]) -> str:
    return json.dumps(values) + "\n"
