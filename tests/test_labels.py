"""The models that read labels: the conditional VAE and semi-supervised M2 (data/labels.py)."""

import logging
import math

import pyro
import pytest
import torch
from pyro import poutine

from pyro_vae import DataConfig, TrainConfig, Trainer, load_dataset
from pyro_vae.components.guides import GUIDES
from pyro_vae.components.likelihoods import LIKELIHOODS
from pyro_vae.components.priors import PRIORS
from pyro_vae.core.config import MODEL_KINDS
from pyro_vae.core.errors import UserInputError
from pyro_vae.core.train_config import DEFAULT_ALPHA, IMAGE_ALPHAS, default_alpha
from pyro_vae.data.labels import check_label, choose_labelled, one_hot
from pyro_vae.inference.m2_trainer import (
    SemiSupervisedELBO,
    SemiSupervisedTrainer,
    enumerated_elbo,
    paper_alpha,
)
from pyro_vae.models.build import MODELS
from pyro_vae.models.cvae import ConditionalVAE
from pyro_vae.models.m2 import SemiSupervisedVAE

FEW_LABELS_ALPHA = IMAGE_ALPHAS[0][1]  # below 100 labels a class


def small_m2(
    guide: str = "diagonal", likelihood: str = "bernoulli", **options
) -> SemiSupervisedVAE:
    pyro.set_rng_seed(0)
    return SemiSupervisedVAE(
        12, 3, (16,), likelihood=likelihood, guide=guide, num_classes=4, **options
    )


def explicit_bound(vae: SemiSupervisedVAE, x: torch.Tensor) -> torch.Tensor:
    """U(x) summed over x, written class by class: Σ_y q(y|x) ELBO_y(x) + H(q(y|x)), each
    ELBO_y = log p(x|y,z) + log π_y + log p(z) − log q(z|x,y) at z ~ q(z|x,y), the z of all
    classes drawn in one call as enumeration draws them."""
    k = vae.num_classes
    q_y = torch.softmax(vae.classifier(x), -1)  # (N, K)
    q_z = vae.posterior(x, torch.arange(k).reshape(k, 1))  # batch (K, N)
    z = q_z.rsample()  # (K, N, L)
    total = 0.0
    for y in range(k):
        decoded = vae.decoder(z[y], one_hot(torch.full((x.shape[0],), y), k))
        elbo_y = (
            vae.likelihood(decoded).log_prob(x)
            + math.log(1 / k)
            + vae.prior().log_prob(z[y])
            - q_z.log_prob(z)[y]
        )
        total = total + q_y[:, y] * elbo_y
    entropy = -(q_y * q_y.log()).sum(-1)
    return (total + entropy).sum()


@pytest.mark.parametrize("guide", ["diagonal", "full", "iaf"])
def test_enumerated_elbo_is_the_sum_over_classes_weighted_by_q_plus_its_entropy(guide):
    vae = small_m2(guide)
    x = torch.bernoulli(torch.full((5, 12), 0.4))
    pyro.set_rng_seed(1)
    enumerated = -enumerated_elbo().differentiable_loss(vae.model, vae.guide, x)
    pyro.set_rng_seed(1)
    by_hand = explicit_bound(vae, x)
    pyro.set_rng_seed(1)
    written_out = vae.class_terms(x, 1, analytic=False)["elbo"].sum()
    pyro.set_rng_seed(1)
    objective = SemiSupervisedELBO(vae.class_posterior, 5, 1, 1.0)
    trained_on = -objective.unlabelled_loss(vae.generative_model, vae.inference_guide, x)
    assert torch.allclose(enumerated, by_hand, rtol=1e-5), (enumerated, by_hand)
    assert torch.allclose(written_out, by_hand, rtol=1e-5)
    assert torch.allclose(trained_on, enumerated, rtol=1e-5)
    # the same gradient as Pyro's enumeration, which reaches the classifier through q(y|x)
    parameters = list(vae.parameters())
    gradients = torch.autograd.grad(enumerated, parameters, allow_unused=True)
    ours = torch.autograd.grad(trained_on, parameters, allow_unused=True)
    for theirs, mine in zip(gradients, ours, strict=True):
        assert (theirs is None) == (mine is None)
        if theirs is not None:
            torch.testing.assert_close(mine, theirs, rtol=1e-4, atol=1e-5)
    names = [name for name, _ in vae.named_parameters()]
    assert gradients[names.index("classifier.net.0.weight")].abs().sum() > 0


