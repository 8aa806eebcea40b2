"""What a training run will ask of the machine, checked before it starts.

A model too large for memory would otherwise fail deep inside torch's allocator (or, worse, be
killed by the kernel minutes later), and a step with a hundred thousand samples of z would run for
minutes with nothing on the screen. Both are known from the configuration alone: the parameters
from the layer sizes, a step's work from the batch, the particles and the layers.
"""

import itertools
import logging
import os
from math import prod

import torch

from pyro_vae.config import RunConfig
from pyro_vae.errors import UserInputError

log = logging.getLogger(__name__)

BYTES_PER_PARAMETER = 4 * 4  # float32 weight, its gradient, and Adam's two moments
SLOW_STEP_FLOP = 5e10  # a second or more a step on a few CPU cores (~100× an MNIST step)


def check_budget(config: RunConfig, image_shape: tuple[int, ...], device: torch.device) -> None:
    """Refuse a run whose parameters or one step's activations cannot fit in ``device``'s memory,
    and log a note when one step is a lot of work."""
    data_dim = prod(image_shape)
    model, train = config.model, config.train
    encoder = _layers([data_dim, *model.hidden_dims, 2 * model.latent_dim])
    decoder = _layers([model.latent_dim, *reversed(model.hidden_dims), data_dim])
    parameters = sum((n_in + 1) * n_out for n_in, n_out in encoder + decoder)
    # A mixture prior's components: at most a pseudo-input or a mean and scale, and a weight each.
    components = int(model.prior_options.get("num_components", 0))
    parameters += components * (data_dim + 2 * model.latent_dim + 1)
    memory = _memory_bytes(device)
    need = parameters * BYTES_PER_PARAMETER
    if memory is not None and need > memory:
        raise UserInputError(
            f"a VAE of these sizes has {parameters:,} parameters, about {_gb(need)} with their "
            f"gradients and Adam's state, more than the {_gb(memory)} of this {device.type}: "
            "lower --hidden-dims (or --latent-dim, or --components)"
        )
    # One step: the encoder on the batch, the decoder on every particle of every image.
    rows = train.batch_size * train.num_particles
    decoder_units = model.latent_dim + sum(n_out for _, n_out in decoder)
    activations = 4 * 4 * rows * decoder_units  # values, gradients and the likelihood's terms
    if memory is not None and need + activations > memory:
        raise UserInputError(
            f"one step decodes {rows:,} samples of z ({train.batch_size} images × "
            f"{train.num_particles} particles), about {_gb(activations)} of activations, more "
            f"than the {_gb(memory)} of this {device.type}: lower --num-particles or --batch-size"
        )
    flop = 6 * (
        train.batch_size * sum(a * b for a, b in encoder) + rows * sum(a * b for a, b in decoder)
    )
    if flop > SLOW_STEP_FLOP:
        log.warning(
            "each step computes about %.0f GFLOP (%s images × %s particles through the "
            "decoder): expect slow steps, seconds or more each on a CPU",
            flop / 1e9,
            f"{train.batch_size:,}",
            f"{train.num_particles:,}",
        )


def _layers(sizes: list[int]) -> list[tuple[int, int]]:
    return list(itertools.pairwise(sizes))


def _memory_bytes(device: torch.device) -> int | None:
    """The device's memory: a GPU's own, or this machine's physical memory; None if unknown."""
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).total_memory
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):  # not on every platform
        return None


def _gb(size: float) -> str:
    return f"{size / 2**30:,.1f} GiB"
