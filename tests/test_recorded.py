"""The recorded graph computes the eager step's loss and gradients, bit for bit, or stands aside."""

import logging

import pyro
import pyro.distributions as dist
import pytest
import torch
from torch.fx.experimental.proxy_tensor import make_fx

from pyro_vae import LIKELIHOODS, PRIORS, VAE, TrainConfig, Trainer, make_elbo
from pyro_vae.likelihoods import Likelihood
from pyro_vae.objectives import loss_and_backward
from pyro_vae.recorded import RecordedGradient, _with_python_bindings, _without_no_ops


def eager_and_recorded(vae, elbo, batch, seed, recorded=None):
    """(loss, gradients) of the eager step and of the recorded one, on the same random numbers."""
    model, guide = vae.generative_model, vae.inference_guide
    recorded = recorded or RecordedGradient(vae, elbo, model, guide)
    results = []
    for step in (lambda: loss_and_backward(elbo, model, guide, batch), lambda: recorded(batch)):
        vae.zero_grad(set_to_none=True)
        pyro.set_rng_seed(seed)
        with pyro.validation_enabled(False):
            loss = step()
        results.append((loss, [p.grad for p in vae.parameters()]))
    return results


def assert_identical(eager, recorded):
    (loss, grads), (recorded_loss, recorded_grads) = eager, recorded
    assert recorded_loss is not None, "the step was not recorded"
    torch.testing.assert_close(recorded_loss, loss, rtol=0, atol=0)
    for grad, recorded_grad in zip(grads, recorded_grads, strict=True):
        assert (grad is None) == (recorded_grad is None)
        if grad is not None:
            torch.testing.assert_close(recorded_grad, grad, rtol=0, atol=0)


@pytest.mark.parametrize("likelihood", LIKELIHOODS)
@pytest.mark.parametrize("prior", PRIORS)
@pytest.mark.parametrize("estimator", ["mc", "analytic"])
def test_the_recorded_step_is_the_eager_step(estimator, prior, likelihood, binary_batch):
    vae = VAE(64, 3, hidden_dims=(16,), prior=prior, likelihood=likelihood)
    eager, recorded = eager_and_recorded(vae, make_elbo(estimator), binary_batch, seed=3)
    assert_identical(eager, recorded)


def test_several_particles_and_changed_parameters(binary_batch):
    """A graph reads the parameters' current values at every replay, not those it was made with."""
    vae = VAE(64, 3, hidden_dims=(16,), prior="mog")
    elbo = make_elbo("mc", num_particles=3)
    recorded = RecordedGradient(vae, elbo, vae.generative_model, vae.inference_guide)
    with pyro.validation_enabled(False):
        recorded(binary_batch)  # records
    with torch.no_grad():
        for parameter in vae.parameters():
            parameter.add_(0.05 * torch.randn_like(parameter))
    eager, replayed = eager_and_recorded(vae, elbo, binary_batch, seed=5, recorded=recorded)
    assert_identical(eager, replayed)


def test_parameters_frozen_after_a_recording_get_no_gradient(binary_batch):
    vae = VAE(64, 3, hidden_dims=(16,))
    elbo = make_elbo("analytic")
    recorded = RecordedGradient(vae, elbo, vae.generative_model, vae.inference_guide)
    with pyro.validation_enabled(False):
        recorded(binary_batch)  # records with every parameter trainable
    vae.decoder.requires_grad_(False)
    eager, replayed = eager_and_recorded(vae, elbo, binary_batch, seed=2, recorded=recorded)
    assert_identical(eager, replayed)
    assert all(p.grad is None for p in vae.decoder.parameters())
    assert all(p.grad is not None for p in vae.encoder.parameters())


def test_a_trainer_step_after_freezing_leaves_no_stale_gradient(digits):
    """The replay replaces every ``.grad`` instead of zeroing first: a parameter frozen between
    steps must lose its old gradient, or Adam would keep moving it."""
    x = digits.train.x[:32]
    vae = VAE(64, 3, hidden_dims=(16,))
    trainer = Trainer(vae, TrainConfig(lr=1e-2))
    trainer.step(x), trainer.step(x)  # eager and validated, then recorded
    assert all(p.grad is not None for p in vae.decoder.parameters())
    vae.decoder.requires_grad_(False)
    frozen = [p.detach().clone() for p in vae.decoder.parameters()]
    trainer.step(x)
    assert all(p.grad is None for p in vae.decoder.parameters())
    for parameter, before in zip(vae.decoder.parameters(), frozen, strict=True):
        assert torch.equal(parameter, before)


