"""The VAE's two neural networks: the encoder NeuralNet(x; φ) and the decoder NeuralNet(z; θ).

A network is an encoder/decoder pair registered by name in ``NETWORKS``, like the priors and the
likelihoods. Both sides see the data as the Pyro model does, flat: the encoder maps x (..., D) to
the guide's parameters (..., P), P = ``output_dim`` values that the guide family turns into q(z|x)
(components/guides.py: 2·latent_dim for the diagonal Gaussian's μ and log σ², more for richer
families); the decoder maps z (..., latent_dim) to the likelihood's raw parameter (..., D). Both
are told the data's shape (C, H, W), with C·H·W = D, so an image network reshapes where it needs to
(``as_images`` and ``as_vectors`` do it for any leading dimensions). A constructor takes, by name,
what it needs of ``data_shape``, ``latent_dim``, ``output_dim``, ``hidden_dims`` (the encoder's
widths, which the decoder mirrors) and ``label_dim``.

The models that read labels (data/labels.py: the conditional VAE, M2) give both networks the class
as well, one-hot: a network built with ``label_dim`` K > 0 is called ``encoder(x, y)`` and
``decoder(z, y)``, y of shape (..., K), whose leading dimensions broadcast against the data's
(M2 sums over the classes by giving y a dimension of its own, left of the batch).

- ``mlp``: fully connected layers, ``hidden_dims`` units each (Kingma & Welling, 2014).
- ``conv``: strided 4×4 convolutions down, one stage per entry of ``hidden_dims`` (its channels),
  each halving the height and width, then a linear layer to the guide's parameters; the decoder
  mirrors it with transposed convolutions (the DCGAN stack of Radford et al., 2016, without
  batch norm, which would couple the images of a batch and break the ELBO's sum over them).
"""

import inspect
import itertools
import math
from collections.abc import Sequence
from typing import NamedTuple

import torch
from torch import nn
from torch.nn import functional as F

from pyro_vae.core.errors import UserInputError
from pyro_vae.core.registry import build, registered

DataShape = tuple[int, int, int]  # (C, H, W)


# helper functions


def as_data_shape(shape: int | Sequence[int]) -> DataShape:
    """(C, H, W) from D (plain vectors: (1, 1, D)), (H, W) (one channel) or (C, H, W)."""
    dims = (shape,) if isinstance(shape, int) else tuple(int(size) for size in shape)
    if not 1 <= len(dims) <= 3 or min(dims) < 1:
        raise ValueError(f"a data shape is D, (H, W) or (C, H, W), got {shape!r}")
    return (1,) * (3 - len(dims)) + dims  # type: ignore[return-value]


def as_images(x: torch.Tensor, data_shape: Sequence[int]) -> torch.Tensor:
    """(..., D) flat data as (N, C, H, W) images, N the product of the leading dimensions."""
    # N spelt out rather than -1, which an empty batch (a replica's empty shard) leaves undefined
    return x.reshape(math.prod(x.shape[:-1]), *data_shape)


def as_vectors(images: torch.Tensor, leading: Sequence[int]) -> torch.Tensor:
    """(N, C, H, W) images back to (*leading, D)."""
    return images.reshape(*leading, -1)


