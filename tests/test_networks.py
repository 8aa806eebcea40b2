"""Every encoder/decoder pair in ``NETWORKS``, at every image size it promises, and a user's own."""

import dataclasses
import math

import pyro
import pytest
import torch
from pyro.infer import SVI, Trace_ELBO
from pyro.optim import Adam
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from pyro_vae import VAE, make_elbo
from pyro_vae.components.guides import diagonal_parameters
from pyro_vae.components.networks import (
    NETWORKS,
    Decoder,
    Encoder,
    build_networks,
    default_hidden_dims,
    mlp,
)
from pyro_vae.core.errors import UserInputError
from pyro_vae.runs.budget import network_cost
from tests.test_recorded import assert_identical, eager_and_recorded

# (C, H, W): MNIST's, CIFAR's, a 64×64 colour one, the digits', and sizes no power of two divides
SHAPES = [(1, 28, 28), (3, 32, 32), (3, 64, 64), (1, 8, 8), (1, 9, 13), (3, 21, 10), (1, 1, 30)]


def widths(network: str, shape: tuple[int, int, int]) -> tuple[int, ...]:
    return (8,) if network == "conv" and min(shape[1:]) < 16 else (8, 16)


def fits(network: str, shape: tuple[int, int, int]) -> bool:
    return network != "conv" or min(shape[1:]) >= 2 ** len(widths(network, shape))


@pytest.mark.parametrize(
    ("network", "shape"),
    [(n, s) for n in NETWORKS for s in SHAPES if fits(n, s)],  # conv refuses vectors (below)
    ids=str,
)
def test_networks_map_data_to_the_guide_and_codes_to_the_data(network, shape):
    latent, data_dim = 5, math.prod(shape)
    encoder, decoder = build_networks(network, shape, latent, widths(network, shape))
    x = torch.rand(4, 3, data_dim)  # leading dimensions of any number, as Pyro's plates give
    loc, scale = diagonal_parameters(encoder(x))
    assert loc.shape == scale.shape == (4, 3, latent) and bool((scale > 0).all())
    assert decoder(torch.randn(2, 4, 3, latent)).shape == (2, 4, 3, data_dim)
    # each image its own: changing one image changes its code only (no batch norm, no mixing)
    x2 = x.clone()
    x2[0, 0] += 1.0
    loc2, _ = diagonal_parameters(encoder(x2))
    assert not torch.equal(loc2[0, 0], loc[0, 0])
    torch.testing.assert_close(loc2[1:], loc[1:])


@pytest.mark.parametrize("shape", [(1, 28, 28), (3, 32, 32), (1, 9, 13)], ids=str)
def test_the_conv_decoder_reaches_every_pixel_and_channel(shape):
    """Padding and cropping lose nothing: every output value depends on z."""
    _, decoder = build_networks("conv", shape, 4, (8,))
    z = torch.randn(3, 4, requires_grad=True)
    out = decoder(z)  # (3, D): the first and the last value, of the first and the last channel
    for d in (0, out.shape[1] - 1):
        (grad,) = torch.autograd.grad(out[0, d], z, retain_graph=True)
        assert bool(grad[0].abs().sum() > 0) and not bool(grad[1:].any())


@pytest.mark.parametrize(
    ("shape", "hidden", "message"),
    [
        ((1, 1, 30), (8,), "vectors of 30 values with no image shape"),
        ((1, 8, 8), (8, 16, 32, 64), "too small for 4 conv stages"),
        ((3, 12, 40), (8, 16, 32, 64), "give at most 3 hidden_dims"),
        ((1, 28, 28), (), "at least one stage"),
    ],
)
def test_conv_refuses_what_it_cannot_model(shape, hidden, message):
    with pytest.raises(UserInputError, match=message):
        VAE(shape, network="conv", hidden_dims=hidden)


@pytest.mark.parametrize("network", NETWORKS)
@pytest.mark.parametrize("estimator", ["mc", "analytic"])
def test_the_recorded_step_is_the_eager_step_for_every_network(network, estimator):
    torch.manual_seed(0)
    x = torch.rand(16, 3 * 12 * 10).round()
    vae = VAE((3, 12, 10), 3, hidden_dims=(4, 8), network=network, likelihood="bernoulli")
    eager, recorded = eager_and_recorded(vae, make_elbo(estimator), x, seed=3)
    assert_identical(eager, recorded)


