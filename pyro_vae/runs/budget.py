"""What a training run will ask of the machine, checked before it starts.

A model too large for memory would otherwise fail deep inside torch's allocator (or, worse, be
killed by the kernel minutes later), and a step with a hundred thousand samples of z would run for
minutes with nothing on the screen. Both are known from the configuration alone: the parameters
from the layer sizes (each network says what its layers cost), a step's work from the batch, the
particles and the layers.
"""

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from math import prod
from typing import Any

import torch
from torch import nn

from pyro_vae.components.guides import guide_size
from pyro_vae.components.networks import (
    NETWORKS,
    as_data_shape,
    build_networks,
    default_hidden_dims,
)
from pyro_vae.core.config import RunConfig
from pyro_vae.core.errors import UserInputError
from pyro_vae.core.registry import accepted, registered
from pyro_vae.models.build import MODELS

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
            "lower `hidden_dims` (or `latent_dim`, or `prior_options.num_components`)"
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
            "`num_particles` or `batch_size`"
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
    """What the networks registered as ``network`` cost, the encoder giving ``output_dim``
    values (None: 2·latent_dim, the diagonal guide's). Each built-in network class says so
    from its sizes (``layer_costs``: building them, or a pass on torch's meta device, takes a
    second of a run's start); a pair of the user's without it is measured on the meta device.
    The guide family's own layers (a flow's) are counted by the caller, from the family."""
    context = {
        "data_shape": tuple(data_shape),
        "latent_dim": latent_dim,
        "hidden_dims": default_hidden_dims(network) if hidden_dims is None else tuple(hidden_dims),
        "output_dim": output_dim or 2 * latent_dim,
    }
    classes = registered(NETWORKS, network, "network")
    if not all(hasattr(cls, "layer_costs") for cls in classes):
        try:
            return _measured(network, context)
        except Exception as error:  # a network that reads its tensors' values, say: no guess
            log.info("the %s networks' cost is not known (%s): not checked", network, error)
            return NetworkCost(0, 0, 0.0, 0.0, 0, 0)
    encoder, decoder = (cls.layer_costs(**accepted(cls.layer_costs, context)) for cls in classes)
    return NetworkCost(
        sum(layer.parameters for layer in encoder + decoder),
        sum(layer.parameters for layer in encoder),
        2.0 * sum(layer.multiply_adds for layer in encoder),
        2.0 * sum(layer.multiply_adds for layer in decoder),
        sum(layer.outputs for layer in encoder),
        sum(layer.outputs for layer in decoder),
    )


def _measured(network: str, context: dict[str, Any]) -> NetworkCost:
    """A user's networks, built on the meta device (no memory, no arithmetic) and run on one
    data point there: their parameters, FLOP and activations as torch counts them."""
    with torch.device("meta"):
        encoder, decoder = build_networks(network, **context)
    encoder_cost = _measure(encoder, prod(context["data_shape"]))
    decoder_cost = _measure(decoder, context["latent_dim"])
    measured = [encoder_cost, decoder_cost]
    (enc_p, enc_flop, enc_out), (dec_p, dec_flop, dec_out) = measured
    return NetworkCost(enc_p + dec_p, enc_p, enc_flop, dec_flop, enc_out, dec_out)


def _measure(net: nn.Module, width: int) -> tuple[int, float, int]:
    """(parameters, FLOP, values its layers output) of ``net`` on one meta row of ``width``."""
    from torch.utils.flop_counter import FlopCounterMode  # a second to import: only here

    outputs = [0]

    def count(module: nn.Module, inputs: Any, output: Any) -> None:
        if isinstance(output, torch.Tensor):
            outputs[0] += output.numel()

    leaves = [m for m in net.modules() if not list(m.children())]
    hooks = [leaf.register_forward_hook(count) for leaf in leaves]
    try:
        with FlopCounterMode(display=False) as counter, torch.no_grad():
            net(torch.zeros(1, width, device="meta"))
    finally:
        for hook in hooks:
            hook.remove()
    parameters = sum(p.numel() for p in net.parameters())
    return parameters, float(counter.get_total_flops()), outputs[0]


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
