"""Training practice: the KL weight and its warm-up, free bits, learning-rate schedules, early
stopping, and the note a collapsed run prints."""

import itertools
import json
import logging
import math

import pyro
import pytest
import torch
from pyro import poutine
from pyro.infer import SVI, Trace_ELBO, TraceMeanField_ELBO
from pyro.optim import Adam
from typer.testing import CliRunner

import cli
from pyro_vae import VAE, ModelConfig, RunConfig, TrainConfig, Trainer, UserInputError
from pyro_vae.inference.objectives import make_elbo, per_dimension_kl
from pyro_vae.inference.schedules import EarlyStopping, kl_weight
from pyro_vae.runs.checkpoint import load_checkpoint
from pyro_vae.runs.runner import RunHooks, resume_run, train_run


def losses_with_draws(elbo, vae, x, seed):
    """elbo's (loss, −ELBO) with the random numbers of ``seed``."""
    pyro.set_rng_seed(seed)
    return elbo.losses(vae.generative_model, vae.inference_guide, x)


def terms(vae, x, seed):
    """log p(x|z), log p(z), log q(z|x), KL(q ‖ p) summed over ``x``, at the draws of ``seed``."""
    pyro.set_rng_seed(seed)
    guide = poutine.trace(vae.inference_guide).get_trace(x)
    model = poutine.trace(poutine.replay(vae.generative_model, trace=guide)).get_trace(x)
    z_q, z_p, x_p = guide.nodes["z"], model.nodes["z"], model.nodes["x"]
    value = z_q["value"]
    return (
        x_p["fn"].log_prob(x_p["value"]).sum(),
        z_p["fn"].log_prob(value).sum(),
        z_q["fn"].log_prob(value).sum(),
        torch.distributions.kl_divergence(z_q["fn"], z_p["fn"]).sum(),
    )


@pytest.mark.parametrize("estimator", ["mc", "analytic"])
def test_beta_weights_the_kl_term_and_the_elbo_stays_the_elbo(estimator, digits):
    vae, x = VAE(64, 3, hidden_dims=(16,)), digits.train.x[:32]
    elbo = make_elbo(estimator)
    log_lik, log_prior, log_guide, kl = terms(vae, x, seed=3)
    kl_term = kl if estimator == "analytic" else log_guide - log_prior
    with vae.kl_weighted(2.5):
        loss, negative_elbo = losses_with_draws(elbo, vae, x, seed=3)
    torch.testing.assert_close(loss, -(log_lik - 2.5 * kl_term))
    torch.testing.assert_close(negative_elbo, -(log_lik - kl_term))
    assert vae.kl_weight.item() == 1.0  # the block put it back
    loss, negative_elbo = losses_with_draws(elbo, vae, x, seed=3)
    assert torch.equal(loss, negative_elbo)


@pytest.mark.parametrize("pyro_elbo", [Trace_ELBO, TraceMeanField_ELBO])
def test_pyros_own_svi_trains_the_weighted_objective(pyro_elbo, digits):
    """kl_weighted is poutine.scale on the z sites: Pyro's stock ELBOs and SVI obey it."""
    vae, x = VAE(64, 3, hidden_dims=(16,)), digits.train.x[:32]
    log_lik, log_prior, log_guide, kl = terms(vae, x, seed=5)
    kl_term = kl if pyro_elbo is TraceMeanField_ELBO else log_guide - log_prior
    svi = SVI(vae.model, vae.guide, Adam({"lr": 1e-3}), pyro_elbo())
    with vae.kl_weighted(0.5):
        pyro.set_rng_seed(5)
        loss = svi.step(x)
    assert loss == pytest.approx(-(log_lik - 0.5 * kl_term).item(), rel=1e-5)


def test_free_bits_floor_each_dimensions_batch_average(digits):
    vae, x = VAE(64, 4, hidden_dims=(16,)), digits.train.x[:32]
    floor = 0.015  # between the dimensions' batch averages at initialisation
    pyro.set_rng_seed(7)
    guide = poutine.trace(vae.inference_guide).get_trace(x).nodes["z"]["fn"]
    per_dimension = per_dimension_kl(guide, vae.prior())  # (32, 4)
    assert per_dimension.mean(0).min() < floor < per_dimension.mean(0).max()  # both sides seen
    log_lik, *_, kl = terms(vae, x, seed=7)
    loss, negative_elbo = losses_with_draws(make_elbo("analytic", free_bits=floor), vae, x, 7)
    floored = 32 * per_dimension.mean(0).clamp(min=floor).sum()
    torch.testing.assert_close(loss, -(log_lik - floored))
    torch.testing.assert_close(negative_elbo, -(log_lik - kl))


