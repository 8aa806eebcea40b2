"""Every prior and likelihood in the registries, and the properties each one promises.

The registry-wide tests enumerate ``PRIORS`` and ``LIKELIHOODS``: a new component is tested by
registering it, without touching this file.
"""

import math

import pyro
import pytest
import torch
import torch.nn.functional as F
from pyro import poutine
from torch.distributions import MixtureSameFamily, Normal

from pyro_vae import (
    LIKELIHOODS,
    PRIORS,
    VAE,
    Checkpoint,
    DataConfig,
    TrainConfig,
    Trainer,
    UserInputError,
    elbo_per_datapoint,
    load_checkpoint,
    load_dataset,
    make_elbo,
    save_checkpoint,
)
from pyro_vae.components.guides import diagonal_parameters
from pyro_vae.components.likelihoods import ContinuousBernoulliLikelihood, LearnedScale
from pyro_vae.components.priors import _diagonal_gaussians
from pyro_vae.core.config import ModelConfig, RunConfig
from pyro_vae.data.sources import RawData
from pyro_vae.inference.objectives import kl_method
from pyro_vae.models.build import build_model

LATENT_DIM = 3


@pytest.fixture(scope="module")
def binary_digits():
    """Statically binarized digits: in the support of every likelihood, real or binary."""
    return load_dataset(DataConfig(binarize="static"))


def small_vae(prior: str, likelihood: str, data_dim: int = 64, **options) -> VAE:
    return VAE(
        data_dim, LATENT_DIM, hidden_dims=(32,), prior=prior, likelihood=likelihood, **options
    )


@pytest.mark.parametrize("likelihood", LIKELIHOODS)
@pytest.mark.parametrize("prior", PRIORS)
def test_every_prior_and_likelihood_traces_and_trains(prior, likelihood, binary_digits):
    vae = small_vae(prior, likelihood)
    x = binary_digits.train.x[:16]
    vae.likelihood.check_data(x)
    trace = poutine.trace(vae.model).get_trace(x)
    assert trace.nodes["z"]["value"].shape == (16, LATENT_DIM)
    for estimator in ("mc", "analytic"):
        loss = make_elbo(estimator).differentiable_loss(vae.model, vae.guide, x)
        assert torch.isfinite(loss)
    before = elbo_per_datapoint(vae, binary_digits.val.x)
    trainer = Trainer(vae, TrainConfig(elbo="analytic", lr=3e-3))
    after = trainer.train_epoch(binary_digits).val_elbo
    assert math.isfinite(after) and after > before
    # Every parameter (the networks' always among them) has a finite gradient from the last step,
    # and each learnable parameter of the prior and the likelihood a non-zero one: the loss uses it.
    gradients = {name: p.grad for name, p in vae.named_parameters()}
    assert gradients.keys() >= {n for n, _ in vae.encoder.named_parameters(prefix="encoder")}
    for name, gradient in gradients.items():
        assert gradient is not None and torch.isfinite(gradient).all(), name
        if name.startswith(("prior.", "likelihood.")):
            assert gradient.abs().sum() > 0, name


@pytest.mark.parametrize("prior", PRIORS)
def test_prior_sample_and_log_prob_shapes(prior):
    p = small_vae(prior, "gaussian").prior()
    assert p.event_shape == (LATENT_DIM,)
    z = p.sample((5,))
    assert z.shape == (5, LATENT_DIM)
    assert p.log_prob(z).shape == (5,)


@pytest.mark.parametrize("likelihood", LIKELIHOODS)
def test_likelihood_shapes_and_mean(likelihood):
    x_hat = torch.randn(5, 64)
    p = small_vae("standard", likelihood).likelihood(x_hat)
    assert p.event_shape == (64,) and p.batch_shape == (5,)
    assert p.mean.shape == (5, 64)


@pytest.mark.parametrize("prior", PRIORS)
def test_checkpoint_rebuilds_the_trained_prior(prior, binary_digits, tmp_path):
    config = RunConfig(
        model=ModelConfig(latent_dim=LATENT_DIM, hidden_dims=(32,), prior=prior),
        data=DataConfig(binarize="static"),
    )
    vae = build_model(config.model, 64)
    trainer = Trainer(vae, TrainConfig(lr=1e-2))
    trainer.train_epoch(binary_digits)
    save_checkpoint(
        Checkpoint(config, (8, 8), vae.state_dict(), trainer.state_dict()), tmp_path / "c.pt"
    )
    rebuilt = load_checkpoint(tmp_path / "c.pt").build_vae()
    pyro.set_rng_seed(3)
    expected = vae.generate(6)
    pyro.set_rng_seed(3)
    torch.testing.assert_close(rebuilt.generate(6), expected)