def test_mlp_networks_take_tanh_and_keep_the_recorded_step():
    """Burda et al.'s tanh (experiments/importance_weighted.py), passed as modules."""
    torch.manual_seed(0)
    shape, x = (1, 6, 5), torch.rand(16, 30).round()
    encoder = Encoder(shape, (7, 4), 3, activation="tanh")
    decoder = Decoder(3, (7, 4), shape, activation="tanh")
    assert sum(isinstance(m, nn.Tanh) for m in [*encoder.modules(), *decoder.modules()]) == 4
    assert not any(isinstance(m, nn.ReLU) for m in [*encoder.modules(), *decoder.modules()])
    vae = VAE(shape, 3, likelihood="bernoulli", encoder=encoder, decoder=decoder)
    eager, recorded = eager_and_recorded(vae, make_elbo("mc"), x, seed=3)
    assert_identical(eager, recorded)
    with pytest.raises(UserInputError, match="unknown activation 'sigmoid'"):
        mlp([3, 4, 5], "sigmoid")
    with pytest.raises(ValueError, match="give your encoder and decoder their own"):
        VAE(shape, 3, encoder=encoder, decoder=decoder, activation="tanh")


@pytest.mark.parametrize("network", NETWORKS)
def test_every_network_takes_the_activation_it_is_given(network):
    pair = build_networks(network, (1, 8, 8), 3, (8,), activation="tanh")
    modules = [m for net in pair for m in net.modules()]
    assert any(isinstance(m, nn.Tanh) for m in modules)
    assert not any(isinstance(m, nn.ReLU) for m in modules)


def test_a_network_without_an_activation_parameter_refuses_one(monkeypatch):
    class Plain(nn.Module):
        def __init__(self, data_shape, latent_dim, output_dim):
            super().__init__()
            self.net = nn.Linear(math.prod(data_shape), output_dim)

    monkeypatch.setitem(NETWORKS, "plain", (Plain, Plain))
    build_networks("plain", (1, 2, 2), 1, activation="relu")  # the default: nothing to refuse
    with pytest.raises(UserInputError, match="takes no activation"):
        build_networks("plain", (1, 2, 2), 1, activation="tanh")


@pytest.mark.parametrize("network", NETWORKS)
@pytest.mark.parametrize("shape", [(1, 28, 28), (3, 32, 32), (1, 9, 13)], ids=str)
def test_the_budget_counts_parameters_and_flop_as_torch_does(network, shape):
    latent, hidden = 6, widths(network, shape)
    encoder, decoder = build_networks(network, shape, latent, hidden)
    cost = network_cost(network, shape, latent, hidden)
    assert cost.parameters == sum(p.numel() for p in [*encoder.parameters(), *decoder.parameters()])
    for net, width, expected in (
        (encoder, math.prod(shape), cost.encoder_flop),
        (decoder, latent, cost.decoder_flop),
    ):
        with FlopCounterMode(display=False) as counter, torch.no_grad():
            net(torch.zeros(1, width))
        assert counter.get_total_flops() == expected


def test_default_widths_follow_the_network():
    assert default_hidden_dims("mlp") == (256, 128)
    assert default_hidden_dims("conv") == (32, 64)
    vae = VAE((1, 28, 28), network="conv")
    assert [m.out_channels for m in vae.encoder.conv if isinstance(m, nn.Conv2d)] == [32, 64]


# a user's own pair: plain modules, flat data in and out, reshaped where they need images


class TinyEncoder(nn.Module):
    def __init__(self, data_shape, latent_dim):
        super().__init__()
        self.data_shape = data_shape
        self.conv = nn.Conv2d(data_shape[0], 4, 3, padding=1)
        self.out = nn.Linear(4, 2 * latent_dim)

    def forward(self, x):
        images = x.reshape(-1, *self.data_shape)
        features = self.conv(images).mean((2, 3))  # (N, 4)
        loc, log_scale = self.out(features).reshape(*x.shape[:-1], -1).chunk(2, -1)
        return loc, log_scale.exp()


