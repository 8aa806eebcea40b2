"""Runs that stop and continue: exact resume, SIGKILL, Ctrl-C, divergence, reproducibility."""

import json
import os
import signal
import subprocess
import sys
import time
import zipfile
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

import cli as cli_module
from pyro_vae import (
    DataConfig,
    ModelConfig,
    RunConfig,
    RunHooks,
    TrainConfig,
    Trainer,
    TrainingDiverged,
    UserInputError,
    load_checkpoint,
    resume_run,
    train_run,
)
from pyro_vae.runs import writer as writer_module

ROOT = Path(__file__).resolve().parents[1]

CONFIGS = {
    "default": RunConfig(model=ModelConfig(hidden_dims=(16,)), train=TrainConfig(epochs=3)),
    # sampled prior KL, dynamic binarization and learnt components: every generator in play
    "mog-dynamic": RunConfig(
        model=ModelConfig(hidden_dims=(16,), prior="mog", likelihood="bernoulli"),
        data=DataConfig(binarize="dynamic"),
        train=TrainConfig(epochs=3, elbo="analytic", num_particles=2),
    ),
    # a weighted objective on a schedule, a learning-rate schedule and early stopping's state
    "practice": RunConfig(
        model=ModelConfig(hidden_dims=(16,)),
        train=TrainConfig(
            epochs=3,
            elbo="analytic",
            beta=2.0,
            kl_warmup=2,
            free_bits=0.1,
            lr_schedule="cosine",
            patience=5,
        ),
    ),
}


def assert_same_run(a: Path, b: Path) -> None:
    """Bit-identical parameters, optimizer state and metrics."""
    first, second = load_checkpoint(a), load_checkpoint(b)
    assert first.model_state.keys() == second.model_state.keys()
    for name, tensor in first.model_state.items():
        assert torch.equal(tensor, second.model_state[name]), name
    for key, state in first.trainer_state["optimizer"]["state"].items():
        assert torch.equal(
            state["exp_avg_sq"], second.trainer_state["optimizer"]["state"][key]["exp_avg_sq"]
        )
    assert (a / "metrics.jsonl").read_bytes() == (b / "metrics.jsonl").read_bytes()
    for key in ("scheduler", "early_stopping"):
        assert first.trainer_state[key] == second.trainer_state[key]


def stop_after(steps: int):
    count = 0

    def should_stop() -> bool:
        nonlocal count
        count += 1
        return count >= steps

    return should_stop


@pytest.mark.parametrize("config", CONFIGS.values(), ids=CONFIGS.keys())
def test_a_run_stopped_mid_epoch_resumes_exactly(config, tmp_path):
    train_run(config, tmp_path / "straight")
    stopped = train_run(config, tmp_path / "stopped", hooks=RunHooks(should_stop=stop_after(30)))
    assert not stopped.finished and stopped.steps_done == 30 - 23  # 23 steps an epoch
    assert len(load_checkpoint(tmp_path / "stopped").trainer_state["history"]) == 1
    resumed = resume_run(tmp_path / "stopped")
    assert resumed.finished and len(resumed.history) == 3
    assert_same_run(tmp_path / "straight", tmp_path / "stopped")


def test_checkpoints_every_n_steps_inside_epochs(tmp_path, monkeypatch):
    saved = []
    real_save = writer_module.save_checkpoint

    def spy(checkpoint, path):
        progress = checkpoint.trainer_state["epoch_in_progress"]
        saved.append(
            (len(checkpoint.trainer_state["history"]), progress and progress["steps_done"])
        )
        real_save(checkpoint, path)

    monkeypatch.setattr(writer_module, "save_checkpoint", spy)
    config = RunConfig(model=ModelConfig(hidden_dims=(16,)), train=TrainConfig(epochs=2))
    train_run(config, tmp_path / "run", hooks=RunHooks(checkpoint_every=10))
    assert saved == [(0, 10), (0, 20), (1, None), (1, 10), (1, 20), (2, None)]


def test_resume_may_extend_and_lower_the_rate_but_not_change_the_model(tmp_path):
    config = RunConfig(model=ModelConfig(hidden_dims=(16,)), train=TrainConfig(epochs=1))
    train_run(config, tmp_path / "run")
    with pytest.raises(UserInputError, match="has finished its 1 epochs"):
        resume_run(tmp_path / "run")
    with pytest.raises(UserInputError, match="batch_size cannot change"):
        resume_run(tmp_path / "run", {"epochs": 2, "batch_size": 8})
    result = resume_run(tmp_path / "run", {"epochs": 2, "lr": 1e-4})
    assert len(result.history) == 2
    checkpoint = load_checkpoint(tmp_path / "run")
    assert checkpoint.config.train.lr == 1e-4
    assert checkpoint.trainer_state["optimizer"]["param_groups"][0]["lr"] == 1e-4
    record = json.loads((tmp_path / "run" / "config.json").read_text())
    assert record["resumed_after_epoch"] == 1


