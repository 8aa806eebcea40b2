"""The recorded graph computes the eager step's loss and gradients, bit for bit, or stands aside."""

import copy
import logging
import os
import random

import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro import poutine
from torch import nn
from torch.fx.experimental.proxy_tensor import make_fx

from pyro_vae import (
    LIKELIHOODS,
    PRIORS,
    VAE,
    GaussianLikelihood,
    Prior,
    TrainConfig,
    Trainer,
    elbo_per_datapoint,
    make_elbo,
)
from pyro_vae.components.likelihoods import Likelihood
from pyro_vae.inference.fast import compiled as compiled_module
from pyro_vae.inference.fast import replay as recorded_module
from pyro_vae.inference.fast.contract import declares_static
from pyro_vae.inference.fast.replay import RecordedGradient, _with_python_bindings, _without_no_ops
from pyro_vae.inference.objectives import loss_and_backward


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
    # A replay that disagrees with its audit stands aside and hands back the eager numbers, which
    # would then be compared with themselves: it must not have.
    assert recorded.eager_reason is None, recorded.eager_reason
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


@pytest.mark.parametrize("prior", PRIORS)
@pytest.mark.parametrize("particles", [1, 5])
def test_the_recorded_importance_weighted_step_is_the_eager_step(particles, prior, binary_batch):
    vae = VAE(64, 3, hidden_dims=(16,), prior=prior, guide="iaf" if prior == "vamp" else "diagonal")
    elbo = make_elbo("iwae", num_particles=particles)
    eager, recorded = eager_and_recorded(vae, elbo, binary_batch, seed=3)
    assert_identical(eager, recorded)


def test_an_importance_weighted_run_trains_on_its_recording(digits, caplog):
    """IWAE's steps were Pyro's eager ones (its RenyiELBO has no differentiable loss): now the
    trainer records them like the ELBOs', and says nothing of training eagerly."""
    trainer = Trainer(VAE(64, 3, hidden_dims=(16,)), TrainConfig(elbo="iwae", num_particles=5))
    x = digits.train.x[:32]
    with caplog.at_level(logging.INFO, logger="pyro_vae"):
        losses = [trainer.step(x) for _ in range(4)]
    assert trainer._recorded._graphs and trainer._recorded.eager_reason is None
    assert "eager" not in caplog.text and all(torch.isfinite(loss) for loss in losses)


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

    recordable = True  # a broken promise that the recording notices

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

    with caplog.at_level(logging.INFO, logger="pyro_vae.inference.fast.replay"):
        losses, parameters = trained(seed=1)
    assert "training eagerly" in caplog.text and "reads a tensor's value" in caplog.text
    assert len(caplog.records) == 1

    # The same run, every step eager: what it must equal
    pyro.set_rng_seed(1)
    vae = VAE(64, 3, hidden_dims=(16,), likelihood=ThresholdedLikelihood(64))
    elbo = make_elbo("mc")
    optimizer = torch.optim.Adam(vae.parameters(), lr=1e-2, fused=True)
    expected = []
    for step in range(4):
        optimizer.zero_grad(set_to_none=True)
        with pyro.validation_enabled(step == 0):
            loss, _ = loss_and_backward(
                elbo, vae.generative_model, vae.inference_guide, digits.train.x[:32]
            )
        optimizer.step()
        expected.append(loss.item() / 32)
    assert losses == pytest.approx(expected, rel=1e-6)
    for parameter, reference in zip(parameters, vae.parameters(), strict=True):
        torch.testing.assert_close(parameter, reference.detach())


# User components whose step a recording could get wrong, each with the schedule that changes it
# between steps. Each is tried as written (it declares nothing: trained eagerly) and declaring
# itself static (a broken promise that pyro-vae notices), except where noticing is impossible.


class ReassignedBufferLikelihood(Likelihood):
    """σ in a registered buffer, annealed by reassigning it: the graph would read the old tensor."""

    def __init__(self, data_dim: int):
        super().__init__(data_dim)
        self.register_buffer("sigma", torch.tensor(1.0))

    def forward(self, x_hat: torch.Tensor) -> dist.Distribution:
        return dist.Normal(x_hat, self.sigma).to_event(1)

    def schedule(self, step: int) -> None:
        self.sigma = torch.tensor(1.0 / (1 + step))


