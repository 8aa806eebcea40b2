"""The discretized logistic likelihood (PixelCNN++) against brute force in float64.

The registry-wide properties (traces, trains, records, shapes) are tested in test_components.py
and test_recorded.py, which pick it up from ``LIKELIHOODS``.
"""

import math

import pyro
import pytest
import torch
from pyro.infer import SVI, Trace_ELBO
from pyro.optim import Adam

from pyro_vae import VAE, UserInputError
from pyro_vae.components.likelihoods import DiscretizedLogistic, build_likelihood
from pyro_vae.inference.fast.contract import declares_static

GRID = torch.arange(256, dtype=torch.float64) / 255  # every value the distribution takes
LOCS = [-100.0, -1.3, -1.0, 0.0, 0.42, 1.0, 100.0]
SCALES = [math.exp(-7), 0.01, 0.2, 3.0]


def brute_force_probabilities(loc: float, scale: float) -> torch.Tensor:
    """P(k) for k = 0..255 as differences of the logistic CDF at the bins' edges, in float64."""
    edges = torch.linspace(-1, 1, 256, dtype=torch.float64)[:-1] + 1 / 255  # between bins
    cdf = torch.sigmoid((edges - loc) / scale)  # (255,)
    return torch.diff(
        cdf, prepend=torch.zeros(1, dtype=torch.float64), append=torch.ones(1, dtype=torch.float64)
    )


def on_grid(loc: float, scale: float) -> DiscretizedLogistic:
    """The distribution of one (loc, scale), batched over the 256 grid values."""
    loc_ = torch.full((256,), loc, dtype=torch.float64)
    return DiscretizedLogistic(loc_, torch.tensor(scale, dtype=torch.float64))


@pytest.mark.parametrize("scale", SCALES)
@pytest.mark.parametrize("loc", LOCS)
def test_the_256_probabilities_sum_to_one(loc, scale):
    total = on_grid(loc, scale).log_prob(GRID).exp().sum().item()
    assert total == pytest.approx(1.0, abs=1e-12)


@pytest.mark.parametrize("scale", [0.01, 0.05, 0.2, 1.0])
@pytest.mark.parametrize("loc", [-1.3, -0.7, 0.0, 0.42, 1.0])
def test_agrees_with_logistic_cdf_differences(loc, scale):
    reference = brute_force_probabilities(loc, scale)
    torch.testing.assert_close(
        on_grid(loc, scale).log_prob(GRID).exp(), reference, rtol=1e-9, atol=1e-15
    )
    # The likelihood runs in float32: its log-probabilities of likely values are as good.
    likely = reference > 1e-6
    loc32 = torch.full((256,), loc)
    float32 = DiscretizedLogistic(loc32, torch.tensor(scale)).log_prob(GRID.float())
    torch.testing.assert_close(
        float32[likely].double(), reference[likely].log(), rtol=1e-4, atol=1e-5
    )


@pytest.mark.parametrize("scale", [math.exp(-7), 0.2])
@pytest.mark.parametrize("loc", [-100.0, 100.0])
def test_extreme_locations_give_finite_values_and_gradients(loc, scale):
    x = torch.tensor([0.0, 128 / 255, 1.0])  # both edges and the middle
    loc_ = torch.full((3,), loc, requires_grad=True)
    scale_ = torch.tensor(scale, requires_grad=True)
    log_p = DiscretizedLogistic(loc_, scale_).log_prob(x)
    assert torch.isfinite(log_p).all()
    loc_grad, scale_grad = torch.autograd.grad(log_p.sum(), (loc_, scale_))
    assert torch.isfinite(loc_grad).all() and torch.isfinite(scale_grad)
    # the edge on loc's side is certain; the far edge's log σ(a) is a itself
    near, far = (2, 0) if loc > 0 else (0, 2)
    assert log_p[near].item() == pytest.approx(0.0, abs=1e-6)
    far_value = 2 * x[far].item() - 1
    expected_far = -(abs(far_value - loc) - 1 / 255) / scale
    assert log_p[far].item() == pytest.approx(expected_far, rel=1e-6)


