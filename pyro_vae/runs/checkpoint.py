"""Self-describing checkpoints: the run's configuration travels with the weights.

A checkpoint holds the ``RunConfig``, the image shape, the VAE's ``state_dict``, the trainer's
state (optimizer, history, the epoch in progress) and the random number generators' states, so
``load_checkpoint(path).build_vae()`` rebuilds the model with no other input and a resumed run
continues exactly as if it had never stopped. Files are written atomically: a reader, or a crash
half-way (SIGKILL included), finds the previous complete checkpoint or the new one, never a mix.
"""

import json
import logging
import os
import platform
import random
import shlex
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyro
import torch

from pyro_vae.components.networks import as_data_shape
from pyro_vae.core.config import RunConfig
from pyro_vae.core.errors import UserInputError
from pyro_vae.core.version import __version__
from pyro_vae.models.build import build_model
from pyro_vae.models.vae import VAE
from pyro_vae.runs.rundir import (
    BEST,
    CHECKPOINT,
    CONFIG,
    LOCK,
    RUN_FILES,
    check_unlocked,
    check_writable,
    is_run_dir,
    run_files,
)

log = logging.getLogger(__name__)

# Bump when the layout changes; older readers refuse newer files. 5: M2's alpha per labelled image;
# 6: the model's `activation` (a key an older ModelConfig would not know).
FORMAT_VERSION = 6
# 2: the trainer state holds a learning-rate schedule and early stopping; metrics gained keys
# 3: image_shape is (C, H, W); the model config names its network; the data config image options
# 4: the model config names its guide family and the family's options


def environment() -> dict[str, str]:
    """The versions a run depends on, recorded with its results."""

    return {
        "pyro_vae": __version__,
        "python": platform.python_version(),
        "torch": str(torch.__version__),  # a TorchVersion, which weights_only loading refuses
        "pyro": pyro.__version__,
    }


@dataclass
class Checkpoint:
    config: RunConfig
    image_shape: tuple[int, int, int]  # (C, H, W); a run saved before colour held (H, W)
    model_state: dict[str, torch.Tensor]
    trainer_state: dict[str, Any]  # see Trainer.state_dict: optimizer, history, epoch in progress
    rng_state: dict[str, Any] | None = None  # see capture_rng_state
    run_id: str | None = None  # the run directory's identity, shared with its config.json
    # Images in the run's data, all splits: a folder that has gained or lost images since would
    # split differently (test images among the training ones); None before it was recorded.
    num_images: int | None = None
    # The classes' names where the data name them (an image folder's subfolders), for pictures.
    class_names: tuple[str, ...] = ()
    format_version: int = 0  # the file's; 0 for one built in memory, never read from a file

    def build_vae(self, device: torch.device | str = "cpu") -> VAE:
        """The trained VAE, on ``device``."""
        vae = build_model(self.config.model, self.image_shape)
        try:
            vae.load_state_dict(self.model_state)
        except RuntimeError as error:  # missing, unexpected or mis-shaped weights
            raise UserInputError(
                f"the checkpoint's weights do not fit its own configuration ({error}): "
                "it was edited or damaged; train again"
            ) from None
        return vae.to(device)


def capture_rng_state() -> dict[str, Any]:
    """The states of every generator a run draws from: torch (CPU and CUDA), numpy, random.

    Pyro samples from torch's generator. Everything is kept as tensors and plain Python values,
    which ``torch.load(weights_only=True)`` accepts.
    """
    _, keys, position, has_gauss, cached_gaussian = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": [torch.from_numpy(keys.astype(np.int64)), position, has_gauss, cached_gaussian],
        "python": random.getstate(),
    }


def restore_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"].cpu())
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])
    keys, position, has_gauss, cached_gaussian = state["numpy"]
    np.random.set_state(
        ("MT19937", keys.numpy().astype(np.uint32), position, has_gauss, cached_gaussian)
    )
    random.setstate(state["python"])


def save_checkpoint(checkpoint: Checkpoint, path: Path) -> None:
    """Write ``checkpoint`` to ``path`` atomically: a temporary file, fsync, then rename."""
    payload = {
        "format_version": FORMAT_VERSION,
        "environment": environment(),
        "config": checkpoint.config.to_dict(),
        "image_shape": list(checkpoint.image_shape),
        "model_state": checkpoint.model_state,
        "trainer_state": checkpoint.trainer_state,
        "rng_state": checkpoint.rng_state,
        "run_id": checkpoint.run_id,
        "num_images": checkpoint.num_images,
        "class_names": list(checkpoint.class_names),
    }
    path = Path(path)
    # The temporary file lives in the same folder, so the final rename never crosses file systems.
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as file:
            torch.save(payload, file)
            file.flush()
            os.fsync(file.fileno())
        os.replace(tmp_name, path)  # atomic: the old checkpoint stays whole until this instant
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)  # make the rename itself durable
    finally:
        os.close(directory)


def _first_command(run_dir: Path) -> str:
    """The command that started the run in ``run_dir``, as its config.json recorded it."""
    try:
        command = json.loads((run_dir / CONFIG).read_text()).get("command")
    except (OSError, ValueError, AttributeError):
        command = None
    if isinstance(command, list) and command[1:2] == ["train"] and "--resume" not in command:
        return "with the command that started it: pyro-vae " + shlex.join(map(str, command[1:]))
    return "with the same 'pyro-vae train' command"