def test_free_bits_are_refused_where_the_kl_is_not_per_dimension():
    with pytest.raises(UserInputError, match="use elbo analytic with free_bits"):
        TrainConfig(elbo="mc", free_bits=0.5)  # the Python API names fields, not options
    with pytest.raises(UserInputError, match="iwae"):
        TrainConfig(elbo="iwae", beta=2.0)
    with pytest.raises(UserInputError, match="not a sum over dimensions"):
        Trainer(
            VAE(64, 3, hidden_dims=(16,), prior="mog"), TrainConfig(elbo="analytic", free_bits=1)
        )


def test_warmup_rises_step_by_step_to_beta():
    config = TrainConfig(beta=4.0, kl_warmup=2)
    weights = [kl_weight(config, step, steps_per_epoch=5) for step in range(12)]
    assert weights[0] == pytest.approx(0.4) and weights[9] == weights[11] == 4.0
    assert all(b > a for a, b in itertools.pairwise(weights[:10]))
    assert kl_weight(TrainConfig(beta=0.5), 0, 5) == 0.5


@pytest.mark.parametrize("estimator", ["mc", "analytic"])
def test_the_recorded_step_reads_the_current_beta(estimator, digits):
    """Warm-up changes β at every step: the recorded steps equal the eager ones throughout."""
    config = TrainConfig(elbo=estimator, beta=2.0, kl_warmup=2, batch_size=256, epochs=3)
    trained = []
    for record in (True, False):
        pyro.set_rng_seed(0)
        trainer = Trainer(VAE(64, 3, hidden_dims=(16,)), config, record_graph=record)
        history = [trainer.train_epoch(digits) for _ in range(3)]
        trained.append((trainer, history))
    (recorded, recorded_history), (eager, eager_history) = trained
    assert recorded._recorded._graphs and recorded._recorded.eager_reason is None
    for a, b in zip(recorded.vae.parameters(), eager.vae.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    assert [m.beta for m in recorded_history] == pytest.approx([1.0, 2.0, 2.0])
    for a, b in zip(recorded_history, eager_history, strict=True):
        assert a.train_objective == pytest.approx(b.train_objective, rel=1e-5)
        assert a.train_elbo == pytest.approx(b.train_elbo, rel=1e-5)
    # The weighted objective is reported beside the ELBO: with β = 2 it is the lower one.
    assert recorded_history[-1].train_objective < recorded_history[-1].train_elbo
    assert recorded.vae.kl_weight.item() == 1.0  # the model outside training is the VAE


@pytest.mark.parametrize(
    "schedule, expected",
    [
        ("constant", lambda e: 1e-2),
        # torch's convention: from lr at the first epoch to lr_min after the last (the fourth),
        # so that the last epoch still learns when lr_min is 0
        ("cosine", lambda e: 1e-3 + (1e-2 - 1e-3) * (1 + math.cos(math.pi * (e - 1) / 4)) / 2),
        ("step", lambda e: 1e-2 * 0.5 ** ((e - 1) // 2)),
    ],
)
def test_learning_rate_schedules_are_torchs_and_recorded_per_epoch(schedule, expected, digits):
    config = TrainConfig(
        lr=1e-2, lr_schedule=schedule, lr_step=2, lr_factor=0.5, lr_min=1e-3, epochs=4
    )
    trainer = Trainer(VAE(64, 3, hidden_dims=(16,)), config)
    history = [trainer.train_epoch(digits) for _ in range(4)]
    assert [m.lr for m in history] == pytest.approx([expected(e) for e in range(1, 5)])


def test_plateau_cuts_the_rate_when_validation_stops_improving(digits):
    # A rate this small learns next to nothing: the ELBO plateaus. (Not smaller: torch ignores
    # a cut of less than 1e-8.)
    config = TrainConfig(lr=1e-6, lr_schedule="plateau", lr_step=1, lr_factor=0.5, epochs=8)
    trainer = Trainer(VAE(64, 3, hidden_dims=(16,)), config)
    history = [trainer.train_epoch(digits) for _ in range(8)]
    assert history[-1].lr < 1e-6


def test_early_stopping_counts_epochs_since_the_best():
    stopping = EarlyStopping()
    improved = [stopping.improved(v, e) for e, v in enumerate([-5.0, -4.0, -4.5, -4.0], 1)]
    assert improved == [True, True, False, False] and stopping.best_epoch == 2
    assert not stopping.exhausted(3, patience=2) and stopping.exhausted(4, patience=2)
    assert not stopping.exhausted(100, patience=None)


def test_patience_stops_the_run_and_keeps_the_best_model(tmp_path):
    # A rate too small to learn: the validation ELBO only wobbles, so the run stops soon.
    config = RunConfig(
        model=ModelConfig(hidden_dims=(16,)), train=TrainConfig(lr=1e-9, epochs=30, patience=2)
    )
    result = train_run(config, tmp_path / "run")
    metrics = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").open()]
    best = max(range(len(metrics)), key=lambda i: metrics[i]["val_elbo"]) + 1
    assert result.stopped_early and result.best_epoch == best == len(metrics) - 2
    kept = load_checkpoint(tmp_path / "run" / "best.pt")
    assert len(kept.trainer_state["history"]) == best
    assert (tmp_path / "run" / "best.pt") in result.files


def test_commands_use_the_best_model_and_say_so(tmp_path):
    out = tmp_path / "run"
    runner = CliRunner()
    train = ["train", "--out", out, "--epochs", "30", "--lr", "1e-9", "--patience", "1"]
    result = runner.invoke(cli.app, [str(a) for a in [*train, "--hidden-dims", "16"]])
    assert result.exit_code == 0, result.output
    assert "Stopped early" in result.output and "best.pt" in result.output
    result = runner.invoke(cli.app, ["sample", str(out), "--out", str(tmp_path / "s.png")])
    assert result.exit_code == 0 and "best.pt" in result.output
    latest = ["sample", str(out), "--latest", "--out", str(tmp_path / "t.png")]
    result = runner.invoke(cli.app, latest)
    assert result.exit_code == 0 and "best.pt" not in result.output
    # Without --out, the two models write under different names, and the record says which.
    for extra in ([], ["--latest"]):
        result = runner.invoke(cli.app, ["evaluate", str(out), "--num-samples", "2", *extra])
        assert result.exit_code == 0, result.output
    best = json.loads((out / "evaluation-test-k2.json").read_text())
    latest = json.loads((out / "evaluation-test-k2-latest.json").read_text())
    assert best["model"] == str(out / "best.pt") and latest["model"] == str(out / "checkpoint.pt")
    assert best["epochs_trained"] < latest["epochs_trained"]
    # the last epoch's checkpoint named as a file is the latest model too: its own names
    result = runner.invoke(cli.app, ["sample", str(out / "checkpoint.pt")])
    assert result.exit_code == 0 and (out / "samples-seed0-latest.png").is_file()
    result = runner.invoke(cli.app, ["sample", str(out / "best.pt"), "--latest"])
    assert result.exit_code == 2 and "drop --latest" in result.output


def test_the_default_run_says_its_posterior_collapsed(tmp_path):
    """The seed's σ = 1 on the digits: every latent dimension unused, and the run says so."""
    runner = CliRunner()
    result = runner.invoke(cli.app, ["train", "--out", str(tmp_path / "run"), "--epochs", "3"])
    assert result.exit_code == 0, result.output
    assert "posterior collapse: 0 of 8" in result.output
    for remedy in ("--sigma", "--likelihood gaussian-learned", "--kl-warmup", "--free-bits"):
        assert remedy in result.output
    result = runner.invoke(
        cli.app, ["train", "--out", str(tmp_path / "sharp"), "--epochs", "5", "--sigma", "0.2"]
    )
    assert result.exit_code == 0 and "collapse" not in result.output


def test_a_resumed_run_goes_on_from_its_schedule(tmp_path):
    """Resume keeps the scheduled rate (it does not restart from --lr); a cosine run extended
    before its end still ends at lr_min, and a new --lr is where the schedule goes on from."""
    train = TrainConfig(lr=1e-2, lr_schedule="cosine", lr_min=1e-4, epochs=4)
    config = RunConfig(model=ModelConfig(hidden_dims=(16,)), train=train)
    epochs_done = []
    hooks = RunHooks(on_epoch=epochs_done.append, should_stop=lambda: len(epochs_done) == 2)
    assert not train_run(config, tmp_path / "run", hooks=hooks).finished
    result = resume_run(tmp_path / "run", {"epochs": 6})
    lrs = [m.lr for m in result.history]
    assert len(lrs) == 6 and lrs[0] == 1e-2 and all(b < a for a, b in itertools.pairwise(lrs))
    scheduler = load_checkpoint(tmp_path / "run").trainer_state["scheduler"]
    assert scheduler["_last_lr"] == pytest.approx([1e-4])  # the rate after the last epoch
    result = resume_run(tmp_path / "run", {"epochs": 7, "lr": 1e-3})
    assert result.history[-1].lr == 1e-3


def test_a_finished_cosine_run_extended_anneals_on_without_going_back_up(tmp_path, caplog):
    """A finished cosine run stands at lr_min; given more epochs, it goes on from the rate of
    its last epoch down to lr_min, never back up (a curve stretched over the new length would
    put it up again), and one note says so."""
    train = TrainConfig(lr=1e-2, lr_schedule="cosine", lr_min=0.0, epochs=3)
    train_run(RunConfig(model=ModelConfig(hidden_dims=(16,)), train=train), tmp_path / "run")
    with caplog.at_level(logging.INFO, logger="pyro_vae"):
        lrs = [m.lr for m in resume_run(tmp_path / "run", {"epochs": 5}).history]
    assert lrs[:3] == pytest.approx([1e-2 * (1 + math.cos(math.pi * t / 3)) / 2 for t in range(3)])
    # epochs 4 and 5 on a cosine from epoch 3's rate (its point 0) to 0 (its point 3)
    assert lrs[3:] == pytest.approx([lrs[2] * (1 + math.cos(math.pi * t / 3)) / 2 for t in (1, 2)])
    assert all(b < a for a, b in itertools.pairwise(lrs)) and min(lrs) > 0
    notes = [r.getMessage() for r in caplog.records if "cosine schedule goes on" in r.getMessage()]
    assert len(notes) == 1 and "not restarted" in notes[0]


def test_config_repeats_a_run_and_options_vary_it(tmp_path):
    runner = CliRunner()
    first = ["train", "--out", tmp_path / "a", "--epochs", "2", "--hidden-dims", "16"]
    result = runner.invoke(cli.app, [str(a) for a in [*first, "--sigma", "0.2", "--beta", "2"]])
    assert result.exit_code == 0, result.output
    again = ["train", "--config", tmp_path / "a", "--out", tmp_path / "b"]  # the run's folder
    result = runner.invoke(cli.app, [str(a) for a in [*again, "--epochs", "3"]])
    assert result.exit_code == 0, result.output
    a, b = (json.loads((tmp_path / n / "config.json").read_text())["config"] for n in "ab")
    assert b["train"].pop("epochs") == 3 and a["train"].pop("epochs") == 2
    assert a == b  # everything else as the first run had it: σ, β, the layers, the seed
    metrics = [(tmp_path / n / "metrics.jsonl").read_text().splitlines() for n in "ab"]
    assert metrics[1][:2] == metrics[0]  # the same seed: the same first two epochs
    (tmp_path / "c.toml").write_text("[model]\nhidden_dims = [16]\n[train]\nbeta = 0.5\n")
    toml = ["train", "--config", tmp_path / "c.toml", "--out", tmp_path / "c", "--epochs", "1"]
    result = runner.invoke(cli.app, [str(a) for a in toml])
    assert result.exit_code == 0, result.output
    c = json.loads((tmp_path / "c" / "config.json").read_text())["config"]
    assert c["train"]["beta"] == 0.5 and c["model"]["hidden_dims"] == [16]
    assert c["model"]["latent_dim"] == ModelConfig.latent_dim  # not in the file: the default
    # Naming the file's own likelihood again keeps its options; another one drops them.
    (tmp_path / "s.toml").write_text(
        "[model]\nhidden_dims = [16]\nlikelihood_options = {sigma = 0.2}\n"
    )
    for likelihood, options in (("gaussian", {"sigma": 0.2}), ("laplace", {})):
        out = tmp_path / likelihood
        args = ["train", "--config", tmp_path / "s.toml", "--likelihood", likelihood, "--out", out]
        result = runner.invoke(cli.app, [str(a) for a in [*args, "--epochs", "1"]])
        assert result.exit_code == 0, result.output
        record = json.loads((out / "config.json").read_text())["config"]
        assert record["model"]["likelihood_options"] == options


@pytest.mark.parametrize(
    ("options", "dropped"),
    [
        (["--model", "vae"], ["[train] labels 100 and alpha 0.5 (for --model m2, not vae)"]),
        (
            ["--model", "cvae", "--likelihood", "laplace"],
            [
                "[model] likelihood_options {sigma = 0.2} (for --likelihood gaussian, not laplace)",
                "[train] labels 100 and alpha 0.5 (for --model m2, not cvae)",
            ],
        ),
    ],
    ids=["m2 file, vae", "m2 file, cvae and another likelihood"],
)
def test_a_config_files_options_for_another_choice_are_dropped_with_one_note(
    options, dropped, tmp_path
):
    """An M2 run's labels and α do not block another model from the same file, and a component
    overridden loses the file's options for the old one: dropped, with one note naming them."""
    (tmp_path / "m2.toml").write_text(
        '[model]\nkind = "m2"\nhidden_dims = [16]\nlikelihood_options = {sigma = 0.2}\n'
        "[train]\nlabels = 100\nalpha = 0.5\nepochs = 1\n"
    )
    args = ["train", "--config", tmp_path / "m2.toml", "--out", tmp_path / "run", *options]
    result = CliRunner().invoke(cli.app, [str(a) for a in args])
    assert result.exit_code == 0, result.output
    notes = [line for line in result.stderr.splitlines() if "dropped the file's" in line]
    assert len(notes) == 1 and all(words in notes[0] for words in dropped), result.stderr
    c = json.loads((tmp_path / "run" / "config.json").read_text())["config"]
    assert c["train"]["labels"] is None and c["train"]["alpha"] is None
    assert c["model"]["kind"] == options[1]


def test_config_file_and_options_are_checked_together(tmp_path):
    """An option that needs a file's value (free bits need the analytic ELBO, components a
    mixture prior) is judged against the merged configuration, not the command line's defaults."""
    (tmp_path / "c.toml").write_text(
        '[model]\nhidden_dims = [16]\nprior = "mog"\n[train]\nelbo = "analytic"\nlr = 0.01\n'
    )
    args = ["train", "--config", tmp_path / "c.toml", "--out", tmp_path / "run", "--epochs", "1"]
    more = ["--components", "3", "--lr-schedule", "cosine", "--lr-min", "0.005"]
    result = CliRunner().invoke(cli.app, [str(a) for a in [*args, *more]])
    assert result.exit_code == 0, result.output
    c = json.loads((tmp_path / "run" / "config.json").read_text())["config"]
    assert c["model"]["prior_options"] == {"num_components": 3} and c["train"]["lr"] == 0.01
    (tmp_path / "f.toml").write_text('[model]\nhidden_dims = [16]\n[train]\nelbo = "analytic"\n')
    args = ["train", "--config", tmp_path / "f.toml", "--out", tmp_path / "f", "--epochs", "1"]
    result = CliRunner().invoke(cli.app, [str(a) for a in [*args, "--free-bits", "0.5"]])
    assert result.exit_code == 0, result.output


def test_an_early_stopped_run_resumes_only_with_more_patience(tmp_path):
    runner = CliRunner()
    out = tmp_path / "run"
    train = ["train", "--out", out, "--epochs", "30", "--lr", "1e-9", "--patience", "1"]
    result = runner.invoke(cli.app, [str(a) for a in [*train, "--hidden-dims", "16"]])
    assert result.exit_code == 0 and "Stopped early" in result.output
    stopped_at = len((out / "metrics.jsonl").read_text().splitlines())
    result = runner.invoke(cli.app, ["train", "--resume", str(out)])
    assert result.exit_code == 2 and "pass a larger --patience" in result.output
    result = runner.invoke(cli.app, ["train", "--resume", str(out), "--patience", "3"])
    assert result.exit_code == 0, result.output
    assert len((out / "metrics.jsonl").read_text().splitlines()) > stopped_at
    # given at the run's own value, an option that cannot change is accepted
    result = runner.invoke(
        cli.app, ["train", "--resume", str(out), "--patience", "30", "--beta", "1"]
    )
    assert result.exit_code == 0, result.output


def test_configurations_check_types_and_take_paths():
    """A config file can hold anything: each value is checked for its type, by name; a
    pathlib.Path from Python is as good as a string."""
    from pathlib import Path

    from pyro_vae import DataConfig

    assert DataConfig(data_dir=Path("data")).data_dir == "data"
    assert DataConfig(dataset="array", path=Path("x.npy")).path == "x.npy"
    for section, values, words in [
        (TrainConfig, {"lr": "0.1"}, "lr must be a number"),
        (TrainConfig, {"free_bits": True}, "free_bits must be a number"),
        (TrainConfig, {"batch_size": 64.0}, "batch_size must be a whole number"),
        (DataConfig, {"download": "yes"}, "download must be true or false"),
        (DataConfig, {"split_seed": -1}, "split_seed must be a whole number"),
        (ModelConfig, {"hidden_dims": [16.5]}, "each of hidden_dims must be a whole number"),
    ]:
        with pytest.raises(UserInputError, match=words):
            section(**values)