def test_the_enumerated_y_is_a_guide_site_marked_for_enumeration_not_a_sample():
    vae = small_m2()
    x = torch.bernoulli(torch.full((5, 12), 0.4))
    trace = poutine.trace(poutine.enum(vae.guide, first_available_dim=-2)).get_trace(x)
    site = trace.nodes["y"]
    assert site["infer"]["enumerate"] == "parallel"
    assert site["value"].shape == (4, 1)  # all four classes, a dimension left of the batch
    assert trace.nodes["z"]["value"].shape == (4, 5, 3)


# helpers


def digits():
    return load_dataset(DataConfig(binarize="static"))


def cli_run(*args):
    from typer.testing import CliRunner

    import cli

    return CliRunner().invoke(cli.app, [str(a) for a in args])


# the registry of models


def test_every_model_kind_is_registered():
    assert tuple(MODELS) == MODEL_KINDS
    assert all(MODELS[kind].kind == kind for kind in MODELS)


def test_one_hot_and_labels_checks():
    assert one_hot(torch.tensor([2, 0]), 3).tolist() == [[0, 0, 1], [1, 0, 0]]
    with pytest.raises(UserInputError, match="from 0 to 9"):
        check_label(10, 10)
    chosen = choose_labelled(torch.arange(100) % 10, 23, seed=0)
    counts = torch.bincount((torch.arange(100) % 10)[chosen], minlength=10)
    assert len(chosen) == 23 and len(chosen.unique()) == 23
    assert counts.max() - counts.min() <= 1  # balanced by class
    assert torch.equal(chosen, choose_labelled(torch.arange(100) % 10, 23, seed=0))
    assert not torch.equal(chosen, choose_labelled(torch.arange(100) % 10, 23, seed=1))


def test_fewer_labels_than_classes_get_a_note(caplog):
    with caplog.at_level(logging.INFO, logger="pyro_vae"):
        chosen = choose_labelled(torch.arange(100) % 10, 23, seed=0)
    assert not caplog.records  # one of each class at least: nothing to say
    with caplog.at_level(logging.INFO, logger="pyro_vae"):
        chosen = choose_labelled(torch.arange(100) % 10, 4, seed=0)
    assert len(chosen) == 4
    notes = [r.getMessage() for r in caplog.records]
    assert len(notes) == 1 and "--labels 4 is fewer than the 10 classes: 6 of them" in notes[0]


# every component with both labelled models


# The models of the registry that read labels, whatever is registered later.
LABELLED = [kind for kind, model in MODELS.items() if model.labelled]


def test_the_labelled_models_are_the_conditional_vae_and_m2():
    assert LABELLED == ["cvae", "m2"]


@pytest.mark.parametrize("kind", LABELLED)
@pytest.mark.parametrize("guide", GUIDES)
@pytest.mark.parametrize("prior", PRIORS)
def test_labelled_models_train_with_every_guide_and_prior(kind, guide, prior):
    x = torch.bernoulli(torch.full((6, 12), 0.5))
    y = torch.tensor([0, 1, 2, 3, 0, 1])
    pyro.set_rng_seed(0)
    make = lambda: MODELS[kind](12, 3, (16,), prior=prior, guide=guide, num_classes=4)  # noqa: E731
    if prior == "vamp":
        with pytest.raises(UserInputError, match="prior vamp"):
            make()
        return
    vae = make()
    loss = make_elbo_mc().differentiable_loss(vae.model, vae.guide, x, y)
    if kind == "m2":  # and the unlabelled images, y summed out
        loss = loss + enumerated_elbo().differentiable_loss(vae.model, vae.guide, x)
    loss.backward()
    assert torch.isfinite(loss)
    trained = ("decoder", "encoder", "classifier") if kind == "m2" else ("decoder", "encoder")
    for name, parameter in vae.named_parameters():
        if name.split(".")[0] in trained:
            assert parameter.grad is not None and parameter.grad.abs().sum() > 0, name
    assert vae.generate(8, torch.arange(8) % 4).shape == (8, 12)