def test_each_channel_has_its_own_scale():
    likelihood = build_likelihood("discretized-logistic", 60, data_shape=(3, 4, 5))
    assert sum(p.numel() for p in likelihood.parameters()) == 3
    with torch.no_grad():
        likelihood.scale.raw.copy_(torch.tensor([-3.0, 0.0, 2.0]))
    scales = likelihood.scale()  # (3,)
    x_hat, x = torch.randn(2, 60), torch.randint(0, 256, (2, 60)).float() / 255
    p = likelihood(x_hat)
    assert p.event_shape == (60,) and p.batch_shape == (2,)
    for c in range(3):
        channel = slice(20 * c, 20 * (c + 1))  # channel-major: H·W = 20 dims per channel
        assert torch.equal(p.base_dist.scale[:, channel], scales[c].expand(2, 20))
    by_channel = sum(
        DiscretizedLogistic(x_hat[:, 20 * c : 20 * (c + 1)], scales[c])
        .log_prob(x[:, 20 * c : 20 * (c + 1)])
        .sum(-1)
        for c in range(3)
    )
    torch.testing.assert_close(p.log_prob(x), by_channel)


def test_a_data_shape_that_does_not_fit_is_refused():
    with pytest.raises(UserInputError, match="data shape"):
        build_likelihood("discretized-logistic", 64, data_shape=(3, 4, 5))


def test_the_initial_scale_is_the_documented_one():
    likelihood = build_likelihood("discretized-logistic", 8, data_shape=(2, 2, 2))
    torch.testing.assert_close(likelihood.scale(), torch.full((2,), 0.2))
    assert declares_static(type(likelihood))


@pytest.mark.parametrize("scale", SCALES)
def test_the_mean_is_the_sum_over_the_grid(scale):
    locs = torch.tensor(LOCS, dtype=torch.float64)  # (7,)
    mean = DiscretizedLogistic(locs, torch.tensor(scale, dtype=torch.float64)).mean
    expected = torch.stack(
        [(GRID * on_grid(loc, scale).log_prob(GRID).exp()).sum() for loc in LOCS]
    )
    torch.testing.assert_close(mean, expected, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("loc, scale", [(-0.9, 0.05), (0.1, 0.2), (0.99, 0.01), (3.0, 1.0)])
def test_samples_lie_on_the_grid_and_average_to_the_mean(loc, scale):
    p = DiscretizedLogistic(torch.tensor([loc]), torch.tensor(scale))
    draws = p.sample((40000,))  # (40000, 1)
    assert draws.shape == (40000, 1)
    steps = draws * 255
    assert torch.equal(steps, steps.round()) and draws.min() >= 0 and draws.max() <= 1
    spread = draws.std().item() / math.sqrt(len(draws))
    assert abs(draws.mean().item() - p.mean.item()) < 5 * spread + 1e-6


def test_expand():
    p = DiscretizedLogistic(torch.zeros(4), torch.tensor(0.2)).expand((3, 4))
    assert p.batch_shape == (3, 4) and p.event_shape == ()
    assert p.log_prob(torch.zeros(4)).shape == (3, 4) and p.sample().shape == (3, 4)


def test_only_8_bit_values_are_scored():
    likelihood = build_likelihood("discretized-logistic", 4)
    eight_bit = (
        torch.tensor([[0, 1, 128, 255]], dtype=torch.uint8).float() / 255
    )  # as data/datasets.py
    likelihood.check_data(eight_bit)
    for bad in (0.5 / 255, 1.2, -1 / 255):
        x = eight_bit.clone()
        x[0, 1] = bad
        with pytest.raises(UserInputError, match=r"8-bit pixel values.*continuous") as error:
            likelihood.check_data(x)
        assert "\n" not in str(error.value)
    # Pyro's validation checks an observed value against the same support
    p = DiscretizedLogistic(torch.zeros(4), torch.tensor(0.2), validate_args=True)
    assert torch.isfinite(p.log_prob(eight_bit)).all()
    with pytest.raises(ValueError, match="support"):
        p.log_prob(torch.full((4,), 0.5 / 255))


def test_a_vae_trains_on_8_bit_images_with_svi():
    likelihood = build_likelihood("discretized-logistic", 48, data_shape=(3, 4, 4))
    vae = VAE(48, 3, hidden_dims=(16,), likelihood=likelihood)
    x = torch.randint(0, 256, (32, 48), dtype=torch.uint8).float() / 255
    svi = SVI(vae.model, vae.guide, Adam({"lr": 1e-2}), Trace_ELBO())
    with pyro.validation_enabled(True):
        losses = [svi.step(x) for _ in range(20)]
    assert all(math.isfinite(loss) for loss in losses)
    assert losses[-1] < losses[0]
    assert not torch.allclose(likelihood.scale(), torch.full((3,), 0.2))  # the scales learn
