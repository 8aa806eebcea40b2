"""M1+M2 (models/stacked.py): M2 on the codes of a trained VAE, from `train --features RUN` to
the commands that use the run."""

import copy
import json
from pathlib import Path

import pyro
import pytest
import torch
from typer.testing import CliRunner

from pyro_vae import cli, load_run
from pyro_vae.core.config import TrainConfig
from pyro_vae.core.train_config import DEFAULT_ALPHA
from pyro_vae.inference.m2_trainer import SemiSupervisedTrainer
from pyro_vae.models.m2 import SemiSupervisedVAE
from pyro_vae.models.vae import VAE


def cli_run(*args):
    return CliRunner().invoke(cli.app, [str(a) for a in args])


def stacked(data, m1: VAE | None = None) -> SemiSupervisedVAE:
    pyro.set_rng_seed(0)
    m1 = m1 or VAE(data.image_shape, 6, (16,), likelihood="bernoulli")
    return SemiSupervisedVAE(data.image_shape, 3, (16,), num_classes=10, features=m1)


def test_m2_reads_the_images_through_m1s_posterior_means(digits):
    vae = stacked(digits)
    m1, x = vae.codes.m1, digits.test.x[:5]
    codes = m1.encode(x)
    # the classifier, the guide and the likelihood all read z₁ = μ₁(x), not the pixels
    torch.testing.assert_close(vae.classifier(x), vae.classifier.net(codes))
    decoded = torch.randn(5, 6)
    expected = pyro.distributions.Normal(decoded, 1.0).log_prob(codes).sum(-1)
    torch.testing.assert_close(vae.likelihood(decoded).log_prob(x), expected)
    # its mean is an image: M1's decoded mean of the mean code
    torch.testing.assert_close(vae.likelihood(decoded).mean, m1.decode(decoded))
    assert vae.generate(4).shape == (4, 64) and vae.reconstruct(x).shape == (5, 64)
    assert vae.likelihood(decoded).sample().shape == (5, 64)
    # a copy of the model (the experiments take one per run) computes the same codes
    copied = copy.deepcopy(vae)
    torch.testing.assert_close(copied.classifier(x), vae.classifier(x))
    assert not copied.codes.m1.training  # M1 stays as trained, whatever mode M2 is in


def test_training_m1_plus_m2_leaves_m1_as_it_was_and_replays_to_the_bit(digits):
    trained = []
    for record in (True, False):
        vae = stacked(digits)
        m1_before = {k: v.clone() for k, v in vae.codes.m1.state_dict().items()}
        config = TrainConfig(labels=30, batch_size=64, alpha=5.0, compile=False)  # replay only
        trainer = SemiSupervisedTrainer(vae, config, digits, record_graph=record)
        trainer.train_epoch(digits)
        trainer.train_epoch(digits)
        for name, value in vae.codes.m1.state_dict().items():
            assert torch.equal(value, m1_before[name]), name
        trained.append([p.detach().clone() for p in vae.parameters() if p.requires_grad])
        if record:  # the steps after the first were replayed from a recording
            assert trainer._recorded is not None and trainer._recorded.eager_reason is None
            assert len(trainer._recorded._graphs) == 2  # the full batches and the last
    for a, b in zip(*trained, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("m1m2")
    common = ["--binarize", "static", "--epochs", "1", "--hidden-dims", "16"]
    result = cli_run("train", *common, "--likelihood", "bernoulli", "--latent-dim", "6",
                     "--out", root / "m1")  # fmt: skip
    assert result.exit_code == 0, result.output
    result = cli_run("train", *common, "--model", "m2", "--labels", "50", "--features",
                     root / "m1", "--latent-dim", "3", "--out", root / "m1m2")  # fmt: skip
    assert result.exit_code == 0, result.output
    return root


def test_an_m1_plus_m2_run_is_used_like_any_m2_run(runs):
    run = runs / "m1m2"
    config = json.loads((run / "config.json").read_text())["config"]
    assert config["model"]["m1"]["latent_dim"] == 6
    assert config["train"]["features"] == str((runs / "m1").absolute())
    result = cli_run("evaluate", run, "--num-samples", "4")
    assert result.exit_code == 0, result.output
    assert "log p(z₁) ≥ IWAE" in result.output and "classification error" in result.output
    for command in (["sample", "--num", "4"], ["reconstruct"], ["latent"], ["interpolate"]):
        result = cli_run(*command, run)
        assert result.exit_code == 0, (command, result.output)
    # exported, it loads with M1 inside: codes of images, images from codes
    result = cli_run("export", run, "--out", runs / "export", "--num-samples", "2")
    assert result.exit_code == 0, result.output
    assert "log p(z₁)" in (runs / "export" / "README.md").read_text()
    exported = load_run(runs / "export")
    assert exported.sample(3).shape == (3, 1, 8, 8)
    assert exported.encode(exported.split("test")).shape[1] == 3
    # its configuration starts another (M1 read again from its folder)
    result = cli_run("train", "--config", run, "--epochs", "1", "--out", runs / "again")
    assert result.exit_code == 0, result.output
    assert json.loads((runs / "again" / "config.json").read_text())["config"] == {
        **config,
        "train": {**config["train"], "epochs": 1},
    }
    # the run holds M1's weights: it needs M1's folder only to start
    (runs / "m1").rename(runs / "moved")
    try:
        result = cli_run("train", "--resume", run, "--epochs", "2")
        assert result.exit_code == 0, result.output
    finally:
        (runs / "moved").rename(runs / "m1")


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--features", "{tmp}/nothing"], "does not exist"),
        (["--features", "{runs}/m1m2"], "trained with --model m2: M1 is a VAE"),
        (["--features", "{runs}/m1", "--network", "conv"], "use --network mlp"),
        (["--features", "{runs}/m1", "--likelihood", "bernoulli"], "a likelihood of real"),
    ],
)
def test_a_wrong_m1_is_one_line(runs, tmp_path, extra, message):
    extra = [e.format(tmp=tmp_path, runs=runs) for e in extra]
    result = cli_run("train", "--model", "m2", "--labels", "50", "--binarize", "static", *extra,
                     "--out", tmp_path / "run")  # fmt: skip
    assert result.exit_code == 2, result.output
    assert message in result.output and "Traceback" not in result.output
    assert len(result.output.strip().splitlines()) == 1, result.output


def test_m2s_alpha_is_per_labelled_image_in_older_checkpoints_too(runs):
    from pyro_vae.runs.checkpoint import _upgraded

    old = {"model": {"kind": "m2"}, "train": {"labels": 100, "alpha": 800.0}}
    assert _upgraded(old, 4)["train"]["alpha"] == 8.0  # the same weight, per image
    assert _upgraded(old, 5) is old
    unset = {"model": {"kind": "m2"}, "train": {"labels": 100, "alpha": None}}
    assert _upgraded(unset, 4)["train"]["alpha"] is None  # resuming sets the paper's
    # a new run writes its α out, so that a later default cannot change it on resume
    config = json.loads((runs / "m1m2" / "config.json").read_text())["config"]
    assert config["train"]["alpha"] == DEFAULT_ALPHA


def test_m1s_settings_without_its_run_are_one_line(tmp_path):
    (tmp_path / "c.toml").write_text(
        '[model]\nkind = "m2"\nm1 = {latent_dim = 6}\n[train]\nlabels = 50\n'
    )
    result = cli_run("train", "--config", tmp_path / "c.toml", "--out", tmp_path / "run")
    assert result.exit_code == 2, result.output
    assert "give --features RUN, or drop [model] m1" in result.output