@pytest.mark.parametrize("likelihood", LIKELIHOODS)
def test_labelled_models_take_every_likelihood(likelihood):
    for kind in LABELLED:
        pyro.set_rng_seed(0)
        vae = MODELS[kind]((1, 4, 4), 2, (8,), likelihood=likelihood, num_classes=3)
        x = torch.bernoulli(torch.full((5, 16), 0.5))  # binary: data for every likelihood
        y = torch.tensor([0, 1, 2, 0, 1])
        terms = vae.class_terms(x, 2) if kind == "m2" else None
        assert terms is None or torch.isfinite(terms["elbo"]).all()
        loss = make_elbo_mc().differentiable_loss(vae.model, vae.guide, x, y)
        assert torch.isfinite(loss)


def test_the_conv_network_reads_labels_once_per_image():
    pyro.set_rng_seed(0)
    vae = SemiSupervisedVAE((1, 8, 8), 2, (4, 8), network="conv", num_classes=3)
    x = torch.rand(5, 64)
    seen = []
    vae.encoder.conv.register_forward_hook(lambda module, args, out: seen.append(args[0].shape))
    loss = enumerated_elbo().differentiable_loss(vae.model, vae.guide, x)
    assert torch.isfinite(loss)
    assert [shape[0] for shape in seen] == [5]  # not 15: the classes join after the convolutions


