"""The project's ELBOs are Pyro's: the same loss values and gradients, read back to the host never.

``mc`` and ``analytic`` subclass Pyro's Trace_ELBO and TraceMeanField_ELBO and only keep the loss
on the device (inference/objectives.py). Each test compares them with Pyro's own class run on the
same random numbers, over every registered prior (the mixture has no closed-form KL, so
``analytic`` samples it) and likelihood.
"""

from dataclasses import replace

import pyro
import pyro.distributions as dist
import pytest
import torch
from host_reads import HostReads
from pyro.infer import RenyiELBO, Trace_ELBO, TraceMeanField_ELBO

from pyro_vae import LIKELIHOODS, PRIORS, VAE, TrainConfig, Trainer, UserInputError, make_elbo
from pyro_vae.data.datasets import Split
from pyro_vae.inference.fast import replay as recorded_module
from pyro_vae.inference.fast.replay import AUDIT_FIRST
from pyro_vae.inference.objectives import DeviceRenyiELBO

PYRO_ELBOS = {"mc": Trace_ELBO, "analytic": TraceMeanField_ELBO}


def loss_and_gradients(elbo, model, guide, params, *args):
    pyro.set_rng_seed(7)
    loss = elbo.differentiable_loss(model, guide, *args)
    return loss.detach(), torch.autograd.grad(loss, params, allow_unused=True)