def with_labels(h: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
    """[h, y] along the last dimension, their leading dimensions broadcast; h if y is None."""
    if y is None:
        return h
    leading = torch.broadcast_shapes(h.shape[:-1], y.shape[:-1])
    return torch.cat([h.expand(*leading, -1), y.to(h.dtype).expand(*leading, -1)], dim=-1)


def linear_with_labels(layer: nn.Linear, h: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
    """``layer(with_labels(h, y))``, computed as ``layer``'s h columns applied to h plus its y
    columns applied to y where y varies along a dimension h does not.

    M2 sums every image's bound over the K classes: y is (K, 1, K) against h's (N, D). The
    concatenation would repeat each image's D inputs K times and multiply each copy by the same
    weights; split, the product over h runs once per image (a K-th of the work) and the classes
    add their columns of the weights, one row per class, by broadcasting. Where h and y have the
    same leading shape (the conditional VAE) nothing would be saved, and the concatenated product
    is kept.
    """
    if y is None:
        return layer(h)
    plain = type(layer) is nn.Linear and not (layer._forward_hooks or layer._forward_pre_hooks)
    if y.shape[:-1] == h.shape[:-1] or not plain:  # a subclass or a hook: the layer's own call
        return layer(with_labels(h, y))
    d = h.shape[-1]
    weight = layer.weight
    return F.linear(h, weight[:, :d], layer.bias) + F.linear(y.to(h.dtype), weight[:, d:])


def mlp_with_labels(net: nn.Sequential, h: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
    """``net(with_labels(h, y))`` for an ``mlp``, its first layer split as in
    ``linear_with_labels``."""
    first, *rest = net
    h = linear_with_labels(first, h, y)
    for layer in rest:
        h = layer(h)
    return h


class LayerCost(NamedTuple):
    """What one layer costs for one data point, so that a run's budget (runs/budget.py) is known
    from the sizes alone, before anything is built."""

    parameters: int
    multiply_adds: int
    outputs: int  # values the layer writes (its activations)


def linear_costs(sizes: Sequence[int]) -> list[LayerCost]:
    """Each linear layer ``sizes[i] -> sizes[i + 1]`` of an MLP."""
    return [
        LayerCost((n_in + 1) * n_out, n_in * n_out, n_out)
        for n_in, n_out in itertools.pairwise(sizes)
    ]


# The networks' nonlinearities (``--activation``), for the mlp and conv pairs alike: ReLU by
# default; tanh is Kingma & Welling's (2014) and Burda et al.'s (2016), to compare with them.
ACTIVATIONS: dict[str, type[nn.Module]] = {"relu": nn.ReLU, "tanh": nn.Tanh}


def mlp(sizes: Sequence[int], activation: str = "relu") -> nn.Sequential:
    """Linear layers ``sizes[0] -> ... -> sizes[-1]``, ``activation`` (a name in
    ``ACTIVATIONS``) between each two, none at the end."""
    nonlinearity = registered(ACTIVATIONS, activation, "activation")
    layers: list[nn.Module] = []
    for i, (n_in, n_out) in enumerate(itertools.pairwise(sizes)):
        if i > 0:
            layers.append(nonlinearity())
        layers.append(nn.Linear(n_in, n_out))
    return nn.Sequential(*layers)


# main classes: fully connected


class Encoder(nn.Module):
    """MLP(x; φ): the guide's parameters, ``output_dim`` of them (default 2·latent_dim: μ and
    log σ² of the diagonal Gaussian); with ``label_dim`` K, MLP([x, y])."""

    recordable = True  # its step is static: see inference/fast/contract.py
    default_hidden_dims = (256, 128)  # units per layer: a minute on the digits with 2 CPU cores

    def __init__(
        self,
        data_shape: Sequence[int],
        hidden_dims: Sequence[int],
        latent_dim: int,
        output_dim: int | None = None,
        label_dim: int = 0,
        activation: str = "relu",
    ):
        super().__init__()
        inputs = math.prod(data_shape) + label_dim
        self.net = mlp([inputs, *hidden_dims, output_dim or 2 * latent_dim], activation)

    def forward(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        return mlp_with_labels(self.net, x, y)  # (..., output_dim)

    @staticmethod
    def layer_costs(
        data_shape: Sequence[int],
        hidden_dims: Sequence[int],
        latent_dim: int,
        output_dim: int | None = None,
        label_dim: int = 0,
    ) -> list[LayerCost]:
        return linear_costs(
            [math.prod(data_shape) + label_dim, *hidden_dims, output_dim or 2 * latent_dim]
        )


class Decoder(nn.Module):
    """x̂ = MLP(z; θ): the raw parameter (mean or logits) of the likelihood p_θ(x|z); with
    ``label_dim`` K, MLP([z, y])."""

    recordable = True  # its step is static: see inference/fast/contract.py

    def __init__(
        self,
        latent_dim: int,
        hidden_dims: Sequence[int],
        data_shape: Sequence[int],
        label_dim: int = 0,
        activation: str = "relu",
    ):
        super().__init__()
        sizes = [latent_dim + label_dim, *reversed(hidden_dims), math.prod(data_shape)]
        self.net = mlp(sizes, activation)

    def forward(self, z: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        return mlp_with_labels(self.net, z, y)  # (..., D)

    @staticmethod
    def layer_costs(
        latent_dim: int, hidden_dims: Sequence[int], data_shape: Sequence[int], label_dim: int = 0
    ) -> list[LayerCost]:
        return linear_costs([latent_dim + label_dim, *reversed(hidden_dims), math.prod(data_shape)])


# main classes: convolutional

KERNEL, STRIDE, PADDING = 4, 2, 1  # each stage halves the height and width exactly


def conv_grid(data_shape: Sequence[int], stages: int) -> tuple[int, int]:
    """The (height, width) the conv stack works on after its ``stages`` halvings.

    Images are padded up to a multiple of 2^stages (the decoder's output cropped back), so any
    size works; but a side shorter than 2^stages would be mostly padding, and is refused.
    """
    channels, height, width = data_shape
    if height == 1 or width == 1:
        raise UserInputError(
            f"`network` conv needs images, but the data are vectors of {channels * height * width}"
            " values with no image shape: use `network` mlp, or save the data as (N, H, W) images"
        )
    if stages == 0:
        raise UserInputError("`network` conv needs at least one stage: give `hidden_dims`")
    side = 2**stages
    if min(height, width) < side:
        most = int(math.log2(min(height, width)))
        raise UserInputError(
            f"images of {height}×{width} are too small for {stages} conv stages (each halves "
            f"them; {stages} need at least {side}×{side}): give at most {most} `hidden_dims`, "
            "or larger images (`image_size`, for a folder of images)"
        )
    return -(-height // side), -(-width // side)  # ceiling division


class ConvEncoder(nn.Module):
    """Linear(Conv(x; φ)): strided convolutions, each halving the image, then the guide's
    ``output_dim`` parameters (default 2·latent_dim); with ``label_dim`` K, Linear([Conv(x), y]),
    so that the convolutions run once per image whatever the classes."""

    recordable = True  # its step is static: see inference/fast/contract.py
    default_hidden_dims = (32, 64)  # channels per stage: 28×28 down to 7×7, as DCGAN VAEs do

    def __init__(
        self,
        data_shape: Sequence[int],
        hidden_dims: Sequence[int],
        latent_dim: int,
        output_dim: int | None = None,
        label_dim: int = 0,
        activation: str = "relu",
    ):
        super().__init__()
        nonlinearity = registered(ACTIVATIONS, activation, "activation")
        self.data_shape = tuple(data_shape)
        channels, height, width = self.data_shape
        grid_h, grid_w = conv_grid(self.data_shape, len(hidden_dims))
        # Zero padding on the bottom and right, up to the grid's multiple of the image size.
        side = 2 ** len(hidden_dims)
        self.padding = (0, grid_w * side - width, 0, grid_h * side - height)
        layers: list[nn.Module] = []
        for n_in, n_out in itertools.pairwise([channels, *hidden_dims]):
            layers += [nn.Conv2d(n_in, n_out, KERNEL, STRIDE, PADDING), nonlinearity()]
        self.conv = nn.Sequential(*layers)
        self.features = hidden_dims[-1] * grid_h * grid_w
        self.out = nn.Linear(self.features + label_dim, output_dim or 2 * latent_dim)

    def forward(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        images = F.pad(as_images(x, self.data_shape), self.padding)  # (N, C, H', W')
        features = self.conv(images).reshape(*x.shape[:-1], self.features)  # (..., F)
        return linear_with_labels(self.out, features, y)  # (..., output_dim)

    @staticmethod
    def layer_costs(
        data_shape: Sequence[int],
        hidden_dims: Sequence[int],
        latent_dim: int,
        output_dim: int | None = None,
        label_dim: int = 0,
    ) -> list[LayerCost]:
        # Stage by stage at the padded sizes: a 4×4 kernel costs 16 multiply-adds per input
        # channel, output channel and output pixel.
        grid_h, grid_w = conv_grid(data_shape, len(hidden_dims))
        grid, depth = grid_h * grid_w, len(hidden_dims)
        pixels = (grid * 4 ** (depth - 1 - k) for k in range(depth))  # each stage's outputs
        stages = [
            LayerCost(16 * n_in * n_out + n_out, 16 * n_in * n_out * area, n_out * area)
            for (n_in, n_out), area in zip(
                itertools.pairwise([data_shape[0], *hidden_dims]), pixels, strict=True
            )
        ]
        features = hidden_dims[-1] * grid + label_dim
        return stages + linear_costs([features, output_dim or 2 * latent_dim])


class ConvDecoder(nn.Module):
    """x̂ = ConvTranspose(Linear(z; θ)): the encoder's stages mirrored, each doubling the image;
    with ``label_dim`` K, ConvTranspose(Linear([z, y]))."""

    recordable = True  # its step is static: see inference/fast/contract.py

    def __init__(
        self,
        latent_dim: int,
        hidden_dims: Sequence[int],
        data_shape: Sequence[int],
        label_dim: int = 0,
        activation: str = "relu",
    ):
        super().__init__()
        nonlinearity = registered(ACTIVATIONS, activation, "activation")
        self.data_shape = tuple(data_shape)
        channels, self.height, self.width = self.data_shape
        self.grid = conv_grid(self.data_shape, len(hidden_dims))  # (h, w)
        widths = list(reversed(hidden_dims))
        self.first = widths[0]
        self.inp = nn.Linear(latent_dim + label_dim, widths[0] * self.grid[0] * self.grid[1])
        layers: list[nn.Module] = [nonlinearity()]
        for n_in, n_out in itertools.pairwise([*widths, channels]):
            layers += [nn.ConvTranspose2d(n_in, n_out, KERNEL, STRIDE, PADDING), nonlinearity()]
        self.deconv = nn.Sequential(*layers[:-1])  # none on the raw parameter

    def forward(self, z: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        inputs = with_labels(z, y)
        n = math.prod(inputs.shape[:-1])
        features = self.inp(inputs).reshape(n, self.first, *self.grid)  # (N, widths[0], h, w)
        images = self.deconv(features)[..., : self.height, : self.width]  # crop the padding
        return as_vectors(images, inputs.shape[:-1])  # (..., D)

    @staticmethod
    def layer_costs(
        latent_dim: int, hidden_dims: Sequence[int], data_shape: Sequence[int], label_dim: int = 0
    ) -> list[LayerCost]:
        # A transposed 4×4 kernel costs 16 multiply-adds per input channel, output channel and
        # input pixel, and writes 4 output pixels per input pixel.
        grid_h, grid_w = conv_grid(data_shape, len(hidden_dims))
        grid, depth = grid_h * grid_w, len(hidden_dims)
        pixels = (grid * 4**k for k in range(depth))  # each stage's inputs
        widths = [*reversed(hidden_dims), data_shape[0]]
        return linear_costs([latent_dim + label_dim, widths[0] * grid]) + [
            LayerCost(16 * n_in * n_out + n_out, 16 * n_in * n_out * area, n_out * area * 4)
            for (n_in, n_out), area in zip(itertools.pairwise(widths), pixels, strict=True)
        ]


# the registry

# name -> (encoder class, decoder class). A constructor takes by name what it needs of
# ``data_shape``, ``latent_dim``, ``output_dim``, ``hidden_dims`` and ``label_dim`` (a pair
# without ``label_dim`` serves the unlabelled VAE only); an encoder class may carry
# ``default_hidden_dims``, the widths used when none are given, and each class a static
# ``layer_costs`` taking the constructor's arguments (the budget measures a pair without one).
NETWORKS: dict[str, tuple[type[nn.Module], type[nn.Module]]] = {
    "mlp": (Encoder, Decoder),
    "conv": (ConvEncoder, ConvDecoder),
}


def default_hidden_dims(network: str) -> tuple[int, ...]:
    """The widths the network registered as ``network`` uses when none are given."""
    encoder_class = registered(NETWORKS, network, "network")[0]
    return tuple(getattr(encoder_class, "default_hidden_dims", Encoder.default_hidden_dims))


def build_networks(
    network: str,
    data_shape: Sequence[int],
    latent_dim: int,
    hidden_dims: Sequence[int] | None = None,
    output_dim: int | None = None,
    label_dim: int = 0,
    activation: str = "relu",
) -> tuple[nn.Module, nn.Module]:
    """The encoder and decoder registered as ``network``, for data of ``data_shape`` (C, H, W);
    ``hidden_dims`` None takes the network's default widths; the encoder outputs ``output_dim``
    values (None: 2·latent_dim, the diagonal guide's); with ``label_dim`` K > 0 both also read
    a one-hot class; ``activation`` names their nonlinearity (``ACTIVATIONS``)."""
    context = _context(
        network, data_shape, latent_dim, hidden_dims, output_dim or 2 * latent_dim, activation
    )
    encoder_class, decoder_class = registered(NETWORKS, network, "network")
    if label_dim:
        for cls in (encoder_class, decoder_class):
            if "label_dim" not in inspect.signature(cls).parameters:
                raise UserInputError(
                    f"the {network} network's {cls.__name__} takes no labels (no label_dim): "
                    "use `network` mlp or conv with a model that reads labels"
                )
        context["label_dim"] = label_dim
    _check_activation(network, activation, encoder_class, decoder_class)
    return (
        build({network: encoder_class}, network, "encoder", context=context),
        build({network: decoder_class}, network, "decoder", context=context),
    )


def build_classifier(
    network: str,
    data_shape: Sequence[int],
    latent_dim: int,
    hidden_dims: Sequence[int] | None,
    num_classes: int,
    activation: str = "relu",
) -> nn.Module:
    """The encoder registered as ``network`` with ``num_classes`` outputs, the logits of a
    classifier q(y | x) (M2's, models/m2.py)."""
    context = _context(network, data_shape, latent_dim, hidden_dims, num_classes, activation)
    encoder_class = registered(NETWORKS, network, "network")[0]
    _check_activation(network, activation, encoder_class)
    return build({network: encoder_class}, network, "encoder", context=context)


def _check_activation(network: str, activation: str, *classes: type) -> None:
    """A nonlinearity other than the default is refused by a network that cannot take one (a
    user's own), rather than ignored."""
    if activation == "relu":
        return
    for cls in classes:
        if "activation" not in inspect.signature(cls).parameters:
            raise UserInputError(
                f"the {network} network's {cls.__name__} takes no activation: leave "
                "`activation` at relu, or give the class an `activation` parameter"
            )


def _context(
    network: str,
    data_shape: Sequence[int],
    latent_dim: int,
    hidden_dims: Sequence[int] | None,
    output_dim: int,
    activation: str = "relu",
) -> dict:
    """What a network's constructor may take by name; ``hidden_dims`` None: the default widths;
    ``activation`` only where it is not the default, so that a user's network without one
    still builds."""
    widths = default_hidden_dims(network) if hidden_dims is None else tuple(hidden_dims)
    context = {
        "data_shape": tuple(data_shape),
        "latent_dim": latent_dim,
        "hidden_dims": widths,
        "output_dim": output_dim,
    }
    if activation != "relu":
        registered(ACTIVATIONS, activation, "activation")
        context["activation"] = activation
    return context