def test_operators_are_called_through_python_bindings_only_where_they_dispatch_alike():
    aten = torch.ops.aten

    def step(t: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return t * t, aten.mul.Scalar(t, 2.0), t.expand(3, 2), aten.split.Tensor(t, 1)[0]

    t = torch.tensor([1.5, -2.0])
    graph = _without_no_ops(make_fx(step, tracing_mode="fake")(t))
    graph = _with_python_bindings(graph)
    targets = [node.target for node in graph.graph.nodes if node.op == "call_function"]
    assert torch.mul in targets  # mul.Tensor: torch.mul dispatches to it
    assert aten.mul.Scalar in targets  # torch.mul(t, 2.0) would dispatch to mul.Tensor instead
    assert torch.Tensor.expand in targets
    assert aten.split.Tensor in targets  # torch.split is a Python wrapper, no faster
    for value, expected in zip(graph(t), step(t), strict=True):
        assert torch.equal(value, expected)


@pytest.mark.parametrize("estimator", ["mc", "analytic"])
def test_a_recorded_vae_step_calls_almost_every_operator_through_its_binding(estimator, digits):
    """Guards the per-call saving against a torch release that changes how bindings dispatch."""
    vae = VAE(64, 3, hidden_dims=(16,))
    recorded = RecordedGradient(
        vae, make_elbo(estimator), vae.generative_model, vae.inference_guide
    )
    recorded(digits.train.x[:32])
    (graph,) = recorded._graphs.values()
    calls = [node.target for node in graph.graph.nodes if node.op == "call_function"]
    overloads = [target for target in calls if isinstance(target, torch._ops.OpOverload)]
    assert len(overloads) <= 0.1 * len(calls), overloads


class ThresholdedLikelihood(Likelihood):
    """Branches in Python on a tensor's value: what a graph of tensor operations cannot hold."""

    def forward(self, x_hat: torch.Tensor) -> dist.Distribution:
        scale = 0.5 if x_hat.mean() > 0 else 1.0
        return dist.Normal(x_hat, scale).to_event(1)


def test_a_model_that_reads_values_trains_eagerly_and_says_why(digits, caplog):
    def trained(seed: int) -> tuple[list[float], list[torch.Tensor]]:
        pyro.set_rng_seed(seed)
        vae = VAE(64, 3, hidden_dims=(16,), likelihood=ThresholdedLikelihood(64))
        trainer = Trainer(vae, TrainConfig(lr=1e-2))
        losses = [trainer.step(digits.train.x[:32]).item() for _ in range(4)]
        return losses, [p.detach().clone() for p in vae.parameters()]

    with caplog.at_level(logging.INFO, logger="pyro_vae.recorded"):
        losses, parameters = trained(seed=1)
    assert "eagerly" in caplog.text and "(32, 64)" in caplog.text

    # The same run, every step eager: what it must equal
    pyro.set_rng_seed(1)
    vae = VAE(64, 3, hidden_dims=(16,), likelihood=ThresholdedLikelihood(64))
    elbo = make_elbo("mc")
    optimizer = torch.optim.Adam(vae.parameters(), lr=1e-2, fused=True)
    expected = []
    for step in range(4):
        optimizer.zero_grad(set_to_none=True)
        with pyro.validation_enabled(step == 0):
            loss = loss_and_backward(
                elbo, vae.generative_model, vae.inference_guide, digits.train.x[:32]
            )
        optimizer.step()
        expected.append(loss.item() / 32)
    assert losses == pytest.approx(expected, rel=1e-6)
    for parameter, reference in zip(parameters, vae.parameters(), strict=True):
        torch.testing.assert_close(parameter, reference.detach())


class AdjustableScaleLikelihood(Likelihood):
    """σ held in a Python float, as an annealing schedule might hold a weight."""

    def __init__(self, data_dim: int):
        super().__init__(data_dim)
        self.sigma = 1.0

    def forward(self, x_hat: torch.Tensor) -> dist.Distribution:
        return dist.Normal(x_hat, self.sigma).to_event(1)


def test_python_state_the_graph_cannot_see_needs_record_graph_false(digits):
    x = digits.train.x[:32]
    losses = {}
    for record_graph in (True, False):
        pyro.set_rng_seed(0)
        likelihood = AdjustableScaleLikelihood(64)
        vae = VAE(64, 3, hidden_dims=(16,), likelihood=likelihood)
        trainer = Trainer(vae, TrainConfig(), record_graph=record_graph)
        trainer.step(x), trainer.step(x)
        likelihood.sigma = 100.0  # −log N(x; x̂, 100²) ≈ 5.5 nats a pixel, against about 1 before
        losses[record_graph] = trainer.step(x).item()
    assert losses[False] > losses[True] + 64 * 3  # the recording kept σ = 1; eager steps see 100