class FloatLikelihood(Likelihood):
    """σ in a Python float, annealed: the graph would hold the first value as a constant."""

    def __init__(self, data_dim: int):
        super().__init__(data_dim)
        self.sigma = 1.0

    def forward(self, x_hat: torch.Tensor) -> dist.Distribution:
        return dist.Normal(x_hat, self.sigma).to_event(1)

    def schedule(self, step: int) -> None:
        self.sigma = 1.0 / (1 + step)


class PythonRandomLikelihood(Likelihood):
    """σ drawn with Python's random at every call: the graph would keep one draw."""

    def forward(self, x_hat: torch.Tensor) -> dist.Distribution:
        return dist.Normal(x_hat, random.uniform(0.5, 1.5)).to_event(1)


class NumPyRandomLikelihood(Likelihood):
    """σ drawn with NumPy's global generator at every call: the graph would keep one draw."""

    def forward(self, x_hat: torch.Tensor) -> dist.Distribution:
        return dist.Normal(x_hat, float(np.random.uniform(0.5, 1.5))).to_event(1)


class NumPyGaussianLikelihood(Likelihood):
    """σ from NumPy's legacy normal draw, which every other call serves from a cache: the
    generator's position does not move for those."""

    def forward(self, x_hat: torch.Tensor) -> dist.Distribution:
        return dist.Normal(x_hat, 1.0 + 0.1 * abs(float(np.random.normal()))).to_event(1)


class CachingLikelihood(Likelihood):
    """Keeps the last decoder output: a recording would leave its fake tensor there."""

    def __init__(self, data_dim: int):
        super().__init__(data_dim)
        self.last_x_hat: torch.Tensor | None = None

    def forward(self, x_hat: torch.Tensor) -> dist.Distribution:
        self.last_x_hat = x_hat
        return dist.Normal(x_hat, 1.0).to_event(1)


PRIOR_SCALE = 1.0  # read by GlobalScalePrior at every call


class GlobalScalePrior(Prior):
    """The prior's scale read from a module-level value that changes: nothing can notice this one,
    so only its declaration keeps it from being recorded."""

    def forward(self) -> dist.Distribution:
        return dist.Normal(torch.zeros(self.latent_dim), PRIOR_SCALE).to_event(1)

    def schedule(self, step: int) -> None:
        global PRIOR_SCALE
        PRIOR_SCALE = 1.0 + step


def declaring(cls: type) -> type:
    """``cls`` with ``recordable = True`` in its own body, as a user would write it."""
    return type(f"Declared{cls.__name__}", (cls,), {"recordable": True})


USER_COMPONENTS = [
    *(
        pytest.param(kind, declared, id=f"{kind.__name__}-{'declared' if declared else 'as-is'}")
        for kind in [
            ReassignedBufferLikelihood,
            FloatLikelihood,
            PythonRandomLikelihood,
            NumPyRandomLikelihood,
            NumPyGaussianLikelihood,
            CachingLikelihood,
        ]
        for declared in (False, True)
    ),
    pytest.param(GlobalScalePrior, False, id="GlobalScalePrior-as-is"),
]


def train_steps(component: nn.Module, record_graph: bool, x: torch.Tensor, steps: int = 5):
    """Parameters and gradients after each of ``steps`` trainer steps, the component's schedule
    (if any) run before each; then the validation ELBO, computed eagerly."""
    global PRIOR_SCALE
    PRIOR_SCALE = 1.0
    random.seed(0), np.random.seed(0), pyro.set_rng_seed(0)
    part = "prior" if isinstance(component, Prior) else "likelihood"
    vae = VAE(64, 3, hidden_dims=(16,), **{part: component})
    trainer = Trainer(vae, TrainConfig(lr=1e-2, compile=False), record_graph=record_graph)
    seen = []
    for step in range(steps):
        if hasattr(component, "schedule"):
            component.schedule(step)
        loss = trainer.step(x)
        seen.append((loss, [p.grad.clone() for p in vae.parameters()]))
        seen.append((None, [p.detach().clone() for p in vae.parameters()]))
    return seen, elbo_per_datapoint(vae, x, num_particles=2)