class TinyDecoder(nn.Module):
    def __init__(self, data_shape, latent_dim):
        super().__init__()
        self.net = nn.Linear(latent_dim, math.prod(data_shape))

    def forward(self, z):
        return self.net(z)


def test_a_users_networks_train_with_pyros_own_svi():
    shape = (3, 6, 5)
    vae = VAE(
        shape,
        2,
        encoder=TinyEncoder(shape, 2),
        decoder=TinyDecoder(shape, 2),
        likelihood="bernoulli",
        name="users",
    )
    x = torch.rand(8, math.prod(shape)).round()
    pyro.clear_param_store()
    svi = SVI(vae.model, vae.guide, Adam({"lr": 1e-2}), Trace_ELBO())
    before = vae.encoder.conv.weight.detach().clone()
    losses = [svi.step(x) for _ in range(3)]
    assert all(math.isfinite(loss) for loss in losses)
    assert not torch.equal(before, vae.encoder.conv.weight)


def test_a_users_networks_registered_by_name(monkeypatch):
    monkeypatch.setitem(NETWORKS, "tiny", (TinyEncoder, TinyDecoder))
    vae = VAE((1, 4, 4), 3, network="tiny")
    assert isinstance(vae.encoder, TinyEncoder) and isinstance(vae.decoder, TinyDecoder)


@pytest.mark.parametrize(
    ("encoder", "decoder", "message"),
    [
        (TinyEncoder((1, 4, 4), 3), TinyDecoder((1, 4, 4), 2), r"of \(batch, 2\)"),
        (TinyEncoder((1, 4, 4), 2), TinyDecoder((1, 5, 5), 2), "needs \\(2, 16\\)"),
        (TinyEncoder((1, 4, 4), 2), None, "both an encoder and a decoder"),
    ],
)
def test_networks_of_the_wrong_size_are_named_at_construction(encoder, decoder, message):
    with pytest.raises(ValueError, match=message):
        VAE((1, 4, 4), 2, encoder=encoder, decoder=decoder)


def test_an_unknown_network_is_a_user_error():
    with pytest.raises(UserInputError, match="unknown network 'resnet': choose one of mlp, conv"):
        VAE((1, 8, 8), network="resnet")


def test_the_budget_measures_a_network_that_does_not_say_its_cost(monkeypatch):
    """A user's pair without ``layer_costs`` is built on the meta device and counted there:
    the same numbers the built-in MLP states for itself, never zero."""

    class Plain(nn.Module):  # the MLP's layers, without the MLP's own arithmetic
        def __init__(self, data_shape, hidden_dims, latent_dim, output_dim=None):
            super().__init__()
            self.net = mlp([math.prod(data_shape), *hidden_dims, output_dim or 2 * latent_dim])

        def forward(self, x, y=None):
            return self.net(x)

    class PlainDecoder(nn.Module):
        def __init__(self, latent_dim, hidden_dims, data_shape):
            super().__init__()
            self.net = mlp([latent_dim, *reversed(hidden_dims), math.prod(data_shape)])

        def forward(self, z, y=None):
            return self.net(z)

    monkeypatch.setitem(NETWORKS, "plain", (Plain, PlainDecoder))
    shape, latent, hidden = (1, 8, 8), 3, (16, 8)
    measured = network_cost("plain", shape, latent, hidden)
    stated = network_cost("mlp", shape, latent, hidden)
    assert measured.parameters == stated.parameters > 0
    assert (measured.encoder_flop, measured.decoder_flop) == (
        stated.encoder_flop,
        stated.decoder_flop,
    )


def test_the_activation_option_offers_every_registered_nonlinearity():
    # core/model_config.py spells the choices out: core does not import the components
    from pyro_vae.components.networks import ACTIVATIONS
    from pyro_vae.core.model_config import ModelConfig

    option = dataclasses.fields(ModelConfig)[
        [f.name for f in dataclasses.fields(ModelConfig)].index("activation")
    ].metadata["option"]
    assert set(option.choices) == set(ACTIVATIONS)
