"""What a run will ask of the machine, known before it starts: refused where it cannot fit,
announced where a step is a lot of work."""

import logging

import pytest
import torch

from pyro_vae import UserInputError
from pyro_vae.core.config import ModelConfig, RunConfig, TrainConfig
from pyro_vae.runs.budget import check_budget


def config(hidden=(400,), latent=20, batch=128, particles=1) -> RunConfig:
    return RunConfig(
        model=ModelConfig(latent_dim=latent, hidden_dims=hidden),
        train=TrainConfig(batch_size=batch, num_particles=particles),
    )


def test_an_mnist_vae_passes_without_a_word(caplog):
    with caplog.at_level(logging.INFO, logger="pyro_vae"):
        check_budget(config(), (28, 28), torch.device("cpu"))
    assert not caplog.records


def test_parameters_beyond_memory_are_refused_with_their_size():
    # (784 + 1)·8e8 + (8e8 + 1)·40 in the encoder, (20 + 1)·8e8 + (8e8 + 1)·784 in the decoder
    with pytest.raises(UserInputError, match=r"1,304,000,000,824 parameters.*hidden_dims"):
        check_budget(config(hidden=(800_000_000,)), (28, 28), torch.device("cpu"))


def test_a_step_beyond_memory_is_refused_and_a_heavy_one_announced(caplog):
    with pytest.raises(UserInputError, match="lower num_particles or batch_size"):
        check_budget(config(particles=10**7), (28, 28), torch.device("cpu"))
    with caplog.at_level(logging.INFO, logger="pyro_vae"):
        check_budget(config(particles=1000), (28, 28), torch.device("cpu"))
    assert "expect slow steps" in caplog.text and "1,000 particles" in caplog.text