@pytest.mark.parametrize(("kind", "declared"), USER_COMPONENTS)
def test_a_user_component_trains_as_eagerly_or_eagerly_with_a_reason(
    kind, declared, digits, caplog
):
    make = declaring(kind) if declared else kind
    component = make(3) if issubclass(kind, Prior) else make(64)
    x = digits.train.x[:32]
    with caplog.at_level(logging.INFO, logger="pyro_vae.inference.fast.replay"):
        recorded, recorded_elbo = train_steps(component, True, x)
    eager, eager_elbo = train_steps(make(3) if issubclass(kind, Prior) else make(64), False, x)
    for (loss, values), (eager_loss, eager_values) in zip(recorded, eager, strict=True):
        if loss is not None:
            torch.testing.assert_close(loss, eager_loss, rtol=0, atol=0)
        for value, eager_value in zip(values, eager_values, strict=True):
            torch.testing.assert_close(value, eager_value, rtol=0, atol=0)
    assert recorded_elbo == eager_elbo  # validation runs eagerly after the recorded steps
    reasons = [r.getMessage() for r in caplog.records if "training eagerly" in r.getMessage()]
    assert len(reasons) == 1, reasons  # one line, saying why
    expected = {
        False: "does not declare its step static",
        ReassignedBufferLikelihood: "likelihood.sigma was reassigned after the step was recorded",
        FloatLikelihood: "likelihood.sigma changed after the step was recorded",
        PythonRandomLikelihood: "Python's or NumPy's random number generator",
        NumPyRandomLikelihood: "Python's or NumPy's random number generator",
        NumPyGaussianLikelihood: "Python's or NumPy's random number generator",
        CachingLikelihood: "likelihood.last_x_hat changed while the step was recorded",
    }[kind if declared else False]
    assert expected in reasons[0]


class TemperedLikelihood(GaussianLikelihood):
    """A subclass of a built-in that changes ``forward``: it has not declared anything."""

    temperature = 2.0

    def forward(self, x_hat: torch.Tensor) -> dist.Distribution:
        return dist.Normal(x_hat, self.scale * self.temperature).to_event(1)


def test_a_subclass_of_a_builtin_component_declares_for_itself(digits, caplog):
    assert declares_static(GaussianLikelihood) and not declares_static(TemperedLikelihood)
    assert declares_static(torch.nn.Linear)
    with caplog.at_level(logging.INFO, logger="pyro_vae.inference.fast.replay"):
        recorded, _ = train_steps(TemperedLikelihood(64), True, digits.train.x[:32], steps=3)
    eager, _ = train_steps(TemperedLikelihood(64), False, digits.train.x[:32], steps=3)
    assert_same_steps(recorded, eager)
    assert [r.getMessage() for r in caplog.records] == [
        "training eagerly: likelihood (TemperedLikelihood) does not declare its step static, so a "
        "recorded graph could compute something else (see docs/components.md, 'Recorded steps', "
        "for `recordable = True`)"
    ]


def assert_same_steps(recorded, eager) -> None:
    for (loss, values), (eager_loss, eager_values) in zip(recorded, eager, strict=True):
        if loss is not None:
            torch.testing.assert_close(loss, eager_loss, rtol=0, atol=0)
        for value, eager_value in zip(values, eager_values, strict=True):
            torch.testing.assert_close(value, eager_value, rtol=0, atol=0)


def test_a_builtin_buffer_updated_in_place_stays_recorded_and_exact(digits, caplog):
    """The way to change a value during training: the graph reads a buffer at every replay."""
    x = digits.train.x[:32]
    results = []
    with caplog.at_level(logging.INFO, logger="pyro_vae.inference.fast.replay"):
        for record_graph in (True, False):
            pyro.set_rng_seed(0)
            vae = VAE(64, 3, hidden_dims=(16,))
            trainer = Trainer(vae, TrainConfig(lr=1e-2, compile=False), record_graph=record_graph)
            losses = []
            for step in range(4):
                vae.likelihood.scale.fill_(1.0 / (1 + step))
                losses.append(trainer.step(x))
            results.append((losses, [p.detach().clone() for p in vae.parameters()]))
            if record_graph:  # replayed: a graph was made and kept
                assert trainer._recorded.eager_reason is None
                assert len(trainer._recorded._graphs) == 1
    for recorded, eager in zip(*results, strict=True):
        torch.testing.assert_close(recorded, eager, rtol=0, atol=0)
    assert not caplog.records


