"""The step captured as one CUDA graph (captured.py): the recorded step's numbers, captured anew
whenever what a graph fixes has changed. The CUDA tests skip on a machine without a GPU."""

import io
from dataclasses import replace

import pyro
import pytest
import torch
from test_reliability import CONFIGS, assert_same_run, stop_after

from pyro_vae import VAE, RunHooks, TrainConfig, Trainer, resume_run, train_run
from pyro_vae.captured import CapturedStep

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


def trainer_on(device: str, estimator: str = "mc", **options) -> Trainer:
    pyro.set_rng_seed(0)
    vae = VAE(64, hidden_dims=(16,)).to(device)
    return Trainer(vae, TrainConfig(elbo=estimator, lr=1e-2), **options)


def test_what_a_capture_fixes_changes_with_the_rate_and_a_loaded_optimizer_state(digits):
    """The conditions a capture keeps: another learning rate, or optimizer state tensors loaded
    from a checkpoint, are another graph (here on the CPU, where nothing is captured)."""
    trainer = trainer_on("cpu")
    x = digits.train.x[:32]
    for _ in range(2):  # the first step is eager; the second records
        trainer.step(x)
    assert trainer._captured is None  # no CUDA graph on the CPU
    step = CapturedStep(trainer._recorded, trainer.optimizer)
    before = step._conditions()
    assert step._conditions() == before
    trainer.step(x)  # Adam's state changes in place: the same addresses
    assert step._conditions() == before
    trainer.set_lr(5e-3)
    assert step._conditions() != before
    trainer.set_lr(1e-2)
    assert step._conditions() == before
    buffer = io.BytesIO()
    torch.save(trainer.state_dict(), buffer)
    buffer.seek(0)
    trainer.load_state_dict(torch.load(buffer, weights_only=False))
    assert step._conditions() != before  # new state tensors, which a graph would not update


def batches(digits, device: str) -> list[torch.Tensor]:
    """Full batches and a smaller one in turn: two shapes, each captured."""
    x = digits.train.x.to(device)
    sizes = [32, 32, 32, 20, 32, 32, 20, 20, 32, 32]
    return [x[i * 32 : i * 32 + size] for i, size in enumerate(sizes)]


def losses_and_parameters(trainer: Trainer, data: list[torch.Tensor], lr_at: int | None = None):
    torch.manual_seed(1)
    losses = []
    for i, x in enumerate(data):
        if i == lr_at:
            trainer.set_lr(3e-3)  # a schedule's new rate: captured anew
        losses.append(trainer.step(x))
    return torch.stack(losses), [p.detach().clone() for p in trainer.vae.parameters()]


@needs_cuda
@pytest.mark.parametrize("estimator", ["mc", "analytic"])
def test_captured_steps_are_the_recorded_steps(estimator, digits):
    data = batches(digits, "cuda") * 2
    captured = trainer_on("cuda", estimator)
    reference = trainer_on("cuda", estimator, cuda_graph=False)
    assert reference._captured is None
    got, got_parameters = losses_and_parameters(captured, data, lr_at=12)
    want, want_parameters = losses_and_parameters(reference, data, lr_at=12)
    assert len(captured._captured._captures) == 2, "both batch shapes captured"
    assert captured._captured.failure is None
    assert torch.equal(got, want), (got - want).abs().max()
    for a, b in zip(got_parameters, want_parameters, strict=True):
        assert torch.equal(a, b), (a - b).abs().max()
    for a, b in zip(captured.vae.parameters(), reference.vae.parameters(), strict=True):
        assert torch.equal(a.grad, b.grad)  # the .grads are the last step's, as uncaptured


@needs_cuda
def test_a_loaded_optimizer_state_is_captured_anew(digits):
    """Loading a checkpoint replaces Adam's state tensors: a graph still writing the old ones
    would train on without them. The steps after the load repeat the steps after the save (each
    run of steps from the same seed)."""
    data = batches(digits, "cuda")[:3]
    trainer = trainer_on("cuda")
    for x in data * 2:
        trainer.step(x)
    buffer = io.BytesIO()
    torch.save((trainer.vae.state_dict(), trainer.state_dict()), buffer)
    first, _ = losses_and_parameters(trainer, data * 2)
    buffer.seek(0)
    model_state, trainer_state = torch.load(buffer, weights_only=False)
    trainer.vae.load_state_dict(model_state)
    trainer.load_state_dict(trainer_state)
    again, _ = losses_and_parameters(trainer, data * 2)
    assert torch.equal(first, again)


@needs_cuda
@pytest.mark.parametrize("name", ["default", "practice"])
def test_a_captured_run_stopped_mid_epoch_resumes_exactly(name, tmp_path):
    config = CONFIGS[name]
    config = replace(config, train=replace(config.train, device="cuda"))
    train_run(config, tmp_path / "straight")
    stopped = train_run(config, tmp_path / "stopped", hooks=RunHooks(should_stop=stop_after(30)))
    assert not stopped.finished
    assert resume_run(tmp_path / "stopped").finished
    assert_same_run(tmp_path / "straight", tmp_path / "stopped")
