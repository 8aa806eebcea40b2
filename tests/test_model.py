import pyro
import pyro.optim
import pytest
import torch
from pyro import poutine
from pyro.infer import (
    SVI,
    JitTrace_ELBO,
    Predictive,
    RenyiELBO,
    Trace_ELBO,
    TraceGraph_ELBO,
    TraceMeanField_ELBO,
)

from pyro_vae import VAE, GaussianLikelihood, StandardNormalPrior, UserInputError
from pyro_vae.components.guides import diagonal_parameters

DATA_DIM, LATENT_DIM = 64, 3


def test_model_and_guide_sites_live_in_the_data_plate(binary_batch):
    vae = VAE(DATA_DIM, latent_dim=LATENT_DIM, hidden_dims=(16,))
    guide_trace = poutine.trace(vae.guide).get_trace(binary_batch)
    model_trace = poutine.trace(poutine.replay(vae.model, trace=guide_trace)).get_trace(
        binary_batch
    )
    batch = binary_batch.shape[0]

    z_q = guide_trace.nodes["z"]
    assert z_q["value"].shape == (batch, LATENT_DIM)
    assert z_q["fn"].has_rsample  # reparameterised: z = μ + σ ⊙ ε
    assert [frame.name for frame in z_q["cond_indep_stack"]] == ["data"]

    z_p, x_p = model_trace.nodes["z"], model_trace.nodes["x"]
    assert torch.equal(z_p["value"], z_q["value"])
    assert z_p["fn"].event_shape == (LATENT_DIM,) and z_p["fn"].batch_shape == (batch,)
    assert x_p["is_observed"] and torch.equal(x_p["value"], binary_batch)
    assert x_p["fn"].event_shape == (DATA_DIM,) and x_p["fn"].batch_shape == (batch,)
    assert all([f.name for f in site["cond_indep_stack"]] == ["data"] for site in (z_p, x_p))


def test_model_without_data_draws_from_the_prior_predictive():
    vae = VAE(DATA_DIM, latent_dim=LATENT_DIM)
    trace = poutine.trace(vae.model).get_trace(None, batch_size=7)
    assert trace.nodes["z"]["value"].shape == (7, LATENT_DIM)
    assert trace.nodes["x"]["value"].shape == (7, DATA_DIM)
    assert not trace.nodes["x"]["is_observed"]
    with pytest.raises(ValueError, match="batch_size"):
        vae.model()
    with pytest.raises(ValueError, match="needs data"):
        vae.guide(None, batch_size=3)


def test_guide_is_the_encoders_gaussian(binary_batch):
    vae = VAE(DATA_DIM, latent_dim=LATENT_DIM)
    q = poutine.trace(vae.guide).get_trace(binary_batch).nodes["z"]["fn"]
    loc, scale = diagonal_parameters(vae.encoder(binary_batch))
    torch.testing.assert_close(q.mean, loc)
    torch.testing.assert_close(q.variance, scale**2)


ELBOS = {
    "Trace_ELBO": lambda: Trace_ELBO(),
    "TraceMeanField_ELBO": lambda: TraceMeanField_ELBO(),
    "TraceGraph_ELBO": lambda: TraceGraph_ELBO(),
    "RenyiELBO": lambda: RenyiELBO(alpha=0.0, num_particles=3),
    "Trace_ELBO-vectorized": lambda: Trace_ELBO(
        num_particles=4, vectorize_particles=True, max_plate_nesting=1
    ),
    "TraceMeanField_ELBO-vectorized": lambda: TraceMeanField_ELBO(
        num_particles=4, vectorize_particles=True, max_plate_nesting=1
    ),
    "JitTrace_ELBO": lambda: JitTrace_ELBO(ignore_jit_warnings=True),
}


@pytest.mark.parametrize("make", ELBOS.values(), ids=ELBOS.keys())
def test_pyro_svi_trains_every_parameter(make, binary_batch):
    vae = VAE(DATA_DIM, latent_dim=LATENT_DIM, hidden_dims=(32,))
    before = {name: p.detach().clone() for name, p in vae.named_parameters()}
    svi = SVI(vae.model, vae.guide, pyro.optim.Adam({"lr": 1e-2}), make())
    losses = [svi.step(binary_batch) for _ in range(3)]
    assert all(torch.isfinite(torch.tensor(losses)))
    unchanged = [n for n, p in vae.named_parameters() if torch.equal(p.detach(), before[n])]
    assert not unchanged, f"SVI did not update {unchanged}"


def test_named_vaes_train_side_by_side_with_svi(binary_batch):
    """Without names the second VAE would find the first one's entries in the param store."""
    vaes = [VAE(DATA_DIM, LATENT_DIM, hidden_dims=(8,), name=name) for name in ("a", "b")]
    for vae in vaes:
        before = [p.detach().clone() for p in vae.parameters()]
        SVI(vae.model, vae.guide, pyro.optim.Adam({"lr": 1e-2}), Trace_ELBO()).step(binary_batch)
        assert all(not torch.equal(p, q) for p, q in zip(vae.parameters(), before, strict=True))
    assert {name.split(".")[0] for name in pyro.get_param_store()} == {"a", "b"}


def test_predictive_with_guide_and_from_prior(binary_batch):
    vae = VAE(DATA_DIM, latent_dim=LATENT_DIM)
    posterior = Predictive(vae.model, guide=vae.guide, num_samples=5)(binary_batch)
    assert posterior["z"].shape == (5, binary_batch.shape[0], LATENT_DIM)
    prior = Predictive(vae.model, num_samples=5)(None, batch_size=2)
    assert prior["x"].shape == (5, 2, DATA_DIM)


def test_components_can_be_passed_as_instances():
    likelihood = GaussianLikelihood(DATA_DIM, sigma=0.25)
    vae = VAE(
        DATA_DIM,
        latent_dim=LATENT_DIM,
        prior=StandardNormalPrior(LATENT_DIM),
        likelihood=likelihood,
    )
    assert vae.likelihood is likelihood
    assert torch.all(vae.likelihood(torch.zeros(DATA_DIM)).scale == 0.25)


def test_component_errors_name_the_problem():
    with pytest.raises(UserInputError, match=r"unknown prior 'student'.*standard"):
        VAE(DATA_DIM, prior="student")
    with pytest.raises(UserInputError, match="unknown likelihood"):
        VAE(DATA_DIM, likelihood="poisson")
    with pytest.raises(ValueError, match=r"event shape \(5,\)"):
        VAE(DATA_DIM, latent_dim=LATENT_DIM, prior=StandardNormalPrior(5))
    with pytest.raises(UserInputError, match="sigma"):
        GaussianLikelihood(DATA_DIM, sigma=0.0)


def test_likelihood_support_check():
    with pytest.raises(UserInputError, match="binary"):
        VAE(DATA_DIM, likelihood="bernoulli").likelihood.check_data(torch.full((2, DATA_DIM), 0.5))
    with pytest.raises(UserInputError, match="finite"):
        VAE(DATA_DIM).likelihood.check_data(torch.tensor([[float("nan")] * DATA_DIM]))