def changed_between_steps(digits, change, steps_before: int = 2, steps_after: int = 2):
    """Losses and parameters of a recorded and an eager run, with ``change(vae, trainer)`` made
    between their steps, and the log lines of the recorded one."""
    x = digits.train.x[:32]
    results = []
    for record_graph in (True, False):
        pyro.set_rng_seed(0)
        vae = VAE(64, 3, hidden_dims=(16,))
        trainer = Trainer(vae, TrainConfig(lr=1e-2, compile=False), record_graph=record_graph)
        losses = [trainer.step(x) for _ in range(steps_before)]
        change(vae, trainer)
        losses += [trainer.step(x) for _ in range(steps_after)]
        results.append((torch.stack(losses), [p.detach().clone() for p in vae.parameters()]))
    (losses, parameters), (eager_losses, eager_parameters) = results
    torch.testing.assert_close(losses, eager_losses, rtol=0, atol=0)
    for parameter, eager_parameter in zip(parameters, eager_parameters, strict=True):
        torch.testing.assert_close(parameter, eager_parameter, rtol=0, atol=0)


def swap_likelihood(likelihood: nn.Module):
    def change(vae, trainer) -> None:
        vae.likelihood = likelihood

    return change


def reassign_scale(vae, trainer) -> None:
    vae.likelihood.scale = torch.tensor(0.1)  # −log N(x; x̂, 0.1²): a larger loss


def forward_hook(vae, trainer) -> None:
    vae.decoder.register_forward_hook(lambda module, args, out: out * 0.5)


def gradient_hook(vae, trainer) -> None:
    vae.decoder.net[0].weight.register_hook(lambda gradient: gradient.clamp(-1e-3, 1e-3))


CHANGES = {
    # before the first step: the recording reads the new tensor, nothing to stand aside for
    "a built-in's buffer reassigned before recording": (reassign_scale, 0, None),
    "the same, after recording": (reassign_scale, 2, "likelihood.scale was reassigned"),
    "an undeclared likelihood swapped in before recording": (
        swap_likelihood(FloatLikelihood(64)),
        1,
        "likelihood (FloatLikelihood) does not declare",
    ),
    "a forward hook before recording": (forward_hook, 1, "decoder has a hook (forward_hooks)"),
    "a forward hook after recording": (forward_hook, 2, "a hook of decoder (forward_hooks)"),
    "a gradient hook before recording": (gradient_hook, 1, "a parameter has a gradient hook"),
    "a gradient hook after recording": (gradient_hook, 2, "a parameter has a gradient hook"),
}


@pytest.mark.parametrize(("change", "steps_before", "reason"), CHANGES.values(), ids=CHANGES)
def test_changes_between_steps_are_noticed(change, steps_before, reason, digits, caplog):
    """Made after the trainer (the first step is eager and validates, the second records)."""
    with caplog.at_level(logging.INFO, logger="pyro_vae.inference.fast.replay"):
        changed_between_steps(digits, change, steps_before)
    messages = [record.getMessage() for record in caplog.records]
    if reason is None:
        assert not messages
    else:
        assert len(messages) == 1 and reason in messages[0], messages


def test_steps_inside_a_pyro_handler_are_eager(digits, caplog):
    """An annealing schedule written as poutine.scale around the step: the scale of the step,
    not of the recording."""
    x = digits.train.x[:32]
    losses = {}
    for record_graph in (True, False):
        pyro.set_rng_seed(0)
        trainer = Trainer(
            VAE(64, 3, hidden_dims=(16,)), TrainConfig(compile=False), record_graph=record_graph
        )
        losses[record_graph] = []
        with caplog.at_level(logging.INFO, logger="pyro_vae.inference.fast.replay"):
            for step in range(4):
                with poutine.scale(scale=1.0 / (1 + step)):
                    losses[record_graph].append(trainer.step(x))
    torch.testing.assert_close(
        torch.stack(losses[True]), torch.stack(losses[False]), rtol=0, atol=0
    )
    assert "inside a Pyro handler (ScaleMessenger)" in caplog.text


def test_the_trainers_objective_cannot_be_swapped_under_its_recording():
    trainer = Trainer(VAE(64, 3, hidden_dims=(16,)), TrainConfig())
    with pytest.raises(AttributeError):
        trainer.elbo = make_elbo("analytic")


SIGMA_FACTOR = "PYRO_VAE_TEST_SIGMA_FACTOR"


class EnvironmentScaleLikelihood(GaussianLikelihood):
    """σ times a factor read from the process environment at every call, declared static: a
    broken promise that no watch sees (the environment is no attribute)."""

    recordable = True

    def forward(self, x_hat: torch.Tensor) -> dist.Distribution:
        factor = float(os.environ.get(SIGMA_FACTOR, "1"))
        return dist.Normal(x_hat, self.scale * factor).to_event(1)