def assert_same_as_pyro(estimator, model, guide, params, *args, num_particles=1):
    options = {"num_particles": num_particles, "vectorize_particles": num_particles > 1}
    ours = make_elbo(estimator, num_particles)
    assert isinstance(ours, PYRO_ELBOS[estimator])
    theirs = PYRO_ELBOS[estimator](max_plate_nesting=1, **options)
    loss, grads = loss_and_gradients(ours, model, guide, params, *args)
    pyro_loss, pyro_grads = loss_and_gradients(theirs, model, guide, params, *args)
    torch.testing.assert_close(loss, pyro_loss, rtol=1e-5, atol=1e-4)
    for grad, pyro_grad in zip(grads, pyro_grads, strict=True):
        assert (grad is None) == (pyro_grad is None)
        if grad is not None:
            torch.testing.assert_close(grad, pyro_grad, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("num_particles", [1, 4])
@pytest.mark.parametrize("likelihood", LIKELIHOODS)
@pytest.mark.parametrize("prior", PRIORS)
@pytest.mark.parametrize("estimator", PYRO_ELBOS)
def test_loss_and_gradients_are_pyros(estimator, prior, likelihood, num_particles, binary_batch):
    vae = VAE(64, 3, hidden_dims=(16,), prior=prior, likelihood=likelihood)
    params = list(vae.parameters())
    with pyro.validation_enabled(False):  # the path Trainer takes after its first step
        assert_same_as_pyro(
            estimator, vae.generative_model, vae.inference_guide, params, binary_batch,
            num_particles=num_particles,
        )  # fmt: skip


def assert_renyi_same_as_pyro(ours, theirs, vae, params, batch):
    """Our bound's value and autograd gradient against Pyro's ``loss_and_grads`` (which reads
    the parameters from the registered model and guide), on the same random numbers."""
    with pyro.validation_enabled(False):
        loss, grads = loss_and_gradients(
            ours, vae.generative_model, vae.inference_guide, params, batch
        )
        vae.zero_grad(set_to_none=True)
        pyro.set_rng_seed(7)
        pyro_loss = theirs.loss_and_grads(vae.model, vae.guide, batch)
    assert loss.item() == pytest.approx(pyro_loss, rel=1e-5, abs=1e-4)
    for param, grad in zip(params, grads, strict=True):
        torch.testing.assert_close(grad, param.grad, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("num_particles", [1, 4])
@pytest.mark.parametrize("likelihood", LIKELIHOODS)
@pytest.mark.parametrize("prior", PRIORS)
def test_the_importance_weighted_bound_and_its_gradient_are_pyros(
    prior, likelihood, num_particles, binary_batch
):
    """``iwae`` is one differentiable tensor; Pyro's RenyiELBO(alpha=0) computes the same value
    and backpropagates a surrogate with the same gradient (the registered model and guide, which
    it needs to see the parameters)."""
    vae = VAE(64, 3, hidden_dims=(16,), prior=prior, likelihood=likelihood)
    params = list(vae.parameters())
    ours = make_elbo("iwae", num_particles)
    assert isinstance(ours, RenyiELBO) and ours.alpha == 0.0
    theirs = RenyiELBO(
        alpha=0.0,
        num_particles=num_particles,
        vectorize_particles=num_particles > 1,
        max_plate_nesting=1,
    )
    assert_renyi_same_as_pyro(ours, theirs, vae, params, binary_batch)


@pytest.mark.parametrize("vectorize", [True, False])
@pytest.mark.parametrize("alpha", [0.0, 0.5, -1.0])
def test_every_renyi_bound_and_its_gradient_are_pyros(alpha, vectorize, binary_batch):
    """Rényi's α-bounds too (α = 0 is IWAE's), particles vectorised or one trace each."""
    vae = VAE(64, 3, hidden_dims=(16,), guide="iaf")
    params = list(vae.parameters())
    options = {"alpha": alpha, "num_particles": 3, "vectorize_particles": vectorize}
    ours = DeviceRenyiELBO(max_plate_nesting=1, **options)
    theirs = RenyiELBO(max_plate_nesting=1, **options)
    assert_renyi_same_as_pyro(ours, theirs, vae, params, binary_batch)


def test_the_importance_weighted_bound_refuses_a_kl_weight_and_a_discrete_latent(digits):
    with pytest.raises(UserInputError, match="importance-weighted bound does not have"):
        Trainer(VAE(64, 3), TrainConfig(kl_warmup=2), elbo=make_elbo("iwae", 3))
    x = torch.tensor([0.1, 1.9, 2.2, -0.4])
    discrete_latent_model(x), discrete_latent_guide(x)
    with pytest.raises(NotImplementedError, match="reparameterised"):
        make_elbo("iwae", 2).differentiable_loss(discrete_latent_model, discrete_latent_guide, x)


def discrete_latent_model(x):
    p = pyro.param("p", torch.tensor(0.3))
    with pyro.plate("data", x.shape[0]):
        c = pyro.sample("c", dist.Bernoulli(p))
        pyro.sample("x", dist.Normal(2.0 * c, 1.0), obs=x)


def discrete_latent_guide(x):
    q = pyro.param("q", torch.tensor(0.6))
    with pyro.plate("data", x.shape[0]):
        pyro.sample("c", dist.Bernoulli(q))


def auxiliary_model(x):
    loc = pyro.param("loc", torch.tensor(0.5))
    with pyro.plate("data", x.shape[0]):
        z = pyro.sample("z", dist.Normal(loc, 1.0))
        pyro.sample("x", dist.Normal(z, 1.0), obs=x)


def auxiliary_guide(x):
    w = pyro.param("w", torch.tensor(0.2))
    with pyro.plate("data", x.shape[0]):
        u = pyro.sample("u", dist.Normal(w, 1.0), infer={"is_auxiliary": True})
        pyro.sample("z", dist.Normal(u, 1.0))


@pytest.mark.parametrize(
    "estimator, model, guide",
    [
        ("mc", discrete_latent_model, discrete_latent_guide),  # a score-function term
        ("analytic", auxiliary_model, auxiliary_guide),  # a guide-only site
    ],
)
def test_what_the_vae_never_does_is_left_to_pyro(estimator, model, guide):
    x = torch.tensor([0.1, 1.9, 2.2, -0.4])
    model(x), guide(x)  # creates the parameters
    params = [pyro.param(name).unconstrained() for name in pyro.get_param_store()]
    assert_same_as_pyro(estimator, model, guide, params, x)


@pytest.mark.parametrize("prior", PRIORS)
@pytest.mark.parametrize("estimator", PYRO_ELBOS)
def test_a_training_step_reads_nothing_back_to_the_host(estimator, prior, digits):
    """What a GPU needs to run steps back to back. The first step validates, the second
    records the step's graph (inference/fast/replay.py), and it and the next replays are audited
    (compared with the eager step, a verdict read on the host, then once every AUDIT_EVERY steps):
    those may read."""
    config = TrainConfig(elbo=estimator)
    x = digits.train.x[:32]
    for elbo, expected_reads in [(None, 0), (PYRO_ELBOS[estimator](max_plate_nesting=1), 1)]:
        trainer = Trainer(VAE(64, 3, hidden_dims=(16,), prior=prior), config, elbo=elbo)
        for _ in range(1 + AUDIT_FIRST):
            trainer.step(x)
        with HostReads() as reads:
            trainer.step(x)
        # Pyro's own class reads every step: the counter can see what ours does not do
        assert min(reads.count, 1) == expected_reads


@pytest.mark.parametrize("estimator", PYRO_ELBOS)
def test_the_registered_model_and_guide_read_nothing_back_either(estimator, binary_batch):
    """vae.model / vae.guide (as validation and SVI call them) add param sites to the traces:
    they are not guide-only sample sites, and must not send the loss down Pyro's reading path."""
    vae = VAE(64, 3, hidden_dims=(16,))
    elbo = make_elbo(estimator)
    with pyro.validation_enabled(False), HostReads() as reads:
        loss = elbo.differentiable_loss(vae.model, vae.guide, binary_batch)
    assert reads.count == 0 and torch.isfinite(loss)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("estimator", PYRO_ELBOS)
@pytest.mark.parametrize("cuda_graph", [True, False], ids=["captured", "replayed"])
def test_cuda_training_steps_never_wait_for_the_gpu(estimator, cuda_graph, digits, monkeypatch):
    """On a GPU the host queues step after step: torch raises on any synchronising call. The
    first step validates and may read; a capture (once per batch shape and learning rate)
    synchronises before it starts, and the step before it runs as every uncaptured one. (An
    audit reads its verdict, at a graph's first replays and then rarely: none here.)"""
    monkeypatch.setattr(recorded_module, "AUDIT_FIRST", 0)
    monkeypatch.setattr(recorded_module, "AUDIT_EVERY", 10**9)
    device = torch.device("cuda")
    vae = VAE(64, hidden_dims=(16,)).to(device)
    trainer = Trainer(vae, TrainConfig(elbo=estimator), cuda_graph=cuda_graph)
    x = digits.train.x[:32].to(device)
    trainer.step(x)
    torch.cuda.set_sync_debug_mode("error")
    try:
        trainer.step(x)  # recorded, and replayed uncaptured (the warm-up of a capture)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    trainer.step(x)  # captured, if it is to be
    assert bool(trainer._captured and trainer._captured._captures) == cuda_graph
    torch.cuda.set_sync_debug_mode("error")
    try:
        for _ in range(3):
            loss = trainer.step(x)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert loss.is_cuda and torch.isfinite(loss)


def test_an_epoch_reads_the_host_as_often_whatever_its_number_of_steps(digits):
    """The epoch's own reads (its summed loss, the finiteness check, the validation ELBO) happen
    once; none may come with each step."""
    seen = []
    for num_train in (64, 192):  # 2 and 6 steps
        data = replace(
            digits,
            train=Split(digits.train.x[:num_train], digits.train.labels[:num_train]),
            val=Split(digits.val.x[:50], digits.val.labels[:50]),
        )
        trainer = Trainer(VAE(64, 3, hidden_dims=(16,)), TrainConfig(batch_size=32))
        trainer.train_epoch(data)  # validates, records and audits the first replays
        trainer.train_epoch(data)  # (audits that 2 steps an epoch leave for this one)
        with HostReads() as reads:
            trainer.train_epoch(data)
        seen.append(reads.seen)
    assert seen[0] == seen[1]