def test_divergence_stops_with_advice_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch):
    honest_update = Trainer._update

    def poisoned_update(self, batch):
        loss = honest_update(self, batch)
        if self.epoch == 2 and self.steps_done == 5:  # a blow-up in the third epoch
            with torch.no_grad():
                next(self.vae.parameters()).fill_(float("inf"))
        return loss

    monkeypatch.setattr(Trainer, "_update", poisoned_update)
    config = RunConfig(model=ModelConfig(hidden_dims=(16,)), train=TrainConfig(epochs=4))
    out = tmp_path / "run"
    with pytest.raises(TrainingDiverged, match=r"epoch 3 .*--resume .*--lr 0\.0001"):
        train_run(config, out)
    checkpoint = load_checkpoint(out)
    assert len(checkpoint.trainer_state["history"]) == 2
    assert all(torch.isfinite(t).all() for t in checkpoint.model_state.values())
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 2


def test_the_same_seed_writes_the_same_metrics_file(tmp_path):
    config = RunConfig(model=ModelConfig(hidden_dims=(16,)), train=TrainConfig(epochs=2))
    train_run(config, tmp_path / "a")
    train_run(config, tmp_path / "b")
    assert (tmp_path / "a" / "metrics.jsonl").read_bytes() == (
        tmp_path / "b" / "metrics.jsonl"
    ).read_bytes()
    record = json.loads((tmp_path / "a" / "config.json").read_text())
    assert set(record["environment"]) == {"pyro_vae", "python", "torch", "pyro"}
    assert record["device"] == "cpu"
    # as given, but with the data's folder made absolute, so the run reads them from anywhere
    located = replace(config, data=replace(config.data, data_dir=str(Path("data").resolve())))
    assert RunConfig.from_dict(record["config"]) == located


# Real processes: killed with SIGKILL, interrupted with SIGINT.

CLI_RUN = ["train", "--epochs", "12", "--hidden-dims", "16", "--checkpoint-every", "10"]