def audited_steps(kind: type, record_graph: bool, x: torch.Tensor, monkeypatch) -> list:
    """Losses and parameters over 7 trainer steps; before the 6th, the value the component
    reads from outside it changes (the environment, or a module-level value)."""
    global PRIOR_SCALE
    PRIOR_SCALE = 1.0
    monkeypatch.delenv(SIGMA_FACTOR, raising=False)
    pyro.set_rng_seed(0)
    prior = issubclass(kind, Prior)
    vae = VAE(
        64, 3, hidden_dims=(16,), **{"prior" if prior else "likelihood": kind(3 if prior else 64)}
    )
    trainer = Trainer(vae, TrainConfig(lr=1e-2, compile=False), record_graph=record_graph)
    seen = []
    for step in range(7):
        if step == 5:  # the first step is eager (validated), the next three audited replays
            PRIOR_SCALE = 3.0
            monkeypatch.setenv(SIGMA_FACTOR, "2")
        seen += [trainer.step(x), *(p.detach().clone() for p in vae.parameters())]
    return seen


@pytest.mark.parametrize(
    "kind",
    [EnvironmentScaleLikelihood, declaring(GlobalScalePrior)],
    ids=["environment", "module-level value"],
)
def test_a_broken_declaration_no_watch_sees_is_caught_by_the_audit(
    kind, digits, caplog, monkeypatch
):
    """The replay is compared with the eager step at its first replays and then every
    AUDIT_EVERY steps: the step where they differ takes the eager step's numbers, and every
    later step is eager, with one warning naming the component. Without the audit the run
    goes on silently wrong."""
    x = digits.train.x[:32]
    eager = audited_steps(kind, False, x, monkeypatch)
    monkeypatch.setattr(recorded_module, "AUDIT_EVERY", 5)  # the 5th replay: the 6th step
    with caplog.at_level(logging.INFO, logger="pyro_vae.inference.fast.replay"):
        audited = audited_steps(kind, True, x, monkeypatch)
    for got, want in zip(audited, eager, strict=True):
        torch.testing.assert_close(got, want, rtol=0, atol=0)
    warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1, [r.getMessage() for r in caplog.records]
    assert f"({kind.__qualname__}) declares its step static" in warnings[0].getMessage()
    monkeypatch.setattr(recorded_module, "AUDIT_EVERY", 10**9)  # no audit after the first three
    unaudited = audited_steps(kind, True, x, monkeypatch)
    assert not all(torch.equal(a, b) for a, b in zip(unaudited, eager, strict=True))


