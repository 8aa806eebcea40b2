"""The step captured as one CUDA graph (inference/fast/cuda_graph.py): the recorded step's numbers,
captured anew whenever what a graph fixes has changed. The CUDA tests skip on a machine without a
GPU."""

import io
from dataclasses import replace

import pyro
import pytest
import torch
from test_reliability import CONFIGS, assert_same_run, stop_after

import pyro_vae.inference.trainer as train_module
from pyro_vae import VAE, RunHooks, TrainConfig, Trainer, resume_run, train_run
from pyro_vae.inference.fast.cuda_graph import CapturedStep
from pyro_vae.inference.fast.replay import RecordedGradient
from pyro_vae.inference.update import UpdateRule

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
    step = CapturedStep(trainer._recorded, trainer.update_rule)
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
    now = step._conditions()
    trainer.optimizer.param_groups[0]["params"].pop()  # a parameter the update no longer takes
    assert step._conditions() != now


@pytest.mark.parametrize("schedule", ["constant", "cosine", "step", "plateau"])
def test_what_keeps_steps_uncaptured_is_python_a_replay_would_not_run(schedule):
    """A step hook or a replaced ``step`` would run only at the capture; torch's schedulers
    also wrap ``step``, only to note that it ran, which a capture may leave out."""
    trainer = Trainer(VAE(64, hidden_dims=(16,)), TrainConfig(lr_schedule=schedule, epochs=3))
    step = CapturedStep(trainer._recorded, trainer.update_rule)
    assert not step._hooked()
    handle = trainer.optimizer.register_step_post_hook(lambda optimizer, args, kwargs: None)
    assert step._hooked()
    handle.remove()
    trainer.optimizer.step = lambda *args, **kwargs: None
    assert step._hooked()


def test_an_optimizer_neither_fused_nor_capturable_is_never_captured(digits):
    """Adagrad counts its steps on the host: a graph would replay one step's rate for ever.
    The check comes before anything touches CUDA, so it runs here on the CPU."""
    trainer = trainer_on("cpu")
    adagrad = UpdateRule(torch.optim.Adagrad(trainer.vae.parameters()))
    step = CapturedStep(trainer._recorded, adagrad)
    assert step._capture(None, (digits.train.x[:4],), ()) is None
    assert "Adagrad" in step.failure and "neither fused nor capturable" in step.failure


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


MADE: list["CountedCaptures"] = []  # every one made in the test running


class CountedCaptures(CapturedStep):
    """A CapturedStep that counts the graphs it captures, so that a test can tell that the
    captured path was taken at all."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.captured = 0
        MADE.append(self)

    def _capture(self, *args, **kwargs):
        capture = super()._capture(*args, **kwargs)
        self.captured += capture is not None
        return capture


@pytest.fixture
def counted(monkeypatch):
    MADE.clear()
    monkeypatch.setattr(train_module, "CapturedStep", CountedCaptures)
    return MADE


def on_cuda(name: str):
    config = CONFIGS[name]
    return replace(config, train=replace(config.train, device="cuda"))


@needs_cuda
@pytest.mark.parametrize("name", list(CONFIGS))
def test_a_captured_run_is_the_uncaptured_run(name, counted, monkeypatch, tmp_path):
    """Whole runs: epochs with a smaller last batch, validation between them, and in the configs
    a sampled prior KL, dynamic binarization, β with a warm-up, a learning-rate schedule."""
    train_run(on_cuda(name), tmp_path / "captured")
    # Both batch shapes, or (with a rate new every epoch) the full one captured anew.
    assert sum(step.captured for step in counted) >= 2
    assert all(step.failure is None for step in counted)
    monkeypatch.setattr(train_module, "CapturedStep", lambda *args: None)  # replays uncaptured
    train_run(on_cuda(name), tmp_path / "uncaptured")
    assert_same_run(tmp_path / "captured", tmp_path / "uncaptured")


@needs_cuda
@pytest.mark.parametrize("name", ["default", "practice"])
def test_a_captured_run_stopped_mid_epoch_resumes_exactly(name, counted, tmp_path):
    config = on_cuda(name)
    train_run(config, tmp_path / "straight")
    stopped = train_run(config, tmp_path / "stopped", hooks=RunHooks(should_stop=stop_after(30)))
    assert not stopped.finished
    assert resume_run(tmp_path / "stopped").finished
    assert len(counted) == 3 and all(step.captured for step in counted)  # each of the 3 runs
    assert_same_run(tmp_path / "straight", tmp_path / "stopped")


@needs_cuda
def test_a_step_that_cannot_be_captured_is_taken_uncaptured(digits, monkeypatch):
    """A step that waits for the GPU while it is captured (CUDA invalidates the capture): said
    once, and that step and every later one taken uncaptured, with the same numbers; the
    device's random numbers still work afterwards."""
    replay = RecordedGradient.replay

    def waits_while_captured(self, graph, *batch):
        losses = replay(self, graph, *batch)
        if torch.cuda.is_current_stream_capturing():
            losses[0].item()  # a synchronisation: CUDA gives the capture up
        return losses

    monkeypatch.setattr(RecordedGradient, "replay", waits_while_captured)
    data = batches(digits, "cuda")
    captured = trainer_on("cuda")
    got, got_parameters = losses_and_parameters(captured, data)
    assert captured._captured.failure is not None and not captured._captured._captures
    want, want_parameters = losses_and_parameters(trainer_on("cuda", cuda_graph=False), data)
    assert torch.equal(got, want)
    for a, b in zip(got_parameters, want_parameters, strict=True):
        assert torch.equal(a, b)
    assert torch.randn(3, device="cuda").isfinite().all()


@needs_cuda
def test_an_optimizer_with_step_hooks_is_not_captured(digits):
    """A replay runs no Python: a step hook would run only at the capture. With one, steps are
    taken uncaptured (the hook runs at every step) and give the same numbers."""
    data = batches(digits, "cuda")
    hooked = trainer_on("cuda")
    calls = []
    hooked.optimizer.register_step_post_hook(lambda optimizer, args, kwargs: calls.append(1))
    got, _ = losses_and_parameters(hooked, data)
    assert len(calls) == len(data) and not hooked._captured._captures
    want, _ = losses_and_parameters(trainer_on("cuda", cuda_graph=False), data)
    assert torch.equal(got, want)


@needs_cuda
def test_a_replaced_optimizer_is_the_one_captured(digits):
    data = batches(digits, "cuda")
    trainer = trainer_on("cuda")
    losses_and_parameters(trainer, data)
    trainer.optimizer = torch.optim.Adam(trainer.vae.parameters(), lr=1e-3, fused=True)
    losses_and_parameters(trainer, data)
    assert trainer._captured.optimizer is trainer.optimizer and trainer._captured._captures
    assert len(trainer.optimizer.state) == len(list(trainer.vae.parameters()))