def cli(*args: str, env_extra: dict[str, str] | None = None, **kwargs) -> subprocess.Popen:
    env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env_extra or {})}
    return subprocess.Popen(
        [sys.executable, str(ROOT / "cli.py"), *map(str, args)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        **kwargs,
    )


def wait_for_epochs(run_dir: Path, epochs: int, process: subprocess.Popen) -> None:
    deadline = time.monotonic() + 120
    metrics = run_dir / "metrics.jsonl"
    while time.monotonic() < deadline and process.poll() is None:
        if metrics.exists() and len(metrics.read_text().splitlines()) >= epochs:
            return
        time.sleep(0.05)
    raise AssertionError(f"the run did not reach {epochs} epochs: {process.communicate()}")


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("reference") / "run"
    process = cli(*CLI_RUN, "--out", out)
    assert process.wait(timeout=300) == 0, process.communicate()
    return out


@pytest.mark.slow
def test_sigkill_leaves_a_loadable_checkpoint_and_resume_is_exact(reference_run, tmp_path):
    out = tmp_path / "run"
    process = cli(*CLI_RUN, "--out", out)
    wait_for_epochs(out, 2, process)
    process.send_signal(signal.SIGKILL)
    assert process.wait(timeout=60) == -signal.SIGKILL  # killed, not finished
    checkpoint = load_checkpoint(out)
    assert len(checkpoint.trainer_state["history"]) < 12
    resumed = cli("train", "--resume", out)
    assert resumed.wait(timeout=300) == 0, resumed.communicate()
    assert_same_run(reference_run, out)


@pytest.mark.slow
def test_ctrl_c_saves_stops_and_resumes_exactly(reference_run, tmp_path):
    out = tmp_path / "run"
    process = cli(*CLI_RUN, "--out", out)
    wait_for_epochs(out, 1, process)
    process.send_signal(signal.SIGINT)
    stdout, stderr = process.communicate(timeout=60)
    assert process.returncode == 130, stderr
    assert f"Continue with: pyro-vae train --resume {out}" in stdout
    assert "Traceback" not in stderr
    load_checkpoint(out)
    resumed = cli("train", "--resume", out)
    assert resumed.wait(timeout=300) == 0, resumed.communicate()
    assert_same_run(reference_run, out)


def cuda_tagged_copy(checkpoint: Path, destination: Path) -> None:
    """Rewrite a CPU checkpoint as if saved on CUDA: each storage's location becomes cuda:0.

    torch writes the location as a pickled string ('X', 4-byte length, 'cpu'); nothing else in
    the file is tied to it.
    """
    with zipfile.ZipFile(checkpoint) as archive:
        contents = {name: archive.read(name) for name in archive.namelist()}
    pickle_name = next(name for name in contents if name.endswith("data.pkl"))
    contents[pickle_name] = contents[pickle_name].replace(
        b"X\x03\x00\x00\x00cpu", b"X\x06\x00\x00\x00cuda:0"
    )
    with zipfile.ZipFile(destination, "w", zipfile.ZIP_STORED) as archive:
        for name, data in contents.items():
            archive.writestr(name, data)


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_a_checkpoint_saved_on_cuda_loads_on_a_cpu_machine(tmp_path):
    config = RunConfig(model=ModelConfig(hidden_dims=(16,)), train=TrainConfig(epochs=1))
    train_run(config, tmp_path / "run")
    cuda_file = tmp_path / "cuda.pt"
    cuda_tagged_copy(tmp_path / "run" / "checkpoint.pt", cuda_file)
    with pytest.raises(RuntimeError, match="CUDA"):  # the copy really is tagged for CUDA
        torch.load(cuda_file, weights_only=True)
    vae = load_checkpoint(cuda_file).build_vae()
    assert next(vae.parameters()).device.type == "cpu"


def test_a_second_ctrl_c_aborts_at_once_without_saving(tmp_path, monkeypatch):
    """Two Ctrl-Cs inside one step (as a user who does not want to wait for it): the first asks
    to stop after the step, the second ends the run there, before the step's checkpoint."""
    update, steps = Trainer._update, []

    def interrupted_update(self, batch):
        steps.append(len(steps) + 1)
        if len(steps) == 3:
            signal.raise_signal(signal.SIGINT)  # the first: stop after this step
            loss = update(self, batch)
            signal.raise_signal(signal.SIGINT)  # the second, before the step has ended
            return loss
        return update(self, batch)

    monkeypatch.setattr(Trainer, "_update", interrupted_update)
    # Python's own handler, or SIG_IGN where the suite runs as a background job (nohup, &)
    before = signal.getsignal(signal.SIGINT)
    out = tmp_path / "run"
    options = ["--epochs", "2", "--hidden-dims", "16", "--checkpoint-every", "1"]
    result = CliRunner().invoke(cli_module.app, ["train", "--out", str(out), *options])
    assert result.exit_code == 130, result.output
    assert "Ctrl-C: stopping after this step" in result.output
    assert "Aborted at once: this step is not saved" in result.output
    assert "checkpoint is saved" not in result.output
    assert steps == [1, 2, 3]  # no step after the second Ctrl-C
    # the checkpoint written after step 2 is the last one: step 3 was not saved
    assert load_checkpoint(out).trainer_state["epoch_in_progress"]["steps_done"] == 2
    assert signal.getsignal(signal.SIGINT) is before  # handler restored


def test_pyro_vae_debug_in_the_environment_shows_the_traceback(tmp_path):
    missing = tmp_path / "missing"
    plain = cli("sample", missing)
    _, plain_err = plain.communicate(timeout=60)
    assert plain.returncode == 2 and "Traceback" not in plain_err
    assert plain_err.strip().startswith("Error: no checkpoint at")
    debug = cli("sample", missing, env_extra={"PYRO_VAE_DEBUG": "1"})
    _, debug_err = debug.communicate(timeout=60)
    assert debug.returncode != 0
    assert "Traceback" in debug_err and "UserInputError: no checkpoint at" in debug_err


def test_a_run_stopped_before_its_first_checkpoint_gets_the_command_that_restarts_it(tmp_path):
    """Resuming it is refused with the advice that works: its own train command, into the same
    folder; that command then trains there."""
    run = tmp_path / "run"
    command = ["pyro-vae", "train", "--out", str(run), "--epochs", "1", "--hidden-dims", "16"]
    config = RunConfig(model=ModelConfig(hidden_dims=(16,)), train=TrainConfig(epochs=1))
    train_run(config, run, hooks=RunHooks(command=command))
    (run / "checkpoint.pt").unlink()  # as a kill in the first epoch leaves it
    runner = CliRunner()
    result = runner.invoke(cli_module.app, ["train", "--resume", str(run)])
    assert result.exit_code == 2, result.output
    assert "give a run directory written by" not in result.output
    advice = result.output.split("with the command that started it: ")[1].split()
    assert advice == command
    result = runner.invoke(cli_module.app, advice[1:])
    assert result.exit_code == 0, result.output
    assert load_checkpoint(run).config.train.epochs == 1
