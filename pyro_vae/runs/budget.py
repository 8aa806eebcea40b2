"""What a training run will ask of the machine, checked before it starts.

A model too large for memory would otherwise fail deep inside torch's allocator (or, worse, be
killed by the kernel minutes later), and a step with a hundred thousand samples of z would run for
minutes with nothing on the screen. Both are known from the configuration alone: the parameters
from the layer sizes, a step's work from the batch, the particles and the layers.
"""

import itertools
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from math import prod

import torch

from pyro_vae.core.config import RunConfig
from pyro_vae.core.errors import UserInputError
from pyro_vae.models.build import MODELS
from pyro_vae.components.guides import guide_size
from pyro_vae.components.networks import as_data_shape, conv_grid, default_hidden_dims

log = logging.getLogger(__name__)

BYTES_PER_PARAMETER = 4 * 4  # float32 weight, its gradient, and Adam's two moments
SLOW_STEP_FLOP = 5e10  # a second or more a step on a few CPU cores (~100× an MNIST step)


def check_budget(config: RunConfig, image_shape: tuple[int, ...], device: torch.device) -> None:
    """Refuse a run whose parameters or one step's activations cannot fit in ``device``'s memory,
    and log a note when one step is a lot of work."""
    model, train = config.model, config.train
    data_shape = as_data_shape(image_shape)
    data_dim = prod(data_shape)
    output_dim, guide_parameters = guide_size(model.guide, model.latent_dim, model.guide_options)
    cost = network_cost(model.network, data_shape, model.latent_dim, model.hidden_dims, output_dim)
    parameters = cost.parameters + guide_parameters  # a flow's own
    # M2 decodes every image once per class (the enumerated y) beside a labelled batch, and a
    # classifier q(y|x) is one more encoder.
    model_class = MODELS[model.kind]
    copies = model_class.decodes_per_image(model.num_classes)
    if model_class.classifies:
        classifier = network_cost(
            model.network, data_shape, model.latent_dim, model.hidden_dims, model.num_classes
        )
        parameters += classifier.encoder_parameters
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
    rows = train.batch_size * train.num_particles * copies
    activations = 4 * (
        2 * train.batch_size * copies * cost.encoder_activations  # values and gradients
        + 4 * rows * cost.decoder_activations  # ... and the likelihood's terms
    )
    if memory is not None and need + activations > memory:
        classes = f" × {copies} (every class, and a labelled batch)" if copies > 1 else ""
        raise UserInputError(
            f"one step decodes {rows:,} samples of z ({train.batch_size} images × "
            f"{train.num_particles} particles{classes}), about {_gb(activations)} of "
            f"activations, more than the {_gb(memory)} of this {device.type}: lower "
            "--num-particles or --batch-size"
        )
    # forward and backward: about three times the forward's multiply-adds, two FLOP each
    flop = 3 * (train.batch_size * copies * cost.encoder_flop + rows * cost.decoder_flop)
    if flop > SLOW_STEP_FLOP:
        log.warning(
            "each step computes about %.0f GFLOP (%s images × %s particles through the "
            "decoder): expect slow steps, seconds or more each on a CPU",
            flop / 1e9,
            f"{train.batch_size:,}",
            f"{train.num_particles:,}",
        )


@dataclass(frozen=True)
class NetworkCost:
    parameters: int  # of the encoder and the decoder
    encoder_parameters: int
    encoder_flop: float  # FLOP of one image's forward pass (two per multiply-add)
    decoder_flop: float
    encoder_activations: int  # values every layer outputs, for one image
    decoder_activations: int


def network_cost(
    network: str,
    data_shape: Sequence[int],
    latent_dim: int,
    hidden_dims: Sequence[int] | None,
    output_dim: int | None = None,
) -> NetworkCost:
    """What the registered networks cost, from their layer sizes (building them, or a forward
    pass on torch's meta device, would take a second of a run's start), the encoder giving
    ``output_dim`` values (None: 2·latent_dim, the diagonal guide's). A network registered by a
    user is not known here: zero, so that nothing is refused on a guess. The guide family's own
    layers (a flow's) are counted by the caller, from the family itself."""
    widths = list(default_hidden_dims(network) if hidden_dims is None else hidden_dims)
    data_dim = prod(data_shape)
    output_dim = output_dim or 2 * latent_dim
    if network == "mlp":
        encoder = _linear([data_dim, *widths, output_dim])
        decoder = _linear([latent_dim, *reversed(widths), data_dim])
    elif network == "conv":
        channels, _, _ = data_shape
        grid_h, grid_w = conv_grid(data_shape, len(widths))
        # Stage by stage at the padded sizes: a 4×4 kernel costs 16 multiply-adds per input
        # channel, output channel and output pixel (a transposed one, per input pixel).
        grid, depth = grid_h * grid_w, len(widths)
        flat = widths[-1] * grid
        encoder = [
            (16 * n_in * n_out + n_out, 16 * n_in * n_out * pixels, n_out * pixels)
            for (n_in, n_out), pixels in zip(
                itertools.pairwise([channels, *widths]),
                (grid * 4 ** (depth - 1 - k) for k in range(depth)),
                strict=True,
            )
        ] + _linear([flat, output_dim])
        decoder = _linear([latent_dim, flat]) + [
            (16 * n_in * n_out + n_out, 16 * n_in * n_out * pixels, n_out * pixels * 4)
            for (n_in, n_out), pixels in zip(
                itertools.pairwise([*reversed(widths), channels]),
                (grid * 4**k for k in range(depth)),
                strict=True,
            )
        ]
    else:
        return NetworkCost(0, 0, 0.0, 0.0, 0, 0)
    parameters = sum(p for p, _, _ in encoder + decoder)
    return NetworkCost(
        parameters,
        sum(p for p, _, _ in encoder),
        2.0 * sum(m for _, m, _ in encoder),
        2.0 * sum(m for _, m, _ in decoder),
        sum(v for _, _, v in encoder),
        sum(v for _, _, v in decoder),
    )


def _linear(sizes: list[int]) -> list[tuple[int, int, int]]:
    """(parameters, multiply-adds, output values) of each linear layer ``sizes[i] -> [i+1]``."""
    return [((n_in + 1) * n_out, n_in * n_out, n_out) for n_in, n_out in itertools.pairwise(sizes)]


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
