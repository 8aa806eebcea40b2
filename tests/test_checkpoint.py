import errno
import io
import os
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pyro
import pytest
import torch

from pyro_vae import (
    Checkpoint,
    RunConfig,
    Trainer,
    UserInputError,
    elbo_per_datapoint,
    load_checkpoint,
    save_checkpoint,
)
from pyro_vae.core.config import ModelConfig, TrainConfig
from pyro_vae.models.build import build_model
from pyro_vae.runs.checkpoint import FORMAT_VERSION


@pytest.fixture
def trained(digits, tmp_path):
    config = RunConfig(
        model=ModelConfig(latent_dim=4, hidden_dims=(32,), likelihood_options={"sigma": 0.5}),
        train=TrainConfig(elbo="analytic", lr=3e-3),
    )
    vae = build_model(config.model, digits.data_dim)
    trainer = Trainer(vae, config.train)
    trainer.train_epoch(digits)
    path = tmp_path / "checkpoint.pt"
    save_checkpoint(
        Checkpoint(config, digits.image_shape, vae.state_dict(), trainer.state_dict()), path
    )
    return config, vae, trainer, path


def test_reloaded_model_gives_the_same_elbo_under_a_fixed_seed(trained, digits):
    config, vae, _, path = trained
    checkpoint = load_checkpoint(path.parent)  # the run directory works as well as the file
    rebuilt = checkpoint.build_vae()
    assert checkpoint.config == config and checkpoint.image_shape == (1, 8, 8)
    assert rebuilt.likelihood.scale == 0.5
    pyro.set_rng_seed(7)
    expected = elbo_per_datapoint(vae, digits.test.x)
    pyro.set_rng_seed(7)
    assert elbo_per_datapoint(rebuilt, digits.test.x) == expected


def test_optimizer_state_and_history_continue(trained, digits):
    config, _, trainer, path = trained
    checkpoint = load_checkpoint(path)
    resumed = Trainer(checkpoint.build_vae(), config.train)
    resumed.load_state_dict(checkpoint.trainer_state)
    assert resumed.epoch == 1 and resumed.history == trainer.history
    original = trainer.optimizer.state_dict()["state"]
    for key, state in resumed.optimizer.state_dict()["state"].items():
        torch.testing.assert_close(state["exp_avg"], original[key]["exp_avg"])
    assert resumed.train_epoch(digits).epoch == 2


def test_no_temporary_files_are_left_behind(trained):
    *_, path = trained
    assert [p.name for p in path.parent.iterdir()] == ["checkpoint.pt"]


def test_missing_damaged_and_foreign_checkpoints_are_user_errors(trained, tmp_path):
    *_, path = trained
    with pytest.raises(UserInputError, match="no checkpoint at"):
        load_checkpoint(tmp_path / "nowhere")

    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(UserInputError, match="not a readable checkpoint"):
        load_checkpoint(truncated)

    foreign = tmp_path / "foreign.pt"
    torch.save({"weights": torch.zeros(3)}, foreign)
    with pytest.raises(UserInputError, match="not a pyro-vae checkpoint"):
        load_checkpoint(foreign)

    newer = tmp_path / "newer.pt"
    payload = torch.load(path, weights_only=True)
    payload["format_version"] = FORMAT_VERSION + 1
    torch.save(payload, newer)
    with pytest.raises(UserInputError, match="upgrade pyro-vae"):
        load_checkpoint(newer)


def half_written_save(then: Callable[[], None]):
    """A ``torch.save`` that writes the first half of the file it should, then calls ``then``
    (which raises, or kills the process): a save interrupted at its worst moment."""
    real_save = torch.save

    def save(payload, file, *args, **kwargs):
        buffer = io.BytesIO()
        real_save(payload, buffer, *args, **kwargs)
        half = buffer.getvalue()[: len(buffer.getvalue()) // 2]
        if isinstance(file, (str, os.PathLike)):
            Path(file).write_bytes(half)
        else:
            file.write(half)
            file.flush()
        then()

    return save


def advanced(trained, digits) -> Checkpoint:
    """A checkpoint one epoch on from the saved one: what the interrupted save was writing."""
    config, vae, trainer, _ = trained
    trainer.train_epoch(digits)
    return Checkpoint(config, digits.image_shape, vae.state_dict(), trainer.state_dict())


def test_a_save_that_fails_half_way_leaves_the_previous_checkpoint(trained, digits, monkeypatch):
    *_, path = trained
    before = path.read_bytes()
    newer = advanced(trained, digits)

    def disk_full() -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", half_written_save(disk_full))
    with pytest.raises(OSError, match="No space left"):
        save_checkpoint(newer, path)
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert len(load_checkpoint(path).trainer_state["history"]) == 1
    assert [p.name for p in path.parent.iterdir()] == ["checkpoint.pt"]  # no partial file left


KILLED_MID_SAVE = """
import os, signal, sys
import torch
sys.path.insert(0, {tests!r})
from test_checkpoint import half_written_save
from pyro_vae import load_checkpoint, save_checkpoint
checkpoint = load_checkpoint({path!r})
checkpoint.trainer_state["history"] = checkpoint.trainer_state["history"] * 2
torch.save = half_written_save(lambda: os.kill(os.getpid(), signal.SIGKILL))
save_checkpoint(checkpoint, {path!r})
"""


def test_a_process_killed_mid_save_leaves_the_previous_checkpoint(trained):
    *_, path = trained
    before = path.read_bytes()
    script = KILLED_MID_SAVE.format(tests=str(Path(__file__).parent), path=str(path))
    process = subprocess.run([sys.executable, "-c", script], capture_output=True, timeout=120)
    assert process.returncode == -signal.SIGKILL, process.stderr.decode()
    assert path.read_bytes() == before
    assert len(load_checkpoint(path).trainer_state["history"]) == 1
