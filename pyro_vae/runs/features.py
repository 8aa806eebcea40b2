"""M1+M2's M1: the trained VAE run that ``pyro-vae train --model m2 --features RUN`` reads.

Its settings go into the new run's model configuration and its weights into the new model
(models/stacked.py), so an M1+M2 run needs RUN only to start: resuming, evaluating and drawing
it read its own checkpoint.
"""

import logging
from dataclasses import asdict, replace
from pathlib import Path

from pyro_vae.core.config import RunConfig
from pyro_vae.core.errors import UserInputError
from pyro_vae.data.datasets import Dataset
from pyro_vae.models.vae import VAE
from pyro_vae.runs.checkpoint import Checkpoint, load_checkpoint
from pyro_vae.runs.trained import model_file

log = logging.getLogger(__name__)


def load_features(config: RunConfig, data: Dataset) -> tuple[RunConfig, Checkpoint | None]:
    """``config`` with M1's settings in ``model.m1`` and the run's absolute path in
    ``train.features``, and M1's checkpoint (its best model where it kept one); ``config`` as
    it is and None where it names no M1. Refuses an M1 that is not a VAE of these images."""
    if config.train.features is None:
        if config.model.m1 is not None:  # a config file's M1 without the run that holds its weights
            raise UserInputError(
                "`m1` (M1's settings) comes with `features` RUN, the VAE run that holds its "
                "weights: give --features RUN, or drop `m1` from the configuration"
            )
        return config, None
    run = Path(config.train.features).expanduser().absolute()
    if not run.exists():
        raise UserInputError(
            f"--features {run} does not exist: give the folder of a trained VAE run (M1), "
            "trained with --model vae on the same images"
        )
    m1 = load_checkpoint(model_file(run))
    if m1.config.model.kind != "vae":
        raise UserInputError(
            f"--features {run} was trained with --model {m1.config.model.kind}: M1 is a VAE "
            "of the images alone, trained with --model vae"
        )
    if tuple(m1.image_shape) != tuple(data.image_shape):
        raise UserInputError(
            f"--features {run} was trained on images of shape {tuple(m1.image_shape)}, and "
            f"these data are {tuple(data.image_shape)}: give the data M1 was trained on"
        )
    for name in ("dataset", "binarize"):
        ours, theirs = getattr(config.data, name), getattr(m1.config.data, name)
        if ours != theirs:
            log.warning(
                "M1 (%s) was trained with %s %s, this run's data are %s %s: its codes of "
                "these images may be poor",
                run, name, theirs, name, ours,
            )  # fmt: skip
    return (
        replace(
            config,
            model=replace(config.model, m1=asdict(m1.config.model)),
            train=replace(config.train, features=str(run)),
        ),
        m1,
    )


def load_m1_weights(vae: VAE, m1: Checkpoint | None) -> None:
    """Put M1's trained weights into ``vae``'s copy of M1 (nothing where ``m1`` is None)."""
    if m1 is not None:
        vae.codes.m1.load_state_dict(m1.model_state)