def test_training_flushes_denormals_in_every_thread_of_torchs_pool():
    """Denormals (Adam's decaying moments) cost tens of times a normal number's arithmetic:
    a Trainer flushes them to zero in each thread torch computes on, also in a thread pool that
    an earlier operation started without that mode (a fresh process, so that nothing before
    this test set it)."""
    import subprocess
    import sys

    script = """
import torch
from pyro_vae import VAE, TrainConfig, Trainer
print(int(torch.set_flush_denormal(False)))  # whether this CPU can flush at all
torch.set_num_threads(2)
torch.randn(1000, 1000).exp().sum()  # the thread pool starts here, denormals kept
tiny = torch.full((4_000_000,), 1e-39)  # parallel work: each thread takes a share
print(int((tiny * 3.0).ne(0).sum()))
Trainer(VAE(4, 2, (8,)), TrainConfig())
print(int((tiny * 3.0).ne(0).sum()))
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    capable, before, after = map(int, done.stdout.split())
    if not capable:  # not an x86 CPU: nothing to flush
        pytest.skip("this CPU cannot flush denormals to zero")
    assert before == 4_000_000 and after == 0


# Compiled steps (inference/fast/compiled.py)


def compiled_trainers(digits, compile):
    """Two epochs of a small VAE on the digits with ``compile`` as asked, from one seed."""
    pyro.set_rng_seed(0)
    vae = VAE(64, 3, hidden_dims=(16,))
    trainer = Trainer(vae, TrainConfig(lr=1e-2, batch_size=128, epochs=2, compile=compile))
    return vae, trainer


@pytest.mark.slow
def test_a_compiled_step_trains_as_the_replay_does_and_resumes_to_the_bit(digits):
    """Inductor's graph sums in its own order, so its numbers are the replay's to a tolerance;
    resumed from a checkpoint, a compiled run repeats its own numbers to the bit."""
    results = {}
    for compile in (True, False):
        vae, trainer = compiled_trainers(digits, compile)
        for _ in range(2):
            trainer.train_epoch(digits)
        results[compile] = [p.detach().clone() for p in vae.parameters()]
        if compile:
            assert trainer._recorded.compiled is True
            full, last = trainer._recorded._graphs.values()  # 1,437 images: 11 full batches
            assert id(full) in trainer._recorded._uncompiled
            assert isinstance(last, torch.fx.GraphModule)  # the short last batch: replayed
    for compiled, replayed in zip(results[True], results[False], strict=True):
        torch.testing.assert_close(compiled, replayed, rtol=1e-4, atol=1e-5)
    assert not all(map(torch.equal, results[True], results[False]))  # compiled: its own sums
    # Stopped after one epoch: the model, the trainer and the random generator saved, then put
    # into a new trainer, whose first step is the compiled one, as the uninterrupted run's was.
    vae, trainer = compiled_trainers(digits, True)
    trainer.train_epoch(digits)
    saved = copy.deepcopy((vae.state_dict(), trainer.state_dict(), torch.get_rng_state()))
    assert saved[1]["compiled"] is True
    vae, trainer = compiled_trainers(digits, True)  # a resumed run keeps its configuration
    vae.load_state_dict(saved[0])
    trainer.load_state_dict(saved[1])
    torch.set_rng_state(saved[2])
    trainer.train_epoch(digits)
    assert trainer._recorded.compiled is True
    for resumed, uninterrupted in zip(vae.parameters(), results[True], strict=True):
        torch.testing.assert_close(resumed.detach(), uninterrupted, rtol=0, atol=0)


def test_whether_to_compile_is_decided_by_the_runs_length_and_the_timing_kept_per_machine(
    digits, monkeypatch, caplog, tmp_path
):
    """Left to decide, a run compiles only when its replayed steps would take AUTO_SECONDS or
    more, and keeps the compiled graph only where it times faster, measured once per machine and
    graph and then read from the cache; a forced choice does neither; a compiler that fails
    leaves the replay. (The compiler and the clock are stand-ins: the decision is tested here.)"""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.setattr(recorded_module, "AUTO_SECONDS", compiled_module.AUTO_SECONDS)
    caplog.set_level(logging.INFO, logger="pyro_vae")
    calls = {"compile": 0, "paired": 0}
    timing = {"paired": (1.0, 2.0)}  # (replayed, compiled) seconds

    def fake_compile(graph, inputs, asked=False):
        calls["compile"] += 1
        return lambda *values: graph(*values)

    def fake_paired(*args):
        calls["paired"] += 1
        return timing["paired"]

    monkeypatch.setattr(recorded_module, "compile_graph", fake_compile)
    monkeypatch.setattr(recorded_module, "paired_seconds", fake_paired)
    monkeypatch.setattr(recorded_module, "replay_seconds", lambda graph, inputs: 0.01)
    x = digits.train.x[:32]

    def decided(compile, planned, paired=(1.0, 2.0), hidden=16):
        timing["paired"] = paired
        calls.update(compile=0, paired=0)
        config = TrainConfig(compile=compile, batch_size=32)
        trainer = Trainer(VAE(64, 3, hidden_dims=(hidden,)), config)
        trainer._recorded.planned_steps = planned
        for _ in range(3):
            trainer.step(x)
        return trainer._recorded.compiled, calls["compile"], calls["paired"]

    enough = round(recorded_module.AUTO_SECONDS / 0.01)  # steps of 10 ms
    assert decided(None, enough - 1) == (False, 0, 0)  # too short to repay a compile
    assert decided(None, None) == (False, 0, 0)  # steps taken one by one: no plan
    assert decided(None, enough, (1.0, 2.0)) == (False, 1, 1)  # compiled, slower: dropped
    assert "replayed, not compiled" in caplog.text
    assert decided(None, enough, (2.0, 1.0)) == (False, 1, 0)  # the cache's verdict stands
    assert decided(None, enough, (2.0, 1.0), hidden=17) == (True, 1, 1)  # another graph
    assert decided(None, enough, (1.0, 2.0), hidden=17) == (True, 1, 0)  # cached: compiled
    assert decided(True, 10, (1.0, 2.0)) == (True, 1, 0)  # asked for: compiled, no timing
    assert decided(False, 10**9, (2.0, 1.0)) == (False, 0, 0)  # refused
    assert (tmp_path / "pyro-vae" / "compile-timings.json").exists()
    # The full batches' graph is the one compiled, though a resumed run may record a short
    # last batch first.
    trainer = Trainer(VAE(64, 3, hidden_dims=(16,)), TrainConfig(compile=True, batch_size=32))
    trainer._recorded.full_batch = 32  # as an epoch sets it
    for batch in (x, x[:20], x[:20], x[:20], x):  # eager, then recorded
        trainer.step(batch)
    graphs = {key[0][0][0]: graph for key, graph in trainer._recorded._graphs.items()}
    assert isinstance(graphs[20], torch.fx.GraphModule)
    assert not isinstance(graphs[32], torch.fx.GraphModule)
    monkeypatch.setattr(recorded_module, "compile_graph", lambda graph, inputs, asked: None)
    assert decided(True, 10)[0] is False  # the compiler failed: the replay trains


def off_by_a_percent(step):
    """``step`` (a recorded graph's callable) with its loss 1 % off: something other than a
    reordered sum, which an audit must catch."""

    def wrong(*values):
        loss, negative_elbo, *gradients = step(*values)
        return (loss * 1.01, negative_elbo, *gradients)

    return wrong


def test_a_compiled_graph_that_computes_other_numbers_gives_way_to_its_recording(
    digits, monkeypatch, caplog
):
    """Beyond Inductor's reordered sums, a compiled step's audit finds it out: that step takes
    the eager numbers, the recording is replayed from then on, and a checkpoint says so."""
    monkeypatch.setattr(
        recorded_module, "compile_graph", lambda graph, inputs, asked: off_by_a_percent(graph)
    )
    caplog.set_level(logging.INFO, logger="pyro_vae")
    x = digits.train.x[:32]
    trainer = Trainer(VAE(64, 3, hidden_dims=(16,)), TrainConfig(compile=True, batch_size=32))
    for _ in range(3):
        trainer.step(x)
    recorded = trainer._recorded
    assert recorded.compiled is False and recorded.eager_reason is None
    assert all(isinstance(graph, torch.fx.GraphModule) for graph in recorded._graphs.values())
    assert "the recorded step is replayed from here on" in caplog.text
    assert trainer.state_dict()["compiled"] is False


def test_a_compiler_that_fails_is_said_once_and_the_replay_trains(digits, monkeypatch, caplog):
    import torch._inductor.compile_fx as inductor

    def broken(*args, **kwargs):
        raise RuntimeError("no working C++ compiler found")

    monkeypatch.setattr(inductor, "compile_fx", broken)
    caplog.set_level(logging.INFO, logger="pyro_vae")
    x = digits.train.x[:32]
    trainer = Trainer(VAE(64, 3, hidden_dims=(16,)), TrainConfig(compile=True, batch_size=32))
    losses = [trainer.step(x) for _ in range(4)]
    assert trainer._recorded.compiled is False and trainer._recorded.eager_reason is None
    assert all(torch.isfinite(loss) for loss in losses)
    notes = [r for r in caplog.records if "could not compile" in r.getMessage()]
    assert len(notes) == 1 and "no working C++ compiler found" in notes[0].getMessage()
    assert notes[0].levelno == logging.WARNING  # asked for, and not done


def test_a_compiled_graphs_audit_allows_reordered_sums_and_catches_a_changed_step():
    """A compiled graph sums in its own order: an entry that is a sum of cancelling terms may
    differ by more than 1e-5 of the tensor's largest entry (M2's gradients did), which is no
    sign of a broken declaration; a step that computes something else is one."""
    from pyro_vae.inference.fast.replay import _identical

    torch.manual_seed(0)
    gradient = torch.randn(1000)
    reordered = gradient.clone()
    reordered[:10] += 1e-4 * gradient.abs().max()  # a few cancelling sums, rounded otherwise
    assert not _identical(gradient, reordered)  # not the bits: a replay's audit would object
    assert _identical(gradient, reordered, exact=False)
    assert not _identical(gradient, 1.01 * gradient, exact=False)  # another step altogether
    assert not _identical(gradient, gradient.roll(1), exact=False)
    assert _identical(torch.tensor(float("nan")), torch.tensor(float("nan")), exact=False)