def test_the_mixture_prior_is_its_weighted_components():
    """log p(z) = logsumexp_k [log softmax(logits)_k + log N(z; m_k, diag s_k²)], by hand."""
    prior = small_vae("mog", "gaussian", prior_options={"num_components": 7}).prior
    with torch.no_grad():
        for parameter in prior.parameters():
            parameter.normal_()
    z = torch.randn(5, LATENT_DIM)
    log_weights = torch.log_softmax(prior.logits, dim=0)  # (7,)
    components = Normal(prior.locs, F.softplus(prior.raw_scales))  # batch (7, latent)
    per_component = components.log_prob(z[:, None, :]).sum(-1)  # (5, 7)
    expected = torch.logsumexp(log_weights + per_component, dim=-1)
    torch.testing.assert_close(prior().log_prob(z), expected)


@pytest.mark.parametrize("expanded", [False, True], ids=["as built", "expanded by plates"])
@pytest.mark.parametrize("guide", ["diagonal", "full", "iaf"])
@pytest.mark.parametrize("prior", ["mog", "vamp"])
def test_a_mixture_of_diagonal_gaussians_is_scored_by_matrix_products(prior, guide, expanded):
    """The mixture and the diagonal VampPrior take log p(z) from two matrix products instead of
    torch's (..., K, D) broadcast: the same numbers, to float32's rounding of O(z²/s²) terms;
    and values and gradients for codes with particle dimensions. Other families keep torch's."""
    vae = VAE(64, 6, hidden_dims=(16,), prior=prior, guide=guide if prior == "vamp" else "diagonal")
    mixture = vae.prior().expand((3, 9)) if expanded else vae.prior()
    z = (2 * torch.randn(3, 9, 6)).requires_grad_()
    ours = mixture.log_prob(z)
    expected = MixtureSameFamily.log_prob(mixture, z)  # torch's, with the flows' padding
    torch.testing.assert_close(ours, expected, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(
        torch.autograd.grad(ours.sum(), z)[0], torch.autograd.grad(expected.sum(), z)[0]
    )
    fast = _diagonal_gaussians(mixture) is not None
    assert fast == (prior == "mog" or guide == "diagonal")


def test_vamp_pseudo_inputs_learn_through_the_encoder(binary_digits):
    vae = small_vae("vamp", "bernoulli", prior_options={"num_components": 5})
    assert vae.prior.pseudo_inputs.shape == (5, 64)
    # the encoder is shared with the guide, not copied into the prior
    assert vae.prior.encoder is vae.encoder
    assert not any(name.startswith("prior.encoder") for name in vae.state_dict())
    loss = make_elbo("analytic").differentiable_loss(
        vae.model, vae.guide, binary_digits.train.x[:32]
    )
    loss.backward()
    assert vae.prior.pseudo_inputs.grad.abs().sum() > 0


def test_learnable_gaussian_prior_kl_matches_torch(digits):
    vae = small_vae("gaussian", "gaussian")
    x = digits.val.x[:10]
    with torch.no_grad():
        vae.prior.loc.normal_()
        vae.prior.raw_scale.normal_()
        loc, scale = diagonal_parameters(vae.encoder(x))
        prior = vae.prior()
        expected = torch.distributions.kl_divergence(
            torch.distributions.Normal(loc, scale),
            torch.distributions.Normal(prior.base_dist.loc, prior.base_dist.scale),
        ).sum()
        kl = make_elbo("analytic").differentiable_loss(
            poutine.block(vae.model, hide=["x"]), vae.guide, x
        )
    torch.testing.assert_close(kl, expected)


@pytest.mark.parametrize(
    "prior, expected",
    [
        ("standard", "closed-form"),
        ("gaussian", "closed-form"),
        ("mog", "monte-carlo"),
        ("vamp", "monte-carlo"),
    ],
)
def test_which_kl_each_estimator_uses(prior, expected):
    p = small_vae(prior, "gaussian").prior()
    assert kl_method("analytic", p) == expected
    assert kl_method("mc", p) == "monte-carlo"


@pytest.mark.parametrize(
    "lam", [1e-3, 0.2, 0.499, 0.4999, 0.49999, 0.5, 0.50001, 0.5001, 0.8, 0.999]
)
def test_continuous_bernoulli_is_normalised_near_one_half_too(lam):
    likelihood = ContinuousBernoulliLikelihood(1).double()
    logit = torch.logit(torch.tensor([[lam]], dtype=torch.float64))
    x = torch.linspace(0, 1, 20001, dtype=torch.float64).unsqueeze(1)  # (N, 1)
    density = likelihood(logit.expand(len(x), 1)).log_prob(x).exp()
    assert torch.trapezoid(density, x.squeeze(1)).item() == pytest.approx(1.0, abs=1e-7)


def test_learned_scales_stay_above_their_floor():
    scale = LearnedScale(4, min_scale=0.05)
    torch.testing.assert_close(scale(), torch.ones(4))  # starts at 1
    with torch.no_grad():
        scale.raw.fill_(-1e4)
    assert torch.all(scale() >= 0.05)
    with pytest.raises(UserInputError, match="min_scale"):
        LearnedScale(4, min_scale=2.0)


def test_sample_draws_from_the_trained_prior():
    vae = small_vae("gaussian", "gaussian")
    with torch.no_grad():
        vae.prior.loc.fill_(5.0)
    z = poutine.trace(vae.model).get_trace(None, batch_size=2000).nodes["z"]["value"]
    assert z.mean().item() == pytest.approx(5.0, abs=0.1)


@pytest.mark.parametrize(
    "likelihood, values, message",
    [
        ("bernoulli", [0.0, 0.5], "binary"),
        ("continuous-bernoulli", [0.5, 1.5], r"in \[0, 1\]"),
        ("gaussian", [0.5, float("inf")], "finite"),
    ],
)
def test_data_outside_the_support_is_caught(likelihood, values, message):
    x = torch.tensor(values).repeat(32).reshape(1, 64)
    with pytest.raises(UserInputError, match=message):
        small_vae("standard", likelihood).likelihood.check_data(x)


def test_binarization(digits):
    static = load_dataset(DataConfig(binarize="static"))
    for split in static.modelled_splits():
        assert set(split.x.unique().tolist()) == {0.0, 1.0}
    assert torch.equal(static.test.x, load_dataset(DataConfig(binarize="static")).test.x)
    # pixels that are bright in the grey image are mostly on in the binary one
    assert static.test.x[digits.test.x > 0.9].mean() > 0.85

    dynamic = load_dataset(DataConfig(binarize="dynamic"))
    assert torch.equal(dynamic.train.x, digits.train.x)  # grey, resampled per batch
    assert torch.equal(dynamic.val.x, static.val.x)
    everything = torch.arange(dynamic.train.x.shape[0])
    first, second = (dynamic.train_batch(everything) for _ in range(2))
    assert set(first.unique().tolist()) == {0.0, 1.0}
    assert not torch.equal(first, second)  # resampled for every batch


def test_binarizing_data_outside_the_unit_interval_is_refused(monkeypatch):
    from pyro_vae.data import datasets as data

    def loud(config):
        return RawData(torch.full((20, 4), 3.0), torch.zeros(20, dtype=torch.int64), (2, 2))

    monkeypatch.setitem(data.DATASETS, "loud", loud)
    with pytest.raises(UserInputError, match=r"binarizing needs grey values in \[0, 1\]"):
        load_dataset(DataConfig(dataset="loud", binarize="static"))


def test_the_isotropic_normal_is_normal_to_event_1():
    """The Gaussian likelihood's distribution: Normal(loc, σ).to_event(1), computed faster."""
    from pyro_vae.components.likelihoods import IsotropicNormal

    loc = torch.randn(4, 3, 6, requires_grad=True)
    sigma = torch.tensor(0.3)
    x = torch.randn(3, 6)  # broadcast against the leading (particle) dimension
    fast, reference = IsotropicNormal(loc, sigma), pyro.distributions.Normal(loc, sigma).to_event(1)
    assert (fast.batch_shape, fast.event_shape) == (reference.batch_shape, reference.event_shape)
    torch.testing.assert_close(fast.log_prob(x), reference.log_prob(x))
    (gradient,) = torch.autograd.grad(fast.log_prob(x).sum(), loc)
    (expected,) = torch.autograd.grad(reference.log_prob(x).sum(), loc)
    torch.testing.assert_close(gradient, expected)
    torch.testing.assert_close(fast.mean, loc)
    torch.testing.assert_close(fast.variance, reference.variance)
    draws = IsotropicNormal(torch.zeros(6), sigma).sample((20000,))
    assert draws.shape == (20000, 6)
    assert draws.std(0) == pytest.approx([0.3] * 6, rel=0.05)
    expanded = IsotropicNormal(torch.zeros(6), sigma).expand((5, 2))
    assert expanded.batch_shape == (5, 2) and expanded.log_prob(torch.zeros(6)).shape == (5, 2)