def load_checkpoint(path: Path, device: torch.device | str = "cpu") -> Checkpoint:
    """Read a checkpoint written by ``save_checkpoint``; tensors are mapped onto ``device``.

    Accepts the checkpoint file or the run directory that holds ``checkpoint.pt``.
    """
    path = Path(path)
    if path.is_dir():
        path = path / "checkpoint.pt"
    if not path.is_file():
        # a run's record, but it never got as far as a checkpoint
        if path.name in (CHECKPOINT, BEST) and is_run_dir(path.parent):
            raise UserInputError(
                f"{path.parent} holds a run that stopped before its first checkpoint, so there "
                "is nothing to resume or read: train it again into the same folder (its files "
                f"are replaced), {_first_command(path.parent)}"
            )
        raise UserInputError(
            f"no checkpoint at {path}: give a run directory written by 'pyro-vae train'"
        )
    try:
        # weights_only: a checkpoint is data (tensors, numbers, strings), never code to execute.
        payload = torch.load(path, map_location=device, weights_only=True)
    except Exception as error:  # torch raises many types for a damaged file; all mean the same
        raise UserInputError(
            f"{path} is not a readable checkpoint ({type(error).__name__}): it is damaged or "
            "was not written by pyro-vae; train again or restore it"
        ) from error
    if not isinstance(payload, dict) or "format_version" not in payload:
        raise UserInputError(f"{path} is not a pyro-vae checkpoint")
    if not isinstance(payload["format_version"], int):
        raise UserInputError(f"{path} is not a pyro-vae checkpoint (its format is not a number)")
    if payload["format_version"] > FORMAT_VERSION:
        raise UserInputError(
            f"{path} has checkpoint format {payload['format_version']}, newer than this "
            f"pyro-vae reads ({FORMAT_VERSION}): upgrade pyro-vae"
        )
    weights = payload.get("model_state")
    if isinstance(weights, dict) and not all(
        bool(torch.isfinite(t).all()) for t in weights.values() if isinstance(t, torch.Tensor)
    ):
        raise UserInputError(
            f"{path} holds weights that are not finite numbers: it was edited or damaged; "
            "train again"
        )
    try:
        return Checkpoint(
            config=RunConfig.from_dict(_upgraded(payload["config"], payload["format_version"])),
            image_shape=as_data_shape(payload["image_shape"]),
            model_state=payload["model_state"],
            trainer_state=payload["trainer_state"],
            rng_state=payload.get("rng_state"),
            run_id=payload.get("run_id"),
            num_images=payload.get("num_images"),
            class_names=tuple(str(name) for name in payload.get("class_names") or ()),
            format_version=payload["format_version"],
        )
    except (KeyError, TypeError, ValueError) as error:
        raise UserInputError(f"{path} is an incomplete pyro-vae checkpoint ({error})") from error


def check_run_dir(run_dir: Path, overwrite: bool) -> None:
    """Refuse ``run_dir`` as a new run's output unless it can be used without losing anything.

    A missing or empty folder is fine, and so is a run's folder holding only what a run wrote
    before its first checkpoint (a run that failed or was killed early: nothing to resume). A run's
    folder with a checkpoint needs ``overwrite``, which replaces that run's files and only those.
    A folder of the user's may hold other files, but none that a run would write over (a
    ``config.json`` of theirs, say), ``overwrite`` or not. Also refuses a folder being trained.
    """
    if run_dir.exists() and not run_dir.is_dir():
        raise UserInputError(
            f"{run_dir} is a file: choose a directory for the run's output (--out)"
        )
    check_writable(run_dir, "--out")
    if not run_dir.is_dir():
        return
    check_unlocked(run_dir)
    ours = run_files(run_dir)
    if not is_run_dir(run_dir):
        clashes = sorted(
            path.name for path in run_dir.iterdir() if path.name in RUN_FILES and path.name != LOCK
        )
        if clashes:
            raise UserInputError(
                f"{run_dir} holds files of yours that a run would write over ({', '.join(clashes)})"
                ": choose a new --out"
            )
        return
    has_checkpoint = (run_dir / CHECKPOINT).is_file()
    if has_checkpoint and not overwrite:
        try:
            load_checkpoint(run_dir)
        except UserInputError:
            raise UserInputError(
                f"{run_dir} holds a checkpoint that cannot be read: replace the run in it "
                "(--overwrite), or choose a new --out"
            ) from None
        raise UserInputError(
            f"{run_dir} holds a trained run: continue it (--resume {run_dir}), replace it "
            "(--overwrite), or choose a new --out"
        )
    if ours and not overwrite:
        log.warning(
            "%s holds no checkpoint, only the files of a run that stopped before its first "
            "save: reusing it",
            run_dir,
        )


def _upgraded(config: dict[str, Any], version: int) -> dict[str, Any]:
    """A stored configuration in today's terms. Before format 5, M2's ``alpha`` weighed the
    labelled images' mean log q(y|x); it now weighs each one's (the same weight / ``labels``).
    An unset one meant the paper's, which needs the training images' number: resuming such a
    run sets it (runs/runner.py)."""
    train = config.get("train") if isinstance(config, dict) else None
    if version >= 5 or not isinstance(train, dict):
        return config
    alpha, labels = train.get("alpha"), train.get("labels")
    if isinstance(alpha, int | float) and isinstance(labels, int) and labels > 0:
        config = {**config, "train": {**train, "alpha": alpha / labels}}
    return config