def test_the_cvae_step_is_recorded_and_is_the_eager_step():
    from pyro_vae.inference.fast.replay import RecordedGradient
    from pyro_vae.inference.objectives import loss_and_backward, make_elbo

    pyro.set_rng_seed(0)
    vae = ConditionalVAE(12, 3, (16,), num_classes=4, likelihood="bernoulli")
    x, y = torch.bernoulli(torch.full((6, 12), 0.5)), torch.tensor([0, 1, 2, 3, 0, 1])
    elbo = make_elbo("mc")
    model, guide = vae.generative_model, vae.inference_guide
    recorded = RecordedGradient(vae, elbo, model, guide)
    results = []
    for step in (lambda: loss_and_backward(elbo, model, guide, x, y), lambda: recorded(x, y)):
        vae.zero_grad(set_to_none=True)
        pyro.set_rng_seed(3)
        with pyro.validation_enabled(False):
            loss = step()
        results.append((loss, [p.grad.clone() for p in vae.parameters()]))
    (eager, eager_grads), (replayed, replayed_grads) = results
    assert replayed is not None and recorded.eager_reason is None
    torch.testing.assert_close(replayed, eager, rtol=0, atol=0)
    for a, b in zip(eager_grads, replayed_grads, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    # another class for the same images is another loss: the labels are the graph's input
    other = recorded(x, (y + 1) % 4)
    assert not torch.equal(other[0], replayed[0])


# semi-supervised training: labelled and unlabelled batches


def m2_trainer(data, labels: int) -> SemiSupervisedTrainer:
    """A small M2 on the digits, batches of 64, α = 5 per labelled image."""
    pyro.set_rng_seed(0)
    vae = SemiSupervisedVAE(data.image_shape, 4, (16,), likelihood="bernoulli", num_classes=10)
    return SemiSupervisedTrainer(vae, TrainConfig(labels=labels, batch_size=64, alpha=5.0), data)


def test_m2_steps_mix_labelled_and_unlabelled_images_as_the_objective_says():
    data = digits()
    trainer = m2_trainer(data, labels=30)
    labelled, unlabelled = (
        set(trainer.labelled_rows.tolist()),
        set(trainer.unlabelled_rows.tolist()),
    )
    assert len(labelled) == 30 and not labelled & unlabelled
    assert labelled | unlabelled == set(range(len(data.train)))
    assert (
        torch.bincount(data.train.labels[trainer.labelled_rows], minlength=10).tolist() == [3] * 10
    )
    # an epoch passes over the unlabelled images once each
    order = trainer._epoch_order(trainer._num_train(data), torch.device("cpu"))
    assert sorted(order.tolist()) == sorted(unlabelled)


def test_m2s_default_alpha_weighs_few_labels_on_the_images_more():
    """Where α is not given: 500 per labelled image on M1's codes; on the images 50,000 below
    100 labels a class, 5,000 below 300, 500 from there (docs/models.md says why)."""
    assert default_alpha(100, 10, on_codes=False) == FEW_LABELS_ALPHA == 100 * DEFAULT_ALPHA
    assert default_alpha(999, 10, on_codes=False) == FEW_LABELS_ALPHA
    assert default_alpha(1000, 10, on_codes=False) == 5_000
    assert default_alpha(2999, 10, on_codes=False) == 5_000
    assert default_alpha(3000, 10, on_codes=False) == DEFAULT_ALPHA
    assert default_alpha(600, 2, on_codes=False) == DEFAULT_ALPHA  # labels a class count
    assert default_alpha(100, 10, on_codes=True) == DEFAULT_ALPHA
    assert default_alpha(3000, 10, on_codes=True) == DEFAULT_ALPHA
    data = digits()
    pyro.set_rng_seed(0)
    vae = SemiSupervisedVAE(data.image_shape, 4, (16,), likelihood="bernoulli", num_classes=10)
    assert SemiSupervisedTrainer(vae, TrainConfig(labels=30), data).alpha == FEW_LABELS_ALPHA


def test_the_m2_step_is_recorded_and_is_the_eager_step():
    """From the second step on, M2's step (both batches, the classes summed out) is replayed from
    a recorded graph: the same parameters as eager steps, to the bit, epoch after epoch."""
    data = digits()
    trained = []
    for record in (True, False):
        pyro.set_rng_seed(0)
        vae = SemiSupervisedVAE(data.image_shape, 4, (16,), likelihood="bernoulli", num_classes=10)
        # compile=False: the default decides by timing the steps, and on a loaded machine may
        # compile them, whose numbers differ from the eager ones in the last bits
        config = TrainConfig(labels=30, batch_size=64, alpha=5.0, compile=False)
        trainer = SemiSupervisedTrainer(vae, config, data, record_graph=record)
        losses = [trainer.train_epoch(data).train_objective for _ in range(2)]
        trained.append((losses, [p.detach().clone() for p in vae.parameters()], trainer))
    (recorded_losses, recorded, trainer), (eager_losses, eager, _) = trained
    assert trainer._recorded is not None and trainer._recorded.eager_reason is None
    assert len(trainer._recorded._graphs) == 2  # a full batch and the epoch's last, smaller one
    assert recorded_losses == eager_losses
    for a, b in zip(recorded, eager, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_the_label_columns_join_after_the_images_product():
    """Summing over the classes, the encoder multiplies each image by its weights once, not
    once per class, and computes what the concatenated [x, y] would."""
    from torch.utils.flop_counter import FlopCounterMode

    from pyro_vae.components.networks import Encoder, with_labels

    torch.manual_seed(0)
    encoder = Encoder((784,), (16,), 3, label_dim=4)
    x, classes = torch.rand(5, 784), one_hot(torch.arange(4).reshape(4, 1), 4)
    counted = {}
    for name, run in {
        "split": lambda: encoder(x, classes),
        "concatenated": lambda: encoder.net(with_labels(x, classes)),
    }.items():
        with FlopCounterMode(display=False) as flops:
            counted[name] = run()
        counted[name + " flop"] = flops.get_total_flops()
    assert counted["split"].shape == (4, 5, 6)
    torch.testing.assert_close(counted["split"], counted["concatenated"])
    # the 784 inputs' product once per image instead of once per image and class
    first_layer = 2 * 5 * 784 * 16
    assert counted["concatenated flop"] - counted["split flop"] >= 3 * first_layer * 0.99


def test_m2_loss_of_one_step_by_hand():
    data = digits()
    # 100 labels, 64 of them a step: each labelled term counts N_l / B_l = 100 / 64 times its
    # share, the whole weighted as one unlabelled batch of 48 among N_u images
    trainer = m2_trainer(data, labels=100)
    vae = trainer.vae
    trainer.optimizer.step = lambda: None  # the parameters stay: the loss is recomputed below
    index = trainer.unlabelled_rows[:48]
    pyro.set_rng_seed(5)
    loss, negative_u = trainer._semi_supervised_step(data, index)
    pyro.set_rng_seed(5)
    chosen = trainer.labelled_rows[torch.randperm(100)[:64]]  # the step draws them first
    x = data.train_batch(index)
    # Pyro's own sum over the enumerated classes: the step writes that sum out
    u = -enumerated_elbo().differentiable_loss(vae.model, vae.guide, x).detach()
    xl, yl = data.train_batch(chosen), data.train.labels[chosen]
    labelled_elbo = -make_elbo_mc().differentiable_loss(vae.model, vae.guide, xl, yl).detach()
    log_q = vae.class_posterior(xl).log_prob(yl).sum().detach()
    n_u = len(data.train) - 100
    # J's estimate, B_u / N_u times: Σ_batch U + (B_u/N_u)·(N_l/B_l)·Σ_batch [L + α log q],
    # α per labelled image
    expected = -(u + 48 / n_u * 100 / 64 * (labelled_elbo + 5.0 * log_q))
    torch.testing.assert_close(negative_u, -u)
    torch.testing.assert_close(loss, expected)


def make_elbo_mc():
    from pyro_vae.inference.objectives import make_elbo

    return make_elbo("mc")


def test_the_cvae_draws_the_class_asked_for():
    """A classifier trained on the digits recognises the CVAE's samples of each class."""
    from torch.nn import functional as F

    from pyro_vae.components.networks import Encoder

    data = digits()
    pyro.set_rng_seed(0)
    vae = ConditionalVAE(data.image_shape, 4, (64,), likelihood="bernoulli", num_classes=10)
    trainer = Trainer(vae, TrainConfig(batch_size=32))
    for _ in range(12):
        trainer.train_epoch(data)
    judge = Encoder(data.image_shape, (64,), 4, output_dim=10)
    optimizer = torch.optim.Adam(judge.parameters(), lr=1e-2)
    x, y = data.train.x, data.train.labels
    for _ in range(100):
        optimizer.zero_grad()
        F.cross_entropy(judge(x), y).backward()
        optimizer.step()
    asked = torch.arange(10).repeat_interleave(20)
    with torch.no_grad():
        drawn = vae.generate(len(asked), asked)
        agreement = (judge(drawn).argmax(-1) == asked).float().mean()
        shuffled = (judge(drawn).argmax(-1) == asked[torch.randperm(len(asked))]).float().mean()
    assert agreement > 0.5, agreement  # five times chance (0.1)
    assert shuffled < 0.3


# through the command line


@pytest.fixture(scope="module")
def labelled_runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("labelled")
    common = ["--epochs", "2", "--hidden-dims", "32", "--latent-dim", "4"]
    for kind, extra in (("cvae", []), ("m2", ["--labels", "50"])):
        result = cli_run("train", "--model", kind, *extra, *common, "--out", root / kind)
        assert result.exit_code == 0, result.output
    return root


def test_cvae_run_samples_a_class_and_evaluates_given_the_class(labelled_runs):
    import json

    run = labelled_runs / "cvae"
    metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert len(metrics) == 2 and metrics[-1]["val_error"] is None
    result = cli_run("sample", run, "--label", "3", "--num", "8")
    assert result.exit_code == 0, result.output
    assert (run / "samples-class3-seed0.png").is_file()
    # a row per class: fewer images than classes draws one of each, and says so
    result = cli_run("sample", run, "--num", "3", "--out", run / "three.png")
    assert result.exit_code == 0, result.output
    assert "3 images asked for 10 classes, a row each: drawing 1 of each class, 10 in all" in (
        result.stderr
    )
    from tests.test_errors import assert_user_error

    for command in (["sample", str(run), "--label", "10"], ["manifold", str(run), "--label", "-1"]):
        assert_user_error(command, "give one from 0 to 9", run)  # one line, exit 2, nothing lost
    result = cli_run("evaluate", run, "--num-samples", "4")
    assert result.exit_code == 0 and "log p(x | y)" in result.output, result.output
    for command in (["reconstruct"], ["interpolate"], ["latent"], ["manifold", "--label", "2"]):
        result = cli_run(*command, run)
        assert result.exit_code == 0, (command, result.output)


def test_m2_run_reports_validation_error_and_test_error(labelled_runs):
    import json

    run = labelled_runs / "m2"
    metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert all(0 <= m["val_error"] <= 1 for m in metrics)
    # 50 labels of 10 classes on the images: the few-labels default, written out for resuming
    config = json.loads((run / "config.json").read_text())["config"]
    assert config["train"]["alpha"] == FEW_LABELS_ALPHA
    result = cli_run("evaluate", run, "--num-samples", "4")
    assert result.exit_code == 0, result.output
    assert "classification error of q(y|x)" in result.output
    record = json.loads(next(run.glob("evaluation-*.json")).read_text())
    assert 0 <= record["classification_error"] <= 1
    iwae, elbo = record["bounds"]["iwae"], record["bounds"]["elbo_analytic_kl"]
    assert iwae["nats"] > elbo["nats"] - 3 * elbo["standard_error"]  # IWAE ≥ U, in expectation
    result = cli_run("sample", run, "--label", "7", "--num", "4")
    assert result.exit_code == 0, result.output


def test_an_m2_run_resumes_exactly(tmp_path):
    from pyro_vae.core.config import ModelConfig, RunConfig
    from pyro_vae.runs.runner import RunHooks, resume_run, train_run
    from tests.test_reliability import assert_same_run, stop_after

    config = RunConfig(
        model=ModelConfig(kind="m2", hidden_dims=(16,), latent_dim=2),
        train=TrainConfig(epochs=2, labels=40),
    )
    train_run(config, tmp_path / "straight")
    stopped = train_run(config, tmp_path / "stopped", hooks=RunHooks(should_stop=stop_after(30)))
    assert not stopped.finished
    resume_run(tmp_path / "stopped")
    assert_same_run(tmp_path / "straight", tmp_path / "stopped")


def test_an_m2_run_without_its_alpha_resumes_with_the_weight_it_trained_with(tmp_path):
    """Runs of format 5 and 6 that left α unset trained with the one default of their time, 500;
    format 4 ones with the paper's. Today's default (50,000 at these few labels) is neither."""
    from pyro_vae.core.config import ModelConfig, RunConfig
    from pyro_vae.runs.runner import resume_run, train_run
    from tests.test_errors import edited_checkpoint

    config = RunConfig(
        model=ModelConfig(kind="m2", hidden_dims=(16,), latent_dim=2),
        train=TrainConfig(epochs=1, labels=40),
    )
    run = tmp_path / "run"
    assert train_run(config, run).config.train.alpha == FEW_LABELS_ALPHA
    num_train = len(load_dataset(config.data).train)
    for version, alpha in ((6, DEFAULT_ALPHA), (4, paper_alpha(num_train, 40))):

        def unset(payload, version=version):
            payload["config"]["train"]["alpha"] = None
            payload["format_version"] = version

        edited_checkpoint(run, unset)
        resumed = resume_run(run, {"epochs": 2 if version == 6 else 3})
        assert resumed.config.train.alpha == alpha


def test_the_collapse_note_of_m2_offers_no_remedy_m2_refuses():
    from pyro_vae.cli.training import collapse_note
    from pyro_vae.core.config import ModelConfig, RunConfig

    for likelihood in ("bernoulli", "gaussian"):
        config = RunConfig(
            model=ModelConfig(kind="m2", likelihood=likelihood), train=TrainConfig(labels=10)
        )
        note = collapse_note(0, config, free_bits_possible=True)
        assert "--kl-warmup" not in note and "--free-bits" not in note and "--beta" not in note
        assert "beyond the class" in note
    cvae = RunConfig(model=ModelConfig(kind="cvae", likelihood="bernoulli"))
    assert "--kl-warmup" in collapse_note(0, cvae, free_bits_possible=True)
